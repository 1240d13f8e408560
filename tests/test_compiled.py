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
        "print(scheduler.COMPILED, Path(scheduler.core.__file__).name, "
        "Path(scheduler.slottable.__file__).name); "
        "from scheduler import cli; sys.exit(cli.main(sys.argv[1:]))")


def _python(args: list[str], *, env: dict[str, str] | None = None,
            path: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "WSCHED_PURE_PYTHON"}
    if path is not None:
        environ["PYTHONPATH"] = str(path)
    return subprocess.run(
        [sys.executable, "-c", f"from pathlib import Path; {_RUN}", *args],
        capture_output=True, text=True, check=True, env={**environ, **(env or {})},
        cwd=path or PACKAGE.parent)


@pytest.mark.parametrize("profile", ["vm-reuse-skewed", "novm-sr"])
def test_the_compiled_core_schedules_as_its_source(tmp_path: Path, profile: str) -> None:
    """A replay with transfers, caches, suspensions and migrations writes the same JSON,
    byte for byte, compiled and from source."""
    args = ["replay", str(TRACES / "swf" / "600requests.swf"), "--profile", profile,
            "--ars", str(TRACES / "ar-injections-30days" / "work_20-dur_2h-size_2medium.lwf"),
            "--quiet"]
    compiled = _python([*args, "--json", str(tmp_path / "compiled.json")])
    source = _python([*args, "--json", str(tmp_path / "source.json")],
                     env={"WSCHED_PURE_PYTHON": "1"})
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
