"""Trace-replay experiments: profiles, kill-and-requeue preemption, loading traces with
injections, ``wsched replay`` outputs, ``wsched sweep`` (resumable) and ``plot``."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scheduler import cli, experiments, generator
from scheduler.config import ImageMix, apply_toml, load_profile
from scheduler.invariants import assert_valid
from scheduler.leases import DiskImage, LeaseKind, LeaseRequest, Resources, Site
from scheduler.lwf import TraceError, read_lwf
from scheduler.metrics import compute
from scheduler.replay import replay
from scheduler.swf import SkipReason, read_swf

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
SWF150 = SHARED / "swf" / "150requests.swf"
SWF30 = SHARED / "swf" / "30days.swf"
INJ = SHARED / "ar-injections-30days" / "work_05-dur_1h-size_1small.lwf"
NODE = Resources(cpu=100, memory=1024)
PAPER = ["novm-nosr", "novm-sr", "vm-predeploy", "vm-mult", "vm-reuse-uniform",
         "vm-reuse-skewed"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    if cli._handler is not None:
        root.removeHandler(cli._handler)
        cli._handler = None
    root.setLevel(level)


# ------------------------------------------------------------------ profiles

def test_experiment_profiles() -> None:
    for name in ["batch-easy", "batch-conservative", *PAPER]:
        c = load_profile(name)
        assert (c.site_nodes, c.site_node) == (144, NODE), name
    easy, cons = load_profile("batch-easy"), load_profile("batch-conservative")
    assert (easy.max_future_reservations, cons.max_future_reservations) == (1, None)
    for c in (easy, cons):
        assert (c.preemption, c.suspension, c.image_transfer, c.enactment_overhead,
                c.boot_time, c.shutdown_time, c.runtime_slowdown) == \
            ("none", False, False, 0, 0, 0, 0.0)
    assert load_profile("novm-nosr").suspension is False
    sr = load_profile("novm-sr")
    assert sr.suspension and sr.suspend_rate == sr.resume_rate == float("inf")
    pre = load_profile("vm-predeploy")
    assert (pre.runtime_slowdown, pre.boot_time, pre.shutdown_time, pre.suspend_rate,
            pre.image_transfer) == (5.0, 20, 20, 50.0, False)
    mult = load_profile("vm-mult")
    assert (mult.image_transfer, mult.repository_bandwidth, mult.image_cache_mb,
            mult.piggybacking, mult.workload_images, mult.workload_image_size) == \
        (True, 80.0, 0, False, 37, 4096)
    uni, skew = load_profile("vm-reuse-uniform"), load_profile("vm-reuse-skewed")
    assert (uni.image_cache_mb, uni.workload_image_mix, uni.image_weights()) == \
        (20480, ImageMix.UNIFORM, None)
    weights = skew.image_weights()
    assert weights is not None and len(weights) == 37
    assert weights[:7] == (0.10,) * 7 and all(w == pytest.approx(0.01) for w in weights[7:])


# ---------------------------------------------------- kill-and-requeue preemption

def test_preempted_lease_is_killed_and_requeued_without_suspension() -> None:
    """preemption.lwf (test-notransfer: 2 s per VM command) with suspension off.

    Lease 1 (best-effort, 1 VM, 3600 s) boots at 0 ([0,2)) and runs from 2. The AR
    (4 VMs from 1800) boots at [1798,1800), so lease 1 must be off P1 by 1798: it is
    shut down at 1798 - 2 = 1796 and its 1794 s of work are lost. It starts over after
    the AR's shutdown [3600,3602): boot [3602,3604), run [3604,7204), shutdown."""
    workload = read_lwf(SHARED / "lwf" / "preemption.lwf")
    assert workload.site is not None
    config = replace(load_profile("test-notransfer"), suspension=False)
    result = replay(workload.site, config, workload.requests)
    assert_valid(result.site, config, result.outcomes)
    be, ar = result.outcomes
    assert [(e.kind.value, e.start, e.end, e.nodes) for e in be.events] == [
        ("boot", 0, 2, (0,)), ("run", 2, 1796, (0,)), ("shutdown", 1796, 1798, (0,)),
        ("boot", 3602, 3604, (0,)), ("run", 3604, 7204, (0,)),
        ("shutdown", 7204, 7206, (0,))]
    assert (be.state.value, ar.start, ar.end) == ("done", 1800, 3600)


def test_requeued_lease_keeps_its_fcfs_place() -> None:
    """Two best-effort leases on one node: A runs, B waits. An AR kills A; when the AR
    is over A (submitted first) starts again before B."""
    site = Site.uniform(1, NODE)
    config = replace(load_profile("novm-nosr"), site_nodes=0)

    def lease(i: int, kind: LeaseKind, submit: int, duration: int,
              start: int | None = None) -> LeaseRequest:
        return LeaseRequest(i, kind, 1, NODE, DiskImage("x", 0), duration, submit,
                            start=start, preemptible=kind is LeaseKind.BESTEFFORT)

    reqs = [lease(1, LeaseKind.BESTEFFORT, 0, 100), lease(2, LeaseKind.BESTEFFORT, 1, 10),
            lease(3, LeaseKind.AR, 2, 20, start=50)]
    result = replay(site, config, reqs)
    assert_valid(site, config, result.outcomes)
    runs = {o.request.id: [(e.start, e.end) for e in o.runs] for o in result.outcomes}
    # A runs [0,50), is killed for the AR [50,70), runs again whole [70,170); B after it
    assert runs == {1: [(0, 50), (70, 170)], 2: [(170, 180)], 3: [(50, 70)]}


def test_zero_cost_suspension_keeps_event_order() -> None:
    """novm-sr suspends, migrates and resumes in zero time: the zero-length events at one
    instant are listed in their logical order (suspend, migrate, resume)."""
    workload = read_lwf(SHARED / "lwf" / "migrate.lwf")
    assert workload.site is not None
    config = replace(load_profile("novm-sr"), site_nodes=0)
    result = replay(workload.site, config, workload.requests)
    assert_valid(result.site, config, result.outcomes)
    kinds = [e.kind.value for e in result.outcomes[2].events]
    assert kinds == ["boot", "run", "suspend", "migrate", "resume", "run", "shutdown"]


# ----------------------------------------------------------------- workloads

def test_load_workload_merges_injections_and_assigns_images() -> None:
    config = load_profile("vm-reuse-skewed")
    workload = experiments.load_workload(SWF150, INJ, config)
    swf = read_swf(SWF150)
    ars = [r for r in workload.requests if r.kind is LeaseKind.AR]
    assert len(workload.requests) == len(swf.requests) + len(ars)
    assert min(r.id for r in ars) == swf.max_id + 1  # ids never clash
    assert [(r.submit, r.id) for r in workload.requests] == \
        sorted((r.submit, r.id) for r in workload.requests)
    assert {r.image.size_mb for r in workload.requests} == {4096}
    assert {r.image.id for r in workload.requests} <= {f"img{i:02d}" for i in range(1, 38)}
    again = experiments.load_workload(SWF150, INJ, config)
    assert again == workload  # seeded: the same images every time
    assert workload.skipped == (("cancelled", len(swf.skipped)),) and swf.skipped


def test_injected_ids_start_above_skipped_jobs(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The trace's last jobs may be skipped (cancelled before they started): the ARs'
    ids start above theirs too, so the SWF written back gives each job its own wait
    (30days.swf ends with 17 such jobs: ARs took ids 8,719-8,735 and the SWF writer
    gave those jobs the ARs' starts, or failed on a start before the job's submit)."""
    trace = tmp_path / "t.swf"
    cancelled = "690 125800 -1 -1 8 -1 -1 1 300 -1 5 6 -1 -1 3 -1 -1 -1"  # status 5
    trace.write_text(SWF150.read_text() + cancelled + "\n")
    workload = experiments.load_workload(trace, INJ, load_profile("novm-sr"))
    ars = sorted(r.id for r in workload.requests if r.kind is LeaseKind.AR)
    assert ars[0] == 691 and max(r.id for r in read_swf(trace).requests) == 675
    assert cli.main(["replay", str(trace), "--ars", str(INJ), "--profile", "novm-sr",
                     "--json", str(tmp_path / "r.json"), "--swf-out", str(tmp_path / "w.swf"),
                     "--quiet"]) == 0
    waits = {int(f[0]): int(f[2]) for f in (line.split() for line in
             (tmp_path / "w.swf").read_text().splitlines() if not line.startswith(";"))}
    assert waits[690] == -1  # never scheduled
    leases = {x["id"]: x for x in json.loads((tmp_path / "r.json").read_text())["leases"]}
    assert waits[675] == leases[675]["start"] - leases[675]["submit"]
    assert 690 not in leases and leases[691]["kind"] == "ar"


def test_swf_needs_a_site(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as info:
        experiments.load_workload(SWF150, None, load_profile("test-notransfer"))
    assert str(info.value) == (f"{SWF150}: an SWF trace describes no site: give the "
                               "configuration a [site] table (every experiment profile has one)")
    # an archive log's header tells how big its machine was
    logged = tmp_path / "logged.swf"
    logged.write_text("; Version: 2.2\n; MaxNodes: 144\n; MaxProcs: 1152\n"
                      + SWF150.read_text())
    with pytest.raises(TraceError) as info:
        experiments.load_workload(logged, None, load_profile("test-notransfer"))
    assert str(info.value).endswith("has one); its header says MaxNodes: 144, MaxProcs: 1152")


def test_swf_options_come_from_the_configuration() -> None:
    config = apply_toml(load_profile("batch-easy"),
                        {"swf": {"procs-per-node": 4, "keep-started-cancelled": True}}, "t")
    workload = experiments.load_workload(SWF150, None, config)
    expected = read_swf(SWF150, procs_per_node=4, keep_started_cancelled=True).requests
    assert workload.requests == tuple(sorted(expected, key=lambda r: (r.submit, r.id)))
    # (and the plain reading differs: fewer VMs per job, started-cancelled jobs dropped)
    plain = experiments.load_workload(SWF150, None, load_profile("batch-easy")).requests
    assert sum(r.vms for r in workload.requests) < sum(r.vms for r in plain)
    field5 = apply_toml(load_profile("batch-easy"), {"swf": {"nodes-field": 5}}, "t")
    assert experiments.load_workload(SWF150, None, field5).requests == \
        read_swf(SWF150, nodes_field=5).requests


def test_swf_jobs_hold_whole_nodes(tmp_path: Path) -> None:
    """On a site of 8-CPU nodes, a 1-node job takes a whole node (each VM is asked with the
    node's CPU and memory): two such jobs on one node run one after the other, not side
    by side as eight 1-CPU VMs would."""
    line = "{id} {submit} -1 {run} -1 -1 -1 1 {run} -1 1 -1 -1 -1 -1 -1 -1 -1\n"
    trace = tmp_path / "two.swf"
    trace.write_text(line.format(id=1, submit=0, run=100) + line.format(id=2, submit=0, run=50))
    config = apply_toml(load_profile("batch-easy"),
                        {"site": {"nodes": 1, "cpu": 800, "memory": 8192}}, "t")
    workload = experiments.load_workload(trace, None, config)
    assert {r.resources for r in workload.requests} == {Resources(cpu=800, memory=8192)}
    result = replay(workload.site, config, workload.requests)
    assert [(o.request.id, o.start, o.end) for o in result.outcomes] == \
        [(1, 0, 100), (2, 100, 150)]
    # a VM per processor instead, 1 CPU each: side by side
    small = apply_toml(config, {"swf": {"vm-cpu": 100, "vm-memory": 1024}}, "t")
    workload = experiments.load_workload(trace, None, small)
    assert {r.resources for r in workload.requests} == {NODE}
    result = replay(workload.site, small, workload.requests)
    assert [(o.request.id, o.start, o.end) for o in result.outcomes] == \
        [(1, 0, 100), (2, 0, 50)]


def test_a_trace_with_nothing_to_replay_is_told(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Every job skipped: the replay of nothing says so, once per sweep."""
    trace = tmp_path / "t.swf"
    trace.write_text("1 0 -1 -1 8 -1 -1 1 300 -1 5 6 -1 -1 3 -1 -1 -1\n"
                     "2 9 -1 50 8 -1 -1 0 300 -1 1 6 -1 -1 3 -1 -1 -1\n")
    message = ("WARNING", "the trace has no lease to replay: every job is skipped")
    with caplog.at_level(logging.INFO, logger="scheduler.experiments"):
        workload = experiments.load_workload(trace, None, load_profile("novm-sr"))
        assert workload.requests == ()
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [message]
        counts = vars(caplog.records[0])
        assert (counts["cancelled"], counts["no-nodes"]) == (1, 1)
        caplog.clear()
        experiments.load_workload(trace, None, load_profile("novm-sr"), warn=False)
        assert caplog.records == []
        experiments.sweep(experiments.sweep_specs([trace], [], ["novm-sr", "vm-mult"]),
                          tmp_path / "s", jobs=1)
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.levelname == "WARNING"] == [message]


def test_injection_parameters(tmp_path: Path) -> None:
    assert experiments.injection_parameters(INJ) == {"rho": 5, "delta": 1, "nu": "small"}
    assert experiments.injection_parameters(None) == {"rho": 0, "delta": None, "nu": None}
    # a file generate-ars wrote says how it was made, whatever its name
    made = tmp_path / "mine.lwf"
    assert cli.main(["generate-ars", str(SWF150), "--rho", "0.07", "--delta", "2.5",
                     "--nu", "medium", "--seed", "1", "--out", str(made)]) == 0
    assert experiments.injection_parameters(made) == {"rho": 7, "delta": 2.5, "nu": "medium"}
    odd = tmp_path / "odd.lwf.gz"
    generator.write_ar_workload(tmp_path / "odd.lwf", generator.ARParameters(
        rho=0.125, delta_hours=1, nodes=(10, 20)), span=86400, basis_node_seconds=10**7,
        seed=1)
    odd.write_bytes(gzip.compress((tmp_path / "odd.lwf").read_bytes()))
    assert experiments.injection_parameters(odd) == {"rho": 12.5, "delta": 1, "nu": "10-20"}
    assert experiments.injection_parameters(SHARED / "lwf" / "inj1.lwf") == {
        "rho": None, "delta": None, "nu": None}


# ------------------------------------------------------------------------ CLI

def test_replay_swf_with_ars_writes_every_output(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.json"
    code = cli.main(["replay", str(SWF150), "--ars", str(INJ), "--profile", "batch-easy",
                     "--json", str(out), "--metrics", str(tmp_path / "m.json"),
                     "--leases-csv", str(tmp_path / "l.csv"), "--swf-out",
                     str(tmp_path / "w.swf"), "--gantt", str(tmp_path / "g.svg"),
                     "--utilization-plot", str(tmp_path / "u.png")])
    printed = capsys.readouterr().out
    assert code == 0
    leases = {lease["id"]: lease for lease in json.loads(out.read_text())["leases"]}
    summary = json.loads((tmp_path / "m.json").read_text())["summary"]
    ars = [x for x in leases.values() if x["kind"] == "ar"]
    assert summary["ar_accepted"] + summary["ar_rejected"] == len(ars) > 0
    assert summary["ar_rejected"] == sum(x["state"] == "rejected" for x in ars)
    assert f"ARs          {summary['ar_accepted']} accepted" in printed
    swf = read_swf(SWF150)
    assert f"not replayed {len(swf.skipped)} SWF jobs (cancelled " \
        f"{swf.skip_counts[SkipReason.CANCELLED]})" in printed
    # the SWF written back: field 3 is each job's wait, start - submit, from the schedule
    waits = {}
    for line in (tmp_path / "w.swf").read_text().splitlines():
        if line.strip() and not line.startswith(";"):
            fields = line.split()
            waits[int(fields[0])] = int(fields[2])
    kept = {r.id for r in swf.requests}
    assert list(waits) == [j.id for j in swf.all_jobs] and len(swf.skipped) > 0
    for job_id, wait in waits.items():
        if job_id in kept:
            assert wait == leases[job_id]["start"] - leases[job_id]["submit"]
        else:
            assert wait == -1  # skipped jobs were not scheduled
    with (tmp_path / "l.csv").open() as f:
        rows = {int(r["id"]): r for r in csv.DictReader(f)}
    assert set(rows) == set(leases)
    some = swf.requests[0].id
    assert int(rows[some]["wait"]) == leases[some]["start"] - leases[some]["submit"]
    assert (tmp_path / "g.svg").read_text().startswith("<?xml")
    assert (tmp_path / "u.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_image_mix_over_an_lwf_trace_is_told(caplog: pytest.LogCaptureFixture) -> None:
    """A profile's image mix gives SWF jobs their images silently, but replaces those an
    LWF trace names: that is warned of (in a sweep, once, as it checks its inputs)."""
    migrate = SHARED / "lwf" / "migrate.lwf"
    message = ("WARNING", "the configuration's [workload] image mix replaces the disk images "
               "the trace gives its leases")
    with caplog.at_level(logging.INFO, logger="scheduler.experiments"):
        workload = experiments.load_workload(migrate, None, load_profile("vm-mult"))
        assert {r.image.size_mb for r in workload.requests} == {4096}  # the mix's
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [message]
        caplog.clear()
        experiments.load_workload(migrate, None, load_profile("vm-mult"), warn=False)
        experiments.load_workload(migrate, None, load_profile("test-transfer"))
        experiments.load_workload(SWF150, None, load_profile("vm-mult"))
        assert caplog.records == []
        experiments.check_inputs(
            experiments.sweep_specs([migrate], [], ["vm-mult", "vm-reuse-skewed",
                                                    "test-transfer"])
            + experiments.sweep_specs([SWF150], [], ["vm-mult"]))
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [message]


def test_replay_plot_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--plot-window draws one stretch of a replay: the Gantt chart has the bars of the
    events overlapping it, no other. A window past the schedule draws nothing, with a
    warning; a bad window, or one with no plot to draw, is an error before the replay."""
    out, svg = tmp_path / "s.json", tmp_path / "g.svg"
    args = ["replay", str(SWF150), "--profile", "novm-sr", "--json", str(out), "--quiet"]
    assert cli.main([*args, "--gantt", str(svg), "--plot-window", "10h:12h"]) == 0
    drawn = {el.split("-")[1] for el in re.findall(r'id="(event-[^"]+)"', svg.read_text())}
    overlapping = {str(lease["id"]) for lease in json.loads(out.read_text())["leases"]
                   if any(e["end"] >= 36000 and e["start"] <= 43200 for e in lease["events"])}
    assert drawn == overlapping and 0 < len(drawn) < 150
    assert "time (h)" in svg.read_text()
    # a window past the schedule draws an empty chart, with a warning
    capsys.readouterr()
    assert cli.main([*args, "--gantt", str(svg), "--plot-window", "100d:101d"]) == 0
    assert "id=\"event-" not in svg.read_text()
    end = max(e["end"] for lease in json.loads(out.read_text())["leases"]
              for e in lease["events"])
    assert capsys.readouterr().err == (
        "WARNING scheduler.cli: the plot window holds nothing of the schedule "
        f"window=100d:101d schedule_s=0-{end}\n")
    for extra, error in (
            (["--gantt", str(svg), "--plot-window", "12h"],
             "wsched: error: time window '12h': expected FROM:TO, e.g. 2d:3d\n"),
            (["--plot-window", "1h:2h"],
             "wsched: error: --plot-window needs --gantt or --utilization-plot\n")):
        out.unlink(missing_ok=True)
        capsys.readouterr()
        assert cli.main([*args, *extra]) == 2
        assert capsys.readouterr().err == error
        assert not out.exists()


def test_replay_compressed_log_and_injections(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``wsched replay log.swf.gz --ars ars.lwf.gz`` gives the plain files' schedule."""
    log_gz, ars_gz = tmp_path / "150requests.swf.gz", tmp_path / "ars.lwf.gz"
    log_gz.write_bytes(gzip.compress(SWF150.read_bytes()))
    ars_gz.write_bytes(gzip.compress(INJ.read_bytes()))
    outs = []
    for trace, ars, tag in ((SWF150, INJ, "plain"), (log_gz, ars_gz, "gz")):
        out = tmp_path / f"{tag}.json"
        assert cli.main(["replay", str(trace), "--ars", str(ars), "--profile", "novm-sr",
                         "--json", str(out), "--swf-out", str(tmp_path / f"{tag}.swf"),
                         "--quiet"]) == 0
        outs.append(json.loads(out.read_text())["leases"])
    assert outs[0] == outs[1] and len(outs[0]) > 150
    assert (tmp_path / "plain.swf").read_text() == (tmp_path / "gz.swf").read_text()
    assert capsys.readouterr().out == ""
    # a sweep names its runs without the suffixes
    assert experiments.RunSpec(log_gz, ars_gz, "novm-sr").name == "150requests__ars__novm-sr"


def test_compressed_lwf_injections_are_told_from_the_text_format(tmp_path: Path) -> None:
    xml = SHARED / "lwf" / "preemption.lwf"
    packed = tmp_path / "ars.lwf.gz"
    packed.write_bytes(gzip.compress(xml.read_bytes()))
    site = Site.uniform(4, NODE)
    assert experiments.read_ars(packed, 1, site) == read_lwf(xml, default_site=site).requests


def test_lwf_injection_ids_the_trace_uses_are_renumbered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Haizea's pairing: withprematureend.lwf (ids 1-139) with inj1.lwf (ids 1-13). The
    ARs take ids 140-152 in order of arrival, times and shapes unchanged, with one
    warning; an injection whose ids the trace leaves free keeps them."""
    trace, inj = SHARED / "lwf" / "withprematureend.lwf", SHARED / "lwf" / "inj1.lwf"
    config = replace(load_profile("test-notransfer"), site_nodes=4, site_node=NODE)
    site = config.default_site()
    assert site is not None
    with caplog.at_level(logging.INFO, logger="scheduler.experiments"):
        workload = experiments.load_workload(trace, inj, config)
    file_ars = read_lwf(inj, default_site=site).requests
    ars = sorted((r for r in workload.requests if r.kind is LeaseKind.AR), key=lambda r: r.id)
    assert [r.id for r in file_ars] == list(range(1, 14))
    assert [r.id for r in ars] == list(range(140, 153))
    assert [replace(r, id=f.id) for r, f in zip(ars, file_ars, strict=True)] == list(file_ars)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "the trace uses lease ids of the injection file: its leases are "
                    "renumbered 140-152 in order of arrival")]
    # a sweep's runs log it as information only (check_inputs warned once)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scheduler.experiments"):
        assert experiments.load_workload(trace, inj, config, warn=False) == workload
    assert [r.levelname for r in caplog.records] == ["INFO"]
    # free ids are kept
    free = tmp_path / "free.lwf"
    free.write_text(inj.read_text().replace('lease id="', 'lease id="50'))
    kept = experiments.load_workload(trace, free, config)
    assert sorted(r.id for r in kept.requests if r.kind is LeaseKind.AR) == \
        [int(f"50{i}") for i in range(1, 14)]


def test_replay_rejects_swf_out_for_lwf(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["replay", str(SHARED / "lwf" / "wait.lwf"), "--json",
                     str(tmp_path / "o.json"), "--swf-out", str(tmp_path / "o.swf")])
    assert (code, capsys.readouterr().err) == (
        2, "wsched: error: --swf-out needs an SWF trace\n")


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(newline="") as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def test_sweep_is_parallel_resumable_and_ratios_use_the_baseline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "--trace", str(SWF150), "--ars", str(INJ), "--profiles",
            "batch-easy,novm-sr", "--out", str(out), "--jobs", "2"]
    assert cli.main(args) == 0
    assert "4 runs; results in" in capsys.readouterr().out
    rows = read_results(out / "results.csv")
    assert sorted(rows) == [
        "150requests__none__batch-easy", "150requests__none__novm-sr",
        "150requests__work_05-dur_1h-size_1small__batch-easy",
        "150requests__work_05-dur_1h-size_1small__novm-sr"]
    for profile in ("batch-easy", "novm-sr"):
        base = rows[f"150requests__none__{profile}"]
        row = rows[f"150requests__work_05-dur_1h-size_1small__{profile}"]
        assert (row["rho"], row["delta"], row["nu"], row["profile"]) == \
            ("5", "1", "small", profile)
        assert float(row["completion_ratio"]) == pytest.approx(
            int(row["besteffort_completion"]) / int(base["besteffort_completion"]))
        assert float(base["completion_ratio"]) == 1.0
    # each run equals a replay of its own
    _, figures = experiments.run_experiment(
        experiments.RunSpec(SWF150, INJ, "batch-easy"))
    row = rows["150requests__work_05-dur_1h-size_1small__batch-easy"]
    assert int(row["besteffort_completion"]) == figures.summary.besteffort_completion
    assert int(row["ar_accepted"]) == figures.summary.ar_accepted

    # resumable: finished runs are not run again; a deleted one is
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    (out / "runs" / "150requests__none__novm-sr.json").unlink()
    assert cli.main(args) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert set(after) == set(stamps)
    changed = {n for n in after if after[n] != stamps.get(n)}
    assert changed == {"150requests__none__novm-sr.json"}
    assert read_results(out / "results.csv") == rows

    # the paper-style figure from the table
    assert cli.main(["plot", str(out / "results.csv"), "--out", str(tmp_path / "f.svg")]) == 0
    assert "line-novm-sr-delta-1-nu-small" in (tmp_path / "f.svg").read_text()


def test_sweep_runs_again_what_is_out_of_date(tmp_path: Path) -> None:
    """A finished run is kept only while its inputs are what it replayed: an injection
    file changed since, or a record from before runs recorded their inputs, runs again
    (and only those runs)."""
    inj = tmp_path / INJ.name
    inj.write_bytes(INJ.read_bytes())
    out = tmp_path / "s"
    args = ["sweep", "--trace", str(SWF150), "--ars", str(inj), "--profiles", "novm-sr",
            "--out", str(out), "--jobs", "1", "--quiet"]
    runs = out / "runs"
    injected = runs / "150requests__work_05-dur_1h-size_1small__novm-sr.json"
    baseline = runs / "150requests__none__novm-sr.json"

    def stamps() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in runs.iterdir()}

    assert cli.main(args) == 0
    record = json.loads(injected.read_text())
    assert record[experiments.INPUTS_KEY] == experiments.inputs_digest(
        experiments.RunSpec(SWF150, inj, "novm-sr"))
    assert experiments.INPUTS_KEY not in read_results(out / "results.csv")[baseline.stem]
    before = stamps()
    assert cli.main(args) == 0 and stamps() == before  # nothing changed: nothing runs

    lines = inj.read_text().splitlines()
    inj.write_text("\n".join(lines[:-1]) + "\n")  # one AR fewer
    assert cli.main(args) == 0
    after = stamps()
    assert {n for n in after if after[n] != before[n]} == {injected.name}
    assert int(json.loads(injected.read_text())["leases"]) == int(record["leases"]) - 1

    del record[experiments.INPUTS_KEY]  # as an older wsched wrote it
    baseline.write_text(json.dumps(record))
    before = stamps()
    assert cli.main(args) == 0
    after = stamps()
    assert {n for n in after if after[n] != before[n]} == {baseline.name}


def test_sweep_of_configuration_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep's profile may be a TOML file (a path relative to where the sweep starts):
    its runs and table rows are named by the file's name, they replay its configuration,
    and changing the file runs them again (only them). A file named as a built-in
    profile would write that profile's runs: an error."""
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "fcfs.toml"
    conf.write_text('profile = "novm-sr"\n[scheduling]\nbackfilling = "off"\n')
    args = ["sweep", "--trace", str(SWF150), "--ars", str(INJ), "--profiles",
            "novm-sr,fcfs.toml", "--out", "s", "--jobs", "2", "--quiet"]
    assert cli.main(args) == 0
    rows = read_results(tmp_path / "s" / "results.csv")
    injected = "150requests__work_05-dur_1h-size_1small__fcfs"
    assert sorted(rows) == ["150requests__none__fcfs", "150requests__none__novm-sr",
                            injected, "150requests__work_05-dur_1h-size_1small__novm-sr"]
    assert rows[injected]["profile"] == "fcfs"
    config = apply_toml(load_profile("novm-sr"), {"scheduling": {"backfilling": "off"}}, "")
    workload = experiments.load_workload(SWF150, INJ, config)
    summary = compute(replay(workload.site, config, workload.requests)).summary
    for key, value in (("besteffort_completion", summary.besteffort_completion),
                       ("besteffort_wait_mean_all", summary.besteffort_wait_mean_all)):
        assert float(rows[injected][key]) == pytest.approx(value)
    assert rows[injected]["besteffort_wait_mean_all"] != \
        rows["150requests__work_05-dur_1h-size_1small__novm-sr"]["besteffort_wait_mean_all"]

    runs = tmp_path / "s" / "runs"
    before = {p.name: p.stat().st_mtime_ns for p in runs.iterdir()}
    conf.write_text(conf.read_text().replace("off", "conservative"))
    assert cli.main(args) == 0
    after = {p.name: p.stat().st_mtime_ns for p in runs.iterdir()}
    assert {n for n in after if after[n] != before[n]} == {
        "150requests__none__fcfs.json", f"{injected}.json"}

    (tmp_path / "novm-sr.toml").write_text(conf.read_text())
    capsys.readouterr()
    assert cli.main([*args[:6], "novm-sr,novm-sr.toml", *args[7:]]) == 2
    assert capsys.readouterr().err == (
        f"wsched: error: novm-sr and {tmp_path / 'novm-sr.toml'} would write the same run "
        "150requests__none__novm-sr: a sweep names its runs by the files' names, without "
        "their folders\n")


def test_runs_depend_on_the_code_they_replay(tmp_path: Path) -> None:
    """``code_digest`` covers the modules a replay imports, no other: editing one of
    them (a copy of the package here) changes it, editing the figures' does not."""
    package = Path(experiments.__file__).parent
    replayed = subprocess.run(
        [sys.executable, "-c", "import sys, scheduler.experiments; print(' '.join(sorted("
         "m.split('.')[1] for m in sys.modules if m.startswith('scheduler.'))))"],
        capture_output=True, text=True, check=True, cwd=package.parent).stdout.split()
    replayed = [m for m in replayed if m not in ("_compiled_from", "native__mypyc")]  # (built)
    assert sorted(p.stem for p in package.glob("*.py")
                  if p.stem not in experiments._NOT_REPLAYED) == replayed

    copy = tmp_path / "scheduler"
    copy.mkdir()
    for path in package.glob("*.py"):
        (copy / path.name).write_bytes(path.read_bytes())

    def digest() -> str:
        return subprocess.run(
            [sys.executable, "-c", "from scheduler import experiments; "
             "print(experiments.code_digest())"], capture_output=True, text=True,
            check=True, env={**os.environ, "PYTHONPATH": str(tmp_path)},
            cwd=tmp_path).stdout.strip()

    first = digest()
    assert first == experiments.code_digest()
    with (copy / "plots.py").open("a") as f:
        f.write("# an edit to the figures\n")
    assert digest() == first
    with (copy / "core.py").open("a") as f:
        f.write("# an edit to the core\n")
    assert digest() != first


def test_sweep_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run runs and writes nothing, and says which runs are done, to run, or out
    of date; a bad input file stops it as it would the sweep."""
    inj = tmp_path / INJ.name
    inj.write_bytes(INJ.read_bytes())
    out = tmp_path / "s"
    args = ["sweep", "--trace", str(SWF150), "--ars", str(inj), "--profiles", "novm-sr",
            "--out", str(out), "--quiet"]
    assert cli.main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        "to run       150requests__none__novm-sr\n"
        "to run       150requests__work_05-dur_1h-size_1small__novm-sr\n"
        "2 runs: 0 done, 2 to run, 0 out of date\n")
    assert not out.exists()
    assert cli.main(args) == 0
    inj.write_text(inj.read_text() + "\n# an edit\n")
    capsys.readouterr()
    assert cli.main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        "done         150requests__none__novm-sr\n"
        "out of date  150requests__work_05-dur_1h-size_1small__novm-sr\n"
        "2 runs: 1 done, 0 to run, 1 out of date\n")
    inj.write_text("0 1 2\n")
    assert cli.main([*args, "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(f"wsched: error: {inj}:1: ")


def test_sweep_varies_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--vary runs each profile under every combination of the values given, each run
    named and tabled by its settings, its baseline of the same settings; each run is
    its configuration's replay. Bad --vary values stop the sweep before it starts."""
    out = tmp_path / "s"
    args = ["sweep", "--trace", str(SWF150), "--ars", str(INJ), "--profiles", "novm-sr",
            "--out", str(out), "--jobs", "2", "--quiet", "--vary",
            "scheduling.backfilling=aggressive,off", "--vary", "site.nodes=100,144"]
    assert cli.main(args) == 0
    rows = read_results(out / "results.csv")
    labels = [f"novm-sr+backfilling={b}+nodes={n}" for b in ("aggressive", "off")
              for n in (100, 144)]
    assert list(rows) == [f"150requests__{a}__{label}" for label in labels
                          for a in ("none", "work_05-dur_1h-size_1small")]
    for label in labels:
        row = rows[f"150requests__work_05-dur_1h-size_1small__{label}"]
        base = rows[f"150requests__none__{label}"]
        assert row["profile"] == label
        assert f"novm-sr+backfilling={row['scheduling.backfilling']}+nodes=" \
            f"{row['site.nodes']}" == label  # a column per setting
        assert float(row["completion_ratio"]) == pytest.approx(
            int(row["besteffort_completion"]) / int(base["besteffort_completion"]))
    config = apply_toml(load_profile("novm-sr"),
                        {"scheduling": {"backfilling": "off"}, "site": {"nodes": 100}}, "")
    workload = experiments.load_workload(SWF150, INJ, config)
    summary = compute(replay(workload.site, config, workload.requests)).summary
    row = rows[f"150requests__work_05-dur_1h-size_1small__{labels[2]}"]
    assert int(row["besteffort_completion"]) == summary.besteffort_completion
    assert float(row["besteffort_wait_mean_all"]) == pytest.approx(
        summary.besteffort_wait_mean_all)
    assert len({r["besteffort_wait_mean_all"] for r in rows.values()}) > 2  # they differ
    # specs of different settings in one table: a column for each, empty where not set
    mixed = [experiments.RunSpec(SWF150, None, "novm-sr", (("site", "nodes", 100),)),
             experiments.RunSpec(SWF150, None, "novm-sr")]
    experiments.sweep(mixed, tmp_path / "mixed", jobs=1)
    table = read_results(tmp_path / "mixed" / "results.csv")
    assert [r["site.nodes"] for r in table.values()] == ["100", ""]

    for vary, error in (
            ("scheduling.backfilling=fast", "--vary: [scheduling] backfilling: bad value "
             "'fast' for backfilling: 'fast' is not a valid Backfilling (one of: off, "
             "aggressive, conservative, intermediate)"),
            ("backfilling=off", "--vary 'backfilling=off': expected SECTION.KEY=V1,V2,... "
             "(e.g. scheduling.backfilling=aggressive,conservative)"),
            ("scheduling.nope=1", "--vary: unknown key 'nope' in [scheduling] (known: "
             "admission, preemption, host-selection, backfilling, backfilling-reservations)"),
            ("site.nodes=8 --vary site.nodes=4", "--vary names a setting twice: give all "
             "its values in one (SECTION.KEY=V1,V2,...)")):
        capsys.readouterr()
        assert cli.main([*args[:8], str(tmp_path / "t"), "--vary", *vary.split()]) == 2
        assert capsys.readouterr().err == f"wsched: error: {error}\n"
        assert not (tmp_path / "t").exists()
    # a trace with its own site ignores the configuration's: varying it is a mistake
    migrate = SHARED / "lwf" / "migrate.lwf"
    assert cli.main(["sweep", "--trace", str(migrate), "--profiles", "test-transfer",
                     "--vary", "site.nodes=4,8", "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err == (
        f"wsched: error: {migrate}: the trace describes its own site, so --vary site.nodes "
        "would change nothing\n")
    assert list((tmp_path / "m" / "runs").iterdir()) == []


@pytest.mark.parametrize(("text", "parsed"), [
    ("scheduling.backfilling=aggressive, off", ("scheduling", "backfilling",
                                                ["aggressive", "off"])),
    ("site.nodes=100,144", ("site", "nodes", [100, 144])),
    ("enactment.runtime-slowdown=0,2.5", ("enactment", "runtime-slowdown", [0, 2.5])),
    ("suspension.enabled=true,false", ("suspension", "enabled", [True, False])),
    ('workload.image-mix="skewed"', ("workload", "image-mix", ["skewed"])),
])
def test_vary_values(text: str, parsed: tuple[str, str, list[Any]]) -> None:
    assert cli._variation(text) == parsed


def test_sweep_bad_profile_runs_nothing(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["sweep", "--trace", str(SWF150), "--profiles", "batch-easy,nope",
                     "--out", str(tmp_path / "s")])
    assert code == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    code = cli.main(["sweep", "--trace", str(SWF150), "--profiles", " , ",
                     "--out", str(tmp_path / "s")])
    assert (code, capsys.readouterr().err) == (
        2, "wsched: error: --profiles names no profile (got ' , ')\n")
    assert not (tmp_path / "s").exists()


def test_sweep_bad_injection_runs_nothing(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Every input file is read before any run starts: a bad line stops the sweep with
    its file and line."""
    bad = tmp_path / "work_10-dur_1h-size_1small.lwf"
    lines = INJ.read_text().splitlines()
    lines[4] = "0 19327 3518"
    bad.write_text("\n".join(lines) + "\n")
    code = cli.main(["sweep", "--trace", str(SWF150), "--ars", str(INJ), str(bad),
                     "--profiles", "novm-sr", "--out", str(tmp_path / "s"), "--quiet"])
    assert code == 2
    assert capsys.readouterr().err == f"wsched: error: {bad}:5: lease 680: expected 10 " \
        "columns, found 3\n"
    assert list((tmp_path / "s" / "runs").iterdir()) == []

    # two files of one name would be one run: which one is not for the sweep to guess
    same = tmp_path / INJ.name
    same.write_bytes(INJ.read_bytes())
    code = cli.main(["sweep", "--trace", str(SWF150), "--ars", str(INJ), str(same),
                     "--profiles", "novm-sr", "--out", str(tmp_path / "t"), "--quiet"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"wsched: error: {INJ} and {same} would write the same run "
        "150requests__work_05-dur_1h-size_1small__novm-sr: a sweep names its runs by the "
        "files' names, without their folders\n")
    assert not (tmp_path / "t").exists()


def test_sweep_keeps_the_runs_that_finish(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A run failing in its worker (its result cannot be written: a directory stands
    where its temporary file goes) fails alone: its error comes back whole (the pool
    survives it), the other runs are kept, and the next sweep runs only the failed one."""
    out = tmp_path / "s"
    blocked = out / "runs" / "150requests__work_05-dur_1h-size_1small__novm-sr.json.tmp"
    blocked.mkdir(parents=True)
    inj2 = SHARED / "lwf" / "inj2.lwf"
    args = ["sweep", "--trace", str(SWF150), "--ars", str(inj2), str(INJ), "--profiles",
            "novm-sr", "--out", str(out), "--jobs", "2", "--quiet"]
    message = (f"wsched: error: 1 of 3 runs failed (the others are kept), e.g. "
               f"150requests__work_05-dur_1h-size_1small__novm-sr: [Errno 21] "
               f"Is a directory: '{blocked}'\n")
    assert cli.main(args) == 2
    assert capsys.readouterr().err.endswith(message)
    runs = out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "150requests__inj2__novm-sr.json", "150requests__none__novm-sr.json", blocked.name]
    assert cli.main(args) == 2
    assert capsys.readouterr().err.endswith(message.replace("1 of 3", "1 of 1"))


def test_sweep_stops_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) stops the
    sweep at once: no run still to come starts, the workers are gone, the finished runs
    are kept, and the exit status is 130. (The pool's own exit used to wait for every
    run still to come.)"""
    ars = sorted((SHARED / "ar-injections-30days").glob("work_2*.lwf"))[:12]
    out = tmp_path / "s"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "sweep", "--trace", str(SWF30), "--ars",
         *map(str, ars), "--profiles", "novm-sr", "--out", str(out), "--jobs", "2"],
        cwd=Path(__file__).resolve().parents[1], start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # (a shell's background job ignores SIGINT, and its children inherit that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while not (out / "runs").is_dir() or not any((out / "runs").glob("*.json")):
            assert sweep.poll() is None, sweep.communicate()
            time.sleep(0.05)
        os.killpg(sweep.pid, signal.SIGINT)
        _, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    finished = len(list((out / "runs").glob("*.json")))
    assert sweep.returncode == 130
    assert err.endswith(f"wsched: interrupted: {finished} of 13 runs finished (in "
                        f"{out / 'runs'}); the same command resumes the sweep\n")
    assert 1 <= finished <= 4  # (2 workers: at most the runs under way could finish)
    assert _live_in_group(sweep.pid) == []  # no worker left behind


def _live_in_group(pgid: int) -> list[int]:
    """Processes of a process group that are still running (not zombies)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # (gone meanwhile)
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def test_generate_ars_is_deterministic(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.lwf" for i in range(3)]
    for path, seed in zip(paths, (7, 7, 8), strict=True):
        assert cli.main(["generate-ars", str(SWF150), "--rho", "0.1", "--delta", "2",
                         "--nu", "medium", "--seed", str(seed), "--out", str(path)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()
    ars = read_lwf(paths[0], default_site=Site.uniform(144, NODE)).requests
    assert ars and all(r.kind is LeaseKind.AR and 25 <= r.vms <= 48 for r in ars)
    assert all(r.start is not None and r.start - r.submit <= 24 * 3600 for r in ars)


def test_generate_ars_for_lwf_traces_and_node_ranges(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An LWF trace gives the span, the ids to start above and the site's node count,
    the basis of rho (migrate.lwf: 4 nodes, one day); --nodes gives it for a trace
    without a site. --nu takes a range; one beyond the site is an error."""
    out = tmp_path / "g.lwf"
    migrate = SHARED / "lwf" / "migrate.lwf"
    assert cli.main(["generate-ars", str(migrate), "--rho", "0.1", "--delta", "1", "--nu",
                     "1-2", "--out", str(out)]) == 0
    ars = read_lwf(out, default_site=Site.uniform(4, NODE)).requests
    assert "rho 0.1 of 345600 node-seconds over a span of 86400 s;" in out.read_text()
    assert [r.id for r in ars] == list(range(4, 4 + len(ars)))  # migrate.lwf: ids 1-3
    assert all(1 <= r.vms <= 2 for r in ars)
    assert experiments.injection_parameters(out) == {"rho": 10, "delta": 1, "nu": "1-2"}
    assert sum(r.vms * r.duration for r in ars) == pytest.approx(34560, rel=0.01)

    no_site = SHARED / "lwf" / "withprematureend.lwf"
    args = ["generate-ars", str(no_site), "--rho", "0.1", "--delta", "1", "--nu", "2-3",
            "--out", str(out)]
    out.unlink()
    assert cli.main(args) == 2
    assert capsys.readouterr().err == (
        f"wsched: error: {no_site}: the trace describes no site: give --nodes, the node "
        "count whose capacity rho is a share of\n")
    assert not out.exists()
    assert cli.main([*args, "--nodes", "4"]) == 0
    assert min(r.id for r in read_lwf(out, default_site=Site.uniform(4, NODE)).requests) == 140

    for nu, error in (("3-5", "--nu 3-5: ARs of up to 5 nodes on a site of 4 would be "
                              "rejected"),
                      ("medium", "--nu medium: ARs of up to 48 nodes on a site of 4 would "
                                 "be rejected"),
                      ("0-2", "nodes per AR '0-2': expected small, medium, large or a range "
                              "LOW-HIGH with 1 <= LOW <= HIGH, e.g. 10-20")):
        assert cli.main([*args[:7], nu, *args[8:], "--nodes", "4"]) == 2
        assert capsys.readouterr().err == f"wsched: error: {error}\n"


# ------------------------------------------------------- preparing archive logs

@pytest.mark.parametrize(("args", "shared"), [
    (["--days", "30"], "30days"), (["--days", "15"], "15days"), (["--first", "1000"],
                                                                 "1000requests")])
def test_prepare_swf_reproduces_the_shared_cuts(tmp_path: Path, args: list[str],
                                                shared: str) -> None:
    """The shared traces are cuts of one prepared log: the 60-day file cut again gives
    each shorter one, job for job."""
    out = tmp_path / "cut.swf"
    source = SHARED / "swf" / "60days.swf"
    assert cli.main(["prepare-swf", str(source), *args, "--out", str(out)]) == 0
    jobs = [line for line in out.read_text().splitlines() if not line.startswith(";")]
    assert jobs == (SHARED / "swf" / f"{shared}.swf").read_text().splitlines()


def test_prepare_swf_from_an_archive_log(tmp_path: Path) -> None:
    """Queues kept, submit times rebased on the first kept job, processors made nodes
    (rounded up; unknown stays unknown), the first day kept; the header carried over."""
    def job(i: int, submit: int, procs: int, queue: int, status: int = 1) -> str:
        return (f"{i} {submit} 5 100 {procs} 1.0 -1 {procs} 600 -1 {status} 3 -1 -1 {queue}"
                " -1 -1 -1")

    raw = tmp_path / "archive.swf.gz"
    raw.write_bytes(gzip.compress("\n".join([
        "; Version: 2.2", "; Computer: test machine", "; MaxProcs: 64",
        job(1, 1000, 8, 0),            # queue 0: dropped
        job(2, 1500, 16, 1),           # the first kept job: submit 0
        job(3, 1600, 12, 2, status=5),  # 12 processors: 2 nodes; cancelled, kept
        job(4, 2000, -1, 3),           # unknown processors stay unknown
        job(5, 1500 + 86399, 8, 4),    # last second of the first day
        job(6, 1500 + 86400, 8, 4),    # the second day: cut
    ]).encode()))
    out = tmp_path / "prepared.swf"
    assert cli.main(["prepare-swf", str(raw), "--queues", "1,2,3,4", "--procs-per-node",
                     "8", "--days", "1", "--out", str(out)]) == 0
    assert out.read_text().splitlines() == [
        "; Version: 2.2", "; Computer: test machine", "; MaxProcs: 64",
        "; Note: prepared by wsched prepare-swf from archive.swf.gz",
        "; Note: only queues 1, 2, 3, 4",
        "; Note: submit times relative to the first job kept",
        "; Note: field 8 (requested processors) divided by 8, rounded up: requested nodes",
        "; Note: jobs submitted in the first 1 days",
        "; Note: written by wsched (scheduler.swf.write_swf)",
        "2 0 5 100 16 1.0 -1 2 600 -1 1 3 -1 -1 1 -1 -1 -1",
        "3 100 5 100 12 1.0 -1 2 600 -1 5 3 -1 -1 2 -1 -1 -1",
        "4 500 5 100 -1 1.0 -1 -1 600 -1 1 3 -1 -1 3 -1 -1 -1",
        "5 86399 5 100 8 1.0 -1 1 600 -1 1 3 -1 -1 4 -1 -1 -1",
    ]
    assert [r.vms for r in read_swf(out).requests] == [2, 1]  # (3 cancelled, 4 no nodes)


def test_prepare_swf_bad_queue_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    log_ = tmp_path / "log.swf"
    log_.write_text("1 0 5 100 8 1.0 -1 8 600 -1 1 3 -1 -1 2.5 -1 -1 -1\n")
    assert cli.main(["prepare-swf", str(log_), "--queues", "2", "--out",
                     str(tmp_path / "o.swf")]) == 2
    assert capsys.readouterr().err == (f"wsched: error: {log_}:1: lease 1: field 15 (queue) "
                                       "is not an integer: '2.5'\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--queues", "1,x"], "--queues: expected queue numbers separated by commas (got '1,x')"),
    (["--days", "0"], "--days must be positive (got 0)"),
    (["--first", "0"], "--first must be at least 1 (got 0)"),
    (["--procs-per-node", "0"], "--procs-per-node must be at least 1 (got 0)"),
    (["--queues", "9"], f"{SWF150}: no job left to write (queues are field 15 of a job)"),
])
def test_prepare_swf_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 args: list[str], message: str) -> None:
    out = tmp_path / "o.swf"
    assert cli.main(["prepare-swf", str(SWF150), *args, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"wsched: error: {message}\n"
    assert not out.exists()
