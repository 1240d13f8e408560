"""The lease model: sites, resource vectors, images, lease requests and their states.

Everything here is an immutable value; the scheduler owns the mutable per-lease
bookkeeping. Time is an integer number of seconds from the start of the run:
overhead durations are rounded *up* to whole seconds, so a reservation never
ends before the physical operation it stands for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import NamedTuple

import numpy as np

#: Resource dimensions, in this order everywhere (numpy vectors use it).
DIMENSIONS: tuple[str, ...] = ("cpu", "memory", "disk", "net_in", "net_out")
#: Capacity used for a dimension a site does not constrain.
UNLIMITED = 2**40


@dataclass(frozen=True)
class Resources:
    """A resource vector: CPU in percent of one core (100 = one CPU), memory and
    disk in MB, network in and out in Mbit/s."""

    cpu: int = 0
    memory: int = 0
    disk: int = 0
    net_in: int = 0
    net_out: int = 0

    def as_array(self) -> np.ndarray:
        """The vector in ``DIMENSIONS`` order: read-only, and made once per value (the
        scheduler asks for it with every placement it tries)."""
        return self._array

    def __getstate__(self) -> dict[str, int]:
        # without the cached array: a checkpoint holds one Resources per lease, and a
        # small array costs ~10x its values to pickle
        return {k: v for k, v in self.__dict__.items() if k != "_array"}

    @cached_property
    def _array(self) -> np.ndarray:
        vec = np.array([self.cpu, self.memory, self.disk, self.net_in, self.net_out],
                       dtype=np.int64)
        vec.flags.writeable = False
        return vec

    def covers(self, other: Resources) -> bool:
        """At least ``other`` in every dimension."""
        return (self.cpu >= other.cpu and self.memory >= other.memory and self.disk >= other.disk
                and self.net_in >= other.net_in and self.net_out >= other.net_out)



@dataclass(frozen=True)
class Node:
    """A physical host; ``index`` is its 0-based position, ``name`` e.g. ``P1``."""

    index: int
    name: str
    capacity: Resources


@dataclass(frozen=True)
class Site:
    nodes: tuple[Node, ...]

    @classmethod
    def uniform(cls, count: int, capacity: Resources) -> Site:
        return cls(tuple(Node(i, f"P{i + 1}", capacity) for i in range(count)))

    def capacity_matrix(self) -> np.ndarray:
        """(nodes, dimensions) array of capacities."""
        return np.array([n.capacity.as_array() for n in self.nodes], dtype=np.int64)


@dataclass(frozen=True)
class DiskImage:
    id: str
    size_mb: int


class LeaseKind(StrEnum):
    AR = "ar"
    BESTEFFORT = "besteffort"
    IMMEDIATE = "immediate"


class LeaseState(StrEnum):
    """The whole life of a lease. Terminal states: rejected, done, cancelled, failed."""

    PENDING = "pending"  # queued, no reservation yet
    REJECTED = "rejected"
    SCHEDULED = "scheduled"  # holds reservations, nothing begun
    PREPARING = "preparing"  # image transfer or VM boot in progress
    READY = "ready"  # prepared, waiting for its start time
    ACTIVE = "active"  # VMs running (or shutting down)
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    RESUMING = "resuming"
    MIGRATING = "migrating"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({LeaseState.REJECTED, LeaseState.DONE, LeaseState.CANCELLED,
                       LeaseState.FAILED})


class EventKind(StrEnum):
    """Kinds of scheduled activity a lease goes through (its reservations)."""

    TRANSFER = "transfer"  # disk image from the repository to nodes
    BOOT = "boot"  # VM start commands (enactment overhead) and guest boot
    RUN = "run"  # the user's time
    SHUTDOWN = "shutdown"
    SUSPEND = "suspend"
    RESUME = "resume"
    MIGRATE = "migrate"  # suspended state (and image) moved to other nodes


class Event(NamedTuple):
    """One reservation of a lease. A named tuple, not a frozen dataclass: replays
    build one per overhead and run, and this is several times cheaper to create."""

    kind: EventKind
    start: int
    end: int
    nodes: tuple[int, ...]  # node indices

    def as_dict(self, site: Site) -> dict[str, object]:
        return {"kind": str(self.kind), "start": self.start, "end": self.end,
                "nodes": [site.nodes[n].name for n in self.nodes]}


@dataclass(frozen=True)
class LeaseRequest:
    """What a user asks for. ``duration`` is the requested time; ``real_duration``
    (replays only) is how long the workload really runs before it ends by itself."""

    id: int
    kind: LeaseKind
    vms: int
    resources: Resources  # per VM
    image: DiskImage
    duration: int
    submit: int
    start: int | None = None  # AR only
    real_duration: int | None = None
    preemptible: bool = False
    labels: tuple[tuple[str, str], ...] = field(default=())
    start_latest: int | None = None  # flexible AR: any start in [start, start_latest]

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"lease {self.id}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Reasons this request is malformed (independent of any site)."""
        p: list[str] = []
        if self.vms < 1:
            p.append(f"needs at least one VM (got {self.vms})")
        if self.duration <= 0:
            p.append(f"duration must be positive (got {self.duration} s)")
        if self.real_duration is not None and self.real_duration <= 0:
            p.append(f"real duration must be positive (got {self.real_duration} s)")
        if self.submit < 0:
            p.append(f"submit time must not be negative (got {self.submit} s)")
        if self.image.size_mb < 0:
            p.append(f"image size must not be negative (got {self.image.size_mb} MB)")
        for d in DIMENSIONS:
            if getattr(self.resources, d) < 0:
                p.append(f"{d} must not be negative")
        if self.kind is LeaseKind.AR:
            if self.start is None:
                p.append("an advance reservation needs a start time")
            elif self.start < self.submit:
                p.append(f"advance reservation starts in the past (start {self.start} s "
                         f"< submit {self.submit} s)")
        elif self.start is not None:
            p.append(f"only advance reservations have a start time ({self.kind} has one)")
        if self.start_latest is not None:
            if self.kind is not LeaseKind.AR:
                p.append(f"only advance reservations have a start window ({self.kind} has one)")
            elif self.start is not None and self.start_latest < self.start:
                p.append(f"the start window ends before it begins (latest start "
                         f"{self.start_latest} s < start {self.start} s)")
        return p

    @property
    def effective_real_duration(self) -> int:
        """How long the workload runs: never more than requested (it is killed then)."""
        if self.real_duration is None:
            return self.duration
        return min(self.real_duration, self.duration)


def seconds_for(megabytes: float, rate_mb_per_s: float) -> int:
    """Whole seconds (rounded up) to move ``megabytes`` at ``rate_mb_per_s``."""
    if megabytes <= 0:
        return 0
    return math.ceil(megabytes / rate_mb_per_s - 1e-9)


def transfer_seconds(megabytes: float, mbit_per_s: float) -> int:
    """Whole seconds (rounded up) to send ``megabytes`` over a ``mbit_per_s`` link."""
    return seconds_for(megabytes, mbit_per_s / 8)


@dataclass(frozen=True)
class SentImage:
    """One image transfer the repository link carried: ``size_mb`` sent once, to
    ``nodes`` (multicast) or to its one node (unicast)."""

    image: str
    size_mb: int
    nodes: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class LeaseOutcome:
    """What happened to (or is planned for) one lease: its request, state and events.

    ``start``/``end`` bound the user's time (first and last ``run`` event); overheads
    appear only as events. ``reason`` says why a lease was rejected or failed.
    """

    request: LeaseRequest
    state: LeaseState
    events: tuple[Event, ...]
    reason: str | None = None

    @cached_property
    def runs(self) -> tuple[Event, ...]:
        # (kept: start, end and nodes derive from it, and metrics ask all three)
        return tuple(e for e in self.events if e.kind is EventKind.RUN)

    @property
    def start(self) -> int | None:
        runs = self.runs
        return runs[0].start if runs else None

    @property
    def end(self) -> int | None:
        runs = self.runs
        return runs[-1].end if runs else None

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(sorted({n for e in self.runs for n in e.nodes}))
