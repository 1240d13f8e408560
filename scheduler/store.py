"""Durable state of the service: the command log, lease projections, watch log and site.

Event sourcing: every command that changes the scheduler (a submission with its full
request, a cancellation, an extension, a host change, a failure) is appended to the
command log with the core time it was applied at. Because the core is deterministic,
re-applying the log in order at the same times rebuilds it exactly. Next to the log,
projections answer queries without the core: one row per lease (state, schedule,
reason, revision), its labels, the idempotency keys, the watch log (one row per lease
change, numbered by a global revision), the hosts and the registered images, and the
enactment actions already carried out. A checkpoint (the core's whole state after the
log's first N commands, written now and then) lets a restart re-apply only the commands
after it. Contextualization keeps its own state here too
(one row per deployed VM: address, credential expiry, deadline, reported identity,
state; and the broker's signing key), outside the command log: it is not replayed.

SQLite (WAL, synchronous=NORMAL) by default, PostgreSQL by URL. The schema is owned by
the Alembic environment in ``scheduler/migrations``; opening a store upgrades it to
head. All times stored here are core seconds (see ``meta["origin"]``). JSON columns are
written by ``dump_json`` (orjson: the commit path encodes several documents per request,
and the standard library's encoder cost ~3 % of the service's CPU).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    BigInteger,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PoolProxiedConnection,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)

#: Every table name starts with this, so a shared database stays readable.
PREFIX = "wsched_"
#: Alembic's bookkeeping table (not the default name: the database may be shared).
VERSION_TABLE = PREFIX + "alembic_version"


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    """Settings fixed at the first start: time origin, initial site, configuration."""

    __tablename__ = PREFIX + "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CommandRow(Base):
    """The append-only log of commands applied to the core."""

    __tablename__ = PREFIX + "commands"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                     primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger)  # core time it was applied at
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # JSON


class CheckpointRow(Base):
    """The latest checkpoint: the core's state once the log's first ``commands``
    commands were applied (only the latest is kept)."""

    __tablename__ = PREFIX + "checkpoints"
    commands: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[int] = mapped_column(BigInteger)  # core time when it was taken
    format: Mapped[str] = mapped_column(String(128))  # which code can read it
    data: Mapped[bytes] = mapped_column(LargeBinary)


class LeaseRow(Base):
    """Projection of one lease, as of its last change."""

    __tablename__ = PREFIX + "leases"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    request_id: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(BigInteger)
    submit: Mapped[int] = mapped_column(BigInteger)
    start: Mapped[int | None] = mapped_column(BigInteger)
    end: Mapped[int | None] = mapped_column(BigInteger)
    spec: Mapped[str] = mapped_column(Text)  # JSON: what the client asked for
    events: Mapped[str] = mapped_column(Text)  # JSON: the schedule


class LabelRow(Base):
    __tablename__ = PREFIX + "lease_labels"
    __table_args__ = (Index(PREFIX + "lease_labels_kv", "key", "value"),)
    lease_id: Mapped[int] = mapped_column(BigInteger, ForeignKey(PREFIX + "leases.id"),
                                          primary_key=True)
    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class IdempotencyRow(Base):
    __tablename__ = PREFIX + "idempotency"
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    lease_id: Mapped[int] = mapped_column(BigInteger, index=True)  # expiry deletes by it
    body_hash: Mapped[str] = mapped_column(String(64))


class WatchRow(Base):
    """One lease change; revisions are global and strictly increasing."""

    __tablename__ = PREFIX + "watch_log"
    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    lease_id: Mapped[int] = mapped_column(BigInteger, index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)


class HostRow(Base):
    __tablename__ = PREFIX + "hosts"
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    cpu: Mapped[int] = mapped_column(BigInteger)
    memory: Mapped[int] = mapped_column(BigInteger)
    disk: Mapped[int] = mapped_column(BigInteger)
    net_in: Mapped[int] = mapped_column(BigInteger)
    net_out: Mapped[int] = mapped_column(BigInteger)


class ImageRow(Base):
    __tablename__ = PREFIX + "images"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    size_mb: Mapped[int] = mapped_column(BigInteger)
    location: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))


class EnactmentRow(Base):
    """An enactment action already carried out (so a restart does not repeat it)."""

    __tablename__ = PREFIX + "enactments"
    lease_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16))  # "ok" or "failed"
    detail: Mapped[str | None] = mapped_column(Text)


class ContextVmRow(Base):
    """Contextualization state of one deployed VM (times are wall-clock seconds)."""

    __tablename__ = PREFIX + "context_vms"
    lease_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    instance_id: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16))  # pending, reported, ready, failed
    deadline: Mapped[int] = mapped_column(BigInteger)
    expires: Mapped[int] = mapped_column(BigInteger)  # of the VM's broker credential
    reported_at: Mapped[int | None] = mapped_column(BigInteger)
    identity: Mapped[str | None] = mapped_column(Text)  # JSON: what the VM reported
    reason: Mapped[str | None] = mapped_column(Text)


class ContextKeyRow(Base):
    """Secrets of the context broker (its HMAC signing key)."""

    __tablename__ = PREFIX + "context_keys"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))


# Core tables, for the hot paths (typed as Table, which ``Model.__table__`` is not)
_COMMANDS = Base.metadata.tables[CommandRow.__tablename__]
_LEASES = Base.metadata.tables[LeaseRow.__tablename__]
_LABELS = Base.metadata.tables[LabelRow.__tablename__]
_IDEMPOTENCY = Base.metadata.tables[IdempotencyRow.__tablename__]
_WATCH = Base.metadata.tables[WatchRow.__tablename__]
_HOSTS = Base.metadata.tables[HostRow.__tablename__]
_ENACTMENTS = Base.metadata.tables[EnactmentRow.__tablename__]
_CHECKPOINTS = Base.metadata.tables[CheckpointRow.__tablename__]


# ================================================================ records

@dataclass(frozen=True)
class Command:
    kind: str  # "submit", "cancel", "extend", "add_host", "drain_host", "remove_host", "fail"
    at: int
    body: Mapping[str, Any]
    seq: int = 0  # assigned by the store


@dataclass(frozen=True)
class LeaseRecord:
    id: int
    request_id: str | None
    kind: str
    state: str
    reason: str | None
    revision: int
    submit: int
    start: int | None
    end: int | None
    spec: Mapping[str, Any]
    events: Sequence[Mapping[str, Any]]  # {kind, start, end, nodes: [host names]}
    labels: Mapping[str, str] = field(default_factory=dict)
    #: ``spec`` and ``events`` as the table stores them (``dump_json(spec,
    #: sort=True)``, ``dump_json(list(events))``), if the writer has them
    #: already: the commit then does not encode them again.
    spec_text: str | None = field(default=None, compare=False, repr=False)
    events_text: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LeaseUpdate:
    """The parts of a lease projection that change after its creation."""

    id: int
    state: str
    reason: str | None
    revision: int
    start: int | None
    end: int | None
    events: Sequence[Mapping[str, Any]]
    events_text: str | None = field(default=None, compare=False, repr=False)  # see LeaseRecord


@dataclass(frozen=True)
class Change:
    revision: int
    lease_id: int
    state: str
    at: int
    reason: str | None


@dataclass(frozen=True)
class HostRecord:
    index: int
    name: str
    state: str  # "active", "draining", "removed"
    cpu: int = 0
    memory: int = 0
    disk: int = 0
    net_in: int = 0
    net_out: int = 0


@dataclass(frozen=True)
class ImageRecord:
    id: str
    size_mb: int
    location: str = ""
    format: str = ""


@dataclass(frozen=True)
class Enactment:
    lease_id: int
    kind: str
    start: int
    status: str
    detail: str | None = None


@dataclass(frozen=True)
class ContextVm:
    """Contextualization state of one VM (see ``ContextVmRow``)."""

    lease_id: int
    index: int
    instance_id: str
    address: str
    state: str
    deadline: int
    expires: int
    reported_at: int | None = None
    identity: Mapping[str, Any] | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Batch:
    """Everything one engine step writes, committed in one transaction."""

    commands: tuple[Command, ...] = ()
    new_leases: tuple[LeaseRecord, ...] = ()
    changed_leases: tuple[LeaseUpdate, ...] = ()
    changes: tuple[Change, ...] = ()
    idempotency: tuple[str, int, str] | None = None  # request id, lease id, body hash
    hosts: tuple[HostRecord, ...] = ()
    enactments: tuple[Enactment, ...] = ()
    #: request ids of leases before this one are forgotten (their retention is over)
    forget_requests_before: int | None = None
    #: a checkpoint taken after this step (it replaces the one stored)
    checkpoint: Checkpoint | None = None

    def empty(self) -> bool:
        return not (self.commands or self.new_leases or self.changed_leases or self.changes
                    or self.idempotency or self.hosts or self.enactments
                    or self.forget_requests_before is not None or self.checkpoint)


@dataclass(frozen=True)
class Checkpoint:
    commands: int  # how many commands of the log (the first ones) it includes
    at: int  # core time
    format: str  # the code that wrote it (a restart ignores another code's)
    data: bytes


class StoreError(RuntimeError):
    """The database cannot be used (unreachable, incompatible, ...)."""


# ================================================================ the store

def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    # WAL: readers never block the writer; NORMAL: a commit survives a process crash
    # (what kill -9 tests), an OS crash may lose the last commits but never corrupts.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def sqlite_url(path: str) -> str:
    return f"sqlite+pysqlite:///{path}"


def alembic_config(connection: Any = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("scheduler") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates it on an empty database)."""
    with engine.begin() as conn:
        alembic_command.upgrade(alembic_config(conn), "head")


def dump_json(value: Any, *, sort: bool = False) -> str:
    """``value`` as compact JSON text (keys sorted if ``sort``; non-string keys as strings,
    as the standard library writes them)."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort else 0)
    return orjson.dumps(value, option=option).decode()


load_json = orjson.loads


def _lease_values(r: LeaseRecord) -> dict[str, Any]:
    return {"id": r.id, "request_id": r.request_id, "kind": r.kind, "state": r.state,
            "reason": r.reason, "revision": r.revision, "submit": r.submit, "start": r.start,
            "end": r.end,
            "spec": r.spec_text if r.spec_text is not None else dump_json(r.spec, sort=True),
            "events": r.events_text if r.events_text is not None else dump_json(list(r.events))}


def _host_values(h: HostRecord) -> dict[str, Any]:
    return {"index": h.index, "name": h.name, "state": h.state, "cpu": h.cpu,
            "memory": h.memory, "disk": h.disk, "net_in": h.net_in, "net_out": h.net_out}


@dataclass(frozen=True)
class _Prepared:
    """A write of the commit path, compiled once for the database's dialect."""

    sql: str
    order: tuple[str, ...] | None  # parameter order if the driver's style is positional

    def run(self, cursor: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        if self.order is None:
            cursor.executemany(self.sql, rows)
        else:
            cursor.executemany(self.sql, [tuple(r[k] for k in self.order) for r in rows])


def _prepare(dialect: Dialect) -> dict[str, _Prepared]:
    """The commit path's statements as the driver's SQL (plain ints and strings: no
    bind processing is needed for any of their columns)."""
    if dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    elif dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert  # type: ignore[assignment]
    else:  # pragma: no cover - the store supports these two
        raise StoreError(f"no upsert for database {dialect.name!r}")

    def upsert_stmt(table: Table, key: list[str]) -> Any:
        stmt = upsert(table)
        return stmt.on_conflict_do_update(
            index_elements=key, set_={c.name: stmt.excluded[c.name] for c in table.columns
                                      if c.name not in key})

    t = _LEASES
    statements: dict[str, tuple[Any, list[str]]] = {
        "commands": (insert(_COMMANDS), ["at", "kind", "body"]),
        "leases": (insert(_LEASES), [c.name for c in _LEASES.columns]),
        "labels": (insert(_LABELS), ["lease_id", "key", "value"]),
        "update": (update(t).where(t.c.id == bindparam("_id")).values(
            state=bindparam("state"), reason=bindparam("reason"),
            revision=bindparam("revision"), start=bindparam("start"), end=bindparam("end"),
            events=bindparam("events")), []),
        "watch": (insert(_WATCH), [c.name for c in _WATCH.columns]),
        "idempotency": (insert(_IDEMPOTENCY), ["request_id", "lease_id", "body_hash"]),
        "forget_requests": (delete(_IDEMPOTENCY).where(
            _IDEMPOTENCY.c.lease_id < bindparam("before")), []),
        "hosts": (upsert_stmt(_HOSTS, ["index"]), [c.name for c in _HOSTS.columns]),
        "enactments": (upsert_stmt(_ENACTMENTS, ["lease_id", "kind", "start"]),
                       [c.name for c in _ENACTMENTS.columns]),
        "drop_checkpoints": (delete(_CHECKPOINTS), []),
        "checkpoint": (insert(_CHECKPOINTS), [c.name for c in _CHECKPOINTS.columns]),
    }
    out = {}
    for name, (stmt, columns) in statements.items():
        compiled = stmt.compile(dialect=dialect, column_keys=columns or None,
                                for_executemany=True)
        order = tuple(compiled.positiontup) if compiled.positional and \
            compiled.positiontup is not None else None
        out[name] = _Prepared(str(compiled), order)
    return out


def _latest(key: list[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each ``key`` once, its latest row (an upsert may not touch a row
    twice in one statement)."""
    return list({tuple(row[k] for k in key): row for row in rows}.values())


class Store:
    """One database. Thread-safe: each call uses its own session."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            if migrate:
                upgrade(self.engine)
        except Exception as e:
            self.engine.dispose()
            raise StoreError(f"cannot open database: {e}") from e
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._sql = _prepare(self.engine.dialect)
        self._writer: PoolProxiedConnection | None = None  # the commit path's connection
        self._writer_lock = threading.Lock()

    def close(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.engine.dispose()

    # ---------------------------------------------------------------- meta
    def meta(self) -> dict[str, Any]:
        with self._session() as s:
            return {row.key: load_json(row.value) for row in s.scalars(select(MetaRow))}

    def init_meta(self, values: Mapping[str, Any], hosts: Iterable[HostRecord],
                  images: Iterable[ImageRecord]) -> None:
        """First start: record the settings, initial hosts and images (all at once)."""
        with self._session.begin() as s:
            s.execute(insert(MetaRow), [{"key": k, "value": dump_json(v)}
                                        for k, v in values.items()])
            host_rows = [_host_values(h) for h in hosts]
            if host_rows:
                s.execute(insert(HostRow), host_rows)
            image_rows = [vars(i) for i in images]
            if image_rows:
                s.execute(insert(ImageRow), image_rows)

    # ---------------------------------------------------------------- writes
    def commit(self, batch: Batch) -> None:
        self.commit_many([batch])

    def commit_many(self, batches: Sequence[Batch]) -> None:
        """Write several steps' batches in one transaction (group commit), one
        statement per table for all of them, rows in step order (a lease inserted by
        one step and updated by a later one is inserted first)."""
        if all(b.empty() for b in batches):
            return
        commands = [c for b in batches for c in b.commands]
        new_leases = [r for b in batches for r in b.new_leases]
        changed = [u for b in batches for u in b.changed_leases]
        changes = [c for b in batches for c in b.changes]
        keys = [b.idempotency for b in batches if b.idempotency is not None]
        forget = max((b.forget_requests_before for b in batches
                      if b.forget_requests_before is not None), default=None)
        hosts = [h for b in batches for h in b.hosts]
        enactments = [e for b in batches for e in b.enactments]
        checkpoint = next((b.checkpoint for b in reversed(batches) if b.checkpoint), None)
        sql = self._sql
        with self._writer_lock:
            # A connection of its own, kept out of the pool, and the driver's cursor:
            # this runs for every acknowledged request, and a pool checkout (with its
            # reset on return) and SQLAlchemy's per-statement work (cache key,
            # execution context, result) cost more than SQLite's work on these rows.
            conn = self._writer if self._writer is not None else self.engine.raw_connection()
            self._writer = None
            cur = conn.cursor()
            try:
                if commands:
                    sql["commands"].run(cur, [
                        {"at": c.at, "kind": c.kind, "body": dump_json(c.body, sort=True)}
                        for c in commands])
                if new_leases:
                    sql["leases"].run(cur, [_lease_values(r) for r in new_leases])
                    labels = [{"lease_id": r.id, "key": k, "value": v}
                              for r in new_leases for k, v in r.labels.items()]
                    if labels:
                        sql["labels"].run(cur, labels)
                if changed:
                    sql["update"].run(cur, [
                        {"_id": u.id, "state": u.state, "reason": u.reason,
                         "revision": u.revision, "start": u.start, "end": u.end,
                         "events": u.events_text if u.events_text is not None
                         else dump_json(list(u.events))} for u in changed])
                if changes:
                    sql["watch"].run(cur, [vars(c) for c in changes])
                if forget is not None:  # before the inserts: an expired id may be reused
                    sql["forget_requests"].run(cur, [{"before": forget}])
                if keys:
                    sql["idempotency"].run(cur, [
                        {"request_id": rid, "lease_id": lease_id, "body_hash": body_hash}
                        for rid, lease_id, body_hash in keys])
                if hosts:
                    sql["hosts"].run(cur, _latest(["index"], [_host_values(h) for h in hosts]))
                if enactments:
                    sql["enactments"].run(cur, _latest(["lease_id", "kind", "start"], [
                        {"lease_id": e.lease_id, "kind": e.kind, "start": e.start,
                         "status": e.status, "detail": e.detail} for e in enactments]))
                if checkpoint is not None:  # after the commands it includes
                    sql["drop_checkpoints"].run(cur, [{}])
                    sql["checkpoint"].run(cur, [vars(checkpoint)])
                cur.close()
                conn.commit()
            except BaseException:
                # The connection may be broken (a database restart): the next commit
                # takes a fresh one.
                with contextlib.suppress(Exception):
                    conn.rollback()
                conn.invalidate()
                raise
            self._writer = conn

    def add_image(self, image: ImageRecord) -> bool:
        """Register ``image``; False if an image with that id exists already."""
        with self._session.begin() as s:
            if s.get(ImageRow, image.id) is not None:
                return False
            s.add(ImageRow(**vars(image)))
            return True

    # ---------------------------------------------------------------- reads
    def commands(self, skip: int = 0) -> list[Command]:
        """The log, in order, without its first ``skip`` commands."""
        with self._session() as s:
            q = select(CommandRow).order_by(CommandRow.seq).offset(skip)
            return [Command(r.kind, r.at, load_json(r.body), r.seq) for r in s.scalars(q)]

    def checkpoint(self) -> Checkpoint | None:
        with self._session() as s:
            row = s.scalars(select(CheckpointRow).order_by(CheckpointRow.commands.desc())
                            .limit(1)).first()
            return None if row is None else Checkpoint(row.commands, row.at, row.format,
                                                       bytes(row.data))

    def lease(self, lease_id: int) -> LeaseRecord | None:
        with self._session() as s:
            row = s.get(LeaseRow, lease_id)
            if row is None:
                return None
            return self._record(row, self._labels(s, [lease_id]).get(lease_id, {}))

    def leases(self, *, states: Sequence[str] = (), kinds: Sequence[str] = (),
               labels: Mapping[str, str] | None = None, after_id: int = 0,
               limit: int = 100) -> list[LeaseRecord]:
        """Leases with ``id > after_id`` matching every filter, in id order."""
        q = select(LeaseRow).where(LeaseRow.id > after_id)
        if states:
            q = q.where(LeaseRow.state.in_(list(states)))
        if kinds:
            q = q.where(LeaseRow.kind.in_(list(kinds)))
        for k, v in (labels or {}).items():
            q = q.where(select(LabelRow.lease_id).where(
                LabelRow.lease_id == LeaseRow.id, LabelRow.key == k,
                LabelRow.value == v).exists())
        q = q.order_by(LeaseRow.id).limit(limit)
        with self._session() as s:
            rows = list(s.scalars(q))
            labels_of = self._labels(s, [r.id for r in rows])
            return [self._record(r, labels_of.get(r.id, {})) for r in rows]

    def lease_counts(self) -> dict[str, int]:
        """How many leases are in each state."""
        q = select(LeaseRow.state, func.count()).group_by(LeaseRow.state)
        with self._session() as s:
            return {state: int(n) for state, n in s.execute(q)}

    def lease_ids(self) -> list[int]:
        with self._session() as s:
            return list(s.scalars(select(LeaseRow.id).order_by(LeaseRow.id)))

    def projections(self) -> dict[int, tuple[str, str, str | None, int]]:
        """Every lease's (state, events JSON, reason, revision): for a rebuild's diff."""
        with self._session() as s:
            return {r.id: (r.state, r.events, r.reason, r.revision) for r in
                    s.execute(select(LeaseRow.id, LeaseRow.state, LeaseRow.events,
                                     LeaseRow.reason, LeaseRow.revision))}

    def request_ids(self) -> dict[str, tuple[int, int]]:
        """Every client request id still remembered, with its lease and that lease's
        submission time (core seconds), oldest first (the engine keeps them in memory,
        so a new id needs no query, and forgets them when their retention is over)."""
        t, leases = _IDEMPOTENCY, _LEASES
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.request_id, t.c.lease_id, leases.c.submit)
                                .join(leases, leases.c.id == t.c.lease_id)
                                .order_by(t.c.lease_id))
            return {rid: (lease_id, submit) for rid, lease_id, submit in rows}

    def idempotency(self, request_id: str) -> tuple[int, str] | None:
        t = _IDEMPOTENCY
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.lease_id, t.c.body_hash)
                               .where(t.c.request_id == request_id)).first()
            return None if row is None else (row[0], row[1])

    def changes(self, after_revision: int, lease_id: int = 0, limit: int = 1000) -> list[Change]:
        q = select(WatchRow).where(WatchRow.revision > after_revision)
        if lease_id:
            q = q.where(WatchRow.lease_id == lease_id)
        with self._session() as s:
            return [Change(r.revision, r.lease_id, r.state, r.at, r.reason)
                    for r in s.scalars(q.order_by(WatchRow.revision).limit(limit))]

    def last_revision(self) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.coalesce(func.max(WatchRow.revision), 0))) or 0)

    def last_time(self) -> int:
        """The latest core time of any command or lease change: the core had reached at
        least this time when it last committed."""
        with self._session() as s:
            commands = s.scalar(select(func.max(CommandRow.at)))
            changes = s.scalar(select(func.max(WatchRow.at)))
            return max(commands or 0, changes or 0)

    def hosts(self) -> list[HostRecord]:
        with self._session() as s:
            return [HostRecord(r.index, r.name, r.state, r.cpu, r.memory, r.disk, r.net_in,
                               r.net_out)
                    for r in s.scalars(select(HostRow).order_by(HostRow.index))]

    def images(self) -> list[ImageRecord]:
        with self._session() as s:
            return [ImageRecord(r.id, r.size_mb, r.location, r.format)
                    for r in s.scalars(select(ImageRow).order_by(ImageRow.id))]

    def image(self, image_id: str) -> ImageRecord | None:
        with self._session() as s:
            r = s.get(ImageRow, image_id)
            return None if r is None else ImageRecord(r.id, r.size_mb, r.location, r.format)

    def enactments(self) -> list[Enactment]:
        with self._session() as s:
            return [Enactment(r.lease_id, r.kind, r.start, r.status, r.detail)
                    for r in s.scalars(select(EnactmentRow))]

    # ---------------------------------------------------------------- contextualization
    def context_key(self, name: str) -> str:
        """The secret called ``name``, created (random, 256 bits) on first use."""
        with self._session.begin() as s:
            row = s.get(ContextKeyRow, name)
            if row is None:
                row = ContextKeyRow(name=name, value=secrets.token_hex(32))
                s.add(row)
            return row.value

    def allocate_context(self, lease_id: int, count: int, pool: Iterable[str],
                         make: Callable[[int, str], ContextVm], terminal: Collection[str]
                         ) -> list[ContextVm]:
        """The lease's VM rows; on first call, create ``count`` of them with ``make(index,
        address)``, taking the first addresses of ``pool`` that no VM of a lease outside
        the ``terminal`` states holds. Idempotent (a repeated deploy gets the same)."""
        with self._session.begin() as s:
            rows = list(s.scalars(select(ContextVmRow).where(ContextVmRow.lease_id == lease_id)
                                  .order_by(ContextVmRow.index)))
            if rows:
                return [_context_record(r) for r in rows]
            held = set(s.scalars(select(ContextVmRow.address).join(
                LeaseRow, LeaseRow.id == ContextVmRow.lease_id).where(
                LeaseRow.state.not_in(list(terminal)))))
            free = (a for a in pool if a not in held)
            records = []
            for index in range(count):
                address = next(free, None)
                if address is None:
                    raise StoreError(f"the address pool is exhausted ({len(held)} in use)")
                records.append(make(index, address))
            for r in records:
                s.add(ContextVmRow(**_context_values(r)))
            return records

    def context_vms(self, lease_id: int) -> list[ContextVm]:
        with self._session() as s:
            return [_context_record(r) for r in s.scalars(
                select(ContextVmRow).where(ContextVmRow.lease_id == lease_id)
                .order_by(ContextVmRow.index))]

    def context_due(self, now: int) -> list[int]:
        """Leases with a VM still pending or reported at its deadline."""
        with self._session() as s:
            return list(s.scalars(select(ContextVmRow.lease_id).distinct().where(
                ContextVmRow.state.in_(["pending", "reported"]),
                ContextVmRow.deadline <= now)))

    def update_context(self, vms: Iterable[ContextVm]) -> None:
        with self._session.begin() as s:
            for r in vms:
                s.merge(ContextVmRow(**_context_values(r)))

    # ---------------------------------------------------------------- maintenance
    def drop_all(self) -> None:
        """Remove every wsched table (tests on a shared database)."""
        with self.engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {VERSION_TABLE}")

    @staticmethod
    def _labels(s: Session, ids: list[int]) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {}
        if not ids:
            return out
        for row in s.scalars(select(LabelRow).where(LabelRow.lease_id.in_(ids))):
            out.setdefault(row.lease_id, {})[row.key] = row.value
        return out

    @staticmethod
    def _record(row: LeaseRow, labels: dict[str, str]) -> LeaseRecord:
        return LeaseRecord(row.id, row.request_id, row.kind, row.state, row.reason,
                           row.revision, row.submit, row.start, row.end, load_json(row.spec),
                           load_json(row.events), labels)


def _context_values(r: ContextVm) -> dict[str, Any]:
    return {**{f: getattr(r, f) for f in ("lease_id", "index", "instance_id", "address",
                                          "state", "deadline", "expires", "reported_at",
                                          "reason")},
            "identity": None if r.identity is None else dump_json(r.identity, sort=True)}


def _context_record(r: ContextVmRow) -> ContextVm:
    return ContextVm(r.lease_id, r.index, r.instance_id, r.address, r.state, r.deadline,
                     r.expires, r.reported_at,
                     None if r.identity is None else load_json(r.identity), r.reason)
