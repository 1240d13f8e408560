"""Tests for the command-line interface (scheduler/cli.py), in-process and as a subprocess."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler import cli, plots
from scheduler.config import load_config, load_profile, profile_names

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces" / "lwf"
TRACES = SHARED.parent
PREEMPTION = SHARED / "preemption.lwf"
NO_SITE = SHARED / "withprematureend.lwf"  # neither trace has a <site>
NO_SITE_2 = SHARED / "withoutprematureend.lwf"
SITE_TOML = "[site]\nnodes = 4\ncpu = 100\nmemory = 1024\n"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures the root logger; undo it so other tests are unaffected."""
    root = logging.getLogger()
    level = root.level
    yield
    if cli._handler is not None:
        root.removeHandler(cli._handler)
        cli._handler = None
    root.setLevel(level)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(*argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *map(str, argv)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def leases(path: Path) -> dict[int, dict[str, Any]]:
    return {lease["id"]: lease for lease in json.loads(path.read_text())["leases"]}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def lwf(duration: str = "01:00:00", memory: int = 1024, start: str = "<start/>",
        arrival: str = "00:00:00") -> str:
    """A one-lease trace on four 100-CPU, 1024-MB nodes; the lease is on line 12."""
    return f"""<?xml version="1.0"?>
<lease-workload name="t">
  <site>
    <resource-types names="CPU Memory"/>
    <nodes>
      <node-set numnodes="4"><res type="CPU" amount="100"/><res type="Memory" amount="1024"/>
      </node-set>
    </nodes>
  </site>
  <lease-requests>
    <lease-request arrival="{arrival}">
      <lease id="1" preemptible="true">
        <nodes><node-set numnodes="1">
          <res type="CPU" amount="100"/><res type="Memory" amount="{memory}"/>
        </node-set></nodes>
        {start}
        <duration time="{duration}"/>
        <software><disk-image id="a.img" size="1024"/></software>
      </lease>
    </lease-request>
  </lease-requests>
</lease-workload>
"""


# --- successful replays


def test_replay_preemption(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    code, out, err = run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer",
                         "--json", out_json)
    assert (code, err) == (0, "")
    got = leases(out_json)
    ar = got[2]
    assert (ar["kind"], ar["start"], ar["end"]) == ("ar", 1800, 3600)
    assert ar["nodes"] == ["P1", "P2", "P3", "P4"]
    assert [e["kind"] for e in got[1]["events"]] == [
        "boot", "run", "suspend", "resume", "run", "shutdown"]
    assert json.loads(out_json.read_text())["summary"]["suspensions"] == 1
    # the human summary
    assert "2 leases (done 2)" in out
    for word in ("makespan", "utilization", "transfers", "suspensions", "migrations"):
        assert word in out
    assert "suspensions  1" in out
    assert str(out_json) in out


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    assert run(capsys, "replay", PREEMPTION, "--json", out_json, "--quiet") == (0, "", "")
    assert set(leases(out_json)) == {1, 2}


def test_config_overrides_profile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base, over = tmp_path / "base.json", tmp_path / "over.json"
    toml = write(tmp_path / "c.toml", "[enactment]\noverhead = 0\n")
    assert run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer", "--json", base)[0] == 0
    assert run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer", "--config", toml,
               "--json", over)[0] == 0
    first_run = next(e for e in leases(base)[1]["events"] if e["kind"] == "run")
    assert first_run["start"] == 2  # the profile's 2 s enactment overhead
    first_run = next(e for e in leases(over)[1]["events"] if e["kind"] == "run")
    assert first_run["start"] == 0
    # the rest of the profile still applies: lease 1 is suspended, not killed
    assert "suspend" in [e["kind"] for e in leases(over)[1]["events"]]


def test_config_names_its_profile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A configuration file may say which profile it starts from (profile = "NAME", as
    a site file does): the same as --profile NAME with it; naming another profile with
    --profile as well is an error."""
    named, given = tmp_path / "named.json", tmp_path / "given.json"
    over = "[enactment]\noverhead = 0\n"
    toml = write(tmp_path / "c.toml", f'profile = "novm-nosr"\n{over}')
    assert run(capsys, "replay", PREEMPTION, "--config", toml, "--json", named)[0] == 0
    plain = write(tmp_path / "p.toml", over)
    assert run(capsys, "replay", PREEMPTION, "--profile", "novm-nosr", "--config",
               plain, "--json", given)[0] == 0
    assert leases(named) == leases(given)
    # the profile's: lease 1 is killed and starts over (the defaults would suspend it)
    assert [e["kind"] for e in leases(named)[1]["events"]] == ["boot", "run", "shutdown"] * 2
    assert run(capsys, "replay", PREEMPTION, "--config", plain, "--json", given)[0] == 0
    assert "suspend" in [e["kind"] for e in leases(given)[1]["events"]]
    # the same profile twice is no conflict
    assert run(capsys, "replay", PREEMPTION, "--profile", "novm-nosr", "--config",
               toml, "--json", tmp_path / "o.json")[0] == 0
    code, out, err = run(capsys, "replay", PREEMPTION, "--profile", "vm-mult", "--config",
                         toml, "--json", tmp_path / "o.json")
    assert_error(code, out, err, str(toml), "starts from profile 'novm-nosr', but "
                 "another profile was given too: name one")


def test_set_overrides_one_setting(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--set SECTION.KEY=VALUE is a one-line --config (over it, when both are given)."""
    by_set, by_file = tmp_path / "set.json", tmp_path / "file.json"
    assert run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer", "--set",
               "enactment.overhead=0", "--json", by_set)[0] == 0
    toml = write(tmp_path / "c.toml", "[enactment]\noverhead = 0\n")
    assert run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer", "--config", toml,
               "--json", by_file)[0] == 0
    assert leases(by_set) == leases(by_file)
    assert next(e for e in leases(by_set)[1]["events"] if e["kind"] == "run")["start"] == 0
    assert run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer", "--config", toml,
               "--set", "enactment.overhead=2", "--json", by_set)[0] == 0
    assert next(e for e in leases(by_set)[1]["events"] if e["kind"] == "run")["start"] == 2
    for setting, message in (
            ("scheduling.backfilling=off,conservative", "--set 'scheduling.backfilling=off,"
             "conservative': one value (a sweep's --vary takes several)"),
            ("backfilling=off", "--set 'backfilling=off': expected SECTION.KEY=VALUE (e.g. "
             "scheduling.backfilling=conservative)"),
            ("enactment.overhead=-1", "--set: [enactment] overhead: bad value -1")):
        code, out, err = run(capsys, "replay", PREEMPTION, "--set", setting, "--json",
                             tmp_path / "o.json")
        assert_error(code, out, err, message)


def test_site_from_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    code, out, err = run(capsys, "replay", NO_SITE, "--json", out_json)
    assert code == 2 and out == ""
    assert err.startswith(f"wsched: error: {NO_SITE}: ")
    assert "no site" in err and "[site]" in err and err.count("\n") == 1
    assert not out_json.exists()

    # (withprematureend.lwf itself: see test_subprocess_site_from_config)
    toml = write(tmp_path / "site.toml", SITE_TOML)
    code, out, err = run(capsys, "replay", NO_SITE_2, "--profile", "test-notransfer",
                         "--config", toml, "--json", out_json)
    assert (code, err) == (0, "")
    assert "139 leases (done 139)" in out
    got = leases(out_json)
    assert {n for lease in got.values() for n in lease["nodes"]} == {"P1", "P2", "P3", "P4"}


def test_profiles(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Each profile with what it models (its file's opening comment); --show prints one
    whole, a configuration file that gives that profile."""
    code, out, err = run(capsys, "profiles")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == profile_names()
    assert "test-transfer-reuse  As test-transfer, plus a 20,480 MB image cache on every " \
        "node." in lines
    assert "vm-reuse-skewed      HPDC 2008 \"VMs, image reuse, skewed\": as vm-reuse-uniform, " \
        "but 7 images are each chosen 10% of the time and the other 30 each 1%." in lines
    code, out, err = run(capsys, "profiles", "--show", "vm-reuse-skewed")
    assert (code, err) == (0, "")
    shown = write(tmp_path / "shown.toml", out)
    assert load_config(shown) == load_profile("vm-reuse-skewed")
    code, out, err = run(capsys, "profiles", "--show", "nope")
    assert_error(code, out, err, "unknown profile 'nope'")


def test_log_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer",
                       "--json", tmp_path / "o.json", "--quiet", "--log-json",
                       "--log-level", "info")
    assert code == 0
    records = [json.loads(line) for line in err.splitlines()]
    assert records
    for r in records:
        assert {"time", "level", "logger", "message"} <= set(r)
    preempted = [r for r in records if r["message"] == "lease preempted"]
    assert preempted and preempted[0]["lease"] == 1 and preempted[0]["level"] == "INFO"


def test_log_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer",
                       "--json", tmp_path / "o.json", "--quiet", "--log-level", "INFO")
    assert code == 0
    assert "INFO scheduler.core: lease preempted lease=1 suspend_at=1764\n" in err


def test_default_log_level_is_quiet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "replay", PREEMPTION, "--profile", "test-notransfer",
                       "--json", tmp_path / "o.json", "--quiet")
    assert (code, err) == (0, "")


def test_progress_bar(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "PROGRESS_THRESHOLD", 1)
    out_json = tmp_path / "o.json"
    code, _, err = run(capsys, "replay", PREEMPTION, "--json", out_json)  # stderr not a TTY
    assert (code, err) == (0, "")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run(capsys, "replay", PREEMPTION, "--json", out_json)
    assert code == 0 and "2/2" in err
    code, _, err = run(capsys, "replay", PREEMPTION, "--json", out_json, "--quiet")
    assert (code, err) == (0, "")


# --- bad input: exit 2, one line naming the file, never a traceback


def assert_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("wsched: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


BAD_TRACES = {
    "malformed": ("<lease-workload>\n  <lease-requests>\n</lease-workload>\n", ":3: ",
                  "not well-formed XML"),
    "too-much-memory": (lwf(memory=4096), ":12: lease 1: ", "memory 4096 MB"),
    "negative-duration": (lwf(duration="-00:10:00"), ":12: lease 1: ", "duration must be positive"),
    "ar-in-the-past": (lwf(start='<start><exact time="00:10:00"/></start>', arrival="00:20:00"),
                       ":12: lease 1: ", "in the past"),
}


@pytest.mark.parametrize("name", BAD_TRACES)
def test_bad_trace(name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text, where, what = BAD_TRACES[name]
    trace = write(tmp_path / f"{name}.lwf", text)
    out_json = tmp_path / "o.json"
    code, out, err = run(capsys, "replay", trace, "--json", out_json)
    assert_error(code, out, err, f"{trace}{where}", what)
    assert not out_json.exists()


BAD_CONFIGS = {
    "bad-toml": ("[enactment\noverhead = 0\n", "not valid TOML"),
    "unknown-key": ("[enactment]\noverheads = 3\n", "unknown key 'overheads' in [enactment]"),
    "bad-value": ('[images]\ntransfer-mode = "broadcast"\n', "transfer-mode"),
    "swf-field": ("[swf]\nnodes-field = 19\n", "[swf] nodes-field must be 1 to 18 (got 19)"),
    "swf-procs": ("[swf]\nprocs-per-node = 0\n", "[swf] procs-per-node must be at least 1 (got 0)"),
    "profile-type": ("profile = 3\n", "profile must be a string (a built-in profile's name)"),
    "profile-name": ('profile = "nope"\n', "unknown profile 'nope'"),
    "top-level": ("overhead = 3\n", "[overhead] must be a table"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_config(name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text, what = BAD_CONFIGS[name]
    toml = write(tmp_path / f"{name}.toml", text)
    code, out, err = run(capsys, "replay", PREEMPTION, "--config", toml,
                         "--json", tmp_path / "o.json")
    assert_error(code, out, err, str(toml), what)


def test_unknown_profile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "replay", PREEMPTION, "--profile", "nope",
                         "--json", tmp_path / "o.json")
    assert_error(code, out, err, "unknown profile 'nope'", "test-notransfer")


def test_missing_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.lwf"
    code, out, err = run(capsys, "replay", missing, "--json", tmp_path / "o.json")
    assert_error(code, out, err, str(missing), "cannot read")
    toml = tmp_path / "missing.toml"
    code, out, err = run(capsys, "replay", PREEMPTION, "--config", toml,
                         "--json", tmp_path / "o.json")
    assert_error(code, out, err, str(toml), "cannot read")


def test_unwritable_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "no-such-dir" / "o.json"
    code, out, err = run(capsys, "replay", PREEMPTION, "--json", out_json)
    assert_error(code, out, err, str(out_json))
    directory = tmp_path / "a-directory.json"
    directory.mkdir()
    code, out, err = run(capsys, "replay", PREEMPTION, "--json", directory)
    assert_error(code, out, err, str(directory))


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["replay", str(PREEMPTION)], ["replay", str(PREEMPTION), "--json", "o.json",
                                                  "--log-level", "loud"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert "usage: wsched" in capsys.readouterr().err


# --- as a real process


def test_subprocess_replay(tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    proc = run_subprocess("replay", PREEMPTION, "--profile", "test-notransfer",
                          "--json", out_json)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "2 leases (done 2)" in proc.stdout and str(out_json) in proc.stdout
    ar = leases(out_json)[2]
    assert (ar["start"], ar["end"], ar["nodes"]) == (1800, 3600, ["P1", "P2", "P3", "P4"])


def test_subprocess_error(tmp_path: Path) -> None:
    trace = write(tmp_path / "bad.lwf", lwf(duration="-00:10:00"))
    proc = run_subprocess("replay", trace, "--json", tmp_path / "o.json")
    assert_error(proc.returncode, proc.stdout, proc.stderr, f"{trace}:12: lease 1: ")


def test_subprocess_site_from_config(tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    proc = run_subprocess("replay", NO_SITE, "--profile", "test-notransfer", "--config",
                          write(tmp_path / "site.toml", SITE_TOML), "--json", out_json,
                          timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "139 leases (done 139)" in proc.stdout
    assert len(leases(out_json)) == 139


def test_subprocess_log_json(tmp_path: Path) -> None:
    proc = run_subprocess("replay", NO_SITE_2, "--config", write(tmp_path / "s.toml", SITE_TOML),
                          "--json", tmp_path / "o.json", "--quiet", "--log-json",
                          "--log-level", "DEBUG")
    assert (proc.returncode, proc.stdout) == (0, "")
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert any(r["logger"] == "scheduler.cli" and r["message"] == "trace loaded"
               and r["requests"] == 139 for r in records)


def test_entry_point_profiles() -> None:
    wsched = Path(sys.executable).with_name("wsched")
    if not wsched.exists():
        pytest.skip("the wsched console script is not installed next to the interpreter")
    proc = subprocess.run([wsched, "profiles", "--names"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        "batch-conservative", "batch-easy", "novm-nosr", "novm-sr", "test-notransfer",
        "test-transfer", "test-transfer-reuse", "vm-mult", "vm-predeploy", "vm-reuse-skewed",
        "vm-reuse-uniform"]


TWO_TRACES = ("trace,profile,ars,rho,delta,nu,completion_ratio\n"
              "a.swf,p,x.lwf,5,1,small,1.5\nb.swf.gz,p,x.lwf,5,1,small,1.1\n")


@pytest.mark.parametrize(("table", "message", "args"), [
    ("profile,rho\np,5\n", "t.csv: no column delta, nu, completion_ratio (a sweep's "
     "results.csv has them)", []),
    ("profile,ars,rho,delta,nu,completion_ratio\np,none,0,,,1.0\np,a.lwf,5,1,small,1.01\n"
     "p,b.lwf,five,1,small,1.02\n",
     "t.csv, line 4: could not convert string to float: 'five' (rho, delta and "
     "completion_ratio must be numbers)", []),
    ("profile,ars,rho,delta,nu,completion_ratio\np,none,0,,,1.0\np,a.lwf,5,1,small,\n",
     "t.csv: no runs with AR injections, their rho, delta and nu, and a value of "
     "completion_ratio (rho, delta and nu come from injection files named as "
     "work_10-dur_2h-size_2medium.lwf, or written by wsched generate-ars)", []),
    ("profile,ars,rho,delta,nu,completion_ratio\np,a.lwf,5,1,small,1.01\n",
     "t.csv: no column besteffort_wait_mean_all (a sweep's results.csv has them)",
     ["--metric", "besteffort_wait_mean_all"]),
    (TWO_TRACES, "t.csv: runs of 2 traces (a.swf, b.swf.gz): draw one with --trace NAME (a "
     "figure averages the runs of each point, which would mix them)", []),
    (TWO_TRACES, "t.csv: no runs of trace 'c' to draw (it has: a.swf, b.swf.gz)",
     ["--trace", "c"]),
])
def test_plot_bad_table(table: str, message: str, args: list[str],
                        capsys: pytest.CaptureFixture[str], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("t.csv").write_text(table)
    code, out, err = run(capsys, "plot", "t.csv", "--out", "f.png", *args)
    assert (code, out, err) == (2, "", f"wsched: error: {message}\n")
    assert not Path("f.png").exists()


def test_plot_one_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A table of several traces draws one of them, named with or without suffixes."""
    table = tmp_path / "t.csv"
    table.write_text(TWO_TRACES)
    for name, ratio in (("a", 1.5), ("a.swf", 1.5), ("b.swf.gz", 1.1), ("b", 1.1)):
        assert cli.sweep_rows(table, trace=name) == [
            plots.SweepRow("p", 5, 1, "small", ratio)]
    assert run(capsys, "plot", table, "--out", tmp_path / "f.svg", "--trace", "a") == (
        0, "", "")
    assert (tmp_path / "f.svg").read_text().startswith("<?xml")


def test_plot_averages_over_a_varied_setting(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    """--average SECTION.KEY takes a --vary setting out of the profiles' names: the
    figure averages its values (image seeds 1 and 10 here, not mistaken for each other)."""
    table = write(tmp_path / "t.csv", (
        "profile,workload.image-seed,ars,rho,delta,nu,completion_ratio\n"
        "p+image-seed=1+nodes=4,1,x.lwf,5,1,small,1.2\n"
        "p+image-seed=10+nodes=4,10,x.lwf,5,1,small,1.4\n"))
    assert cli.sweep_rows(table, average="workload.image-seed") == [
        plots.SweepRow("p+nodes=4", 5, 1, "small", 1.2),
        plots.SweepRow("p+nodes=4", 5, 1, "small", 1.4)]
    assert [r.profile for r in cli.sweep_rows(table)] == ["p+image-seed=1+nodes=4",
                                                          "p+image-seed=10+nodes=4"]
    fig = plots.sweep_figure_of(cli.sweep_rows(table, average="workload.image-seed"))
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid()]
    assert line.get_ydata().tolist() == [pytest.approx(1.3)]  # type: ignore[union-attr]
    figure = tmp_path / "f.svg"
    assert run(capsys, "plot", table, "--out", figure, "--average", "workload.image-seed") \
        == (0, "", "")
    assert "Best-effort completion time with ARs, averaged over workload.image-seed" in \
        figure.read_text()
    code, out, err = run(capsys, "plot", table, "--out", tmp_path / "f.png",
                         "--average", "workload.image-mix")
    assert_error(code, out, err, "no column workload.image-mix to average over (a sweep has "
                 "one for each setting it varies with --vary)")


def test_plot_metric(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    figure = tmp_path / "f.svg"
    code, _, _ = run(capsys, "plot", ROOT / "docs" / "sweep-30days.csv", "--out", figure,
                     "--metric", "besteffort_bsld_mean_skip5pct")
    assert code == 0
    assert "mean bounded slowdown, first 5 % skipped" in figure.read_text()


def test_ctrl_c_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C during a replay ends it with one line and status 130, writing nothing."""
    out = tmp_path / "r.json"
    replay = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "replay", str(TRACES / "swf" / "30days.swf"),
         "--ars", str(TRACES / "ar-injections-30days" / "work_30-dur_1h-size_1small.lwf"),
         "--profile", "vm-mult", "--json", str(out), "--log-level", "info"],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # (a shell's background job ignores SIGINT, and its children inherit that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert replay.stderr is not None
        for line in replay.stderr:  # interrupted once it replays (the trace is loaded)
            if "trace loaded" in line:
                break
        replay.send_signal(signal.SIGINT)
        rest, err = replay.communicate(timeout=120)
    finally:
        if replay.poll() is None:
            replay.kill()
    assert (replay.returncode, rest) == (130, "")
    assert err.endswith("wsched: interrupted\n") and "Traceback" not in err
    assert not out.exists()
