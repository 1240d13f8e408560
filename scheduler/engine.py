"""The service engine: one scheduling core on the wall clock, made durable and enacted.

The engine owns a ``Scheduler`` and everything around it that the pure core does not
do: it maps wall-clock seconds to core seconds (``core = floor(wall) - origin``, the
origin persisted at the first start), applies commands (submit, cancel, extend, host
changes, failures) and logs them in the store, advances the core when scheduled
changes come due (an APScheduler job wakes it at ``next_event_time()``), diffs lease
states into projections and the watch log, publishes changes to watchers and calls
the enactment driver when events begin.

Durability: every step's writes (commands, projections, watch rows, enactment
records) are committed, grouped with the steps made meanwhile, before its caller is
answered: a lease is acknowledged only after it is committed. Every
``checkpoint_every`` commands the core's whole state is written too, in the same
transaction as the commands it includes. On start the core is rebuilt from the latest
checkpoint (if this code wrote it) by re-applying the commands logged after it, at
their logged core times — the core is deterministic, so the schedule comes back
identical (without a usable checkpoint, from the whole log) — and then catches up to
now: state changes and actions that came due while the service was down are handled
in time order.

Threads: steps run on one engine thread, in arrival order, in batches (the commands
queued meanwhile); commits on one commit thread, which takes a batch's steps once the
engine has run them all and overlaps them with the next batch. The core is not
thread-safe: every access holds ``self._lock`` (the engine thread holds it while it
runs steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import json
import logging
import math
import queue
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from .config import Config, ConfigError, apply_toml, parse_toml, starting_config
from .core import Scheduler, SchedulingError
from .enactment import VM, Driver, EnactmentError
from .leases import (
    DIMENSIONS,
    DiskImage,
    Event,
    EventKind,
    LeaseKind,
    LeaseRequest,
    LeaseState,
    Node,
    Resources,
    Site,
)
from .store import (
    Batch,
    Change,
    Checkpoint,
    Command,
    ContextVm,
    Enactment,
    HostRecord,
    ImageRecord,
    LeaseRecord,
    LeaseUpdate,
    Store,
    StoreError,
    dump_json,
)

log = logging.getLogger(__name__)

#: Longest duration and farthest future start the service accepts (about ten years).
MAX_SECONDS = 10 * 366 * 86_400
#: Largest value of one resource dimension (the core's "unlimited" is 2**40).
MAX_RESOURCE = 2**40 - 1
#: Watch events buffered per subscriber before it must catch up from the database.
WATCH_BUFFER = 10_000
#: How long a client request id is remembered after its lease's creation (seconds):
#: a retry within it gets the original lease; later, the id is free again.
REQUEST_ID_TTL = 86_400
#: Expired request ids are looked for (and deleted from the database) this often; the
#: shortest retention allowed.
REQUEST_ID_SWEEP = 60
#: Steps of one engine batch after which the commit thread is woken without waiting
#: for the end of the batch.
_GROUP_LIMIT = 64
#: Commands logged between two checkpoints of the core (0: none). A restart re-applies
#: the commands after the latest one (~0.25 ms each). Taking one holds the engine: with
#: 10,000 leases on 500 hosts, 0.5-1 s (3 MB stored), so every 50,000 commands costs
#: the engine ~1 % of its time at 1,000 creates/s; a restart loads it in ~0.9 s.
CHECKPOINT_EVERY = 50_000


def _code_digest() -> str:
    """Which code wrote a checkpoint: a digest of the core's modules (a pickle is only
    read back by the code that wrote it; any other rebuilds from the whole log)."""
    from . import config, core, images, kernels, leases, overheads, policies, slottable

    digest = hashlib.sha256()
    try:
        for module in (config, core, images, kernels, leases, overheads, policies, slottable):
            digest.update(Path(module.__file__ or "?").read_bytes())
    except OSError:  # sources not readable (a zipped install): no code reads it back
        return f"core-pickle-zlib/1 unverifiable {secrets.token_hex(8)}"
    return f"core-pickle-zlib/1 {digest.hexdigest()[:32]}"


CHECKPOINT_FORMAT = _code_digest()


# ============================================================================ clocks

class Clock(Protocol):
    """Wall-clock time in seconds since the Unix epoch."""

    def time(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()


class ManualClock:
    """A clock tests set by hand."""

    def __init__(self, start: float) -> None:
        self._t = start
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds

    def set(self, t: float) -> None:
        with self._lock:
            self._t = t


class Timer(Protocol):
    """Calls back at (about) a given wall-clock time."""

    def schedule(self, at: float | None) -> None: ...

    def stop(self) -> None: ...


class APSchedulerTimer:
    """APScheduler 3 background scheduler: one date job per distinct wake-up time, and a
    periodic safety net (a clock step never stalls the schedule for long).

    Jobs are never removed or replaced: APScheduler's loop removes a date job by id
    after submitting it, which would race with a re-arm from the job itself. A stale
    wake-up only makes the engine poll once more, which is harmless."""

    def __init__(self, callback: Callable[[], None], safety_interval: float = 30.0) -> None:
        from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
            BackgroundScheduler,
        )

        self._callback = callback
        self._sched = BackgroundScheduler(timezone=UTC)
        self._sched.add_job(callback, "interval", seconds=safety_interval, id="safety",
                            coalesce=True, max_instances=1)
        self._sched.start()
        self._pending: set[float] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def schedule(self, at: float | None) -> None:
        if at is None:
            return
        with self._lock:
            if at in self._pending:
                return  # thousands of creates per second must not churn the job store
            self._pending.add(at)
            self._sched.add_job(self._fire, "date", args=(at,), id=f"wake-{next(self._ids)}",
                                run_date=datetime.fromtimestamp(at, UTC),
                                misfire_grace_time=None)

    def _fire(self, at: float) -> None:
        with self._lock:
            self._pending.discard(at)
        self._callback()

    def stop(self) -> None:
        self._sched.shutdown(wait=False)


# ============================================================================ errors

class EngineError(Exception):
    """A request the engine refuses; the service maps each subclass to a status code."""


class NotFound(EngineError):
    pass


class InvalidField(EngineError):
    def __init__(self, field_path: str, description: str) -> None:
        super().__init__(f"{field_path}: {description}")
        self.field = field_path
        self.description = description


class Infeasible(EngineError):
    """The request is well-formed but cannot be honoured in the current state."""

    def __init__(self, reason: str, *, subject: str = "", lease_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.subject = subject
        self.lease_id = lease_id


class Conflict(EngineError):
    """Something with that identity exists already (e.g. a reused request id)."""


class Unavailable(EngineError):
    """The database could not commit; nothing was acknowledged."""


# ============================================================================ site

@dataclass(frozen=True)
class SiteDefinition:
    """What a site file defines: the scheduler configuration, hosts and images."""

    config: Config
    nodes: tuple[Node, ...]
    images: tuple[ImageRecord, ...] = ()
    #: The ``[contextualization]`` table (address pool, broker; see
    #: ``contextualization.model.SiteContext``), if the site contextualizes its VMs.
    context: Mapping[str, Any] | None = None
    #: Per host, the libvirt connection URI of its hypervisor (``libvirt-uri`` in
    #: ``[[hosts]]``), for the libvirt driver.
    libvirt_uris: Mapping[str, str] = dataclasses.field(default_factory=dict)


_SITE_EXTRA_KEYS = {"profile", "hosts", "disk-images", "contextualization"}


def parse_site(text: str, source: str) -> SiteDefinition:
    """Parse a site TOML file: the configuration format of ``scheduler/config.py``
    (``[site]`` describes uniform hosts P1..Pn) plus an optional top-level ``profile``
    to start from, ``[[hosts]]`` (name, cpu, memory, disk, net-in, net-out, and
    libvirt-uri for the libvirt driver) for explicit hosts and ``[[disk-images]]`` (id,
    size-mb, location, format)."""
    data = parse_toml(text, source)
    config = apply_toml(starting_config(data, source),
                        {k: v for k, v in data.items() if k not in _SITE_EXTRA_KEYS}, source)
    nodes: list[Node] = []
    uris: dict[str, str] = {}
    for i, h in enumerate(_tables(data.get("hosts", []), "hosts", source)):
        name = h.get("name", f"P{i + 1}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: [[hosts]] {i + 1}: name must be a non-empty string")
        unknown = set(h) - {"name", "libvirt-uri", *(d.replace("_", "-") for d in DIMENSIONS)}
        if unknown:
            raise ConfigError(f"{source}: [[hosts]] {name}: unknown key(s) "
                              f"{', '.join(sorted(unknown))}")
        uri = h.get("libvirt-uri")
        if uri is not None:
            if not isinstance(uri, str) or "://" not in uri:
                raise ConfigError(f"{source}: [[hosts]] {name}: libvirt-uri must be a URI "
                                  "such as qemu+ssh://host/system")
            uris[name] = uri
        nodes.append(Node(i, name, _resources(h, f"{source}: [[hosts]] {name}")))
    if not nodes:
        site = config.default_site()
        if site is None:
            raise ConfigError(f"{source}: no hosts: give [site] nodes = N or [[hosts]]")
        nodes = list(site.nodes)
    if len({n.name for n in nodes}) != len(nodes):
        raise ConfigError(f"{source}: host names must be unique")
    images = []
    for i, img in enumerate(_tables(data.get("disk-images", []), "disk-images", source)):
        where = f"{source}: [[disk-images]] {i + 1}"
        image_id, size = img.get("id"), img.get("size-mb", 0)
        if not isinstance(image_id, str) or not image_id:
            raise ConfigError(f"{where}: id must be a non-empty string")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"{where}: size-mb must be a non-negative integer")
        images.append(ImageRecord(image_id, size, str(img.get("location", "")),
                                  str(img.get("format", ""))))
    context = data.get("contextualization")
    if context is not None and not isinstance(context, dict):
        raise ConfigError(f"{source}: contextualization must be a table")
    return SiteDefinition(config, tuple(nodes), tuple(images), context, uris)


def _tables(value: object, name: str, source: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{source}: {name} must be an array of tables ([[{name}]])")
    return value


def _resources(table: Mapping[str, Any], where: str) -> Resources:
    values: dict[str, int] = {}
    for dim in DIMENSIONS:
        v = table.get(dim.replace("_", "-"), 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{where}: {dim} must be a non-negative integer")
        values[dim] = v
    return Resources(**values)


def load_site(path: Path) -> SiteDefinition:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    return parse_site(text, str(path))


def demo_site() -> SiteDefinition:
    """The bundled demo site (``scheduler/sites/demo.toml``)."""
    text = (resources.files("scheduler") / "sites" / "demo.toml").read_text()
    return parse_site(text, "sites/demo.toml")


def config_to_json(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_json(data: Mapping[str, Any]) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    default = Config()
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            raise ConfigError(f"stored configuration has an unknown key {name!r}")
        current = getattr(default, name)
        if isinstance(current, StrEnum):
            value = type(current)(value)
        elif isinstance(current, Resources):
            value = Resources(**value)
        values[name] = value
    return Config(**values)


def _node_json(n: Node) -> dict[str, Any]:
    return {"index": n.index, "name": n.name, **dataclasses.asdict(n.capacity)}


def _node_from_json(d: Mapping[str, Any]) -> Node:
    return Node(d["index"], d["name"], Resources(**{k: d[k] for k in DIMENSIONS}))


def _host_record(n: Node, state: str = "active") -> HostRecord:
    c = n.capacity
    return HostRecord(n.index, n.name, state, c.cpu, c.memory, c.disk, c.net_in, c.net_out)


# ============================================================================ requests

@dataclass(frozen=True)
class LeaseSpec:
    """A validated lease request, times in core seconds."""

    kind: LeaseKind
    vms: int
    resources: Resources
    image_id: str
    duration: int
    start: int | None = None
    start_latest: int | None = None
    preemptible: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    #: The validated contextualization request (JSON form), if any.
    context: Mapping[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        out = {"kind": str(self.kind), "vms": self.vms,
               "resources": {d: getattr(self.resources, d) for d in DIMENSIONS},
               "image_id": self.image_id,
               "duration": self.duration, "start": self.start,
               "start_latest": self.start_latest, "preemptible": self.preemptible,
               "labels": dict(self.labels)}
        if self.context is not None:  # absent otherwise: older specs keep their hash
            out["context"] = dict(self.context)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LeaseSpec:
        return cls(LeaseKind(d["kind"]), d["vms"], Resources(**d["resources"]), d["image_id"],
                   d["duration"], d.get("start"), d.get("start_latest"), d["preemptible"],
                   tuple(sorted(d["labels"].items())), d.get("context"))


def spec_hash(spec: LeaseSpec) -> str:
    """A digest of the spec, to tell an idempotent retry from a reused request id."""
    return _spec_digest(dump_json(spec.as_json(), sort=True))


def _legacy_spec_hash(spec_json: Mapping[str, Any]) -> str:
    """The digest earlier versions stored (the standard library's JSON text): a retry
    across an upgrade is still recognised."""
    return _spec_digest(json.dumps(spec_json, sort_keys=True))


def _spec_digest(spec_text: str) -> str:
    """``spec_hash`` of the spec whose sorted JSON is ``spec_text`` (the text the
    leases table stores, so a create encodes its spec once)."""
    return hashlib.sha256(spec_text.encode()).hexdigest()


def _request_json(lease_id: int, submit: int, spec_json: Mapping[str, Any],
                  image_mb: int) -> dict[str, Any]:
    """A submit command's request, as logged (``_request_from_json`` reads it back)."""
    return {"id": lease_id, "submit": submit, "image_mb": image_mb, **spec_json}


def _request_from_spec(lease_id: int, submit: int, spec: LeaseSpec,
                       image_mb: int) -> LeaseRequest:
    """The request ``_request_from_json`` reads back from ``_request_json(lease_id,
    submit, spec.as_json(), image_mb)``, without the JSON round trip (a create builds
    it live; the log's copy is what a replay applies, and it is equal)."""
    labels = spec.labels
    if any(a[0] >= b[0] for a, b in itertools.pairwise(labels)):  # as from_json has them
        labels = tuple(sorted(dict(labels).items()))
    extra: dict[str, Any] = {}
    if spec.start_latest is not None:
        extra["start_latest"] = spec.start_latest
    return LeaseRequest(id=lease_id, kind=LeaseKind(spec.kind), vms=spec.vms,
                        resources=spec.resources, image=DiskImage(spec.image_id, image_mb),
                        duration=spec.duration, submit=submit, start=spec.start,
                        preemptible=spec.preemptible, labels=labels, **extra)


def _request_from_json(d: Mapping[str, Any]) -> LeaseRequest:
    return _request_from_spec(d["id"], d["submit"], LeaseSpec.from_json(d), d["image_mb"])


@dataclass(frozen=True)
class CreateResult:
    lease: LeaseRecord
    replayed: bool


@dataclass(frozen=True)
class HostUsage:
    hosts: int
    hosts_in_use: int
    capacity: Resources
    allocated: Resources
    leases_by_state: Mapping[str, int]
    at: int


# ============================================================================ watching

class Subscription:
    """A watcher's queue of changes; ``None`` means the engine stopped. A watcher that
    falls more than ``WATCH_BUFFER`` behind is dropped (``overflowed``) and must
    catch up from the watch log."""

    def __init__(self, lease_id: int, maxsize: int = WATCH_BUFFER) -> None:
        self.lease_id = lease_id
        self.queue: queue.Queue[Change | None] = queue.Queue(maxsize)
        self.overflowed = False


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # not cancelled (its caller went away)
            future.set_result(None)


class _Wake:
    """Notifies an asyncio caller: resolves ``future`` on its loop. A group commit
    wakes each loop once for all its steps (``_wake_all``): every wake-up is a
    system call and a loop iteration, paid on the server's one interpreter lock."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self.loop = loop
        self.future = future

    def __call__(self) -> None:
        _wake(self.loop, [self.future])


def _wake(loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future[None]]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
        loop.call_soon_threadsafe(_resolve, futures)


def _wake_all(notifies: list[Callable[[], None]]) -> None:
    """Call every notify, waking each event loop once."""
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for notify in notifies:
        if isinstance(notify, _Wake):
            loops.setdefault(notify.loop, []).append(notify.future)
        else:
            notify()
    for loop, futures in loops.items():
        _wake(loop, futures)


class _Latch:
    """Set once, waited on by one thread: a lock held until set. (A threading.Event is a
    Condition written in Python; one per create cost ~3 % of the server's CPU.)"""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def wait(self) -> None:
        self._lock.acquire()


class _Request:
    """One command for the engine thread: its body, then its step waiting for the group
    commit, and what the caller gets back once that is committed. ``notify`` is called
    then (on the commit or engine thread); without it, ``wait`` blocks until then."""

    def __init__(self, body: Callable[[_Step], Any],
                 notify: Callable[[], None] | None = None) -> None:
        self.body = body
        self.step = _Step()
        self.due: int | None = None  # the core's next due time after this step
        self.result: Any = None
        self.error: BaseException | None = None
        self._latch: _Latch | None = None
        if notify is None:
            self._latch = _Latch()
            notify = self._latch.set
        self.notify = notify

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.notify()

    def wait(self) -> Any:
        """Block until the step is committed (or failed); its result, or raise its error."""
        assert self._latch is not None, "a request with a notify callback is not waited on"
        self._latch.wait()
        return self.outcome()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class _Step:
    """What one engine step accumulates before its commit (internal, mutable)."""

    commands: list[Command] = field(default_factory=list)
    new: dict[int, LeaseRecord] = field(default_factory=dict)
    updates: dict[int, LeaseUpdate] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    idempotency: tuple[str, int, str] | None = None
    hosts: list[HostRecord] = field(default_factory=list)
    enactments: list[Enactment] = field(default_factory=list)
    forget_requests_before: int | None = None
    checkpoint: Checkpoint | None = None

    def batch(self) -> Batch:
        """What the commit thread writes. It compresses the checkpoint, if any, off the
        engine thread (zlib lets the GIL go: the engine goes on meanwhile)."""
        checkpoint = self.checkpoint
        if checkpoint is not None:
            checkpoint = dataclasses.replace(checkpoint, data=zlib.compress(checkpoint.data, 1))
        return Batch(tuple(self.commands), tuple(self.new.values()),
                     tuple(self.updates.values()), tuple(self.changes), self.idempotency,
                     tuple(self.hosts), tuple(self.enactments), self.forget_requests_before,
                     checkpoint)


_TERMINAL = {str(s) for s in LeaseState if s.terminal}
_VM_EVENTS = {EventKind.BOOT, EventKind.RUN, EventKind.SHUTDOWN, EventKind.SUSPEND,
              EventKind.RESUME}


# ============================================================================ contextualization

class ContextHook(Protocol):
    """Contextualization as the engine sees it (``contextualization.manager`` and
    ``.broker``): seeds built at deploy, per-VM context state for the API."""

    def prepare(self, lease_id: int, context: Mapping[str, Any] | None, vm_count: int,
                now: int) -> Sequence[Path]:
        """Write each VM's seed (once; ``now`` in wall seconds); the seed paths."""

    def states(self, lease_id: int) -> Sequence[ContextVm]: ...

    def release(self, lease_id: int) -> None:
        """The lease has ended: its seeds may go."""


# ============================================================================ the engine

class Engine:
    """Owns one core; thread-safe. ``start()`` arms the wake-up timer (the service);
    without it (tests), call ``poll()`` after moving the clock."""

    def __init__(self, store: Store, site: SiteDefinition, driver: Driver, clock: Clock,
                 context: ContextHook | None = None, *,
                 request_id_ttl: int = REQUEST_ID_TTL,
                 checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        if request_id_ttl < REQUEST_ID_SWEEP:  # else an id could expire inside one commit
            raise ValueError(f"request_id_ttl must be at least {REQUEST_ID_SWEEP} s")
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must not be negative (got {checkpoint_every})")
        self.store = store
        self.request_id_ttl = request_id_ttl
        self.checkpoint_every = checkpoint_every
        self.context = context
        self.driver = driver
        self.clock = clock
        self._lock = threading.RLock()
        # Commands run one after another on the engine thread, in arrival order: no
        # lock hand-over between client threads (each a wake-up, with the core idle
        # meanwhile), and no client overtaken by later ones.
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._thread_id: int | None = None
        self._current: _Step | None = None  # the step the engine thread is running
        # Group commit: steps wait in ``_pending`` (in order) for the commit thread,
        # which writes all of them in one transaction while the next steps run. The
        # condition's lock also guards the watchers and the published revision.
        self._commits = threading.Condition(threading.Lock())
        self._pending: list[_Request] = []
        self._committing = False
        self._lost: Unavailable | None = None  # a failed commit: rebuild before going on
        self._timer: Timer | None = None
        self._subs: list[Subscription] = []
        self._stopped = False
        meta = store.meta()
        if not meta:
            origin = math.floor(clock.time())
            meta = {"origin": origin, "config": config_to_json(site.config),
                    "site": [_node_json(n) for n in site.nodes], "format": 1}
            store.init_meta(meta, [_host_record(n) for n in site.nodes], site.images)
            log.info("new database initialized", extra={"origin": origin,
                                                        "hosts": len(site.nodes)})
        elif config_to_json(site.config) != meta["config"] or \
                [_node_json(n) for n in site.nodes] != meta["site"]:
            # The log only replays identically on the site and configuration it was
            # written on: the database's win over the given ones.
            log.warning("database was created with another site or configuration: using "
                        "the database's", extra={"url": _safe_url(store.url)})
        self.origin: int = meta["origin"]
        self._config = config_from_json(meta["config"])
        self._initial_nodes = tuple(_node_from_json(d) for d in meta["site"])
        self._rebuild()

    # ------------------------------------------------------------ lifecycle
    def start(self, timer: Timer | None = None) -> None:
        """Catch up to now and arm the wake-up timer (APScheduler by default)."""
        self._timer = timer or APSchedulerTimer(self.poll)
        self.poll()

    def stop(self) -> None:
        """Refuse new commands; those queued are refused, those run are committed."""
        with self._lock, self._commits:
            self._stopped = True
            timer, self._timer = self._timer, None
            for sub in self._subs:
                with contextlib.suppress(queue.Full):
                    sub.queue.put_nowait(None)
            self._subs.clear()
            self._commits.notify_all()
        self._requests.put(None)
        if timer is not None:  # outside the lock: a wake-up may be waiting for it
            timer.stop()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=30)

    @property
    def stopped(self) -> bool:
        return self._stopped

    # ------------------------------------------------------------ time
    def now(self) -> int:
        """Current core time (never goes back, even if the wall clock does)."""
        return max(math.floor(self.clock.time()) - self.origin, self.core.now)

    def _show_time(self, t: int) -> str:
        """An instant in core seconds, as users see it (UTC, ISO 8601)."""
        return datetime.fromtimestamp(self.origin + t, UTC).isoformat().replace("+00:00", "Z")

    def to_wall(self, t: int) -> int:
        return self.origin + t

    def to_core(self, wall_seconds: int) -> int:
        return wall_seconds - self.origin

    # ------------------------------------------------------------ rebuild
    def _rebuild(self) -> None:
        """(Re)create the core from the latest checkpoint (if this code wrote it) and
        the commands logged after it, or else from the whole log; then the engine's own
        state from the projections."""
        self.core, skip = self._restore()
        commands = self.store.commands(skip)
        for cmd in commands:
            self.core.advance_to(cmd.at)
            self._apply(cmd)
        self._log_length = self._checkpointed = skip + len(commands)
        # The projections are as of the last commit: bring the core there silently, so
        # the catch-up records only what happened after it.
        self.core.advance_to(self.store.last_time())
        self.core.take_changed()  # the projections show all of that already
        self._revision = self.store.last_revision()
        self._published = self._revision  # the last revision committed and published
        self._known: dict[int, tuple[str, str, str | None]] = {}
        self._versions: dict[int, tuple[int, LeaseState]] = {}
        self._live: set[int] = set()
        projections = self.store.projections()
        for lease_id, (state, events, reason, _rev) in projections.items():
            if state in _TERMINAL:
                continue  # (a checkpoint's core may have forgotten it)
            if lease_id not in self.core.leases:
                log.error("live lease in the projection but not in the core",
                          extra={"lease": lease_id})
                continue
            self._live.add(lease_id)
            self._known[lease_id] = (state, events, reason)
        # actions carried out, per live lease (a finished lease's are forgotten)
        self._enacted: dict[int, set[tuple[str, int]]] = {}
        for e in self.store.enactments():
            if e.lease_id in self._live:
                self._enacted.setdefault(e.lease_id, set()).add((e.kind, e.start))
        self._actions: list[tuple[int, int, int, str, tuple[int, ...]]] = []
        self._action_seq = itertools.count()
        for lease_id in self._live:
            self._queue_actions(lease_id, self.core.leases[lease_id].events())
        # (every lease ever created has a projection; the core forgets finished ones)
        self._next_id = max(projections, default=0) + 1
        self._finished = [i for i, lease in self.core.leases.items() if lease.finished]
        self._forget_finished()
        # request id -> (lease, submission), oldest first: new ids need no query
        self._request_ids = self.store.request_ids()
        self._requests_swept = -math.inf
        self._resync = True  # compare every live lease with its projection once
        self._images: dict[str, ImageRecord] = {}
        self._names: list[str] = []
        log.info("core rebuilt", extra={"leases": len(self.core.leases),
                                        "live": len(self._live), "time": self.core.now})

    def _restore(self) -> tuple[Scheduler, int]:
        """A new core: the latest checkpoint's if this code wrote it, else an empty one;
        and how many commands of the log it includes."""
        checkpoint = self.store.checkpoint()
        if checkpoint is not None and checkpoint.format == CHECKPOINT_FORMAT:
            try:
                core = Scheduler.loads(zlib.decompress(checkpoint.data), self._show_time)
            except Exception as e:  # unreadable: the log has everything anyway
                log.warning("checkpoint unreadable: re-applying the whole command log",
                            extra={"error": str(e), "commands": checkpoint.commands})
            else:
                log.info("core restored from a checkpoint",
                         extra={"commands": checkpoint.commands, "time": checkpoint.at})
                return core, checkpoint.commands
        elif checkpoint is not None:
            log.info("checkpoint written by other code: re-applying the whole command log",
                     extra={"format": checkpoint.format})
        return Scheduler(Site(self._initial_nodes), self._config,
                         show_time=self._show_time), 0

    def _log(self, step: _Step, cmd: Command) -> None:
        """Record a command the core has just applied, for the step's commit."""
        step.commands.append(cmd)
        self._log_length += 1

    def _checkpoint(self) -> Checkpoint:
        """The core as it is now, after the ``_log_length`` commands logged so far
        (not compressed yet: the commit thread does that, see ``_Step.batch``)."""
        started = time.perf_counter()
        data = self.core.dumps()
        self._checkpointed = self._log_length
        log.info("checkpoint taken", extra={"commands": self._log_length, "bytes": len(data),
                                            "seconds": round(time.perf_counter() - started, 3)})
        return Checkpoint(self._log_length, self.core.now, CHECKPOINT_FORMAT, data)

    def _apply(self, cmd: Command) -> None:
        """Apply one logged command to the core (live and on replay alike)."""
        b, core = cmd.body, self.core
        match cmd.kind:
            case "submit":
                core.submit(_request_from_json(b["request"]))
            case "cancel":
                core.cancel(b["lease"])
            case "extend":
                core.extend(b["lease"], b["extra"])
            case "add_host":
                core.add_node(_node_from_json(b["node"]))
            case "drain_host":
                core.drain_node(b["index"])
            case "remove_host":
                core.remove_node(b["index"])
            case "fail":
                core.fail(b["lease"], b["reason"])
            case _:
                raise ValueError(f"unknown command {cmd.kind!r} in the log")

    # ------------------------------------------------------------ steps
    def _run(self, body: Callable[[_Step], Any]) -> Any:
        """Run ``body`` as one engine step and return what it returns once the step is
        committed (so nothing is acknowledged before it is durable). The step first
        catches up to now. A refused request (EngineError) still commits the catch-up;
        any other error means the core may be half-changed: it is rebuilt from the
        database.

        Steps run on the engine thread, one at a time in arrival order; their commits
        are grouped (one transaction for the steps made meanwhile) on the commit
        thread. A step inside a step (a callback from the driver or contextualization)
        runs in place and is committed with the outer one."""
        if self._current is not None and threading.get_ident() == self._thread_id:
            return body(self._current)
        return self._enqueue(body).wait()

    def _enqueue(self, body: Callable[[_Step], Any],
                 notify: Callable[[], None] | None = None) -> _Request:
        """Queue ``body`` as a step for the engine thread (see ``_run``)."""
        if self._stopped:
            raise Unavailable("the service is stopping")
        self._start_threads()
        request = _Request(body, notify)
        self._requests.put(request)
        if self._stopped:  # stop() may have drained the queue before this arrived
            self._requests.put(None)
        return request

    def _start_threads(self) -> None:
        with self._threads_lock:
            if self._threads:
                return
            self._threads = [threading.Thread(target=self._engine_loop, daemon=True,
                                              name="wsched-engine"),
                             threading.Thread(target=self._commit_loop, daemon=True,
                                              name="wsched-commit")]
            for t in self._threads:
                t.start()

    def _engine_loop(self) -> None:
        self._thread_id = threading.get_ident()
        while True:
            request = self._requests.get()
            batch = [request]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._requests.get_nowait())
            with self._lock:  # one acquisition for everything queued meanwhile
                for r in batch:
                    if r is None:
                        continue
                    if self._stopped:
                        r.fail(Unavailable("the service is stopping"))
                        continue
                    try:
                        self._execute(r)
                    except Exception as e:  # rebuilding failed too (the database is down?)
                        log.exception("engine step failed and the core could not be "
                                      "rebuilt: the next step tries again")
                        lost = Unavailable(f"the core could not be rebuilt: {e}")
                        with self._commits:
                            self._lost = lost
                        r.fail(lost)
            # The commit thread is woken once for the batch, not once per step: each
            # wake-up takes the GIL from the engine (and a commit's fixed cost is paid
            # per group), which cost more than the earlier start of the first commits.
            with self._commits:
                self._commits.notify_all()
            if self._stopped:
                with contextlib.suppress(queue.Empty):
                    while True:
                        r = self._requests.get_nowait()
                        if r is not None:
                            r.fail(Unavailable("the service is stopping"))
                return

    def _execute(self, request: _Request) -> None:
        """Run one step (the caller holds the lock) and queue it for the commit."""
        if self._lost is not None:
            self._recover()
        step = request.step
        self._current = step
        try:
            self._catch_up(self.now(), step)
            request.result = request.body(step)
        except EngineError as e:
            request.error = e
        except Exception as e:
            self._abandon(request, e)
            return
        finally:
            self._current = None
        try:
            self._forget_finished()
            if self.checkpoint_every and \
                    self._log_length - self._checkpointed >= self.checkpoint_every:
                try:
                    step.checkpoint = self._checkpoint()
                except Exception:  # a checkpoint only shortens restarts: the log has it all
                    log.exception("checkpoint failed: the command log has every command",
                                  extra={"commands": self._log_length})
                    self._checkpointed = self._log_length
            request.due = self._next_due()
        except Exception as e:
            self._abandon(request, e)
            return
        with self._commits:
            if self._lost is not None:  # built on steps whose commit failed
                request.fail(self._lost)
                return
            self._pending.append(request)
            if len(self._pending) >= _GROUP_LIMIT:  # else the engine loop wakes it
                self._commits.notify_all()

    def _abandon(self, request: _Request, error: Exception) -> None:
        """A step failed (a bug, in the core or here): rebuild the core from the
        database, which has every step before this one, and fail this one's call. (An
        exception that left the engine's thread would end it, and every later call
        would wait for ever.)"""
        log.exception("engine step failed: rebuilding the core from the database")
        self._current = None
        self._drain()  # the steps before this one are good: keep them
        self._rebuild()
        request.fail(error)

    def _forget_finished(self) -> None:
        """Let the core drop the leases that ended (the database keeps them), once none
        of their actions is still due: a service's memory must not grow with history."""
        if self._actions and self._actions[0][0] <= self.core.now:
            return  # the next step enacts those first
        for lease_id in self._finished:
            lease = self.core.leases.get(lease_id)
            if lease is not None and lease.finished:
                self.core.forget(lease_id)
        self._finished = []

    def _drain(self) -> None:
        """Wait until every queued step is committed (or has failed)."""
        with self._commits:
            self._commits.notify_all()  # steps of the current batch are not announced yet
            while self._pending or self._committing:
                self._commits.wait()

    def _recover(self) -> None:
        """After a failed commit: rebuild the core from what the database has."""
        self._drain()
        self._rebuild()
        with self._commits:
            self._lost = None

    def _commit_loop(self) -> None:
        while True:
            with self._commits:
                while not self._pending and not self._stopped:
                    self._commits.wait()
                if not self._pending:
                    return  # stopped, everything committed
                requests, self._pending = self._pending, []
                self._committing = True
            self._commit(requests)

    def _commit(self, requests: list[_Request]) -> None:
        """Write ``requests``' steps in one transaction, then publish and answer them.
        Never takes the engine lock: core steps go on while the database writes."""
        try:
            self.store.commit_many([r.step.batch() for r in requests])
        except Exception as e:
            log.exception("commit failed: the core will be rebuilt from the database")
            error = Unavailable(f"could not commit to the database: {e}")
            with self._commits:
                # Later steps built on the lost ones: they are lost too.
                requests += self._pending
                self._pending = []
                self._lost = error
                self._committing = False
                self._commits.notify_all()
            for r in requests:
                r.fail(error)
            return
        # The steps are committed: whatever fails from here on (a bug), each call is
        # answered, and the commit thread goes on (an exception that left it would end
        # it, and every later call would wait for ever).
        with self._commits:
            try:
                for r in requests:
                    self._publish(r.step.changes)
            except Exception:
                # Watchers may have missed changes: each catches up from the watch log.
                log.exception("publishing committed changes failed: watchers catch up "
                              "from the watch log")
                for sub in self._subs:
                    sub.overflowed = True
                self._subs.clear()
            self._committing = False
            self._commits.notify_all()
            timer = self._timer
        if timer is not None:  # the latest step knows the core's next due time
            due = requests[-1].due
            try:
                timer.schedule(None if due is None else float(self.to_wall(due)))
            except Exception:
                log.exception("could not arm the timer: its periodic safety net polls")
        _wake_all([r.notify for r in requests])

    def _catch_up(self, now: int, step: _Step) -> None:
        """Apply, instant by instant, everything due up to ``now``."""
        if now - self._requests_swept >= REQUEST_ID_SWEEP:
            self._forget_request_ids(now, step)
        while (t := self._next_due()) is not None and t <= now:
            self.core.advance_to(t)
            self._sync(t, step)
            self._enact_due(step)
        self.core.advance_to(now)  # nothing is due: no lease changes state
        if self._resync:
            self._resync = False
            self._sync(now, step, everything=True)
            self._enact_due(step)

    def _forget_request_ids(self, now: int, step: _Step) -> None:
        """Forget the request ids whose retention is over (memory and database): a
        long-running service must not keep every id it was ever given."""
        self._requests_swept = now
        expired, before = [], 0
        for rid, (lease_id, submit) in self._request_ids.items():  # oldest first
            if submit > now - self.request_id_ttl:
                break
            expired.append(rid)
            before = lease_id + 1
        for rid in expired:
            del self._request_ids[rid]
        if expired:
            step.forget_requests_before = before

    def _node_names(self) -> list[str]:
        """Host names by node index (hosts are only ever appended: a new length means a
        new host; listing 500 names per step cost more than the step's own sync)."""
        nodes = self.core.site.nodes
        if len(self._names) != len(nodes):
            self._names = [n.name for n in nodes]
        return self._names

    def _next_due(self) -> int | None:
        times = [t for t in (self.core.next_event_time(),
                             self._actions[0][0] if self._actions else None) if t is not None]
        return min(times) if times else None

    def poll(self) -> None:
        """Apply what is due now (the timer's callback; tests call it directly)."""
        try:
            self._run(lambda step: None)
        except Unavailable as e:
            log.warning("poll failed", extra={"error": str(e)})

    def _sync(self, at: int, step: _Step, touched: tuple[int, ...] = (),
              everything: bool = False) -> None:
        """Record every lease whose state, schedule or reason changed (those the core
        names, or with ``everything`` every live lease)."""
        names = self._node_names()
        ids = self.core.take_changed() | set(touched)
        if everything:
            ids |= self._live
        for lease_id in sorted(ids):
            lease = self.core.leases[lease_id]
            key = (lease.version, lease.state)
            if self._versions.get(lease_id) == key and lease_id in self._known:
                continue
            self._versions[lease_id] = key
            outcome = lease.outcome()
            state, reason = str(outcome.state), outcome.reason
            events = [{"kind": str(e.kind), "start": e.start, "end": e.end,
                       "nodes": [names[n] for n in e.nodes]} for e in outcome.events]
            events_json = dump_json(events)
            if self._known.get(lease_id) == (state, events_json, reason):
                continue
            self._revision += 1
            new = step.new.get(lease_id)
            if new is not None:
                step.new[lease_id] = dataclasses.replace(
                    new, state=state, reason=reason, revision=self._revision,
                    start=outcome.start, end=outcome.end, events=events, events_text=events_json)
            else:
                step.updates[lease_id] = LeaseUpdate(lease_id, state, reason, self._revision,
                                                     outcome.start, outcome.end, events,
                                                     events_json)
            step.changes.append(Change(self._revision, lease_id, state, at, reason))
            self._known[lease_id] = (state, events_json, reason)
            self._queue_actions(lease_id, outcome.events)
            if state in _TERMINAL:
                self._finished.append(lease_id)
                self._live.discard(lease_id)
                self._known.pop(lease_id, None)
                self._versions.pop(lease_id, None)
                self._enacted.pop(lease_id, None)
                if self.context is not None:
                    self.context.release(lease_id)
            else:
                self._live.add(lease_id)

    # ------------------------------------------------------------ enactment
    def _queue_actions(self, lease_id: int, events: tuple[Event, ...] | list[Event]) -> None:
        for e in events:
            if e.kind is not EventKind.RUN and \
                    (str(e.kind), e.start) not in self._enacted.get(lease_id, ()):
                heapq.heappush(self._actions, (e.start, next(self._action_seq), lease_id,
                                               str(e.kind), e.nodes))

    def _enact_due(self, step: _Step) -> None:
        now = self.core.now
        popped: set[tuple[int, str, int]] = set()  # the queue may hold an action twice
        while self._actions and self._actions[0][0] <= now:
            start, _, lease_id, kind, nodes = heapq.heappop(self._actions)
            lease = self.core.leases.get(lease_id)
            if lease is None or (kind, start) in self._enacted.get(lease_id, ()) or \
                    (lease_id, kind, start) in popped:
                continue  # done already, or the stale action of a forgotten lease
            events = lease.events()
            event = next((e for e in events if str(e.kind) == kind and e.start == start
                          and e.nodes == nodes), None)
            if event is None:
                continue  # re-planned or cancelled before it began
            popped.add((lease_id, kind, start))
            if not lease.finished:  # a finished lease's memory is dropped (see _sync)
                self._enacted.setdefault(lease_id, set()).add((kind, start))
            if lease.failed:
                continue  # its VMs are gone: nothing more to carry out
            try:
                self._enact(lease_id, event, events)
            except EnactmentError as e:
                reason = f"{kind} at {start} s failed: {e}"
                log.warning("enactment failed", extra={"lease": lease_id, "reason": reason})
                step.enactments.append(Enactment(lease_id, kind, start, "failed", str(e)))
                cmd = Command("fail", now, {"lease": lease_id, "reason": reason})
                self._apply(cmd)
                self._log(step, cmd)
                self._sync(now, step, (lease_id,))
                continue
            step.enactments.append(Enactment(lease_id, kind, start, "ok"))

    def _enact(self, lease_id: int, event: Event, events: list[Event]) -> None:
        req = self.core.leases[lease_id].request
        names = self._node_names()
        hosts = [names[n] for n in event.nodes]
        seeds = self._seeds(lease_id, req.vms) if event.kind is not EventKind.TRANSFER else []
        vms = [VM(lease_id, i, req.image.id, req.resources, seeds[i] if seeds else None)
               for i in range(req.vms)]
        d = self.driver
        match event.kind:
            case EventKind.TRANSFER:
                for h in hosts:
                    d.prepare_image(req.image.id, h)
            case EventKind.BOOT:
                for vm, h in zip(vms, hosts, strict=False):
                    d.deploy(vm, h)
                    d.start(vm, h)
            case EventKind.SUSPEND:
                for vm, h in zip(vms, hosts, strict=False):
                    d.suspend(vm, h)
            case EventKind.RESUME:
                for vm, h in zip(vms, hosts, strict=False):
                    d.resume(vm, h)
            case EventKind.MIGRATE:
                before = [e for e in events if e.kind is EventKind.SUSPEND
                          and e.end <= event.start]
                after = [e for e in events if e.kind is EventKind.RESUME
                         and e.start >= event.end]
                if before and after:
                    src = [names[n] for n in before[-1].nodes]
                    dst = [names[n] for n in after[0].nodes]
                    for vm, s, t in zip(vms, src, dst, strict=False):
                        d.migrate(vm, s, t)
            case EventKind.SHUTDOWN:
                for vm, h in zip(vms, hosts, strict=False):
                    if event.end > event.start:  # zero time: destroyed without shutdown
                        d.shutdown(vm, h)
                    d.destroy(vm, h)

    def _seeds(self, lease_id: int, vm_count: int) -> Sequence[Path]:
        """Each VM's context seed (built at the first deploy), if contextualizing."""
        if self.context is None:
            return []
        record = self.store.lease(lease_id)
        try:
            return self.context.prepare(lease_id, record.spec.get("context") if record else None,
                                        vm_count, self.to_wall(self.core.now))
        except (ValueError, OSError, StoreError) as e:  # pool exhausted, disk full, ...
            raise EnactmentError(f"contextualization: {e}") from e

    def context_states(self, lease_id: int) -> Sequence[ContextVm]:
        return self.context.states(lease_id) if self.context is not None else []

    def context_changed(self, lease_id: int, note: str) -> None:
        """Record a change of a lease's context state in its watch log (and revision)."""
        def body(step: _Step) -> None:
            update = step.updates.get(lease_id)
            if update is None:
                record = self.store.lease(lease_id)
                if record is None:
                    return
                update = LeaseUpdate(lease_id, record.state, record.reason, 0, record.start,
                                     record.end, record.events)
            self._revision += 1
            step.updates[lease_id] = dataclasses.replace(update, revision=self._revision)
            step.changes.append(Change(self._revision, lease_id, update.state,
                                       self.core.now, note))
        self._run(body)

    # ------------------------------------------------------------ watchers
    def subscribe(self, lease_id: int = 0) -> tuple[Subscription, int]:
        """A live subscription and the revision it starts after: every change up to that
        revision is in the watch log, every later one will be in the queue."""
        with self._commits:
            if self._stopped:
                raise Unavailable("the service is stopping")
            sub = Subscription(lease_id)
            self._subs.append(sub)
            # Published, not merely assigned: a revision still in a commit under way is
            # not in the log yet, and reaches the queue only after this point.
            return sub, self._published

    def unsubscribe(self, sub: Subscription) -> None:
        with self._commits:
            if sub in self._subs:
                self._subs.remove(sub)

    def _publish(self, changes: list[Change]) -> None:
        """Hand committed changes to the watchers (the caller holds ``_commits``)."""
        if changes:
            self._published = max(self._published, changes[-1].revision)
        if not changes or not self._subs:
            return
        for sub in list(self._subs):
            try:
                for c in changes:
                    if not sub.lease_id or c.lease_id == sub.lease_id:
                        sub.queue.put_nowait(c)
            except queue.Full:
                sub.overflowed = True
                self._subs.remove(sub)

    # ------------------------------------------------------------ leases
    def create_lease(self, spec: LeaseSpec, request_id: str | None = None) -> CreateResult:
        """Submit a lease; returns it as committed (a rejected one too: the caller
        reports it). A retry with the same request id returns the first answer."""
        result: CreateResult = self._run(self._create(spec, request_id))
        return result

    async def create_lease_async(self, spec: LeaseSpec,
                                 request_id: str | None = None) -> CreateResult:
        """``create_lease`` for an asyncio caller (the gRPC server): it awaits the commit
        instead of holding a thread until then."""
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        request = self._enqueue(self._create(spec, request_id), _Wake(loop, committed))
        await committed
        result: CreateResult = request.outcome()
        return result

    def _create(self, spec: LeaseSpec, request_id: str | None) -> Callable[[_Step], CreateResult]:
        """The step that submits ``spec`` (checks and encodes it first, off the engine
        thread)."""
        image = self._image(spec.image_id)
        if image is None:
            raise InvalidField("spec.image_id", f"no registered image {spec.image_id!r}")
        spec_json = spec.as_json()
        spec_text = dump_json(spec_json, sort=True)  # hashed, and stored as is
        digest = _spec_digest(spec_text)

        def body(step: _Step) -> CreateResult:
            # A new request id (the common case) needs no query: every retained id is in memory.
            if request_id and request_id in self._request_ids:
                seen = self.store.idempotency(request_id)
                if seen is None:  # its first request is in a group commit under way
                    raise Unavailable(f"request id {request_id!r} is being committed: retry")
                lease_id, known = seen
                if known != digest and known != _legacy_spec_hash(spec_json):
                    raise Conflict(f"request id {request_id!r} was used for lease "
                                   f"{lease_id} with a different spec")
                record = self.store.lease(lease_id)
                assert record is not None  # written in the same transaction
                return CreateResult(record, True)
            now = self.core.now
            if spec.start is not None and spec.start < now:
                raise InvalidField("spec.start", f"starts in the past ({self.to_wall(spec.start)}"
                                   f" < now {self.to_wall(now)}, seconds since the epoch)")
            lease_id = self._next_id
            try:  # the model's own checks, before the core sees it
                parsed = _request_from_spec(lease_id, now, spec, image.size_mb)
            except ValueError as e:
                raise InvalidField("spec", str(e)) from e
            self._next_id += 1
            cmd = Command("submit", now,
                          {"request": _request_json(lease_id, now, spec_json, image.size_mb)})
            self.core.submit(parsed)  # what _apply(cmd) does, without the JSON round trip
            self._log(step, cmd)
            step.new[lease_id] = LeaseRecord(lease_id, request_id or None, str(spec.kind),
                                             "pending", None, 0, now, None, None,
                                             spec_json, [], dict(spec.labels),
                                             spec_text=spec_text)
            if request_id:
                step.idempotency = (request_id, lease_id, digest)
                self._request_ids[request_id] = (lease_id, now)
            self._sync(now, step, (lease_id,))
            self._enact_due(step)
            return CreateResult(step.new[lease_id], False)

        return body

    def get_lease(self, lease_id: int) -> LeaseRecord:
        record = self.store.lease(lease_id)
        if record is None:
            raise NotFound(f"no lease {lease_id}")
        return record

    def cancel_lease(self, lease_id: int) -> LeaseRecord:
        return self._lease_command(lease_id, "cancel", {})

    def extend_lease(self, lease_id: int, extra: int) -> LeaseRecord:
        return self._lease_command(lease_id, "extend", {"extra": extra})

    def _lease_command(self, lease_id: int, kind: str, args: dict[str, Any]) -> LeaseRecord:
        """Apply ``kind`` to a lease that has not ended; the lease as committed."""
        def body(step: _Step) -> None:
            lease = self.core.leases.get(lease_id)
            if lease is None:  # unknown, or ended and forgotten by the core
                record = self.store.lease(lease_id)
                if record is None:
                    raise NotFound(f"no lease {lease_id}")
                raise Infeasible(f"lease {lease_id} is already {record.state}",
                                 subject=f"lease/{lease_id}", lease_id=lease_id)
            if lease.state.terminal:
                raise Infeasible(f"lease {lease_id} is already {lease.state}",
                                 subject=f"lease/{lease_id}", lease_id=lease_id)
            cmd = Command(kind, self.core.now, {"lease": lease_id, **args})
            try:
                self._apply(cmd)
            except SchedulingError as e:  # the core refuses without changing anything
                raise Infeasible(str(e), subject=f"lease/{lease_id}",
                                 lease_id=lease_id) from e
            self._log(step, cmd)
            self._sync(self.core.now, step, (lease_id,))
            self._enact_due(step)
        self._run(body)
        return self.get_lease(lease_id)

    def list_leases(self, *, states: tuple[str, ...] = (), kinds: tuple[str, ...] = (),
                    labels: Mapping[str, str] | None = None, after_id: int = 0,
                    limit: int = 100) -> list[LeaseRecord]:
        return self.store.leases(states=states, kinds=kinds, labels=labels,
                                 after_id=after_id, limit=limit)

    def counter_offer(self, lease_id: int) -> int | None:
        """The earliest core time at which a rejected AR would fit, if there is one."""
        with self._lock:
            lease = self.core.leases.get(lease_id)
            if lease is not None:
                request = lease.request
            else:  # ended, and forgotten by the core: rebuild its request from the record
                record = self.store.lease(lease_id)
                image = self._image(record.spec["image_id"]) if record is not None else None
                if record is None or image is None:
                    return None
                request = _request_from_json(
                    _request_json(lease_id, record.submit, record.spec, image.size_mb))
            if request.kind is not LeaseKind.AR:
                return None
            return self.core.earliest_ar_start(request)

    # ------------------------------------------------------------ hosts and images
    def hosts(self) -> list[HostRecord]:
        return self.store.hosts()

    def _host(self, name: str) -> HostRecord:
        for h in self.store.hosts():
            if h.name == name and h.state != "removed":
                return h
        raise NotFound(f"no host {name!r}")

    def add_host(self, name: str, capacity: Resources) -> HostRecord:
        def body(step: _Step) -> HostRecord:
            if any(h.name == name for h in self.store.hosts()):
                raise Conflict(f"a host named {name!r} exists already")
            node = Node(len(self.core.site.nodes), name, capacity)
            cmd = Command("add_host", self.core.now, {"node": _node_json(node)})
            try:
                self._apply(cmd)
            except (SchedulingError, ValueError) as e:
                raise Infeasible(str(e), subject=f"host/{name}") from e
            self._log(step, cmd)
            record = _host_record(node)
            step.hosts.append(record)
            self._sync(self.core.now, step)
            return record
        added: HostRecord = self._run(body)
        return added

    def drain_host(self, name: str) -> HostRecord:
        return self._host_command(name, "drain_host", "draining")

    def remove_host(self, name: str) -> HostRecord:
        return self._host_command(name, "remove_host", "removed")

    def _host_command(self, name: str, kind: str, state: str) -> HostRecord:
        def body(step: _Step) -> HostRecord:
            host = self._host(name)
            cmd = Command(kind, self.core.now, {"index": host.index})
            try:
                self._apply(cmd)
            except (SchedulingError, ValueError) as e:
                raise Infeasible(str(e), subject=f"host/{name}") from e
            self._log(step, cmd)
            record = dataclasses.replace(host, state=state)
            step.hosts.append(record)
            self._sync(self.core.now, step)
            return record
        changed: HostRecord = self._run(body)
        return changed

    def _image(self, image_id: str) -> ImageRecord | None:
        # images are immutable once registered: cache them (a create must not query)
        image = self._images.get(image_id)
        if image is None:
            image = self.store.image(image_id)
            if image is not None:
                self._images[image_id] = image
        return image

    def register_image(self, image: ImageRecord) -> ImageRecord:
        if self.store.add_image(image):
            return image
        existing = self.store.image(image.id)
        if existing == image:
            return image  # an identical retry
        raise Conflict(f"an image {image.id!r} is registered already with other attributes")

    def images(self) -> list[ImageRecord]:
        return self.store.images()

    def utilization(self) -> HostUsage:
        with self._lock:
            now = self.now()
            hosts = [h for h in self.store.hosts() if h.state != "removed"]
            active = {h.index for h in hosts}
            cap = [0] * len(DIMENSIONS)
            for h in hosts:
                for i, dim in enumerate(DIMENSIONS):
                    cap[i] += getattr(h, dim)
            used = [0] * len(DIMENSIONS)
            in_use: set[int] = set()
            states = self.store.lease_counts()  # the core forgets leases that ended
            for lease in self.core.leases.values():
                if lease.state.terminal:
                    continue
                for e in lease.events():
                    if e.kind in _VM_EVENTS and e.start <= now < e.end:
                        in_use.update(n for n in e.nodes if n in active)
                        for i, dim in enumerate(DIMENSIONS):
                            used[i] += getattr(lease.request.resources, dim) * len(e.nodes)
                        break
            return HostUsage(len(hosts), len(in_use), Resources(*cap), Resources(*used),
                             states, now)


def _safe_url(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
