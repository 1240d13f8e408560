"""Tests of scheduler/store.py: migrations match the ORM, writes and queries round-trip."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from scheduler.store import (
    PREFIX,
    VERSION_TABLE,
    Base,
    Batch,
    Change,
    Command,
    Enactment,
    HostRecord,
    ImageRecord,
    LeaseRecord,
    LeaseUpdate,
    Store,
)


def _lease(i: int, state: str = "pending", labels: dict[str, str] | None = None) -> LeaseRecord:
    return LeaseRecord(i, f"req-{i}", "besteffort", state, None, i, 10, None, None,
                       {"vm_count": 1}, [{"kind": "run", "start": 1, "end": 2, "nodes": ["P1"]}],
                       labels or {})


def test_migrations_give_the_orm_schema(db_url: str) -> None:
    store = Store(db_url)
    try:
        with store.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "version_table": VERSION_TABLE})
            assert compare_metadata(ctx, Base.metadata) == []
            tables = set(inspect(conn).get_table_names())
        assert {t for t in tables if t.startswith(PREFIX)} == \
            set(Base.metadata.tables) | {VERSION_TABLE}
    finally:
        store.close()
    Store(db_url).close()  # upgrading an up-to-date database is a no-op


def test_round_trip(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.init_meta({"origin": 1000, "site": [1, 2]},
                        [HostRecord(0, "P1", "active", cpu=100)], [ImageRecord("img", 512)])
        assert store.meta() == {"origin": 1000, "site": [1, 2]}
        assert store.hosts() == [HostRecord(0, "P1", "active", cpu=100)]
        assert store.images() == [ImageRecord("img", 512)]
        assert not store.add_image(ImageRecord("img", 1))
        assert store.add_image(ImageRecord("b", 1, "/x", "qcow2"))
        assert store.image("b") == ImageRecord("b", 1, "/x", "qcow2")

        store.commit(Batch(
            commands=(Command("submit", 10, {"request": {"id": 1}}),),
            new_leases=(_lease(1, labels={"project": "hep"}), _lease(2)),
            changes=(Change(1, 1, "pending", 10, None), Change(2, 2, "pending", 10, None)),
            idempotency=("req-1", 1, "abc"),
            hosts=(HostRecord(0, "P1", "draining", cpu=100),),
            enactments=(Enactment(1, "boot", 12, "ok"),)))
        store.commit(Batch(commands=(Command("cancel", 20, {"lease": 2}),),
                           changed_leases=(LeaseUpdate(2, "cancelled", None, 2, None, None, []),),
                           changes=(Change(3, 2, "cancelled", 20, "by user"),)))
        assert [(c.kind, c.at, c.body) for c in store.commands()] == \
            [("submit", 10, {"request": {"id": 1}}), ("cancel", 20, {"lease": 2})]
        assert store.lease(1) == _lease(1, labels={"project": "hep"})
        assert store.lease(2) == LeaseRecord(2, "req-2", "besteffort", "cancelled", None, 2, 10,
                                             None, None, {"vm_count": 1}, [], {})
        assert store.lease(3) is None
        assert store.idempotency("req-1") == (1, "abc")
        assert store.idempotency("nope") is None
        assert store.last_revision() == 3
        assert [c.revision for c in store.changes(1)] == [2, 3]
        assert [c.revision for c in store.changes(0, lease_id=2)] == [2, 3]
        assert store.hosts()[0].state == "draining"
        assert store.enactments() == [Enactment(1, "boot", 12, "ok")]
        assert [r.id for r in store.leases()] == [1, 2]
        assert [r.id for r in store.leases(states=["cancelled"])] == [2]
        assert [r.id for r in store.leases(labels={"project": "hep"})] == [1]
        assert [r.id for r in store.leases(labels={"project": "x"})] == []
        assert [r.id for r in store.leases(after_id=1, limit=5)] == [2]
        assert [r.id for r in store.leases(limit=1)] == [1]
        assert store.projections()[2][0] == "cancelled"
        assert store.last_time() == 20
    finally:
        store.close()


def test_a_failed_group_commit_writes_nothing_and_the_next_one_works(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.commit(Batch(new_leases=(_lease(1),), changes=(Change(1, 1, "pending", 10, None),)))
        # lease 1 again: the whole transaction fails, the command and change with it
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            store.commit_many([
                Batch(commands=(Command("submit", 11, {"request": {"id": 2}}),),
                      new_leases=(_lease(2),), changes=(Change(2, 2, "pending", 11, None),)),
                Batch(new_leases=(_lease(1),))])
        assert store.lease_ids() == [1]
        assert store.commands() == []
        assert store.last_revision() == 1
        store.commit(Batch(new_leases=(_lease(2),), changes=(Change(2, 2, "pending", 11, None),)))
        assert store.lease_ids() == [1, 2]
        assert [c.revision for c in store.changes(0)] == [1, 2]
    finally:
        store.close()
