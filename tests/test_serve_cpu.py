"""``wsched serve --cpu``: the service process and every thread of it stay on one CPU, as
batch threads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.client import WschedClient

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"),
                                reason="CPU affinity is a Linux feature")


def _cpus(text: str) -> set[int]:
    """A Cpus_allowed_list (``0-1,3``) as a set."""
    out: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


# `wsched serve` on a system that forbids changing CPU affinity
_FORBIDDEN = """
import os, sys
def forbidden(*args):
    raise PermissionError(1, "Operation not permitted")
os.sched_setaffinity = forbidden
from scheduler.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _serve(tmp_path: Path, *extra: str, forbidden: bool = False) -> subprocess.Popen[str]:
    start = ["-c", _FORBIDDEN] if forbidden else ["-m", "scheduler.cli"]
    return subprocess.Popen(
        [sys.executable, *start, "serve", "--db", str(tmp_path / "w.db"),
         "--listen", "127.0.0.1:0", "--seed-dir", str(tmp_path / "seeds"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _port(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"serving on 127\.0\.0\.1:(\d+) ", line)
    assert m, (line, proc.stderr.read() if proc.stderr else "")
    return m.group(1)


@pytest.mark.parametrize("choice", ["default", "highest", "any"])
def test_serve_keeps_every_thread_on_the_cpu_chosen(tmp_path: Path, choice: str) -> None:
    allowed = os.sched_getaffinity(0)
    extra = {"default": (), "highest": ("--cpu", str(max(allowed))), "any": ("--cpu", "any")}
    expected = {"default": {min(allowed)}, "highest": {max(allowed)}, "any": allowed}
    proc = _serve(tmp_path, *extra[choice])
    try:
        with WschedClient(f"127.0.0.1:{_port(proc)}", timeout=30) as client:
            lease = client.create_lease(image_id="debian-12", duration=600)  # it serves
        assert lease.id == 1
        threads = os.listdir(f"/proc/{proc.pid}/task")
        assert len(threads) > 5  # the engine's, the commit's, gRPC's, ...
        for tid in threads:
            status = Path(f"/proc/{proc.pid}/task/{tid}/status").read_text()
            listed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M)
            assert listed and _cpus(listed.group(1)) == expected[choice], (tid, status)
            policy = os.SCHED_OTHER if choice == "any" else os.SCHED_BATCH
            assert os.sched_getscheduler(int(tid)) == policy, tid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_serve_refuses_a_cpu_it_may_not_use(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "--cpu", str(max(os.sched_getaffinity(0)) + 1000))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert re.search(r"wsched: error: --cpu: CPU \d+ is not one this process may use "
                     r"\(it may use [0-9, ]+\)", err), err


def test_serve_refuses_a_cpu_that_is_not_a_number(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "--cpu", "first")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "argument --cpu: not a CPU: 'first' (a CPU number, or any)" in err, err


def test_serve_still_serves_where_it_may_not_choose_its_cpu(tmp_path: Path) -> None:
    """By default the CPU is only an optimisation: a system that forbids it gets a warning
    and a working service; asked for explicitly, it is an error."""
    proc = _serve(tmp_path, forbidden=True)
    try:
        with WschedClient(f"127.0.0.1:{_port(proc)}", timeout=30) as client:
            assert client.create_lease(image_id="debian-12", duration=600).id == 1
        status = Path(f"/proc/{proc.pid}/status").read_text()
        listed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M)
        assert listed and _cpus(listed.group(1)) == os.sched_getaffinity(0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "not kept on one CPU" in err and "Operation not permitted" in err, err
    proc = _serve(tmp_path, "--cpu", str(min(os.sched_getaffinity(0))), forbidden=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "wsched: error: --cpu: [Errno 1] Operation not permitted" in err, err
