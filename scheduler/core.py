"""The scheduling core: turns lease requests into an exact, overhead-aware schedule.

Pure and clock-driven: the caller says what time it is (``advance_to``) and what
happens (``submit``, ``cancel``); the core never reads a clock or does I/O. The
same object runs trace replays in simulated time and the service in real time.

Vocabulary. A lease's VMs hold resources on their nodes in *segments*: a boot (or
resume) opens one, the user's run fills it, a shutdown (or suspension) closes it.
Image transfers happen before a boot; a migration moves a suspended lease's state
before it resumes on other nodes. Every one of these is a reservation in the
availability profile or on an exclusive channel, scheduled like the lease itself.

Best-effort leases wait in an FCFS queue. A queue pass first tries to start each
lease as soon as its preparation allows (that is backfilling when it jumps ahead);
the first ones that cannot start get reservations in the future, up to the
backfilling policy's limit. A preemptible lease that fits only partly before a
reservation blocks it runs until then, is suspended, and resumes later (possibly
on other nodes, migrating). Whenever capacity is freed unexpectedly (early end,
cancellation) or a lease's nodes come free, the queue is re-evaluated from scratch:
waiting reservations are dropped and rebuilt, so they can move earlier.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np
from mypy_extensions import mypyc_attr

from . import kernels
from .config import Config, Exclusion, Migration
from .images import Copy, HandOver, ImageStore, Transfer
from .leases import (
    Event,
    EventKind,
    LeaseKind,
    LeaseOutcome,
    LeaseRequest,
    LeaseState,
    Node,
    Resources,
    SentImage,
    Site,
)
from .overheads import Overheads
from .pickling import attributes, set_attributes
from .policies import HostCandidates, Policies, make_policies
from .slottable import INF, AvailabilityProfile, Channels

log = logging.getLogger(__name__)

_EARLY_END, _TICK = 0, 1  # heap event kinds; early ends first at the same instant
_WINDOW_TRIES = 50  # candidate starts examined for a flexible AR or a counter-offer
_STATE_DURING = {EventKind.BOOT: LeaseState.PREPARING, EventKind.RUN: LeaseState.ACTIVE,
                 EventKind.SHUTDOWN: LeaseState.ACTIVE, EventKind.SUSPEND: LeaseState.SUSPENDING,
                 EventKind.RESUME: LeaseState.RESUMING, EventKind.MIGRATE: LeaseState.MIGRATING,
                 EventKind.TRANSFER: LeaseState.PREPARING}


@dataclass(eq=False)
@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class Segment:
    nodes: tuple[int, ...]
    start: int
    run_start: int
    run_end: int
    end: int
    opens: EventKind  # BOOT or RESUME
    closes: EventKind  # SHUTDOWN or SUSPEND
    entry: int  # availability-profile entry holding the VMs' resources
    channels: list[tuple[int, int]] = field(default_factory=list)  # (booking, its start)
    lost: bool = False  # killed by a preemption with suspension off: its work starts over
    # transfers it resumes from after migrating (copies on their way to its new nodes)
    transfers: list[Transfer] = field(default_factory=list)
    # node_array's cache, None until asked (set in __post_init__: compiled by mypyc, a
    # field's default with init=False is not)
    _node_array: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._node_array = None

    @property
    def node_array(self) -> np.ndarray:
        """``nodes`` for the kernels, worked out once (converting a big lease's tuple is
        not cheap; compiled, a functools.cached_property would not cache)."""
        if self._node_array is None:
            self._node_array = np.array(self.nodes, dtype=np.int64)
        return self._node_array

    def __getstate__(self) -> dict[str, object]:
        state = attributes(self)
        state["_node_array"] = None  # (a cache: a checkpoint need not hold it)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        set_attributes(self, state)

    def events(self) -> list[Event]:
        # Opening and closing events are listed even when they take no time, so every
        # segment reads boot|resume, run, shutdown|suspend.
        return [Event(self.opens, self.start, self.run_start, self.nodes),
                Event(EventKind.RUN, self.run_start, self.run_end, self.nodes),
                Event(self.closes, self.run_end, self.end, self.nodes)]


@dataclass(eq=False)
@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class Lease:
    request: LeaseRequest
    seq: int
    run_needed: int  # wall seconds of run for the requested duration
    run_real: int  # wall seconds after which the workload ends by itself
    state: LeaseState = LeaseState.PENDING
    reason: str | None = None
    segments: list[Segment] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    migrations: list[Event] = field(default_factory=list)
    image_nodes: set[int] = field(default_factory=set)  # nodes where it holds an image copy
    future: bool = False  # holds a best-effort reservation that waits for resources
    cancelled: bool = False
    failed: bool = False
    finished: bool = False
    version: int = 0
    fresh_need: _Need | None = None  # what its first start needs (Scheduler._fails_again)
    # its events as its last push listed them (served_nodes=False), for its ticks
    timeline: list[Event] | None = None

    @property
    def id(self) -> int:
        return self.request.id

    def __getstate__(self) -> dict[str, object]:
        state = attributes(self)
        state["timeline"] = None  # (a cache: a checkpoint need not hold it)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        set_attributes(self, state)

    @property
    def live(self) -> list[Segment]:
        """Its segments since it last (re)started: lost attempts are history only."""
        segments = self.segments
        for i in range(len(segments) - 1, -1, -1):
            if segments[i].lost:
                return segments[i + 1:]
        return segments

    def run_done(self) -> int:
        """Run seconds completed (or committed) in segments closed by a suspension."""
        return sum(s.run_end - s.run_start for s in self.segments
                   if s.closes is EventKind.SUSPEND)

    def events(self, *, served_nodes: bool = True) -> list[Event]:
        """Its events in time order. ``served_nodes=False`` lists each transfer with all
        of its destinations (the same instants, kinds and order: what state changes
        need), sparing the work of finding where each serves this lease."""
        segs = self.segments
        if not self.migrations and (len(segs) == 1 or (len(segs) > 1 and all(
                a.end <= b.start for a, b in pairwise(segs)))):  # the usual case: quicker
            # Segments one after the other list their events in time order, and
            # transfers that end by the first one's start come before them (at equal
            # times, transfers first).
            ordered = segs[0].events() if len(segs) == 1 else [
                e for s in segs for e in s.events()]
            sent = [t for t in self.transfers if not t.cancelled]
            if not sent:
                return ordered
            if not served_nodes and all(t.end <= segs[0].start for t in sent):
                sent.sort(key=lambda t: (t.start, t.end))  # (stable: ties in list order)
                return [Event(EventKind.TRANSFER, t.start, t.end, t.nodes)
                        for t in sent] + ordered
        # VM events in their logical order (a migration just before the resume it leads
        # to), which breaks ties between zero-length events at the same instant.
        vm: list[Event] = []
        migrations = list(self.migrations)
        for s in self.segments:
            if s.opens is EventKind.RESUME:
                vm += [m for m in migrations if m.end == s.start]
                migrations = [m for m in migrations if m.end != s.start]
            vm += s.events()
        vm += migrations
        # In time order; at equal times transfers first, then the VM events' own order.
        # (a transfer cancelled after it was listed never happens)
        transfers = [t for t in self.transfers if not t.cancelled]
        serves = (self._transfer_nodes(transfers) if served_nodes
                  else [t.nodes for t in transfers])
        keyed = [(t.start, t.end, 0, i, Event(EventKind.TRANSFER, t.start, t.end, nodes))
                 for i, (t, nodes) in enumerate(zip(transfers, serves, strict=True))]
        keyed += [(e.start, e.end, 1, i, e) for i, e in enumerate(vm)]
        keyed.sort()  # (the indices make every key distinct: events are never compared)
        return [k[4] for k in keyed]

    def outcome(self) -> LeaseOutcome:
        # Without transfers, the events of its last push are its events (every change
        # to a plan pushes it): a replay's end asks for every lease's.
        evs = self.timeline if self.timeline is not None and not self.transfers \
            else self.events()
        return LeaseOutcome(self.request, self.state, tuple(evs), self.reason)

    def _transfer_nodes(self, transfers: list[Transfer]) -> list[tuple[int, ...]]:
        """The nodes where each transfer serves this lease: for each node it boots on,
        the latest transfer there to have ended by that boot. (A multicast shared with
        other leases goes to nodes this lease never uses, and a node it was re-planned
        onto after its copy there was gone is served by the new transfer, not the old
        one.) A transfer that serves no boot (the lease never booted from it) is listed
        for the nodes where no later one of its transfers goes (a lease re-planned off
        a node, its copy there gone, and back needs the image there again), or whole."""
        if not transfers:
            return []
        served: dict[int, set[int]] = {}  # id(transfer) -> nodes
        before: tuple[int, ...] = ()
        for seg in self.segments:
            # a boot needs the image on its nodes; a resumption after migrating, on the
            # nodes the lease moved to
            need = set(seg.nodes) if seg.opens is EventKind.BOOT else set(seg.nodes) - set(before)
            before = seg.nodes
            if need:
                for n, t in _latest_transfers(transfers, need, seg.start).items():
                    served.setdefault(id(t), set()).add(n)
        last = _latest_transfers(transfers, {n for t in transfers for n in t.nodes})
        out = []
        for t in transfers:
            if mine := served.get(id(t)):
                out.append(tuple(n for n in t.nodes if n in mine))
            else:
                out.append(tuple(n for n in t.nodes if last[n] is t) or t.nodes)
        return out


@dataclass
class _Proposal:
    nodes: tuple[int, ...]
    start: int
    run_start: int
    run_end: int
    end: int
    closes: EventKind
    future: bool


# (ready, has, distinct finite ready times as a list and as an array, ready's bytes):
# see Scheduler._prepared
_Prepared = tuple[np.ndarray, np.ndarray, list[int], np.ndarray, bytes]
# (vms, VM shape, time, opening, partial) of a request that failed, per readiness vector
_Need = tuple[int, Resources, int, int, bool]
_Failures = dict[bytes, list[_Need]]


def _as_hard(a: _Need, b: _Need) -> bool:
    """Does request ``a`` need at least what ``b`` needs (so it fails where ``b`` did)?
    A partial fit is one more way to succeed: ``a`` may try it only if ``b`` did."""
    return (a[0] >= b[0] and a[2] >= b[2] and a[3] >= b[3] and (b[4] or not a[4])
            and (a[1] is b[1] or a[1].covers(b[1])))


def _add_failure(failures: _Failures, key: bytes, need: _Need) -> None:
    # Failures at least as demanding as this one say nothing more: keep the list
    # minimal, since every later request is checked against all of it.
    failures[key] = [f for f in failures.get(key, ()) if not _as_hard(f, need)]
    failures[key].append(need)


def _latest_transfers(transfers: list[Transfer], nodes: set[int],
                      by: int = INF) -> dict[int, Transfer]:
    """Per node of ``nodes``, the latest-starting of ``transfers`` there that has ended
    by ``by`` (the first listed, of equals): what a boot or resumption at ``by`` uses.
    (One that starts by then but ends later is another's copy on its way, on a node the
    lease migrates to later.)"""
    latest: dict[int, Transfer] = {}
    for t in transfers:
        if t.end <= by:
            for n in nodes.intersection(t.nodes):
                if n not in latest or t.start > latest[n].start:
                    latest[n] = t
    return latest


def _seconds(t: int) -> str:
    return f"{t} s"


def _fcfs(lease: Lease) -> tuple[int, int]:
    """The queue's order: submission time, then arrival order."""
    return lease.request.submit, lease.seq


class SchedulingError(ValueError):
    """A call the core cannot honour (unknown lease, duplicate id, ...)."""


# (pickled: see pickling.py; and tests subclass it to check its shortcuts)
@mypyc_attr(allow_interpreted_subclasses=True)
class Scheduler:
    def __init__(self, site: Site, config: Config, policies: Policies | None = None, *,
                 show_time: Callable[[int], str] | None = None,
                 record_transfers: bool = False) -> None:
        """``record_transfers``: keep a record of every image transfer made
        (``sent_images``), for a replay's report; a service, running for months, does
        not."""
        self.site = site
        # How messages name an instant: seconds from the origin in replays, the wall
        # clock in the service (the core only knows integer seconds).
        self._at = show_time or _seconds
        self.config = config
        self.policies = policies or make_policies(config)
        self.overheads = Overheads(config)
        self._capacity = site.capacity_matrix()  # ~1 ms at 500 nodes: build it once
        self._capable: dict[Resources, int] = {}  # per VM shape: nodes that can host one
        # per VM shape: the nodes it fills (no second one fits), and whether that is all
        # of them / none of them (a queue pass asks for every lease)
        self._fills: dict[bytes, tuple[np.ndarray, bool, bool]] = {}
        self.profile = AvailabilityProfile(self._capacity)
        self.images = ImageStore(len(site.nodes), config.image_cache_mb, config.piggybacking,
                                 record=record_transfers)
        self._channels = Channels(config.suspendresume_exclusion is Exclusion.GLOBAL)
        self._closed = np.zeros(len(site.nodes), dtype=bool)  # drained or removed nodes
        self._any_closed = False  # (asked for every readiness: cheaper than _closed.any())
        self.now = 0
        self.leases: dict[int, Lease] = {}
        self._changed: set[int] = set()  # leases whose state or schedule changed
        # VM shape -> open nodes with room for one now, and how many; while the profile
        # and the time stay as they are (``_hosts_now_token``)
        self._hosts_now_memo: dict[bytes, tuple[np.ndarray, int]] = {}
        self._hosts_now_token = (-1, -1)
        # (readiness, VM shape) -> per readiness group, how many VMs could start there,
        # and the most at any; while the profile stays as it is (see _viable)
        self._viability_memo: dict[tuple[bytes, bytes], tuple[int, list[int]]] = {}
        self._viability_version = -1
        # Failed starts that counting alone proved (too few nodes with room over the
        # window, one of them ready at its start), per readiness: they hold in later
        # passes while no capacity is given back at any instant (``profile.grown``),
        # since a readiness fixes its instants. A pass that offers what came free as
        # planned (which the profile showed already) starts from them: most such passes
        # start nothing, and proved it lease by lease.
        self._proven: _Failures = {}
        self._proven_grown = -1
        # may ``_fails_again`` answer? (see there)
        self._fresh_memo = config.image_transfer and config.transfer_mode == "multicast"
        # Readiness of fresh leases per (image, size, unicasts), while nothing it depends
        # on changes: a queue pass asks it for every waiting lease, mostly of few images.
        self._prep_memo: dict[tuple[str | bytes, int, int | None], _Prepared] = {}
        # (the time, ``images.version``, ``images.link.version`` it holds for: three
        # fields, since a tuple built on every call cost more than the lookup)
        self._prep_now = self._prep_images = self._prep_link = -1
        # An image's copies (``ImageStore.ready_times``, the same array while they stay
        # as they are) -> its bytes: a key of ``_prep_memo``, hashed once.
        self._copies_bytes: dict[int, tuple[np.ndarray, bytes]] = {}
        self._queue: list[Lease] = []  # FCFS: (submit, seq)
        self._waiting: list[Lease] = []  # planned best-effort leases whose segment has not begun
        self._heap: list[tuple[int, int, int, int, int]] = []
        self._seq = 0  # arrival order, and the heap's tie-break
        # A *retry* pass offers the queue the capacity that comes free as planned; a
        # *replan* pass also rebuilds waiting reservations (capacity came free early).
        self._retry = False
        self._replan = False
        # Fresh queued leases that found too few nodes to start on: (the profile's count
        # of releases then, and how many nodes they could have used at most). See
        # ``_still_stuck``.
        self._stuck: dict[int, tuple[int, int]] = {}

    # ================================================================ public API
    def submit(self, request: LeaseRequest) -> Lease:
        """Take a request at the current time; ARs and immediate leases are decided
        at once, best-effort leases are queued (and started if they can be)."""
        if request.id in self.leases:
            raise SchedulingError(f"lease {request.id} already exists")
        ovh = self.overheads
        self._seq += 1
        lease = Lease(request, self._seq, ovh.run_time(request.duration),
                      ovh.run_time(request.effective_real_duration))
        if request.kind is LeaseKind.AR:
            lease.run_needed, lease.run_real = request.duration, request.effective_real_duration
        self.leases[request.id] = lease
        problem = self.policies.admission.refuse(request) or self._site_problem(request)
        if problem:
            self._reject(lease, problem)
        elif request.kind is LeaseKind.AR:
            self._schedule_ar(lease)
        elif request.kind is LeaseKind.IMMEDIATE:
            if not self._try_start(lease, future=False, partial=False):
                self._reject(lease, self._shortage(lease))
        else:
            self._enqueue(lease)
            self._schedule_queue(new=lease)
        if self._retry or self._replan:
            self._schedule_queue()
        return lease

    def cancel(self, lease_id: int) -> Lease:
        lease = self._get(lease_id)
        if lease.state.terminal:
            raise SchedulingError(f"lease {lease_id} is already {lease.state}")
        if lease.cancelled:
            return lease  # being wound down already
        lease.cancelled = True
        self._stop(lease, self.now)
        if not lease.finished and all(e.end <= self.now for e in lease.events()):
            self._finish(lease, LeaseState.CANCELLED)
        else:  # a VM command or transfer under way completes first: say why it goes on
            lease.reason = (f"cancelled at {self._at(self.now)}; ends when what is under "
                            f"way ends at {self._at(max(e.end for e in lease.events()))}")
        self._replan = True
        self._schedule_queue()
        return lease

    def fail(self, lease_id: int, reason: str) -> Lease:
        """Enactment failed: the lease's VMs are destroyed now (a VM command under way
        completes first), its reservations released, and it ends FAILED with ``reason``."""
        lease = self._get(lease_id)
        if lease.state.terminal:
            raise SchedulingError(f"lease {lease_id} is already {lease.state}")
        lease.failed, lease.cancelled, lease.reason = True, True, reason
        log.info("lease failed", extra={"lease": lease_id, "reason": reason})
        self._stop(lease, self.now, destroy=True)
        if not lease.finished and all(e.end <= self.now for e in lease.events()):
            self._finish(lease, LeaseState.FAILED)
        self._replan = True
        self._schedule_queue()
        return lease

    def add_node(self, node: Node) -> None:
        """A new host joins the site (its index must be the next one)."""
        if node.index != len(self.site.nodes):
            raise SchedulingError(f"a new node must have index {len(self.site.nodes)} "
                                  f"(got {node.index})")
        if any(n.name == node.name for n in self.site.nodes):
            raise SchedulingError(f"a node named {node.name!r} exists already")
        self.site = Site((*self.site.nodes, node))
        self._capacity = self.site.capacity_matrix()
        self._capable.clear()
        self._fills.clear()
        self.profile.add_node(node.capacity.as_array())
        self.images.add_node()
        self._closed = np.append(self._closed, False)
        self._prep_memo.clear()
        log.info("node added", extra={"node": node.name})
        self._replan = True  # new capacity: waiting leases may move earlier
        self._schedule_queue()

    def drain_node(self, index: int) -> None:
        """No new placements on the node; what runs or is booked there for an advance
        reservation stays. Best-effort plans that have not begun there are re-planned."""
        self._node(index)
        self._closed[index] = self._any_closed = True
        self._prep_memo.clear()
        for lease in list(self._waiting):
            seg = lease.segments[-1] if lease.segments else None
            if seg is not None and seg.start > self.now and index in seg.nodes \
                    and not self._migrating(lease):
                self._unplan_waiting(lease)
                self._enqueue(lease)
                self._push(lease)
        log.info("node drained", extra={"node": self.site.nodes[index].name})
        self._replan = True
        self._schedule_queue()

    def remove_node(self, index: int) -> None:
        """Take a node out of the site for good: only once nothing is on it or booked."""
        node = self._node(index)
        holders = self.profile.owners_overlapping([index], self.now, INF)
        if holders:
            raise SchedulingError(
                f"node {node.name} still holds or has booked lease(s) "
                f"{', '.join(map(str, sorted(holders)[:10]))}: drain it and wait for them")
        self._closed[index] = self._any_closed = True
        self._prep_memo.clear()
        log.info("node removed", extra={"node": node.name})

    def _node(self, index: int) -> Node:
        if not 0 <= index < len(self.site.nodes):
            raise SchedulingError(f"no node with index {index}")
        return self.site.nodes[index]

    def extend(self, lease_id: int, extra: int) -> Lease:
        """Give a lease ``extra`` seconds more, if that breaks no other commitment:
        a running (or booked) run is prolonged in place only if its nodes are free for
        the extra time; a queued or suspended lease just needs more work done; a
        best-effort reservation not begun yet is re-planned. Refusals change nothing."""
        lease = self._get(lease_id)
        if extra <= 0:
            raise SchedulingError(f"an extension must be positive (got {extra} s)")
        if lease.state.terminal or lease.cancelled:
            raise SchedulingError(f"lease {lease_id} is already {lease.state}")
        req, ovh = lease.request, self.overheads
        live = lease.live
        seg = live[-1] if live else None
        in_place = seg is not None and seg.closes is EventKind.SHUTDOWN and (
            seg.start <= self.now or req.kind is not LeaseKind.BESTEFFORT)
        if in_place:
            assert seg is not None
            if seg.run_end <= self.now:
                raise SchedulingError(f"lease {lease_id} is already shutting down")
            added = extra if req.kind is LeaseKind.AR else ovh.run_time(req.duration + extra) \
                - lease.run_needed
            vec = req.resources.as_array()
            free = self.profile.fits_window(seg.end, seg.end + added, vec)
            if not free[list(seg.nodes)].all():
                busy = [self.site.nodes[n].name for n in seg.nodes if not free[n]]
                raise SchedulingError(
                    f"cannot extend lease {lease_id} by {extra} s: {', '.join(busy)} "
                    f"{'is' if len(busy) == 1 else 'are'} booked from {self._at(seg.end)} to "
                    f"{self._at(seg.end + added)}")
            self.profile.remove(seg.entry)
            seg.entry = self.profile.add(seg.nodes, seg.start, seg.end + added, vec,
                                         owner=lease.id, preemptible=req.preemptible)
            seg.run_end += added
            seg.end += added
        self._lengthen(lease, extra)
        if not in_place and seg is not None and seg.start > self.now:
            self._unplan_waiting(lease)  # its planned (re)start needs more time: re-plan
            self._enqueue(lease)
            self._replan = True
        self._push(lease)
        if self._replan or self._retry:
            self._schedule_queue()
        log.info("lease extended", extra={"lease": lease_id, "extra": extra})
        return lease

    def _lengthen(self, lease: Lease, extra: int) -> None:
        req = lease.request
        real = None if req.real_duration is None else req.real_duration + extra
        lease.request = replace(req, duration=req.duration + extra, real_duration=real)
        lease.fresh_need = None  # (it needs longer)
        if req.kind is LeaseKind.AR:
            lease.run_needed = lease.request.duration
            lease.run_real = lease.request.effective_real_duration
        else:
            lease.run_needed = self.overheads.run_time(lease.request.duration)
            lease.run_real = self.overheads.run_time(lease.request.effective_real_duration)

    def advance_to(self, t: int) -> None:
        """Apply everything that happens up to and including instant ``t``."""
        while self._heap and self._heap[0][0] <= t:
            now = self._heap[0][0]
            self.now = now
            while self._heap and self._heap[0][0] == now:
                _, kind, _, lease_id, version = heapq.heappop(self._heap)
                lease = self.leases.get(lease_id)
                if lease is None or version != lease.version or lease.finished:
                    continue  # stale (or forgotten)
                if kind == _EARLY_END:
                    self._early_end(lease, now)
                else:
                    self._tick(lease, now)
            if self._retry or self._replan:
                self._schedule_queue()
            # Transfers over by now are history before the next instant: a lease placed
            # later reuses their copies, it does not share the transfers.
            self.images.finish_transfers(now)
        self.now = max(self.now, t)
        self.profile.prune(self.now)
        self._channels.prune(self.now)
        self.images.finish_transfers(self.now)

    def next_event_time(self) -> int | None:
        while self._heap:
            _, _, _, lease_id, version = self._heap[0]
            lease = self.leases.get(lease_id)
            if lease is not None and version == lease.version and not lease.finished:
                return self._heap[0][0]
            heapq.heappop(self._heap)
        return None

    def run(self) -> None:
        """Advance until nothing more is planned."""
        while (t := self.next_event_time()) is not None:
            self.advance_to(t)

    def take_changed(self) -> set[int]:
        """Ids of the leases whose state or schedule changed since the last call (for a
        caller that mirrors them, e.g. the service's database projection)."""
        changed, self._changed = self._changed, set()
        return changed

    def forget(self, lease_id: int) -> None:
        """Drop a finished lease and the record of its reservations (all in the past), so
        a long-running caller that keeps history elsewhere (the service's database) does
        not hold every lease ever made. (The caller must not submit its id again.)"""
        lease = self._get(lease_id)
        if not lease.finished:
            raise SchedulingError(f"lease {lease_id} is {lease.state}: only a finished "
                                  "lease can be forgotten")
        for seg in lease.segments:
            self.profile.forget(seg.entry)
        del self.leases[lease_id]
        self._changed.discard(lease_id)

    def outcomes(self) -> list[LeaseOutcome]:
        return [lease.outcome() for lease in self.leases.values()]

    def sent_images(self) -> tuple[SentImage, ...] | None:
        """Every image transfer over by now, in the order they ended (None unless
        recorded: see ``__init__``). Leases list the transfers they depend on; one begun
        for a plan its lease dropped since is here only."""
        sent = self.images.sent
        return None if sent is None else tuple(sent)

    def dumps(self) -> bytes:
        """The whole state, for ``loads`` by the same code (a checkpoint: the service
        restarts from it instead of re-applying its whole command log)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes, show_time: Callable[[int], str] | None = None) -> Scheduler:
        """A core ``dumps`` wrote (only ever from a trusted source: it is a pickle)."""
        core = pickle.loads(data)
        if not isinstance(core, Scheduler):
            raise TypeError(f"not a scheduler state: {type(core).__name__}")
        core._at = show_time or _seconds
        return core

    def __getstate__(self) -> dict[str, object]:
        state = attributes(self)
        del state["_at"]  # the caller's (e.g. a bound method of the service's engine)
        state["_prep_memo"] = {}
        state["_copies_bytes"] = {}
        state["_viability_memo"] = {}
        state["_proven"] = {}
        state["_hosts_now_memo"] = {}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        set_attributes(self, state)
        self._at = _seconds

    # ============================================================ bookkeeping
    def _get(self, lease_id: int) -> Lease:
        try:
            return self.leases[lease_id]
        except KeyError:
            raise SchedulingError(f"no lease {lease_id}") from None

    def _site_problem(self, req: LeaseRequest) -> str | None:
        capable = self._capable.get(req.resources)
        if capable is None:  # few VM shapes recur: count once per shape and site
            vec = req.resources.as_array()
            capable = self._capable[req.resources] = int((self._capacity >= vec).all(axis=1).sum())
        if capable >= req.vms:
            return None
        if capable == 0:
            return f"no node can host one of its VMs ({self._describe(req)})"
        return (f"needs {req.vms} VMs on distinct nodes but only {capable} node(s) can host "
                f"one ({self._describe(req)})")

    @staticmethod
    def _describe(req: LeaseRequest) -> str:
        r = req.resources
        return f"cpu {r.cpu}, memory {r.memory} MB per VM"

    def _shortage(self, lease: Lease) -> str:
        """Why an immediate lease cannot start now."""
        req, ovh = lease.request, self.overheads
        ready, _, _ = self._readiness(lease)
        start = int(ready.min())
        need = ovh.boot + lease.run_needed + ovh.shutdown
        until = self.profile.free_until(start, req.resources.as_array())
        free = int(((until >= start + need) & (ready <= start)).sum())
        return (f"cannot start now: only {free} of the {req.vms} nodes it needs can host a VM "
                f"({self._describe(req)}) from {self._at(start)} to {self._at(start + need)}")

    def _reject(self, lease: Lease, reason: str) -> None:
        log.info("lease rejected", extra={"lease": lease.id, "reason": reason})
        lease.reason = reason
        self._finish(lease, LeaseState.REJECTED)

    def _enqueue(self, lease: Lease) -> None:
        if lease in self._queue:
            return
        bisect.insort(self._queue, lease, key=_fcfs)
        lease.state = LeaseState.SUSPENDED if lease.live else LeaseState.PENDING
        self._changed.add(lease.id)

    def _push(self, lease: Lease) -> None:
        """(Re)register the instants at which ``lease`` changes state."""
        lease.version += 1
        self._changed.add(lease.id)
        evs = lease.timeline = lease.events(served_nodes=False)
        times = {t for e in evs for t in (e.start, e.end) if t > self.now}
        for t in sorted(times):
            self._seq += 1
            heapq.heappush(self._heap, (t, _TICK, self._seq, lease.id, lease.version))
        real_end = self._real_end(lease)
        if real_end is not None and real_end >= self.now:
            self._seq += 1
            heapq.heappush(self._heap, (real_end, _EARLY_END, self._seq, lease.id,
                                        lease.version))
        lease.state = self._state_at(lease, self.now, evs)

    def _real_end(self, lease: Lease) -> int | None:
        """When the workload ends by itself, if that comes before its plan says: inside
        a run that would go on longer, or exactly when a suspension would begin."""
        done = 0
        for seg in lease.live:
            end = seg.run_start + lease.run_real - done
            if end < seg.run_end or (end == seg.run_end and seg.closes is EventKind.SUSPEND):
                return max(end, seg.run_start)
            done += seg.run_end - seg.run_start
        return None

    def _state_at(self, lease: Lease, t: int, evs: list[Event]) -> LeaseState:
        # One pass over the events (every tick asks): one under way at t decides (a VM
        # event before a transfer); else the last one over by then (the first listed
        # of those ending last), and whether any is still to come.
        last: Event | None = None
        transferring = planned = False
        for e in evs:
            if e.start > t:
                planned = True
            elif e.end > t:  # under way
                if e.kind is not EventKind.TRANSFER:
                    return _STATE_DURING[e.kind]
                transferring = True
            elif last is None or e.end > last.end:
                last = e
        if transferring:
            return LeaseState.PREPARING
        if last is None:
            return LeaseState.SCHEDULED if planned else LeaseState.PENDING
        if lease.cancelled and not planned:
            return LeaseState.FAILED if lease.failed else LeaseState.CANCELLED
        if not planned and lease.segments and lease.segments[-1].lost:
            return LeaseState.PENDING  # killed by a preemption, queued to start over
        if last.kind in (EventKind.SUSPEND, EventKind.MIGRATE):
            return LeaseState.SUSPENDED
        if last.kind is EventKind.SHUTDOWN or (last.kind is EventKind.RUN and not planned):
            if lease.cancelled:
                return LeaseState.FAILED if lease.failed else LeaseState.CANCELLED
            return LeaseState.DONE
        return LeaseState.READY if planned else LeaseState.PENDING

    def _tick(self, lease: Lease, t: int) -> None:
        if any(s.end == t for s in lease.segments):
            self._retry = True  # its nodes come free as planned: queued leases may start
        if lease.future and lease.segments and lease.segments[-1].start <= t:
            lease.future = False  # the reservation has begun: backfilling budget freed
            self._retry = True
        if lease in self._waiting and lease.segments and lease.segments[-1].start <= t:
            self._waiting.remove(lease)
        # Every change to its plan pushes it again (its transfers included: a transfer
        # taken off the link is taken off the lists of the leases it served, which are
        # pushed; a cancelled one still listed is checked for all the same).
        evs = lease.timeline
        if evs is None or any(tr.cancelled for tr in lease.transfers):
            evs = lease.events(served_nodes=False)
        state = self._state_at(lease, t, evs)
        if state in (LeaseState.DONE, LeaseState.CANCELLED, LeaseState.FAILED) and \
                all(e.end <= t for e in evs) and lease not in self._queue:
            self._finish(lease, state)
        elif state is not lease.state:
            lease.state = state
            self._changed.add(lease.id)

    def _finish(self, lease: Lease, state: LeaseState) -> None:
        self._stuck.pop(lease.id, None)
        lease.state = state
        lease.finished = True
        lease.version += 1
        self._changed.add(lease.id)
        if lease.image_nodes:
            self.images.release(lease.id, tuple(lease.image_nodes), lease.request.image.id,
                                self.now)
            lease.image_nodes.clear()
        if lease in self._queue:
            self._queue.remove(lease)
        if lease in self._waiting:
            self._waiting.remove(lease)

    # ===================================================== ending and stopping
    def _early_end(self, lease: Lease, t: int) -> None:
        """The workload finished by itself before its planned run end."""
        seg = next(s for s in lease.live if s.run_start <= t <= s.run_end)
        # Before a planned suspension, the time left may be too short for a shutdown
        # (what follows is booked): the VMs are destroyed instead, as on a cancellation.
        graceful = self._can_shut_down(seg, t)
        self._drop_plans_after(lease, t)
        # A resumption planned for this very instant (free suspension and resumption
        # make that possible) has not begun either: the work is done, drop it too.
        while lease.segments and lease.segments[-1] is not seg:
            self._drop_last_segment(lease)
            lease.migrations = [m for m in lease.migrations if m.start < t]
        self._cut_segment(lease, seg, t, graceful)
        if lease in self._queue:  # it was waiting to resume: nothing is left to do
            self._queue.remove(lease)
        self._replan = True
        self._push(lease)
        # With no shutdown time it is over at once, and no later instant would close
        # it (let go of its image copies, ...): close it now.
        self._tick(lease, t)

    def _stop(self, lease: Lease, t: int, destroy: bool = False) -> None:
        """Cancel: drop what has not begun; a running segment shuts down now (or its
        VMs are destroyed, with no shutdown)."""
        if lease in self._queue:
            self._queue.remove(lease)
        self._drop_plans_after(lease, t)
        for tr in [tr for tr in lease.transfers if tr.start > t]:
            lease.transfers.remove(tr)
        self.images.release(lease.id, tuple(lease.image_nodes), lease.request.image.id, t)
        lease.image_nodes.clear()
        if lease.segments:
            seg = lease.segments[-1]
            cut = max(t, seg.run_start)  # a VM command in progress completes first
            if seg.closes is EventKind.SHUTDOWN or seg.run_end > t:
                # no time for a clean shutdown before what is booked next: destroy the VMs
                self._cut_segment(lease, seg, cut,
                                  graceful=not destroy and self._can_shut_down(seg, cut))
        self._push(lease)

    def _can_shut_down(self, seg: Segment, t: int) -> bool:
        """Can the VMs shut down from ``t`` within the time the segment holds? (A
        suspension may be shorter than a shutdown, and what follows it is booked.)"""
        return seg.closes is EventKind.SHUTDOWN or t + self.overheads.shutdown <= seg.end

    def _cut_segment(self, lease: Lease, seg: Segment, t: int, graceful: bool = True) -> None:
        """End a segment's run at ``t`` and shut its VMs down (or destroy them at once)."""
        if seg.run_end <= t and seg.closes is EventKind.SHUTDOWN:
            return
        self._release_channels(seg, after=t)
        seg.run_end, seg.closes = t, EventKind.SHUTDOWN
        seg.end = t + (self.overheads.shutdown if graceful else 0)
        self.profile.truncate(seg.entry, seg.end)

    def _release_channels(self, seg: Segment, after: int) -> None:
        keep = []
        for bid, start in seg.channels:
            if start >= after:
                self._channels.remove(bid)
            else:
                keep.append((bid, start))
        seg.channels = keep

    def _drop_last_segment(self, lease: Lease) -> None:
        seg = lease.segments.pop()
        self.profile.remove(seg.entry)
        self._release_channels(seg, after=-INF)
        for t in seg.transfers:  # no longer what it resumes from (if still listed: a
            if t in lease.transfers:  # sooner transfer may have taken over, see add_copy)
                lease.transfers.remove(t)

    def _drop_plans_after(self, lease: Lease, t: int) -> None:
        """Remove segments and migrations that begin after ``t``."""
        while lease.segments and lease.segments[-1].start > t:
            self._drop_last_segment(lease)
        lease.migrations = [m for m in lease.migrations if m.start <= t]
        if lease in self._waiting:
            self._waiting.remove(lease)
        lease.future = False

    # ======================================================== best-effort queue
    def _schedule_queue(self, new: Lease | None = None) -> None:
        limit = self.policies.backfilling.max_future
        held: list[tuple[Lease, set[int], int]] = []
        if self._replan:
            # Only reservations that wait for resources can move earlier (not those that
            # start as soon as their preparation allows, nor one whose state migrates).
            held = [(lease, set(lease.image_nodes), lease.version) for lease in self._waiting
                    if lease.future and not self._migrating(lease)]
            for lease, _, _ in held:
                self._unplan_waiting(lease)
                self._enqueue(lease)
            candidates = list(self._queue)
        elif self._retry or new is None:
            candidates = list(self._queue)
        else:  # nothing came free since the last pass: only the newcomer can change
            candidates = [new]
            if limit == 0 and self._queue[0] is not new:
                return  # strict FCFS: nobody passes the head
        self._retry = self._replan = False
        used = sum(1 for lease in self._waiting if lease.future)
        failed = dict(self._proven_failures())  # (the lists are replaced, not changed)
        for lease in candidates:
            if not self._fails_again(lease, failed) and \
                    self._try_start(lease, future=False, partial=True, failed=failed):
                continue
            if limit is not None and used >= limit:
                if limit == 0:
                    break
                continue
            if self._try_start(lease, future=True, partial=False):
                used += 1
        for lease, before, version in held:  # image copies the new plans no longer use
            # nodes of its new plan, and (resuming) those holding its suspended state
            keep = {n for seg in lease.live[-2:] for n in seg.nodes}
            stale = before - keep
            if stale:
                self.images.release(lease.id, tuple(stale), lease.request.image.id, self.now)
                lease.image_nodes -= stale
            # A transfer begun for nodes it no longer uses is no longer its own, nor one
            # whose copy there is gone, sent again by a later transfer of its new plan.
            kept = {id(t) for t in _latest_transfers(lease.transfers, lease.image_nodes).values()}
            listed = len(lease.transfers)
            lease.transfers = [t for t in lease.transfers if id(t) in kept]
            if stale or len(lease.transfers) != listed or lease.version == version:
                self._push(lease)  # (else its new plan was pushed as it stands)

    def _fails_again(self, lease: Lease, failed: _Failures) -> bool:
        """Would a fresh lease's try to start now fail at its first questions (see
        ``_propose_with``)? The same answer without building the try: in a long queue,
        most tries end there. Without transfers, those ask whether it is stuck
        (``_stuck_now``); with multicast transfers, whether its readiness, remembered
        for the pass, is in the failure memo (unicast readiness depends on the count of
        transfers)."""
        if lease.segments:
            return False
        if not self.config.image_transfer:
            return self._stuck_now(lease, *self._hosts_now(lease.request.resources.as_array()))
        if not failed or lease.image_nodes or not self._fresh_memo:
            return False
        # (Its readiness is what the try would compute first: remembered for it.)
        if (done := failed.get(self._prepared(lease, None)[4])) is None:
            return False
        req = lease.request
        if (need := lease.fresh_need) is None:
            ovh = self.overheads
            need = lease.fresh_need = (
                req.vms, req.resources, ovh.boot + lease.run_needed + ovh.shutdown, ovh.boot,
                self._may_run_partly(req))
        for f in done:  # noqa: SIM110 (any() over a generator costs more, asked per lease)
            if _as_hard(need, f):
                return True
        return False

    def _proven_failures(self) -> _Failures:
        if self._proven_grown != self.profile.grown:
            self._proven.clear()
            self._proven_grown = self.profile.grown
        return self._proven

    def _unplan_waiting(self, lease: Lease) -> None:
        """Drop a waiting best-effort lease's next segment (it will be re-planned)."""
        now = self.now
        self._drop_plans_after(lease, now)
        img = lease.request.image.id
        for tr in [tr for tr in lease.transfers if tr.start > now]:
            lease.transfers.remove(tr)
            self.images.release(lease.id, tuple(n for n in tr.nodes if n in lease.image_nodes),
                                img, now)
            lease.image_nodes -= set(tr.nodes)

    def _migrating(self, lease: Lease) -> bool:
        """Is the lease's state on its way to other nodes (its resumption is then fixed)?"""
        return any(m.start <= self.now < m.end for m in lease.migrations)

    def _try_start(self, lease: Lease, *, future: bool, partial: bool,
                   failed: _Failures | None = None) -> bool:
        partial = partial and self._may_run_partly(lease.request)
        proposal = self._propose(lease, future=future, partial=partial, failed=failed)
        if proposal is None:
            return False
        self._commit(lease, proposal)
        return True

    def _may_run_partly(self, req: LeaseRequest) -> bool:
        """May the lease run until something blocks it, then suspend (a partial fit)?"""
        return bool(req.preemptible and self.config.suspension
                    and req.kind is LeaseKind.BESTEFFORT)

    def _readiness(self, lease: Lease, unicasts: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, int | None]:
        """Per node: earliest instant the lease's next segment could open there, and
        whether the image is already there; plus the start of a new transfer. Drained
        nodes take no new placements (a suspended lease may still resume in place).
        ``unicasts``: how many unicast transfers the lease will need (default: one per
        VM), which decides when the last of them ends."""
        ready, has, tx_start = self._preparation(lease, unicasts)
        if self._any_closed:
            keep = has if lease.live else np.zeros_like(has)
            ready = np.where(self._closed & ~keep, INF, ready)
        return ready, has, tx_start

    def _preparation(self, lease: Lease, unicasts: int | None
                     ) -> tuple[np.ndarray, np.ndarray, int | None]:
        now, req = self.now, lease.request
        n = len(self.site.nodes)
        # A killed lease starts over only once its doomed attempt has stopped.
        start = max(now, lease.segments[-1].end) if lease.segments and not lease.live \
            else now
        if lease.live:  # resuming: state is on the last segment's nodes
            ready, orig = kernels.resume_readiness(*self._resumption(lease))
            return ready, orig, None
        if not self.config.image_transfer:
            return np.full(n, start, dtype=np.int64), np.ones(n, dtype=bool), None
        copies = self.images.ready_times(req.image.id, never=INF, lease=lease.id,
                                         held=lease.image_nodes)
        # Where the image is missing, a new transfer brings it. (A multicast's start is
        # asked even if no node misses it: the link answers a repeated query at once.)
        per = self.overheads.transfer(req.image)
        if self.config.transfer_mode == "multicast":
            tx_start = self.images.link.earliest_gap(now, per)
            ready, has, complete = kernels.readiness(copies, start, max(tx_start + per, start))
            return ready, has, None if complete else tx_start
        ready, has, complete = kernels.readiness(copies, start, INF)
        if not complete:
            ready[~has] = max(start, self._unicast_end(
                per, req.vms if unicasts is None else unicasts))
        return ready, has, None

    def _resumption(self, lease: Lease) -> tuple[np.ndarray, np.ndarray, int, int, int]:
        """What a suspended lease's readiness is made of (``kernels.resume_readiness``):
        when a copy of its image is on each node, the nodes holding its state, when it
        could resume there, and elsewhere after moving its state alone or its image too."""
        req, last = lease.request, lease.live[-1]
        base = max(self.now, last.end)
        if self.config.image_transfer and self.config.migration is not Migration.NO:
            # The image moves too, to nodes that lack it; where a copy is on its way, the
            # lease waits for it, or brings the image along if that is sooner.
            return (self.images.ready_times(req.image.id, never=INF), last.node_array, base,
                    base + self.overheads.migration(req, False),
                    base + self.overheads.migration(req, True))
        # (no copy to wait for; without migration, never elsewhere)
        light = INF if self.config.migration is Migration.NO \
            else base + self.overheads.migration(req, False)
        return np.zeros(len(self.site.nodes), dtype=np.int64), last.node_array, base, \
            light, light

    def _unicast_end(self, per: int, count: int) -> int:
        """When the last of ``count`` unicast transfers of ``per`` seconds ends, each
        placed FIFO in the link's earliest gap as ``_deploy_images`` will place them
        (tried on the link, then taken back)."""
        link, ids, end = self.images.link, [], self.now
        try:
            for _ in range(count):
                s = link.earliest_gap(self.now, per)
                ids.append(link.add(s, s + per))
                end = max(end, s + per)
        finally:
            for tid in ids:
                link.remove(tid)
        return end

    def _transfer_length(self, req: LeaseRequest, nodes: int) -> int:
        per = self.overheads.transfer(req.image)
        return per if self.config.transfer_mode == "multicast" else per * nodes

    def _propose(self, lease: Lease, *, future: bool, partial: bool,
                 failed: _Failures | None = None) -> _Proposal | None:
        """Where and when the lease's next segment could go (see ``_propose_with``).

        With unicast transfers, readiness depends on how many of the chosen nodes lack
        the image: start from the fewest possible and count again on the nodes chosen
        until the count holds (so the lease boots once its images are there). A choice
        that needs fewer transfers than were counted is valid but waits for transfers it
        does not make: count again with fewer while that gives a valid choice no later
        (so it boots as soon as its images are there). An immediate lease, which may
        not wait, then tries choosing exactly as many nodes without the image as it
        counted."""
        if not (self.config.image_transfer and self.config.transfer_mode == "unicast"
                and not lease.live):
            return self._propose_with(lease, None, future=future, partial=partial,
                                      failed=failed)
        req = lease.request
        has = self.images.ready_times(req.image.id, never=INF, lease=lease.id,
                                      held=lease.image_nodes) < INF
        unicasts = max(0, req.vms - int(has.sum()))
        valid: _Proposal | None = None
        counted = 0  # the count that found ``valid``
        while True:
            prop = self._propose_with(lease, unicasts, future=future, partial=partial,
                                      failed=failed)
            if prop is None or (valid is not None and prop.start > valid.start):
                break
            lacking = sum(1 for n in prop.nodes if not has[n])
            if lacking > unicasts:  # too few counted
                if valid is not None:
                    break
                unicasts = lacking
            elif lacking == unicasts:
                return prop
            else:  # too many counted
                valid, counted, unicasts = prop, unicasts, lacking
        if valid is None or req.kind is not LeaseKind.IMMEDIATE:
            return valid
        # ``valid`` waits for transfers it does not make, which an immediate lease may
        # not do (others may: it spares the link). Choosing exactly ``counted`` nodes
        # that lack the image makes them all: no later, that choice is exact. (Without
        # the failure memo: this search is narrower than the others.)
        exact = self._propose_with(lease, counted, future=future, partial=partial,
                                   split=True)
        return exact if exact is not None and exact.start <= valid.start else valid

    def _propose_with(self, lease: Lease, unicasts: int | None, *, future: bool,
                      partial: bool, failed: _Failures | None = None,
                      split: bool = False) -> _Proposal | None:
        req, ovh = lease.request, self.overheads
        vec = req.resources.as_array()
        k = req.vms
        resuming = bool(lease.segments) and bool(lease.live)
        # A fresh lease without transfers is ready now on every open node.
        uniform = not future and not lease.segments and not self.config.image_transfer
        if uniform:  # it could only start now, on nodes with room now
            fit_now, hosts = self._hosts_now(vec)
            # (A queue pass, which brings its failure memo, asked _fails_again first.)
            if failed is None and self._stuck_now(lease, fit_now, hosts):
                return None
        if resuming and not future and \
                self.profile.resume_room(vec, *self._resumption(lease), self._closed) < k:
            # The first question below (``_viable``), asked at once of its readiness
            # (``_readiness``) in one call: in a queue of many suspended leases, most
            # cannot resume yet, and each has its own readiness.
            return None
        opening = ovh.resume(req) if resuming else ovh.boot
        run = lease.run_needed - (lease.run_done() if lease.segments else 0)
        whole = opening + run + ovh.shutdown
        ready, has, groups, instants, ready_bytes = self._prepared(lease, unicasts)
        if not future:
            # Within a pass capacity only shrinks: a request needing at least as much as
            # one that already failed from the same readiness fails too. (Checked first:
            # in a long queue, most requests fail here.)
            key, need = ready_bytes, (k, req.resources, whole, opening, partial)
            if failed is not None and (done := failed.get(key)) is not None:
                for f in done:
                    if _as_hard(need, f):
                        return None

        picker = _Picker(self, vec, k, has, resuming, (unicasts or 0) if split else None,
                         opening, run, future)
        if not future:
            # Cheap and exact: a start at g (whole or partial) needs k eligible nodes that
            # can host a VM at g itself, one of them where preparation ends at g (else the
            # readiness check rejects the choice). One query for all groups at once.
            usable = 0  # uniform: how many nodes could host it from now (at most)
            if uniform:  # groups == [now], and ``hosts`` open nodes can host it now
                usable = hosts
            elif groups:
                groups = self._viable(ready, ready_bytes, groups, instants, vec, k)
            usable_whole = usable_partial = usable
            proven = not uniform  # (a uniform readiness is now: no later pass sees it)
            for g in groups:
                # Starting at g must be what preparation dictates (on one of the chosen
                # nodes at least); otherwise the lease is waiting for resources, and that
                # is a reservation in the future. (Without k candidates, one of them
                # ready at g, no choice can be: skip the costly host selection.)
                # (Uniform: ready now on the open nodes, and every node that fits the
                # window is among fit_now's if open; so the checks of readiness hold.)
                if uniform:
                    mask = self.profile.fits_window(g, g + whole, vec) & fit_now
                    usable_whole = int(np.count_nonzero(mask))
                    exact = True
                else:
                    mask, usable_whole, exact = self.profile.ready_window(g, g + whole, vec,
                                                                          ready)
                if usable_whole < k or not exact:
                    continue
                prop = picker.propose(g, mask)
                if prop is not None and (uniform or int(ready[list(prop.nodes)].max()) == g) \
                        and self._channels_ok(lease, prop):
                    return prop
                proven = False  # (another choice of nodes might have done)
            if partial and groups:
                susp = ovh.suspend(req)
                shortest = opening + max(1, susp + ovh.resume(req)) + susp  # see _partial
                for g in groups:
                    _, usable_partial, exact = self.profile.ready_window(g, g + shortest, vec,
                                                                         ready)
                    if usable_partial < k or not exact:
                        continue  # _partial would find too few nodes, or fail its readiness
                    prop = self._partial(lease, g, (ready <= g), self.profile.free_until(g, vec),
                                         opening, picker, ready)
                    if prop is not None:
                        return prop
                    proven = False
            if failed is not None:
                _add_failure(failed, key, need)
                if proven:
                    _add_failure(self._proven_failures(), key, need)
            if uniform:  # (its only start is now)
                self._note_stuck(lease, max(usable_whole, usable_partial if partial else 0))
            return None
        best: _Proposal | None = None
        for g in groups:  # (ascending)
            if best is not None and best.start <= g:
                break  # a start from here on is no earlier
            t0 = g
            for _ in range(8):  # retries only when the resume's exclusion channel is busy
                found = self.profile.earliest_fit(t0, k, vec, whole, eligible=ready <= g)
                if found is None:
                    break
                s, fits = found
                if best is not None and s >= best.start:
                    break  # (a busy channel only makes it later): skip the host selection
                prop = picker.propose(s, (ready <= g) & fits)
                if prop is None:
                    break
                if self._channels_ok(lease, prop):
                    if best is None or s < best.start:
                        best = prop
                    break
                t0 = self._channels.earliest_gap(prop.nodes, s, opening)
        return best

    def _viable(self, ready: np.ndarray, ready_bytes: bytes, groups: list[int],
                instants: np.ndarray, vec: np.ndarray, k: int) -> list[int]:
        """The readiness groups (``groups``: the distinct finite times of ``ready``, also
        as the array ``instants``; ``ready_bytes``: its bytes) at which ``k`` VMs of
        ``vec`` could start: k nodes ready by g have room for one at g, one of them ready
        exactly at g. The same for every lease of that readiness and shape, whatever its
        size, while the profile stays as it is: a queue pass of leases waiting for one
        link, or for nodes, asks it for each of them (and most ask for more VMs than
        could start)."""
        if self._viability_version != self.profile.version:
            self._viability_memo.clear()
            self._viability_version = self.profile.version
        key = (ready_bytes, vec.tobytes())
        if (hit := self._viability_memo.get(key)) is None:
            room = self.profile.ready_room(instants, vec, ready).tolist()
            hit = self._viability_memo[key] = (max(room, default=0), room)
        most, room = hit
        return [] if k > most else [g for g, r in zip(groups, room, strict=True) if r >= k]

    def _stuck_now(self, lease: Lease, fit_now: np.ndarray, hosts: int) -> bool:
        """Must a fresh lease, ready now on every open node (``fit_now``: the ``hosts``
        of them with room for a VM now), fail to start now? With too few such nodes,
        or as it did in an earlier pass (``_still_stuck``)."""
        if hosts < lease.request.vms:
            self._note_stuck(lease, hosts)
            return True
        return self._still_stuck(lease, fit_now)

    def _note_stuck(self, lease: Lease, usable: int) -> None:
        """A fresh lease, ready now on every open node, could not start now: at most
        ``usable`` nodes could have hosted it long enough."""
        self._stuck[lease.id] = (self.profile.released(self.now), usable)

    def _still_stuck(self, lease: Lease, fit_now: np.ndarray) -> bool:
        """Must the fresh lease, ready now on every open node (``fit_now``: those with
        room for a VM now), still fail to start now, as it did in an earlier pass?

        Only a node on which capacity was let go since (an entry ended, was cut short
        or removed; see ``AvailabilityProfile.released``), and that has room for it
        now, can host it from now when it could not then. Nodes are only ever added or
        closed. So with fewer than ``vms`` nodes usable then and such nodes together,
        it cannot start. (Asked only once there is room now for it: else that fails
        it sooner.)"""
        stuck = self._stuck.get(lease.id)
        if stuck is None:
            return False
        then, usable = stuck
        self.profile.released(self.now)
        joining = np.count_nonzero((self.profile.released_at > then) & fit_now)
        return bool(usable + joining < lease.request.vms)

    def _prepared(self, lease: Lease, unicasts: int | None) -> _Prepared:
        """``_readiness`` (without the transfer start) and its distinct finite times,
        shared by fresh leases of images of one size with the same copies while the
        copies, the link, the time and the open nodes stay as they are. A fresh lease
        holds no copy, so every fresh lease may use the same ones: all of them with a
        cache or piggybacking, only those nobody holds without (``ImageStore.version``
        tracks both). Without transfers, the image does not matter."""
        req = lease.request
        key = key2 = None
        if not lease.segments and not lease.image_nodes:
            images = self.images
            if self.now != self._prep_now or images.version != self._prep_images \
                    or images.link.version != self._prep_link:
                self._prep_memo.clear()
                if images.version != self._prep_images:
                    self._copies_bytes.clear()
                self._prep_now, self._prep_images = self.now, images.version
                self._prep_link = images.link.version
            key = (req.image.id, req.image.size_mb, unicasts) if self.config.image_transfer \
                else ("", 0, unicasts)
            if (hit := self._prep_memo.get(key)) is not None:
                return hit
            if self.config.image_transfer:
                # Images of one size with the same copies (most often: none anywhere)
                # give the same readiness: computed once for all of them.
                shared_key: tuple[str | bytes, int, int | None] = (b"", req.image.size_mb,
                                                                   unicasts)
                if images.anywhere(req.image.id):
                    copies = images.ready_times(req.image.id, never=INF, lease=lease.id)
                    known = self._copies_bytes.get(id(copies))
                    if known is None or known[0] is not copies:
                        known = self._copies_bytes[id(copies)] = (copies, copies.tobytes())
                    shared_key = (known[1], req.image.size_mb, unicasts)
                if (hit := self._prep_memo.get(shared_key)) is not None:
                    self._prep_memo[key] = hit
                    return hit
                key2 = shared_key
        ready, has, _ = self._readiness(lease, unicasts)
        ready.flags.writeable = has.flags.writeable = False
        instants = kernels.distinct_finite(ready)
        prepared = (ready, has, instants.tolist(), instants, ready.tobytes())
        if key is not None:
            self._prep_memo[key] = prepared
            if key2 is not None:
                self._prep_memo[key2] = prepared
        return prepared

    def _hosts_now(self, vec: np.ndarray) -> tuple[np.ndarray, int]:
        """Which open nodes can host a VM of ``vec`` now, and how many (a queue pass
        asks it for every lease)."""
        token = (self.profile.version, self.now)
        if token != self._hosts_now_token:
            self._hosts_now_memo.clear()
            self._hosts_now_token = token
        key = vec.tobytes()
        if (hit := self._hosts_now_memo.get(key)) is None:
            fit = self.profile.hosts_at(self.now, vec)
            if self._any_closed:
                fit &= ~self._closed
            fit.flags.writeable = False
            hit = self._hosts_now_memo[key] = (fit, int(np.count_nonzero(fit)))
        return hit

    def _time_fit(self, nodes: np.ndarray, k: int, start: int, vec: np.ndarray
                  ) -> tuple[np.ndarray, Callable[[np.ndarray, int], np.ndarray]]:
        """For the host selection's tie-break: since when each candidate is free before
        ``start``, and a query for which of some are booked again soonest after it.

        Both cost scans of the profile, and they matter for VMs that fill a node (as in
        batch workloads, where they make aggressive backfilling exactly EASY): for VMs
        that can share a node, every candidate looks alike and index order decides."""
        key = vec.tobytes()
        fills = self._fills.get(key)
        if fills is None:
            filled = np.asarray((2 * vec > self._capacity).any(axis=1))
            fills = self._fills[key] = (filled, bool(filled.all()), not filled.any())
        mask, every, no = fills
        exclusive = len(nodes) > k and not no and (every or bool(mask[nodes].all()))

        def soonest(positions: np.ndarray, r: int) -> np.ndarray:
            if not exclusive or len(positions) <= r:
                return positions[:r]  # lowest indices
            chosen: np.ndarray = positions[
                self.profile.soonest_ends(start, vec, nodes[positions], r)]
            return chosen

        if not exclusive:
            return np.zeros(len(nodes), dtype=np.int64), soonest
        return np.maximum(self.profile.free_since(start, vec)[nodes], self.now), soonest

    def _partial(self, lease: Lease, start: int, eligible: np.ndarray, until: np.ndarray,
                 opening: int, picker: _Picker, ready: np.ndarray) -> _Proposal | None:
        """Run from ``start`` until something blocks, then suspend (resume later)."""
        req, ovh = lease.request, self.overheads
        k = req.vms
        susp = ovh.suspend(req)
        min_run = max(1, susp + ovh.resume(req))  # never spend more on overhead than work
        ok = eligible & (until >= start + opening + min_run + susp)
        if ok.sum() < k:
            return None
        horizon = int(np.sort(until[ok])[-k])  # the k-th longest free stretch
        candidates = ok & (until >= horizon)
        if not (candidates & (ready == start)).any():
            return None  # no choice can start as its preparation dictates (below)
        nodes = picker.pick(candidates, start)
        if nodes is None or int(ready[list(nodes)].max()) != start:
            return None
        s_start = self._channels.latest_gap(nodes, horizon, susp)
        run_start = start + opening
        if s_start - run_start < min_run:
            return None
        if lease.live and not self._channels.is_free(nodes, start, run_start):
            return None  # the resumption it opens with needs the exclusion channel
        if s_start + susp - run_start >= lease.run_needed - lease.run_done() + susp:
            return None  # it would fit whole: not a partial fit
        return _Proposal(nodes, start, run_start, s_start, s_start + susp,
                         EventKind.SUSPEND, False)

    def _channels_ok(self, lease: Lease, prop: _Proposal) -> bool:
        if not lease.live:
            return True
        return self._channels.is_free(prop.nodes, prop.start, prop.run_start)

    def _commit(self, lease: Lease, prop: _Proposal) -> None:
        self._stuck.pop(lease.id, None)
        req, now = lease.request, self.now
        img = req.image.id
        relied: list[Transfer] = []  # copies on their way that a migration resumes from
        if lease.live:  # resume, maybe after migrating
            orig = lease.live[-1].nodes
            stay = set(orig) & set(prop.nodes)  # (tuples of up to hundreds of nodes)
            moved_to = [n for n in prop.nodes if n not in stay]
            if moved_to:
                moved_from = [n for n in orig if n not in stay]
                # Per new node, the copy there by the resume (None: the image moves with
                # the state, sooner than a copy still on its way, if any, comes).
                copies: dict[int, Copy | None] = {}
                if self.config.image_transfer:
                    for n in moved_to:
                        copy = self.images.usable(n, img)
                        copies[n] = copy if copy is not None and copy.ready <= prop.start \
                            else None
                mig = max(self.overheads.migration(
                    req, self.config.image_transfer and copies[n] is None) for n in moved_to)
                lease.migrations.append(Event(EventKind.MIGRATE, prop.start - mig, prop.start,
                                              tuple(sorted(moved_from + moved_to))))
                for n, copy in copies.items():
                    if copy is None:
                        self.images.add_copy(n, img, req.image.size_mb, prop.start, None,
                                             lease.id, now)
                        lease.image_nodes.add(n)
                    else:  # it resumes from the copy, maybe on its way
                        relied += self._use_copies(lease, [copy], prop.start)
        elif self.config.image_transfer:
            self._deploy_images(lease, prop.nodes, now, prop.start)
            # transfers still under way when it boots are not what it boots from
            lease.transfers = [t for t in lease.transfers if t.end <= prop.start]
        entry = self.profile.add(prop.nodes, prop.start, prop.end, req.resources.as_array(),
                                 owner=lease.id, preemptible=req.preemptible)
        seg = Segment(prop.nodes, prop.start, prop.run_start, prop.run_end, prop.end,
                      EventKind.RESUME if lease.live else EventKind.BOOT, prop.closes, entry,
                      transfers=relied)
        if seg.opens is EventKind.RESUME:
            self._book_channels(seg, seg.start, seg.run_start)
        if seg.closes is EventKind.SUSPEND:
            self._book_channels(seg, seg.run_end, seg.end)
        lease.segments.append(seg)
        if lease in self._queue:
            self._queue.remove(lease)
        if req.kind is LeaseKind.BESTEFFORT and seg.start > now and lease not in self._waiting:
            self._waiting.append(lease)
            lease.future = prop.future
        if seg.closes is EventKind.SUSPEND:
            self._enqueue(lease)  # its remaining work waits for a later resume
        self._push(lease)

    def _use_copies(self, lease: Lease, copies: list[Copy], by: int) -> list[Transfer]:
        """``lease`` holds ``copies`` (of its image) and needs them by ``by``: it lists
        the transfers still bringing them (returns those newly listed). An AR transfer,
        placed as late as its deadline allows (and moved again when other AR transfers
        need the link), now serves a boot or resume that may come sooner, and must not
        pass it."""
        self.images.use(copies, lease.id, self.now)
        lease.image_nodes.update(copy.node for copy in copies)
        listed = []
        for copy in copies:
            if (t := copy.transfer) is None:
                continue
            if t.deadline is not None and by < t.deadline:
                t.deadline = by
            if t not in lease.transfers:
                lease.transfers.append(t)
                listed.append(t)
        return listed

    def _book_channels(self, seg: Segment, start: int, end: int) -> None:
        if end > start:
            seg.channels.append((self._channels.add(seg.nodes, start, end), start))

    def _deploy_images(self, lease: Lease, nodes: tuple[int, ...], now: int, boot: int,
                       deadline: int | None = None) -> bool:
        """Reuse copies already on (or on their way to) ``nodes``; transfer the image to
        the others: FIFO for best-effort, EDF as late as possible for ARs. The VMs boot
        at ``boot``."""
        req = lease.request
        img = req.image
        usable = self.images.usable_on(nodes, img.id, lease.id)
        if deadline is not None:  # (a copy that comes too late is of no use)
            usable = [c if c is not None and c.ready <= deadline else None for c in usable]
        missing = [n for n, c in zip(nodes, usable, strict=True) if c is None]
        found = [c for c in usable if c is not None]
        # (using a copy on one node changes no other node's: usable above holds)
        self._use_copies(lease, found, boot)
        per = self.overheads.transfer(img)
        if per == 0:  # nothing to send: the (empty) image is there at once
            for n in missing:
                self.images.add_copy(n, img.id, img.size_mb, now, None, lease.id, now)
                lease.image_nodes.add(n)
            missing = []
        if not missing:
            return True
        batches = ([tuple(missing)] if self.config.transfer_mode == "multicast"
                   else [(n,) for n in missing])
        made: list[Transfer] = []
        # Other leases whose transfers this changes (AR transfers re-placed, nodes handed
        # over): their schedules changed too.
        touched: set[int] = set()
        try:
            for batch in batches:
                if deadline is None:
                    s = self.images.link.earliest_gap(now, per)
                    tr: Transfer | None = self.images.new_transfer(
                        img.id, img.size_mb, batch, s, s + per, None)
                elif (placed := self.images.place_ar_transfer(
                        img.id, img.size_mb, batch, per, deadline, now)) is None:
                    tr = None
                else:
                    tr, moved = placed
                    touched.update(u for t in moved for u in t.users)
                if tr is None:
                    for t in made:
                        self.images.cancel_transfer(t)
                    return False
                made.append(tr)
            for tr in made:
                tr.users.add(lease.id)
                lease.transfers.append(tr)
                for n in tr.nodes:
                    _, handed = self.images.add_copy(n, img.id, img.size_mb, tr.end, tr,
                                                     lease.id, now)
                    lease.image_nodes.add(n)
                    if handed is not None:
                        touched |= self._handed_over(tr, handed)
            return True
        finally:
            for u in sorted(touched - {lease.id}):
                other = self.leases.get(u)
                if other is not None and not other.finished:  # (a finished one keeps its state)
                    self._push(other)

    def _handed_over(self, tr: Transfer, handed: HandOver) -> set[int]:
        """``tr`` now brings the image where ``handed.slower`` did: its users list it,
        and nobody lists the slower one if it was dropped. The leases affected."""
        affected = handed.users | handed.slower.users
        for u in sorted(affected):
            other = self.leases.get(u)
            if other is None:
                continue
            if handed.slower.cancelled and handed.slower in other.transfers:
                other.transfers.remove(handed.slower)
            if u in handed.users and tr not in other.transfers:
                other.transfers.append(tr)
        return affected

    # ======================================================= advance reservations
    def _schedule_ar(self, lease: Lease) -> None:
        """Place an AR at its start or, with a start window, at the earliest start in
        the window where it fits; else reject it with the reason its start failed."""
        req = lease.request
        reason = self._try_ar(lease)
        if reason is None:
            return
        if req.start is not None and req.start_latest is not None:
            t: int | None = req.start
            for _ in range(_WINDOW_TRIES):
                assert t is not None
                t = self._next_ar_start(req, t + 1)
                if t is None or t > req.start_latest:
                    break
                lease.request = replace(req, start=t)
                if self._try_ar(lease) is None:
                    return
            lease.request = req
            reason += f"; nor at any start up to its latest start {self._at(req.start_latest)}"
        self._reject(lease, reason)

    def _next_ar_start(self, req: LeaseRequest, t: int) -> int | None:
        """The earliest start >= ``t`` at which enough nodes have room for the AR's VMs
        (preemptible leases counted as movable): a candidate for ``_try_ar``."""
        ovh = self.overheads
        t = max(t, self.now + ovh.boot)
        if self.config.image_transfer:  # an image the nodes lack takes this long at least
            t = max(t, self.now + self._transfer_length(req, req.vms) + ovh.boot)
        fit = self.profile.earliest_fit(t - ovh.boot, req.vms, req.resources.as_array(),
                                        ovh.boot + req.duration + ovh.shutdown,
                                        eligible=~self._closed, ignore_preemptible=True)
        return None if fit is None else fit[0] + ovh.boot

    def earliest_ar_start(self, request: LeaseRequest) -> int | None:
        """The earliest start (at or after ``request.start``) at which this AR would be
        accepted now: a counter-offer for a rejected one. A dry run: nothing changes."""
        if request.kind is not LeaseKind.AR or request.start is None:
            return None
        t = self._next_ar_start(request, request.start)
        for _ in range(_WINDOW_TRIES):
            if t is None:
                return None
            probe = replace(request, start=t, start_latest=None)
            placed = self._ar_placement(probe)
            if not isinstance(placed, int) and self._ar_transfer_possible(probe, placed[0]):
                return t
            t = self._next_ar_start(request, t + 1)
        return None

    def _ar_placement(self, req: LeaseRequest
                      ) -> tuple[tuple[int, ...], list[Lease], dict[int, int | None]] | int:
        """Where an AR would go at ``req.start`` and whom it would preempt (and when),
        without changing anything; or, if it cannot, how many nodes could host it."""
        ovh = self.overheads
        assert req.start is not None
        vec = req.resources.as_array()
        k = req.vms
        start = req.start - ovh.boot
        end = req.start + req.duration + ovh.shutdown
        free = self.profile.fits_window(start, end, vec)
        pre = np.zeros_like(free)
        # Host selection takes a node that needs a preemption only if too few others
        # will do (its contract): with enough free nodes, the preemptible ones are moot.
        if np.count_nonzero(free & ~self._closed) < k:
            may_preempt = self.policies.preemption.may_preempt
            could = self.profile.fits_window(start, end, vec, ignore_preemptible=True) & ~free
            if could.any() and any(
                    may_preempt(req, self.leases[o].request)
                    for o in self.profile.owners_overlapping(
                        np.flatnonzero(could), start, end, preemptible_only=True)
                    if o != req.id):
                pre = could
        excluded = np.zeros_like(free)
        while True:
            usable = (free | pre) & ~excluded & ~self._closed
            nodes_idx = np.flatnonzero(usable)
            has = (self.images.ready_times(req.image.id, never=INF)[nodes_idx] <= start
                   if self.config.image_transfer else np.ones(len(nodes_idx), dtype=bool))
            since, soonest = self._time_fit(nodes_idx, k, start, vec)
            cands = HostCandidates(nodes_idx, pre[nodes_idx], has,
                                   np.zeros(len(nodes_idx), dtype=bool), since, soonest)
            nodes = self.policies.host_selection.choose(k, cands)
            if nodes is None:
                return int(usable.sum())
            victims = self._victims(req.id, [n for n in nodes if not free[n]], start, end)
            plan = self._preemption_plan(req, victims, start)
            if isinstance(plan, Lease):  # it cannot make way in time: avoid its nodes
                excluded[[n for seg in plan.segments for n in seg.nodes]] = True
                continue
            return nodes, victims, plan

    def _ar_transfer_possible(self, req: LeaseRequest, nodes: tuple[int, ...]) -> bool:
        """Dry run of an AR's image transfer: is the repository link free long enough
        before its boot (other AR transfers may move, but only earlier ones help)?"""
        assert req.start is not None
        boot = req.start - self.overheads.boot
        missing = [n for n in nodes if self.config.image_transfer
                   and not self._image_ready(n, req.image.id, boot)]
        if not missing or self.overheads.transfer(req.image) == 0:
            return True
        length = self._transfer_length(req, len(missing))
        return self.images.link.latest_gap(boot, length) >= self.now

    def _try_ar(self, lease: Lease) -> str | None:
        """Book the AR at ``lease.request.start``; the reason it cannot be, or None."""
        req, ovh, now = lease.request, self.overheads, self.now
        assert req.start is not None
        start = req.start - ovh.boot
        end = req.start + req.duration + ovh.shutdown
        if start < now:
            return (f"starts at {self._at(req.start)} but booting its VMs takes "
                    f"{ovh.boot} s and it is already {self._at(now)}")
        placed = self._ar_placement(req)
        if isinstance(placed, int):
            return self._ar_shortage(req, start, end, placed)
        nodes, victims, plan = placed
        if self.config.image_transfer and not self._deploy_images(lease, nodes, now, start,
                                                                  deadline=start):
            self._release_images(lease)
            return self._transfer_shortage(req, start)
        for v in victims:
            self._vacate(v, plan[v.id], start)
        entry = self.profile.add(nodes, start, end, req.resources.as_array(), owner=lease.id)
        lease.segments.append(Segment(nodes, start, req.start, req.start + req.duration, end,
                                      EventKind.BOOT, EventKind.SHUTDOWN, entry))
        self._push(lease)
        return None

    def _image_ready(self, node: int, image: str, by: int) -> bool:
        copy = self.images.usable(node, image)
        return copy is not None and copy.ready <= by

    def _release_images(self, lease: Lease) -> None:
        self.images.release(lease.id, tuple(lease.image_nodes), lease.request.image.id,
                            self.now)
        lease.image_nodes.clear()
        lease.transfers.clear()

    def _transfer_shortage(self, req: LeaseRequest, boot: int) -> str:
        length = self._transfer_length(req, req.vms)
        msg = (f"its image ({req.image.size_mb} MB, {length} s to transfer) cannot reach the "
               f"nodes before its VMs boot at {self._at(boot)}")
        if self.now + length > boot:
            earliest = self.now + length + self.overheads.boot
            return msg + f"; the earliest start that allows it is {self._at(earliest)}"
        return msg + ": the repository link is booked by other transfers until then"

    def _ar_shortage(self, req: LeaseRequest, start: int, end: int, usable: int) -> str:
        vec = req.resources.as_array()
        msg = (f"not enough resources: only {usable} of the {req.vms} nodes it needs can host "
               f"a VM ({self._describe(req)}) from {self._at(start)} to {self._at(end)}")
        fit = self.profile.earliest_fit(start, req.vms, vec, end - start,
                                        eligible=~self._closed)
        if fit is not None:
            msg += f"; the earliest start that fits is {self._at(fit[0] + self.overheads.boot)}"
        return msg

    def _victims(self, lease_id: int, nodes: list[int], start: int, end: int) -> list[Lease]:
        """Preemptible leases in the way on ``nodes`` (which lack room without preemption)."""
        owners = self.profile.owners_overlapping(nodes, start, end, preemptible_only=True)
        owners.discard(lease_id)
        return sorted((self.leases[o] for o in owners), key=lambda v: v.seq)

    def _preemption_plan(self, preemptor: LeaseRequest, victims: list[Lease],
                         by: int) -> dict[int, int | None] | Lease:
        """When each victim's suspension starts (None: it has not begun, re-plan it) so
        that it holds nothing from ``by`` on; suspensions are placed one after another
        on the exclusion channels. Returns the first victim that cannot make way."""
        plan: dict[int, int | None] = {}
        booked: list[int] = []
        length = 0
        try:
            for v in victims:
                if not self.policies.preemption.may_preempt(preemptor, v.request) \
                        or self._migrating(v):
                    return v
                cur = self._current_segment(v)
                if cur is None or cur.end <= by:
                    plan[v.id] = None
                    continue
                if not self.config.suspension:
                    # No suspension: it is killed (shut down, or destroyed if that
                    # cannot finish in time) and starts over later.
                    kill = max(self.now, cur.run_start, by - self.overheads.shutdown)
                    if cur.run_end <= self.now or kill > by:
                        return v  # a VM command under way cannot be cut short
                    plan[v.id] = kill
                    continue
                if cur.closes is EventKind.SUSPEND and cur.run_end <= self.now:
                    return v  # its suspension is already under way
                s = self._suspend_start(v, cur, by)
                if s is None:
                    return v
                plan[v.id] = s
                length = self.overheads.suspend(v.request)
                booked.append(self._channels.add(cur.nodes, s, s + length))
            return plan
        finally:
            for bid in booked:
                self._channels.remove(bid)

    def _current_segment(self, lease: Lease) -> Segment | None:
        # A killed attempt still stopping counts: a later preemption may need its nodes
        # sooner than its planned kill.
        begun = [s for s in lease.segments if s.start <= self.now]
        return begun[-1] if begun else None

    def _suspend_start(self, victim: Lease, seg: Segment, by: int) -> int | None:
        length = self.overheads.suspend(victim.request)
        own = [bid for bid, s in seg.channels if s >= seg.run_end]
        for bid in own:  # its own planned suspension will be replaced
            self._channels.remove(bid)
        s = self._channels.latest_gap(seg.nodes, by, length)
        seg.channels = [c for c in seg.channels if c[1] < seg.run_end] + [
            (self._channels.add(seg.nodes, seg.run_end, seg.end), seg.run_end) for _ in own]
        if s <= max(self.now, seg.run_start):
            return None
        return s

    def _vacate(self, victim: Lease, suspend_at: int | None, by: int) -> None:
        """Preempt ``victim`` so that it holds nothing from ``by`` on: drop what it has
        not begun, suspend what runs (or, with suspension off, kill it at
        ``suspend_at`` and queue it to start over)."""
        log.info("lease preempted", extra={"lease": victim.id, "suspend_at": suspend_at})
        self._unplan_waiting(victim)
        cur = self._current_segment(victim)
        if cur is None:
            self._release_images(victim)
        elif suspend_at is not None and not self.config.suspension:
            self._cut_segment(victim, cur, suspend_at,
                              graceful=suspend_at + self.overheads.shutdown <= by)
            cur.lost = True  # (its image copies stay: a restart in place needs no transfer)
        elif suspend_at is not None:
            self._release_channels(cur, after=cur.run_end)
            cur.run_end, cur.closes = suspend_at, EventKind.SUSPEND
            cur.end = suspend_at + self.overheads.suspend(victim.request)
            self.profile.truncate(cur.entry, cur.end)
            self._book_channels(cur, cur.run_end, cur.end)
        if cur is None or cur.closes is EventKind.SUSPEND or cur.lost:
            self._enqueue(victim)
        self._replan = True
        self._push(victim)


class _Picker:
    """Picks the nodes of one proposal for a lease's next segment (see
    ``Scheduler._propose_with``) with the host selection policy. (An object rather than
    nested functions: closures that call each other form a reference cycle, which only
    the cycle collector frees; a replay, which runs without it, collected 365,000 such
    objects of a ``vm-mult`` run at its end, a tenth of its time.)"""

    def __init__(self, sched: Scheduler, vec: np.ndarray, k: int, has: np.ndarray,
                 resuming: bool, split: int | None, opening: int, run: int,
                 future: bool) -> None:
        self.sched, self.vec, self.k, self.has = sched, vec, k, has
        self.resuming = resuming
        self.split = split  # pick exactly this many nodes without the image (or None)
        self.opening, self.run, self.future = opening, run, future

    def choose(self, mask: np.ndarray, start: int, count: int) -> tuple[int, ...] | None:
        if count == 0:
            return ()
        nodes = np.flatnonzero(mask)
        since, soonest = self.sched._time_fit(nodes, count, start, self.vec)
        none = np.zeros(len(nodes), dtype=bool)
        has = self.has[nodes]
        cands = HostCandidates(nodes, none, has, has if self.resuming else none, since,
                               soonest)
        return self.sched.policies.host_selection.choose(count, cands)

    def pick(self, mask: np.ndarray, start: int) -> tuple[int, ...] | None:
        if self.split is None:
            return self.choose(mask, start, self.k)
        with_image = self.choose(mask & self.has, start, self.k - self.split)
        without = self.choose(mask & ~self.has, start, self.split)
        if with_image is None or without is None:
            return None
        return tuple(sorted(with_image + without))

    def propose(self, start: int, mask: np.ndarray) -> _Proposal | None:
        nodes = self.pick(mask, start)
        if nodes is None:
            return None
        rs = start + self.opening
        end = rs + self.run
        return _Proposal(nodes, start, rs, end, end + self.sched.overheads.shutdown,
                         EventKind.SHUTDOWN, self.future)
