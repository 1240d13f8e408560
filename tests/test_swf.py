"""Tests for the SWF reader and writer (scheduler/swf.py)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.leases import DiskImage, LeaseKind, LeaseRequest, Resources
from scheduler.lwf import TraceError
from scheduler.swf import SkipReason, SwfJob, read_swf, write_swf

SWF_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "swf"
NODE = Resources(cpu=100, memory=1024)
IMG = DiskImage("swf", 0)


def swf_line(job: int, submit: int, run: int, nodes: int, requested: int, status: int = 1,
             wait: int = 7) -> str:
    """An 18-field SWF line; unused fields are -1 except allocated procs and CPU time."""
    return (f"{job} {submit} {wait} {run} {nodes * 8} 0.03 -1 {nodes} {requested} -1 {status}"
            " 96 -1 -1 3 -1 -1 -1")


def write(tmp_path: Path, *lines: str, name: str = "t.swf") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def besteffort(id: int, submit: int, vms: int, duration: int, real: int,
               preemptible: bool = True) -> LeaseRequest:
    return LeaseRequest(id=id, kind=LeaseKind.BESTEFFORT, vms=vms, resources=NODE, image=IMG,
                        duration=duration, submit=submit, real_duration=real,
                        preemptible=preemptible)


# --- mapping jobs to leases


def test_mapping(tmp_path: Path) -> None:
    path = write(tmp_path,
                 "; Computer: test",
                 swf_line(1, 0, 43, 4, 64800),       # ends early: real 43 < requested
                 swf_line(2, 10, 9000, 2, 3600),     # overran: real capped at 3600
                 swf_line(3, 10, 0, 1, 600),         # run 0 (< 0.5 s) becomes 1 s
                 swf_line(4, 20, 500, 3, -1),        # no requested time: run time stands in
                 swf_line(5, 30, 700, 1, 0),         # requested 0 likewise
                 swf_line(6, 40, 800, 5, 900, status=5))  # cancelled after 800 s
    trace = read_swf(path, keep_started_cancelled=True)
    assert trace.header == ("Computer: test",)
    assert trace.requests == (
        besteffort(1, 0, 4, 64800, 43),
        besteffort(2, 10, 2, 3600, 3600),
        besteffort(3, 10, 1, 600, 1),
        besteffort(4, 20, 3, 500, 500),
        besteffort(5, 30, 1, 700, 700),
        besteffort(6, 40, 5, 900, 800),
    )
    assert [j.id for j in trace.jobs] == [1, 2, 3, 4, 5, 6]
    assert trace.jobs[0].line == 2
    assert trace.skipped == ()
    assert trace.max_id == 6


def test_options(tmp_path: Path) -> None:
    path = write(tmp_path, swf_line(7, 5, 100, 9, 200))
    node = Resources(cpu=200, memory=2048)
    image = DiskImage("img", 600)
    # field 5 holds 9 * 8 = 72 processors; at 16 per node that is ceil(72 / 16) = 5 VMs
    trace = read_swf(path, nodes_field=5, procs_per_node=16, node=node, image=image,
                     preemptible=False)
    assert trace.requests == (LeaseRequest(
        id=7, kind=LeaseKind.BESTEFFORT, vms=5, resources=node, image=image, duration=200,
        submit=5, real_duration=100, preemptible=False),)
    # ceil(9 / 2) = 5 VMs from field 8
    assert read_swf(path, procs_per_node=2).requests[0].vms == 5


def test_bad_options(tmp_path: Path) -> None:
    path = write(tmp_path, swf_line(1, 0, 1, 1, 1))
    with pytest.raises(ValueError, match=r"nodes_field must be a field number 1\.\.18"):
        read_swf(path, nodes_field=19)
    with pytest.raises(ValueError, match="procs_per_node must be at least 1"):
        read_swf(path, procs_per_node=0)


def test_skips(tmp_path: Path) -> None:
    path = write(tmp_path,
                 swf_line(1, 0, -1, 4, 600, status=5),   # cancelled in the queue
                 swf_line(2, 1, 300, 4, 600, status=5),  # cancelled after starting
                 swf_line(3, 2, -1, 4, 600, status=1),   # no run time
                 swf_line(4, 3, 100, 0, 600),            # no nodes
                 swf_line(5, 4, 100, -1, 600),           # nodes unknown
                 swf_line(6, 5, 100, 1, 600))
    trace = read_swf(path)
    assert [r.id for r in trace.requests] == [6]
    assert [(s.job.id, s.reason) for s in trace.skipped] == [
        (1, SkipReason.CANCELLED), (2, SkipReason.CANCELLED),
        (3, SkipReason.UNKNOWN_RUN_TIME), (4, SkipReason.NO_NODES), (5, SkipReason.NO_NODES)]
    assert trace.skip_counts == {SkipReason.CANCELLED: 2, SkipReason.UNKNOWN_RUN_TIME: 1,
                                 SkipReason.NO_NODES: 2}
    assert trace.max_id == 6
    lenient = read_swf(path, keep_started_cancelled=True)
    assert [r.id for r in lenient.requests] == [2, 6]
    assert lenient.skip_counts[SkipReason.CANCELLED] == 1


def test_blank_lines_and_comments_anywhere(tmp_path: Path) -> None:
    path = write(tmp_path, "", "  ; a note", swf_line(1, 0, 5, 1, 10), "   ",
                 swf_line(2, 0, 5, 1, 10))
    trace = read_swf(path)
    assert [r.id for r in trace.requests] == [1, 2]
    assert trace.header == ("a note",)


# --- bad input: every message names the file and the line


@pytest.mark.parametrize(("line", "message"), [
    ("1 0 0 43 32", "expected 18 fields, found 5"),
    (swf_line(1, 0, 43, 4, 600).replace("0.03", "abc"), "field 6 is not a number: 'abc'"),
    (swf_line(1, 0, 43, 4, 600).replace(" 43 ", " 43.5 "), "field 4 is not an integer: '43.5'"),
    (swf_line(1, 0, 43, 4, 600).replace(" 600 ", " 6e2 "), "field 9 is not a number: '6e2'"),
    (swf_line(0, 0, 43, 4, 600), "job id must be at least 1 (got 0)"),
    (swf_line(2, -5, 43, 4, 600), "lease 2: negative submit time -5 s"),
])
def test_bad_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "; header", swf_line(9, 0, 1, 1, 1), line)
    with pytest.raises(TraceError) as info:
        read_swf(path)
    assert str(info.value) == f"{path}:3: {message}"
    assert (info.value.path, info.value.line) == (str(path), 3)


def test_submit_going_backwards(tmp_path: Path) -> None:
    path = write(tmp_path, swf_line(1, 100, 1, 1, 1), swf_line(2, 99, 1, 1, 1))
    with pytest.raises(TraceError) as info:
        read_swf(path)
    assert str(info.value) == (f"{path}:2: lease 2: submit time 99 s is earlier than the "
                               "previous job's (100 s); SWF jobs are in submit order")


def test_duplicate_id(tmp_path: Path) -> None:
    path = write(tmp_path, swf_line(1, 0, 1, 1, 1), swf_line(2, 0, 1, 1, 1),
                 swf_line(1, 0, 1, 1, 1))
    with pytest.raises(TraceError) as info:
        read_swf(path)
    assert str(info.value) == f"{path}:3: lease 1: duplicate job id 1 (first used on line 1)"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none.swf"
    with pytest.raises(TraceError) as info:
        read_swf(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


# --- compressed logs (the Parallel Workloads Archive ships *.swf.gz)

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_log_reads_as_the_plain_one(tmp_path: Path, kind: str) -> None:
    plain = SWF_DIR / "150requests.swf"
    packed = tmp_path / f"150requests.swf.{kind}"
    packed.write_bytes(COMPRESSORS[kind](plain.read_bytes()))
    expected, got = read_swf(plain), read_swf(packed)
    assert (got.requests, got.jobs, got.skipped, got.header) == \
        (expected.requests, expected.jobs, expected.skipped, expected.header)
    assert len(got.requests) > 100
    # recognised by its first bytes, whatever its name says
    misnamed = tmp_path / "plain-looking.swf"
    misnamed.write_bytes(packed.read_bytes())
    assert read_swf(misnamed).requests == expected.requests


def test_compressed_log_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.swf.gz"
    path.write_bytes(gzip.compress(
        f"; header\n{swf_line(1, 0, 1, 1, 1)}\n1 0 0 43 32\n".encode()))
    with pytest.raises(TraceError) as info:
        read_swf(path)
    assert str(info.value) == f"{path}:3: expected 18 fields, found 5"


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_damaged_compressed_log(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"t.swf.{kind}"
    whole = COMPRESSORS[kind]((swf_line(1, 0, 1, 1, 1) + "\n").encode() * 50)
    path.write_bytes(whole[: len(whole) // 2])  # cut short, as by an interrupted download
    name = {"gz": "gzip", "bz2": "bzip2", "xz": "xz"}[kind]
    with pytest.raises(TraceError) as info:
        read_swf(path)
    assert str(info.value).startswith(f"{path}: damaged {name} data: ")
    assert info.value.line is None


# --- the shared Blue Horizon traces


def independent_counts(path: Path) -> tuple[int, int, int]:
    """(jobs, cancelled (status 5 or run time -1), node-seconds of the kept jobs), in plain
    Python."""
    jobs = cancelled = node_seconds = 0
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        f = line.split()
        jobs += 1
        if f[10] == "5" or f[3] == "-1":
            cancelled += 1
        else:
            node_seconds += int(f[7]) * max(1, min(int(f[3]), int(f[8])))
    return jobs, cancelled, node_seconds


def test_30days() -> None:
    path = SWF_DIR / "30days.swf"
    jobs, cancelled, node_seconds = independent_counts(path)
    assert (jobs, cancelled) == (5545, 1353)  # the shared README's 5,545 jobs
    trace = read_swf(path)
    assert len(trace.requests) == jobs - cancelled == 4192
    assert trace.skip_counts == {SkipReason.CANCELLED: cancelled}
    assert sum(r.vms * r.effective_real_duration for r in trace.requests) == node_seconds
    assert all(r.kind is LeaseKind.BESTEFFORT and r.preemptible for r in trace.requests)
    # first line: "13 0 22 43 32 0.03 -1 4 64800 ..." -> 4 nodes, 64800 s asked, 43 s run
    assert trace.requests[0] == besteffort(13, 0, 4, 64800, 43)
    assert trace.max_id == 8735


@pytest.mark.parametrize("name", ["150requests", "200requests", "600requests", "1000requests",
                                  "15days", "60days"])
def test_other_shared_traces(name: str) -> None:
    path = SWF_DIR / f"{name}.swf"
    jobs, cancelled, _ = independent_counts(path)
    trace = read_swf(path)
    assert len(trace.requests) + len(trace.skipped) == jobs
    assert len(trace.skipped) == cancelled


# --- writing


def test_write_wait_times(tmp_path: Path) -> None:
    source = write(tmp_path, "; Computer: test", swf_line(1, 0, 43, 4, 600),
                   swf_line(2, 10, 50, 1, 60), swf_line(3, 20, 50, 1, 60), name="in.swf")
    trace = read_swf(source)
    out = tmp_path / "out.swf"
    write_swf(out, trace.jobs, {1: 5, 2: None}, notes=["profile: test\nseed: 1"])
    lines = out.read_text().splitlines()
    assert lines[:5] == [
        "; Version: 2.2",
        "; Note: written by wsched (scheduler.swf.write_swf)",
        "; Note: field 3 (wait time) = scheduled start - submit time; -1 = never started",
        "; profile: test",
        "; seed: 1"]
    # job 1 starts at 5 s, submitted at 0: waits 5 s; jobs 2 and 3 never started
    assert lines[5:] == [swf_line(1, 0, 43, 4, 600, wait=5), swf_line(2, 10, 50, 1, 60, wait=-1),
                         swf_line(3, 20, 50, 1, 60, wait=-1)]
    again = read_swf(out)
    assert again.requests == trace.requests


def test_write_start_before_submit(tmp_path: Path) -> None:
    job = SwfJob(tuple(swf_line(4, 100, 1, 1, 1).split()))
    with pytest.raises(ValueError, match="job 4: start 99 s is before its submit time 100 s"):
        write_swf(tmp_path / "out.swf", [job], {4: 99})


def test_job_needs_18_fields() -> None:
    with pytest.raises(ValueError, match="an SWF job has 18 fields"):
        SwfJob(("1", "2"))


def test_30days_round_trip(tmp_path: Path) -> None:
    trace = read_swf(SWF_DIR / "30days.swf")
    out = tmp_path / "30days.out.swf"
    write_swf(out, trace.jobs, {r.id: r.submit + 3 for r in trace.requests})
    again = read_swf(out)
    assert again.requests == trace.requests
    assert all(j.int_field(3) == 3 for j in again.jobs)


jobs_strategy = st.lists(
    st.tuples(st.integers(0, 5000),                 # submit increment
              st.integers(-1, 100_000),             # run time
              st.integers(-1, 200),                 # nodes
              st.integers(-1, 100_000),             # requested time
              st.sampled_from([0, 1, 5])),          # status
    min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(jobs_strategy, st.data())
def test_round_trip_property(rows: list[tuple[int, int, int, int, int]],
                             data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        submit, lines = 0, []
        for job_id, (increment, run, nodes, requested, status) in enumerate(rows, 1):
            submit += increment
            lines.append(swf_line(job_id, submit, run, nodes, requested, status))
        trace = read_swf(write(Path(tmp), *lines))
        assert len(trace.requests) + len(trace.skipped) == len(rows)
        for r in trace.requests:
            assert r.real_duration is not None
            assert 1 <= r.effective_real_duration == r.real_duration <= r.duration
            assert r.vms >= 1
        starts = {r.id: data.draw(st.none() | st.integers(r.submit, r.submit + 10**6))
                  for r in trace.requests}
        out = Path(tmp) / "out.swf"
        write_swf(out, trace.jobs, starts)
        if not trace.jobs:  # every job skipped: nothing written back
            with pytest.raises(TraceError, match="no jobs"):
                read_swf(out)
            return
        again = read_swf(out)
        assert again.requests == trace.requests
        for job in again.jobs:
            start = starts[job.id]
            assert job.int_field(3) == (-1 if start is None else start - job.submit)


def test_vms_rounding_matches_ceil(tmp_path: Path) -> None:
    path = write(tmp_path, *(swf_line(n, 0, 1, n, 1) for n in range(1, 20)))
    trace = read_swf(path, procs_per_node=8)
    assert [r.vms for r in trace.requests] == [math.ceil(n / 8) for n in range(1, 20)]


@pytest.mark.parametrize("text", ["", "; a header alone\n;\n", "\n\n"])
def test_no_jobs_is_an_error(tmp_path: Path, text: str) -> None:
    """A log with no job (cut to nothing, or the wrong file) would replay nothing."""
    path = tmp_path / "t.swf"
    path.write_text(text)
    with pytest.raises(TraceError, match=re.escape(
            f"{path}: no jobs: an SWF file lists one job per line, 18 fields (lines "
            "starting with ';' are comments)")):
        read_swf(path)
