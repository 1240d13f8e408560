"""Tests of the engine's group commit (scheduler/engine.py): what a commit under way
means for watchers and for the other threads, without the gRPC layer."""

from __future__ import annotations

import argparse
import json
import logging
import queue
import random
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, update

from scheduler.core import Scheduler
from scheduler.enactment import SIMULATED_KEEP, Action, SimulatedDriver, make_driver
from scheduler.engine import (
    Conflict,
    Engine,
    EngineError,
    LeaseSpec,
    ManualClock,
    Unavailable,
    _request_from_json,
    _request_from_spec,
    _request_json,
    _spec_digest,
    demo_site,
    spec_hash,
)
from scheduler.leases import DiskImage, Event, LeaseKind, LeaseRequest, Resources
from scheduler.store import (
    Batch,
    CheckpointRow,
    IdempotencyRow,
    Store,
    dump_json,
    load_json,
    sqlite_url,
)

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


class FailingStore(Store):
    """A store whose next ``failures`` commits raise."""

    failures = 0

    def commit_many(self, batches: Sequence[Batch]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk on fire")
        super().commit_many(batches)


def test_a_failed_commit_is_unavailable_and_the_core_forgets_it(tmp_path: Path) -> None:
    store = FailingStore(sqlite_url(str(tmp_path / "f.db")))
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    try:
        assert engine.create_lease(_besteffort()).lease.id == 1
        store.failures = 1
        with pytest.raises(Unavailable, match="could not commit to the database: disk on fire"):
            engine.create_lease(_besteffort(2))
        # Rebuilt from the database: lease 2 was never acknowledged, so its id is free.
        again = engine.create_lease(_besteffort(3)).lease
        assert (again.id, again.spec["vms"]) == (2, 3)
        assert store.lease_ids() == [1, 2]
        assert sorted(engine.core.leases) == [1, 2]
    finally:
        engine.stop()
        store.close()


class _Broken:
    """The core with one method failing: a bug in the core. (The core's classes may be
    compiled, and a compiled instance's methods cannot be replaced.)"""

    def __init__(self, core: Scheduler, method: str) -> None:
        self.core = core
        self.method = method

    def __getattr__(self, name: str) -> object:
        if name != self.method:
            return getattr(self.core, name)

        def fail(*_args: object) -> None:
            raise RuntimeError(f"bug in the core's {name}")
        return fail


@pytest.mark.parametrize("method, later", [("submit", 0), ("forget", 3600)])
def test_a_failed_step_rebuilds_the_core_and_keeps_committed_leases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, later: int) -> None:
    """A failure in the core's step (``submit``), or in the engine's own work after it
    (``forget``, for a lease over ``later`` seconds on), fails that call, and the core is
    rebuilt from the database (a failure after the step used to end the engine's
    thread). The failed call's lease was never committed: its id is given again."""
    store = Store(sqlite_url(str(tmp_path / "s.db")))
    clock = ManualClock(T0)
    engine = Engine(store, demo_site(), SimulatedDriver(), clock)
    try:
        engine.create_lease(_besteffort())
        monkeypatch.setattr(engine, "core", _Broken(engine.core, method))
        clock.advance(later)
        with pytest.raises(RuntimeError, match=f"bug in the core's {method}"):
            engine.create_lease(_besteffort())
        assert isinstance(engine.core, Scheduler)
        assert engine.create_lease(_besteffort()).lease.id == 2
        assert store.lease_ids() == [1, 2]
    finally:
        engine.stop()
        store.close()


def test_a_failed_checkpoint_leaves_the_commands_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint only shortens a restart: one that cannot be taken is logged and
    skipped, and the step that would have carried it commits and answers (the engine's
    thread used to die there, and every later call waited for ever)."""
    store = Store(sqlite_url(str(tmp_path / "s.db")))
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0), checkpoint_every=2)
    try:
        monkeypatch.setattr(engine, "core", _Broken(engine.core, "dumps"))
        with caplog.at_level(logging.ERROR, logger="scheduler.engine"):
            ids = [engine.create_lease(_besteffort()).lease.id for _ in range(5)]
        assert ids == [1, 2, 3, 4, 5]
        assert store.lease_ids() == [1, 2, 3, 4, 5]
        assert store.checkpoint() is None
        failed = [r for r in caplog.records if r.getMessage().startswith("checkpoint failed")]
        assert [r.commands for r in failed] == [2, 4]  # type: ignore[attr-defined]
    finally:
        engine.stop()
        store.close()


def test_a_core_that_cannot_be_rebuilt_fails_the_call_and_is_rebuilt_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When rebuilding the core after a failed step fails too (the database is down),
    the call fails as unavailable and the next call rebuilds it; the engine's thread
    goes on (it used to end, and every later call waited for ever)."""
    store = Store(sqlite_url(str(tmp_path / "s.db")))
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    try:
        engine.create_lease(_besteffort())
        rebuild = engine._rebuild
        calls = 0

        def down() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError("database unreachable")
            rebuild()

        monkeypatch.setattr(engine, "_rebuild", down)
        monkeypatch.setattr(engine, "core", _Broken(engine.core, "submit"))
        with pytest.raises(Unavailable, match="the core could not be rebuilt: database "
                           "unreachable"):
            engine.create_lease(_besteffort())
        assert engine.create_lease(_besteffort()).lease.id == 2
        assert calls == 2
        assert isinstance(engine.core, Scheduler)
        assert store.lease_ids() == [1, 2]
    finally:
        engine.stop()
        store.close()


class _BrokenQueue(queue.Queue[Any]):
    """A watcher's queue that fails (a bug) instead of taking a change."""

    def put_nowait(self, item: Any) -> None:
        raise RuntimeError("bug in a watcher's queue")


def test_a_failure_after_a_commit_answers_the_call_and_drops_the_watchers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failure in publishing committed changes to watchers is logged; the call is
    answered (its step is committed), every watcher is dropped to catch up from the
    watch log, and later calls go on (the commit thread used to end, and every later
    call waited for ever)."""
    store = Store(sqlite_url(str(tmp_path / "s.db")))
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    try:
        engine.create_lease(_besteffort())
        broken, _ = engine.subscribe()
        broken.queue = _BrokenQueue()
        other, _ = engine.subscribe(lease_id=1)
        with caplog.at_level(logging.ERROR, logger="scheduler.engine"):
            assert engine.create_lease(_besteffort()).lease.id == 2
        assert (broken.overflowed, other.overflowed) == (True, True)
        assert [r.getMessage() for r in caplog.records] == [
            "publishing committed changes failed: watchers catch up from the watch log"]
        assert engine.create_lease(_besteffort()).lease.id == 3
        assert store.lease_ids() == [1, 2, 3]
        assert sorted(t.name for t in engine._threads if t.is_alive()) == \
            ["wsched-commit", "wsched-engine"]
    finally:
        engine.stop()
        store.close()


def test_stop_refuses_new_commands_and_ends_the_threads(tmp_path: Path) -> None:
    store = Store(sqlite_url(str(tmp_path / "t.db")))
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    engine.create_lease(_besteffort())
    assert sorted(t.name for t in engine._threads if t.is_alive()) == \
        ["wsched-commit", "wsched-engine"]
    engine.stop()
    with pytest.raises(Unavailable, match="the service is stopping"):
        engine.create_lease(_besteffort())
    assert not any(t.is_alive() for t in engine._threads)
    assert store.lease_ids() == [1]
    store.close()


@pytest.mark.parametrize("spec", [
    _besteffort(3),
    LeaseSpec(LeaseKind.BESTEFFORT, 2, Resources(cpu=50, memory=512, disk=10), "tiny", 900,
              preemptible=True, labels=(("team", "b"), ("app", "x"))),  # unsorted labels
    LeaseSpec(LeaseKind.AR, 1, Resources(cpu=100, memory=1024), "tiny", 600, start=5000,
              start_latest=7000, labels=(("a", "1"), ("b", "2")),
              context={"ssh_keys": ["ssh-ed25519 AAAA k"]}),
    LeaseSpec(LeaseKind.IMMEDIATE, 4, Resources(cpu=100), "big", 60),
])
def test_a_create_submits_the_request_its_logged_command_replays(spec: LeaseSpec) -> None:
    """A create gives the core the request built from the spec; a restart gives it the
    one read back from the command log: they must be equal, or the replay differs."""
    logged = load_json(dump_json({"request": _request_json(7, 120, spec.as_json(), 64)},
                                 sort=True))
    assert _request_from_spec(7, 120, spec, 64) == _request_from_json(logged["request"])


def test_the_stored_spec_text_is_the_hashed_one() -> None:
    spec = LeaseSpec(LeaseKind.AR, 1, Resources(cpu=100), "tiny", 600, start=5,
                     labels=(("z", "1"), ("a", "2")))
    text = dump_json(spec.as_json(), sort=True)
    assert _spec_digest(text) == spec_hash(spec)


def test_a_retry_is_recognised_by_the_digest_earlier_versions_stored(tmp_path: Path) -> None:
    """Earlier versions hashed the standard library's JSON text of the spec (spaces after
    separators): a retry after an upgrade still gets its lease, not ALREADY_EXISTS."""
    clock = ManualClock(T0)
    store = Store(sqlite_url(str(tmp_path / "e.db")))
    engine = Engine(store, demo_site(), SimulatedDriver(), clock)
    try:
        first = engine.create_lease(_besteffort(), "req-a")
        legacy = _spec_digest(json.dumps(_besteffort().as_json(), sort_keys=True))
        assert legacy != spec_hash(_besteffort())
        with store.engine.begin() as conn:
            conn.execute(update(IdempotencyRow).values(body_hash=legacy))
        again = engine.create_lease(_besteffort(), "req-a")
        assert again.replayed and again.lease.id == first.lease.id
        with pytest.raises(Conflict):
            engine.create_lease(_besteffort(vms=2), "req-a")
    finally:
        engine.stop()
        store.close()


def test_request_ids_are_forgotten_once_their_retention_is_over(db_url: str) -> None:
    """A retry within the retention gets the original lease; past it the id is new
    again, in memory, in the database and after a restart."""
    clock = ManualClock(T0)

    def start() -> tuple[Store, Engine]:
        store = Store(db_url)
        engine = Engine(store, demo_site(), SimulatedDriver(), clock, request_id_ttl=3600)
        engine.poll()
        return store, engine

    store, engine = start()
    try:
        first = engine.create_lease(_besteffort(), "req-a")  # core time 0
        clock.advance(1800)
        again = engine.create_lease(_besteffort(), "req-a")
        assert again.replayed and again.lease.id == first.lease.id == 1
        other = engine.create_lease(_besteffort(), "req-b")  # core time 1800
        assert other.lease.id == 2
        clock.advance(1860)  # req-a's lease is 3,660 s old, req-b's 1,860 s
        engine.poll()
        assert store.request_ids() == {"req-b": (2, 1800)}
        renewed = engine.create_lease(_besteffort(), "req-a")
        assert not renewed.replayed and renewed.lease.id == 3
        assert engine.create_lease(_besteffort(), "req-b").replayed
        assert store.request_ids() == {"req-b": (2, 1800), "req-a": (3, 3660)}
    finally:
        engine.stop()
        store.close()
    store, engine = start()  # a restart remembers what is still retained
    try:
        assert engine.create_lease(_besteffort(), "req-a").lease.id == 3
        clock.advance(3600)
        engine.poll()
        assert store.request_ids() == {}
        assert engine.create_lease(_besteffort(), "req-b").lease.id == 4
    finally:
        engine.stop()
        store.close()


def test_a_request_id_retention_under_the_sweep_period_is_refused(tmp_path: Path) -> None:
    from scheduler.service_cli import retention

    store = Store(sqlite_url(str(tmp_path / "r.db")))
    try:
        with pytest.raises(ValueError, match="at least 60 s"):
            Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0), request_id_ttl=59)
    finally:
        store.close()
    assert retention("1m") == 60 and retention("2h") == 7200
    with pytest.raises(argparse.ArgumentTypeError, match=r"too short: '30s' \(at least 60 s\)"):
        retention("30s")


# ============================================================================ checkpoints

def _history(store: Store, clock: ManualClock, seed: int, checkpoint_every: int) -> None:
    """A mixed, seeded history on a new engine: creates of every kind (some refused),
    cancellations, extensions and host changes, with time passing (so leases run, end
    and free their nodes) -- one command per step."""
    engine = Engine(store, demo_site(), SimulatedDriver(), clock,
                    checkpoint_every=checkpoint_every)
    try:
        _act(engine, clock, random.Random(seed))
    finally:
        engine.stop()


def _act(engine: Engine, clock: ManualClock, rng: random.Random) -> None:
    for i in range(60):
        clock.advance(rng.choice([0, 5, 30, 120, 600]))
        engine.poll()
        roll = rng.random()
        now = engine.now()
        try:
            if i == 20:
                engine.add_host("extra", Resources(cpu=800, memory=32768))
            elif i == 40:
                engine.drain_host("P3")
            elif roll < 0.15 and engine.core.leases:
                engine.cancel_lease(rng.choice(sorted(engine.core.leases)))
            elif roll < 0.25 and engine.core.leases:
                engine.extend_lease(rng.choice(sorted(engine.core.leases)), 300)
            else:
                kind = rng.choice([LeaseKind.BESTEFFORT, LeaseKind.BESTEFFORT, LeaseKind.AR,
                                   LeaseKind.IMMEDIATE])
                engine.create_lease(LeaseSpec(
                    kind, rng.randint(1, 4), Resources(cpu=rng.choice([100, 200, 400]),
                                                       memory=1024),
                    rng.choice(["tiny", "debian-12"]), rng.randint(300, 4000),
                    start=now + rng.randint(600, 7200) if kind is LeaseKind.AR else None,
                    preemptible=rng.random() < 0.7 and kind is LeaseKind.BESTEFFORT))
        except EngineError:
            pass  # refused (infeasible, or the lease is over): nothing logged


def _future(engine: Engine) -> list[tuple[int, str, tuple[Event, ...]]]:
    """What a copy of the engine's core does from here: the same new leases, then
    everything planned, run to the end (every lease it holds, as it ends)."""
    core = Scheduler.loads(engine.core.dumps())
    now = core.now
    for i in range(5):
        core.advance_to(now + 60 * i)
        core.submit(LeaseRequest(10_000 + i, LeaseKind.BESTEFFORT, 2,
                                 Resources(cpu=400, memory=1024), DiskImage("tiny", 64), 900,
                                 now + 60 * i, preemptible=True))
    core.run()
    return sorted((o.request.id, str(o.state), o.events) for o in core.outcomes())


def test_a_restart_from_a_checkpoint_rebuilds_the_core_the_whole_log_would(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(db_url)
    clock = ManualClock(T0)
    _history(store, clock, seed=3, checkpoint_every=25)
    logged = len(store.commands())
    checkpoint = store.checkpoint()
    assert logged >= 55 and checkpoint is not None
    assert checkpoint.commands == 50  # one step logs one command
    caplog.set_level(logging.INFO, logger="scheduler.engine")
    restored = Engine(store, demo_site(), SimulatedDriver(), clock, checkpoint_every=25)
    assert [getattr(r, "commands", None) for r in caplog.records
            if r.msg == "core restored from a checkpoint"] == [checkpoint.commands]
    with store.engine.begin() as conn:
        conn.execute(delete(CheckpointRow))
    replayed = Engine(store, demo_site(), SimulatedDriver(), clock, checkpoint_every=0)
    live = {i: lease.outcome() for i, lease in replayed.core.leases.items()
            if not lease.finished}
    assert live and live == {i: lease.outcome() for i, lease in restored.core.leases.items()
                             if not lease.finished}
    assert restored._next_id == replayed._next_id == max(store.lease_ids()) + 1
    assert _future(restored) == _future(replayed)
    store.close()


@pytest.mark.parametrize("damage", ["other code", "unreadable"])
def test_a_checkpoint_it_cannot_use_is_ignored(tmp_path: Path, damage: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    store = Store(sqlite_url(str(tmp_path / "k.db")))
    clock = ManualClock(T0)
    _history(store, clock, seed=4, checkpoint_every=5)
    whole = Engine(store, demo_site(), SimulatedDriver(), clock, checkpoint_every=0)
    values = {"format": "core-pickle-zlib/1 0123"} if damage == "other code" \
        else {"data": zlib.compress(b"not a pickle")}
    with store.engine.begin() as conn:
        conn.execute(update(CheckpointRow).values(**values))
    caplog.set_level(logging.INFO, logger="scheduler.engine")
    rebuilt = Engine(store, demo_site(), SimulatedDriver(), clock, checkpoint_every=5)
    expected = "checkpoint written by other code: re-applying the whole command log" \
        if damage == "other code" else "checkpoint unreadable: re-applying the whole command log"
    assert expected in [r.msg for r in caplog.records]
    assert _future(rebuilt) == _future(whole)
    store.close()


def test_a_negative_checkpoint_period_is_refused(tmp_path: Path) -> None:
    from scheduler.service_cli import _count

    store = Store(sqlite_url(str(tmp_path / "n.db")))
    try:
        with pytest.raises(ValueError, match="checkpoint_every must not be negative"):
            Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0), checkpoint_every=-1)
    finally:
        store.close()
    assert _count("0") == 0 and _count("250") == 250
    for bad in ("-1", "ten", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a count"):
            _count(bad)


def test_the_services_simulated_driver_keeps_only_its_latest_actions() -> None:
    """``wsched serve``'s default driver runs for months: its record of actions is a tail,
    not every action ever made (a test's own SimulatedDriver keeps them all)."""
    driver = make_driver("simulated")
    assert isinstance(driver, SimulatedDriver)
    for i in range(SIMULATED_KEEP + 5):
        driver.prepare_image(f"img-{i}", "h1")
    actions = driver.actions
    assert len(actions) == SIMULATED_KEEP
    assert actions[0] == Action("prepare_image", "img-5", "h1")
    assert actions[-1] == Action("prepare_image", f"img-{SIMULATED_KEEP + 4}", "h1")
    everything = SimulatedDriver()
    for i in range(SIMULATED_KEEP + 5):
        everything.prepare_image(f"img-{i}", "h1")
    assert len(everything.actions) == SIMULATED_KEEP + 5


def test_site_file_profile_key() -> None:
    """A site file starts from the profile its ``profile`` names (as a configuration file
    does: one parser), from the defaults when it names none or an empty one; a bad name
    is an error naming the file."""
    from scheduler.config import Config, ConfigError, load_profile
    from scheduler.engine import parse_site

    nodes = "[site]\nnodes = 2\ncpu = 100\nmemory = 1024\n"
    named = parse_site(f'profile = "test-transfer"\n{nodes}', "s.toml").config
    assert named.image_transfer and named.transfer_mode == load_profile(
        "test-transfer").transfer_mode
    for text in (nodes, f'profile = ""\n{nodes}'):
        config = parse_site(text, "s.toml").config
        assert config.image_transfer == Config().image_transfer
    with pytest.raises(ConfigError, match=r"^s\.toml: profile: unknown profile 'nope' "):
        parse_site(f'profile = "nope"\n{nodes}', "s.toml")
    with pytest.raises(ConfigError, match=r"^s\.toml: profile must be a string"):
        parse_site(f"profile = 3\n{nodes}", "s.toml")
