"""kill -9 of a loaded server: every acknowledged lease survives, none is duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scheduler.client import WschedClient, WschedError
from scheduler.enactment import SimulatedDriver
from scheduler.engine import Engine, SystemClock, demo_site
from scheduler.invariants import assert_valid
from scheduler.store import Store

SERVER = """
import sys
from scheduler.enactment import SimulatedDriver
from scheduler.engine import Engine, SystemClock, demo_site
from scheduler.service import start_server
from scheduler.store import Store
engine = Engine(Store(sys.argv[1]), demo_site(), SimulatedDriver(), SystemClock(),
                checkpoint_every=int(sys.argv[2]))
engine.start()
running = start_server(engine, "127.0.0.1:0")
print(running.port, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("checkpoint_every", [0, 7])  # restart from the log, or a checkpoint
def test_kill_9_loses_and_duplicates_nothing(tmp_path: Path, checkpoint_every: int) -> None:
    url = f"sqlite+pysqlite:///{tmp_path / 'k.db'}"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, url, str(checkpoint_every)],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    acked: dict[str, int] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def load(worker: int) -> None:
        with WschedClient(f"127.0.0.1:{port}", timeout=10) as client:
            for i in range(10_000):
                rid = f"w{worker}-{i}"
                try:
                    lease = client.create_lease(image_id="tiny", vms=1, cpu=50,
                                                duration=3600, request_id=rid)
                except WschedError:
                    return  # the server is gone
                with lock:
                    acked[rid] = lease.id
                    if len(acked) >= 60:
                        enough.set()

    workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    assert enough.wait(120), "the server acknowledged too few leases"
    os.kill(proc.pid, signal.SIGKILL)  # mid-load
    proc.wait(timeout=30)
    for w in workers:
        w.join(timeout=60)

    store = Store(url)
    try:
        checkpoint = store.checkpoint()
        if checkpoint_every:
            assert checkpoint is not None and checkpoint.commands >= 56
        else:
            assert checkpoint is None
        engine = Engine(store, demo_site(), SimulatedDriver(), SystemClock(),
                        checkpoint_every=checkpoint_every)
        engine.poll()
        records = store.leases(limit=100_000)
        by_request = {r.request_id: r.id for r in records}
        assert len(by_request) == len(records), "a request id was recorded twice"
        for rid, lease_id in acked.items():
            assert by_request.get(rid) == lease_id, f"acknowledged {rid} lost"
        assert sorted(engine.core.leases) == [r.id for r in records]
        for r in records:  # projections agree with the rebuilt core
            assert str(engine.core.leases[r.id].state) == r.state
        # and the recovered schedule, run to its end, keeps the core's invariants
        core = engine.core
        core.run()
        assert_valid(core.site, core.config, core.outcomes())
    finally:
        store.close()
