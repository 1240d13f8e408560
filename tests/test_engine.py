"""Tests of the engine's group commit (scheduler/engine.py): what a commit under way
means for watchers and for the other threads, without the gRPC layer."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from scheduler.enactment import SimulatedDriver
from scheduler.engine import Engine, LeaseSpec, ManualClock, demo_site
from scheduler.leases import LeaseKind, Resources
from scheduler.store import Batch, Store, sqlite_url

T0 = 1_800_000_000


class GatedStore(Store):
    """A store whose commits wait for ``gate`` once ``armed`` (``entered`` is set when
    a commit is waiting)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.armed = False
        self.gate = threading.Event()
        self.entered = threading.Event()

    def commit_many(self, batches: Sequence[Batch]) -> None:
        if self.armed:
            self.entered.set()
            assert self.gate.wait(10)
        super().commit_many(batches)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[GatedStore, Engine]]:
    store = GatedStore(sqlite_url(str(tmp_path / "e.db")))
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    engine.poll()
    yield store, engine
    store.gate.set()
    engine.stop()
    store.close()


def _besteffort(vms: int = 1) -> LeaseSpec:
    return LeaseSpec(LeaseKind.BESTEFFORT, vms, Resources(cpu=100, memory=1024), "tiny", 600)


def test_watcher_subscribing_during_a_commit_gets_its_changes_live(
        gated: tuple[GatedStore, Engine]) -> None:
    store, engine = gated
    before = store.last_revision()
    store.armed = True
    creator = threading.Thread(target=engine.create_lease, args=(_besteffort(),))
    creator.start()
    assert store.entered.wait(10)
    # The lease's revisions are assigned but not committed: the subscription must start
    # before them (the watch log does not have them yet), and deliver them live.
    sub, upto = engine.subscribe()
    assert upto == before
    store.gate.set()
    creator.join(10)
    got = sub.queue.get(timeout=10)
    assert got is not None
    assert (got.revision, got.lease_id) == (before + 1, 1)
    assert store.last_revision() == before + 1
    engine.unsubscribe(sub)


def test_a_commit_does_not_wait_for_the_engine_lock(gated: tuple[GatedStore, Engine]) -> None:
    store, engine = gated
    store.armed = True
    creator = threading.Thread(target=engine.create_lease, args=(_besteffort(),))
    creator.start()
    assert store.entered.wait(10)
    # Another thread holds the engine (a long core step) while the commit finishes.
    with engine._lock:
        store.gate.set()
        creator.join(10)
        assert not creator.is_alive()
    assert engine.get_lease(1).state == "preparing"


def test_concurrent_creates_commit_each_lease_once_in_revision_order(tmp_path: Path) -> None:
    store = Store(sqlite_url(str(tmp_path / "c.db")))
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    engine.poll()
    ids: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(10):
            lease = engine.create_lease(_besteffort()).lease
            with lock:
                ids.append(lease.id)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert sorted(ids) == list(range(1, 81))
        assert store.lease_ids() == list(range(1, 81))
        assert [c.body["request"]["id"] for c in store.commands()] == list(range(1, 81))
        revisions = [c.revision for c in store.changes(0, limit=10_000)]
        assert revisions == list(range(1, len(revisions) + 1))
    finally:
        engine.stop()
        store.close()
