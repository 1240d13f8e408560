"""The core compiled by mypyc (setup.py) against its source: same schedules, and the
source runs whenever it no longer matches what was compiled."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import scheduler
import scheduler.core

PACKAGE = Path(scheduler.__file__).parent
TRACES = PACKAGE.parent.parent / "shared" / "traces"
SUFFIX = Path(scheduler.core.__file__).name.removeprefix("core")  # the extensions'


pytestmark = pytest.mark.skipif(
    not scheduler.COMPILED, reason="wsched was installed with WSCHED_COMPILE=0, or its "
    "compiled modules do not match their source")

# Prints where the core's modules come from, then runs the command line's arguments.
_RUN = ("import sys, scheduler, scheduler.core, scheduler.slottable; "
        "from pathlib import Path; "
        "print(scheduler.COMPILED, Path(scheduler.core.__file__).name, "
        "Path(scheduler.slottable.__file__).name); "
        "from scheduler import cli; sys.exit(cli.main(sys.argv[1:]))")


def _environ(*, pure: bool = False, path: Path | None = None) -> dict[str, str]:
    """This process's environment, running the core compiled or (``pure``) from source,
    and importing wsched from ``path`` if given."""
    environ = {k: v for k, v in os.environ.items() if k != "WSCHED_PURE_PYTHON"}
    if pure:
        environ["WSCHED_PURE_PYTHON"] = "1"
    if path is not None:
        environ["PYTHONPATH"] = str(path)
    return environ


def _python(args: list[str], *, pure: bool = False,
            path: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _RUN, *args],
        capture_output=True, text=True, check=True, env=_environ(pure=pure, path=path),
        cwd=path or PACKAGE.parent)


@pytest.mark.parametrize("profile", ["vm-reuse-skewed", "novm-sr"])
def test_the_compiled_core_schedules_as_its_source(tmp_path: Path, profile: str) -> None:
    """A replay with transfers, caches, suspensions and migrations writes the same JSON,
    byte for byte, compiled and from source."""
    args = ["replay", str(TRACES / "swf" / "600requests.swf"), "--profile", profile,
            "--ars", str(TRACES / "ar-injections-30days" / "work_20-dur_2h-size_2medium.lwf"),
            "--quiet"]
    compiled = _python([*args, "--json", str(tmp_path / "compiled.json")])
    source = _python([*args, "--json", str(tmp_path / "source.json")], pure=True)
    assert compiled.stdout.split() == ["True", f"core{SUFFIX}", f"slottable{SUFFIX}"]
    assert source.stdout.split() == ["False", "core.py", "slottable.py"]
    assert (tmp_path / "compiled.json").read_bytes() == (tmp_path / "source.json").read_bytes()


def test_an_edited_module_runs_from_source_with_the_others(tmp_path: Path) -> None:
    """In a copy of the compiled package, an edit to core.py makes every compiled module
    run from source, with a warning; undone, the compiled modules run again."""
    copy = tmp_path / "scheduler"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    args = ["profiles", "--names"]

    run = _python(args, path=tmp_path)
    assert run.stdout.split()[:3] == ["True", f"core{SUFFIX}", f"slottable{SUFFIX}"]
    assert run.stderr == ""

    original = (copy / "core.py").read_bytes()
    (copy / "core.py").write_bytes(original + b"# an edit\n")
    run = _python(args, path=tmp_path)
    assert run.stdout.split()[:3] == ["False", "core.py", "slottable.py"]
    assert "core.py changed since wsched was installed: running the core's source " \
        "(slower); install wsched again to compile it" in run.stderr

    (copy / "core.py").write_bytes(original)
    assert _python(args, path=tmp_path).stdout.split()[:3] == [
        "True", f"core{SUFFIX}", f"slottable{SUFFIX}"]


# Runs the first 200 of 600 jobs and dumps the core to argv[2] ("dump"), or loads it
# from there and runs the rest ("load"), printing every lease's events.
_CHECKPOINT = """
import sys
from pathlib import Path
from scheduler import experiments
from scheduler.config import load_profile
from scheduler.core import Scheduler
config = load_profile("vm-reuse-skewed")
w = experiments.load_workload(Path(sys.argv[3]), None, config)
if sys.argv[1] == "dump":
    core = Scheduler(w.site, config)
    todo = w.requests[:200]
else:
    core = Scheduler.loads(Path(sys.argv[2]).read_bytes())
    todo = w.requests[200:]
for r in todo:
    core.advance_to(r.submit)
    core.submit(r)
if sys.argv[1] == "dump":
    Path(sys.argv[2]).write_bytes(core.dumps())
else:
    core.run()
    for o in core.outcomes():
        print(o.request.id, o.state, o.events)
"""


def test_a_checkpoint_moves_between_compiled_and_source(tmp_path: Path) -> None:
    """A core dumped compiled loads from source and goes on as the compiled core would,
    and the other way round (the service's checkpoint is valid for both: same source)."""
    trace = str(TRACES / "swf" / "600requests.swf")

    def run(step: str, path: Path, pure: bool) -> str:
        return subprocess.run([sys.executable, "-c", _CHECKPOINT, step, str(path), trace],
                              capture_output=True, text=True, check=True,
                              env=_environ(pure=pure), cwd=PACKAGE.parent).stdout

    run("dump", tmp_path / "compiled.bin", pure=False)
    run("dump", tmp_path / "source.bin", pure=True)
    expected = run("load", tmp_path / "compiled.bin", pure=False)
    assert expected.count("\n") == 501  # (the jobs of the 600 that were not cancelled)
    assert run("load", tmp_path / "compiled.bin", pure=True) == expected
    assert run("load", tmp_path / "source.bin", pure=False) == expected


def test_a_segments_node_array_is_worked_out_once() -> None:
    """``Segment.node_array`` is a cache (a functools.cached_property, compiled, would
    convert the tuple on every call)."""
    from scheduler.core import Segment
    from scheduler.leases import EventKind

    seg = Segment((4, 2, 7), 0, 10, 20, 30, EventKind.BOOT, EventKind.SHUTDOWN, 1)
    first = seg.node_array
    assert first.tolist() == [4, 2, 7]
    assert seg.node_array is first
