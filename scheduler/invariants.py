"""An independent checker of schedule invariants.

This module owns the definition of a *valid schedule*. It judges only what a run
produced -- one :class:`~scheduler.leases.LeaseOutcome` per lease -- against the
:class:`~scheduler.leases.Site` and the :class:`~scheduler.config.Config`; it never
looks at scheduler internals, so it can catch the scheduler's own bookkeeping bugs.

Intervals are half-open ``[start, end)`` in integer seconds: ``[0,10)`` and
``[10,20)`` do not overlap, and zero-length events occupy nothing.

Invariants (one small function each):

1. capacity -- per node, the VMs held there never exceed its capacity;
2. shape -- each lease's events form boot|resume -> run -> shutdown|suspend segments
   on ``request.vms`` distinct nodes, suspend -> [migrate] -> resume in between;
3. advance reservations run exactly in their requested window, unpreempted;
4. dependencies -- transfers before the first boot, suspend before migrate/resume,
   migrate before resume;
5. the image repository link carries one transfer at a time (identical intervals are
   one shared multicast/piggybacked transfer); given the record of every transfer the
   link carried (a replay's), those never overlap, and each lease's transfer is one of
   them;
6. suspend/resume exclusion (per node or site-wide);
7. work -- total run time matches the (slowed-down) duration; only preemptible
   leases are suspended, or (with suspension off) killed and started over;
8. states -- terminal at the end of a run, rejected leases have no events, ...;

plus consistency with features the configuration switches off (no transfers when
images are predeployed, no suspensions or migrations when disabled).

Use :func:`check_schedule` for the list of violations, :func:`assert_valid` in tests.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from .config import Config, Exclusion, Migration
from .leases import (
    DIMENSIONS,
    Event,
    EventKind,
    LeaseKind,
    LeaseOutcome,
    LeaseState,
    SentImage,
    Site,
)

#: Events during which a lease's VMs hold CPU/memory/... on their nodes.
HOLDING_KINDS = frozenset({EventKind.BOOT, EventKind.RUN, EventKind.SHUTDOWN,
                           EventKind.SUSPEND, EventKind.RESUME})
#: How many violations :class:`InvariantViolation` lists in its message.
MAX_LISTED = 20

_K = EventKind
_Item = tuple[int, int, int]  # start, end, position in a list of events


class InvariantViolation(AssertionError):
    """A schedule broke one or more invariants; ``violations`` lists them all."""

    def __init__(self, violations: Sequence[str]) -> None:
        self.violations = list(violations)
        lines = [f"{len(self.violations)} schedule invariant violation(s):"]
        lines += [f"  - {v}" for v in self.violations[:MAX_LISTED]]
        if len(self.violations) > MAX_LISTED:
            lines.append(f"  ... and {len(self.violations) - MAX_LISTED} more")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return InvariantViolation, (self.violations,)  # (picklable, as TraceError)


def check_schedule(site: Site, config: Config, outcomes: Sequence[LeaseOutcome], *,
                   finished: bool = True, sent: Sequence[SentImage] | None = None
                   ) -> list[str]:
    """All invariant violations of ``outcomes`` (empty: the schedule is valid).

    ``finished`` says the run is over, so every lease must be in a terminal state.
    ``sent``: every transfer the link carried (``Scheduler.sent_images``), when known.
    """
    v: list[str] = []
    v += check_states(site, outcomes, finished=finished)
    for o in outcomes:
        v += check_shape(site, o)
        v += check_dependencies(site, o)
        v += check_advance_reservation(site, o)
        v += check_work(site, config, o)
    v += check_capacity(site, outcomes)
    v += check_repository_link(site, outcomes)
    if sent is not None:
        v += check_sent(site, outcomes, sent, finished=finished)
    v += check_suspend_resume_exclusion(site, config, outcomes)
    v += check_config_features(site, config, outcomes)
    return v


def assert_valid(site: Site, config: Config, outcomes: Sequence[LeaseOutcome],
                 finished: bool = True, sent: Sequence[SentImage] | None = None) -> None:
    """Raise :class:`InvariantViolation` if ``outcomes`` break any invariant."""
    violations = check_schedule(site, config, outcomes, finished=finished, sent=sent)
    if violations:
        raise InvariantViolation(violations)


# --------------------------------------------------------------------- formatting

def _names(site: Site, nodes: Iterable[int]) -> str:
    return ",".join(site.nodes[n].name if 0 <= n < len(site.nodes) else f"#{n}"
                    for n in nodes)


def _ev(site: Site, e: Event) -> str:
    return f"{e.kind} [{e.start},{e.end}) on {_names(site, e.nodes) or 'no node'}"


def _lease(o: LeaseOutcome) -> str:
    return f"lease {o.request.id}"


def slowed(duration: int, slowdown_percent: float) -> int:
    """``duration`` seconds stretched by ``slowdown_percent``, rounded up."""
    return math.ceil(duration * (100 + slowdown_percent) / 100 - 1e-9)


# ----------------------------------------------------------------- 1. capacity

@dataclass(frozen=True)
class _Hold:
    start: int
    end: int
    lease: int
    demand: npt.NDArray[np.int64]


def check_capacity(site: Site, outcomes: Sequence[LeaseOutcome]) -> list[str]:
    """At no instant do the VMs held on a node exceed its capacity (endpoint sweep)."""
    holds: dict[int, list[_Hold]] = defaultdict(list)
    for o in outcomes:
        demand = o.request.resources.as_array()
        for e in o.events:
            if e.kind in HOLDING_KINDS and e.end > e.start:
                for n in set(e.nodes):
                    if 0 <= n < len(site.nodes):
                        holds[n].append(_Hold(e.start, e.end, o.request.id, demand))
    v: list[str] = []
    for n in sorted(holds):
        v += _node_capacity(site, n, holds[n])
    return v


def _node_capacity(site: Site, n: int, holds: list[_Hold]) -> list[str]:
    node = site.nodes[n]
    capacity = node.capacity.as_array()
    demands = np.array([h.demand for h in holds], dtype=np.int64)
    times = np.array([h.start for h in holds] + [h.end for h in holds], dtype=np.int64)
    deltas = np.concatenate([demands, -demands])
    instants, where = np.unique(times, return_inverse=True)
    change = np.zeros((len(instants), len(DIMENSIONS)), dtype=np.int64)
    np.add.at(change, where.ravel(), deltas)
    usage = np.cumsum(change, axis=0)  # usage[i] holds on [instants[i], instants[i+1])
    over = np.any(usage > capacity, axis=1)
    v: list[str] = []
    i = 0
    while i < len(instants):
        if not over[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(instants) and over[j + 1]:
            j += 1
        start, end = int(instants[i]), int(instants[j + 1])
        peak = usage[i:j + 1].max(axis=0)
        dims = ", ".join(f"{d} {int(peak[k])} > {int(capacity[k])}"
                         for k, d in enumerate(DIMENSIONS) if peak[k] > capacity[k])
        leases = sorted({h.lease for h in holds if h.start < end and h.end > start})
        v.append(f"capacity: node {node.name} over capacity ({dims}) at t={start} "
                 f"(until t={end}), held by lease(s) {', '.join(map(str, leases))}")
        i = j + 1
    return v


# -------------------------------------------------------------------- 2. shape

#: Segment grammar: after an event of kind K, the next (non-transfer) event may be ...
_FOLLOWERS: dict[EventKind | None, frozenset[EventKind]] = {
    None: frozenset({_K.BOOT}),
    _K.BOOT: frozenset({_K.RUN}),
    _K.RESUME: frozenset({_K.RUN}),
    _K.RUN: frozenset({_K.SHUTDOWN, _K.SUSPEND}),
    _K.SUSPEND: frozenset({_K.MIGRATE, _K.RESUME}),
    _K.MIGRATE: frozenset({_K.RESUME}),
    _K.SHUTDOWN: frozenset({_K.BOOT}),  # a restart after a kill (see check_work)
}
#: Transitions inside one VM segment: contiguous in time and on the same nodes.
_IN_SEGMENT = {(_K.BOOT, _K.RUN), (_K.RESUME, _K.RUN), (_K.RUN, _K.SHUTDOWN),
               (_K.RUN, _K.SUSPEND)}


def check_shape(site: Site, o: LeaseOutcome) -> list[str]:
    """Each event is well formed and the lease's events follow the segment grammar."""
    v: list[str] = []
    for e in o.events:
        v += _event_problems(site, o, e)
    for a, b in pairwise(o.events):
        if b.start < a.start:
            v.append(f"shape: {_lease(o)}: events not sorted by start: "
                     f"{_ev(site, b)} listed after {_ev(site, a)}")
    v += _self_overlaps(site, o)
    v += _segment_grammar(site, o)
    return v


def _event_problems(site: Site, o: LeaseOutcome, e: Event) -> list[str]:
    v: list[str] = []
    where = f"shape: {_lease(o)}: {_ev(site, e)}"
    if e.end < e.start:
        v.append(f"{where} ends before it starts")
    if e.start < o.request.submit and e.kind is not _K.TRANSFER:  # a shared transfer may
        v.append(f"{where} starts before the lease's submission at t={o.request.submit}")
    bad = [n for n in e.nodes if not 0 <= n < len(site.nodes)]
    if bad:
        v.append(f"{where} names node indices outside the site: {bad}")
    if not e.nodes:
        v.append(f"{where} has no nodes")
    if e.kind in HOLDING_KINDS and (len(set(e.nodes)) != len(e.nodes)
                                    or len(e.nodes) != o.request.vms):
        v.append(f"{where} must cover exactly {o.request.vms} distinct node(s), one per VM")
    return v


def _self_overlaps(site: Site, o: LeaseOutcome) -> list[str]:
    """Node-holding events of one lease never overlap on a node (the timing of transfers
    and migrations is :func:`check_dependencies`' business)."""
    v: list[str] = []
    events = [e for e in o.events if e.kind in HOLDING_KINDS]
    for i, a in enumerate(events):
        for b in events[i + 1:]:
            shared = sorted(set(a.nodes) & set(b.nodes))
            if shared and max(a.start, b.start) < min(a.end, b.end):
                v.append(f"shape: {_lease(o)}: {_ev(site, a)} and {_ev(site, b)} overlap "
                         f"on {_names(site, shared)} at t={max(a.start, b.start)}")
    return v


def _segment_grammar(site: Site, o: LeaseOutcome) -> list[str]:
    v: list[str] = []
    prev: Event | None = None
    suspended_on: frozenset[int] = frozenset()
    for e in (e for e in o.events if e.kind is not _K.TRANSFER):
        if e.kind is _K.SUSPEND:
            suspended_on = frozenset(e.nodes)
        allowed = _FOLLOWERS[prev.kind if prev else None]
        if e.kind not in allowed:
            after = f"after {_ev(site, prev)}" if prev else "as the lease's first VM event"
            expected = " or ".join(sorted(allowed)) or "nothing (shutdown is final)"
            v.append(f"shape: {_lease(o)}: {_ev(site, e)} {after}; expected {expected}")
        elif prev is not None:
            v += _transition_problems(site, o, prev, e, suspended_on)
        prev = e
    return v


def _transition_problems(site: Site, o: LeaseOutcome, prev: Event, e: Event,
                         suspended_on: frozenset[int]) -> list[str]:
    where = f"shape: {_lease(o)}: {_ev(site, e)} after {_ev(site, prev)}"
    v: list[str] = []
    if (prev.kind, e.kind) in _IN_SEGMENT:
        if e.start != prev.end:
            v.append(f"{where} does not start exactly when it ends (t={prev.end})")
        if set(e.nodes) != set(prev.nodes):
            v.append(f"{where} is not on the same nodes")
    elif (prev.kind, e.kind) == (_K.SUSPEND, _K.RESUME) and set(e.nodes) != set(prev.nodes):
        v.append(f"{where}: without a migration a lease resumes where it was suspended")
    elif (prev.kind, e.kind) == (_K.MIGRATE, _K.RESUME) and not (
            set(e.nodes) <= set(prev.nodes) | suspended_on):
        # VMs that do not move stay where they were suspended
        v.append(f"{where}: resumes on nodes it was neither suspended on nor migrated to")
    return v


# ---------------------------------------------------- 3. advance reservations

def check_advance_reservation(site: Site, o: LeaseOutcome) -> list[str]:
    """An AR runs once, exactly in [start, start + duration), and is never preempted."""
    req = o.request
    if req.kind is not LeaseKind.AR or req.start is None:
        return []
    v: list[str] = []
    who = f"AR: {_lease(o)}"
    for e in o.events:
        if e.kind in (_K.SUSPEND, _K.RESUME, _K.MIGRATE):
            v.append(f"{who}: advance reservations are never preempted, but has {_ev(site, e)}")
    runs = o.runs
    done = o.state is LeaseState.DONE
    if len(runs) > 1 or (done and len(runs) != 1):
        v.append(f"{who}: has {len(runs)} run events, expected "
                 + ("exactly one" if done else "at most one"))
    for r in runs:
        if r.start != req.start:
            v.append(f"{who}: {_ev(site, r)} starts at t={r.start}, "
                     f"not at its requested start t={req.start}")
        if done and r.end != req.start + req.effective_real_duration:
            v.append(f"{who}: {_ev(site, r)} ends at t={r.end}, expected "
                     f"t={req.start + req.effective_real_duration} (start + real duration)")
        elif r.end > req.start + req.duration:
            v.append(f"{who}: {_ev(site, r)} ends at t={r.end}, after its requested end "
                     f"t={req.start + req.duration}")
    if done:
        for b in (e for e in o.events if e.kind is _K.BOOT and e.end != req.start):
            v.append(f"{who}: {_ev(site, b)} does not end exactly at its start t={req.start}")
    return v


# ------------------------------------------------------------ 4. dependencies

def served_boot(boots: Sequence[Event], transfer: Event) -> int:
    """Of a lease's boots (in time order), the index of the one ``transfer`` serves:
    the first from its start on one of its nodes (one starting with it elsewhere is a
    killed lease's attempt before); ``len(boots)`` if none (a restart cancelled while
    its transfer was under way)."""
    return next((i for i, b in enumerate(boots)
                 if b.start >= transfer.start and not set(b.nodes).isdisjoint(transfer.nodes)),
                len(boots))


def check_dependencies(site: Site, o: LeaseOutcome) -> list[str]:
    """Transfers end before the first boot (of the attempt they serve, when a killed
    lease starts over: the first boot from the transfer's start on one of its nodes),
    or before a resumption from that start on one of its nodes that comes sooner (a
    migration onto a copy still on its way); suspend < migrate < resume in time."""
    v: list[str] = []
    boots = sorted((e for e in o.events if e.kind is _K.BOOT), key=lambda e: e.start)
    resumes = [e for e in o.events if e.kind is _K.RESUME]
    for t in (e for e in o.events if e.kind is _K.TRANSFER):
        # A killed lease's restart may need new transfers: each serves its own boot
        # (none, if the lease was cancelled while its restart's transfer was under way).
        i = served_boot(boots, t)
        first = boots[i] if i < len(boots) else None
        # A suspended lease that migrates onto a node whose copy is on its way resumes
        # from that copy: the transfer serves that resumption, if it comes first.
        resume = next((r for r in resumes if r.start >= t.start
                       and not set(r.nodes).isdisjoint(t.nodes)), None)
        if resume is not None and (first is None or resume.start < first.start):
            first = resume
        if first is not None and t.end > first.start:
            v.append(f"dependency: {_lease(o)}: {_ev(site, t)} ends after "
                     f"{_ev(site, first)} starts (t={first.start})")
    vm_events = [e for e in o.events if e.kind is not _K.TRANSFER]
    for a, b in pairwise(vm_events):
        ordered = ((a.kind is _K.SUSPEND and b.kind in (_K.MIGRATE, _K.RESUME))
                   or (a.kind is _K.MIGRATE and b.kind is _K.RESUME))
        if ordered and b.start < a.end:
            v.append(f"dependency: {_lease(o)}: {_ev(site, b)} starts at t={b.start}, "
                     f"before {_ev(site, a)} ends (t={a.end})")
    return v


# ---------------------------------------------------------- 5. repository link

def check_repository_link(site: Site, outcomes: Sequence[LeaseOutcome]) -> list[str]:
    """Image transfers never overlap, except identical intervals (one shared transfer)."""
    shared: dict[tuple[int, int], list[tuple[LeaseOutcome, Event]]] = defaultdict(list)
    for o in outcomes:
        for e in o.events:
            if e.kind is _K.TRANSFER and e.end > e.start:
                shared[(e.start, e.end)].append((o, e))
    v: list[str] = []
    for (start, end), group in sorted(shared.items()):
        images = sorted({o.request.image.id for o, _ in group})
        if len(images) > 1:
            v.append(f"repository link: transfers [{start},{end}) of different images "
                     f"({', '.join(images)}) at once: {_describe(site, group)}")

    def label(interval: tuple[int, int]) -> str:
        return _describe(site, shared[interval])

    v += [f"repository link: {msg}"
          for msg in _overlaps(sorted(shared), label)]
    return v


def check_sent(site: Site, outcomes: Sequence[LeaseOutcome], sent: Sequence[SentImage], *,
               finished: bool = True) -> list[str]:
    """The link's record: its transfers never overlap (a shared one is recorded once),
    and once the run is over, each transfer a lease lists is one of them (same
    interval and image, its nodes among the destinations)."""
    v: list[str] = []
    carried = sorted((s for s in sent if s.end > s.start), key=lambda s: (s.start, s.end))
    for a, b in pairwise(carried):
        if b.start < a.end:
            v.append(f"repository link: transfers of {a.image} [{a.start},{a.end}) and "
                     f"{b.image} [{b.start},{b.end}) at once")
    if not finished:
        return v  # transfers still under way are not recorded yet
    by_interval = {(s.start, s.end): s for s in carried}
    for o in outcomes:
        for e in o.events:
            if e.kind is not _K.TRANSFER or e.end <= e.start:
                continue
            s = by_interval.get((e.start, e.end))
            if s is None or s.image != o.request.image.id or not set(e.nodes) <= set(s.nodes):
                v.append(f"repository link: {_lease(o)}'s {_ev(site, e)} is not a transfer "
                         "the link carried")
    return v


def _describe(site: Site, group: list[tuple[LeaseOutcome, Event]]) -> str:
    return "; ".join(f"{_lease(o)} {_ev(site, e)}" for o, e in group)


def _overlaps(intervals: Sequence[tuple[int, int]],
              label: Callable[[tuple[int, int]], str]) -> list[str]:
    """Overlapping pairs among ``intervals`` (sorted), each reported once."""
    v: list[str] = []
    latest: tuple[int, int] | None = None  # the interval seen so far that ends last
    for iv in intervals:
        if latest is not None and iv[0] < latest[1]:
            v.append(f"{label(iv)} overlaps {label(latest)} at t={iv[0]}")
        if latest is None or iv[1] > latest[1]:
            latest = iv
    return v


# ------------------------------------------------- 6. suspend/resume exclusion

def check_suspend_resume_exclusion(site: Site, config: Config,
                                   outcomes: Sequence[LeaseOutcome]) -> list[str]:
    """No two suspend/resume events overlap on a node (local) or anywhere (global)."""
    events = [(o, e) for o in outcomes for e in o.events
              if e.kind in (_K.SUSPEND, _K.RESUME) and e.end > e.start]
    groups: dict[str, list[_Item]] = defaultdict(list)
    for i, (_, e) in enumerate(events):
        if config.suspendresume_exclusion is Exclusion.GLOBAL:
            groups["the site"].append((e.start, e.end, i))
        else:
            for n in sorted(set(e.nodes)):
                groups[f"node {_names(site, [n])}"].append((e.start, e.end, i))
    v: list[str] = []
    for where, items in groups.items():
        items.sort()
        latest: _Item | None = None
        for it in items:
            if latest is not None and it[0] < latest[1]:
                (oa, a), (ob, b) = events[it[2]], events[latest[2]]
                v.append(f"suspend/resume exclusion ({config.suspendresume_exclusion}): on "
                         f"{where}, {_lease(oa)} {_ev(site, a)} overlaps {_lease(ob)} "
                         f"{_ev(site, b)} at t={it[0]}")
            if latest is None or it[1] > latest[1]:
                latest = it
    return v


# --------------------------------------------------------------------- 7. work

def check_work(site: Site, config: Config, o: LeaseOutcome) -> list[str]:
    """Run time adds up to the slowed-down duration; only preemptible leases suspend."""
    req = o.request
    v: list[str] = []
    vm_events = [e for e in o.events if e.kind is not _K.TRANSFER]
    restarts = [b for a, b in pairwise(vm_events) if (a.kind, b.kind) == (_K.SHUTDOWN, _K.BOOT)]
    if restarts and (config.suspension or not req.preemptible
                     or req.kind is not LeaseKind.BESTEFFORT):
        v.append(f"work: {_lease(o)} boots again at t={restarts[0].start} after a shutdown, "
                 "but only preemptible best-effort leases are killed and restarted, and only "
                 "with suspension off")
    # work done before the last restart was lost: only the last attempt counts
    runs = tuple(r for r in o.runs if not restarts or r.start >= restarts[-1].start)
    total = sum(r.end - r.start for r in runs)
    where = f"on {_names(site, o.nodes)}, last run ending t={o.end}" if runs else "no runs"
    limit = slowed(req.duration, config.runtime_slowdown)
    if total > limit:
        v.append(f"work: {_lease(o)} ran {total} s in total ({where}), more than its "
                 f"requested {limit} s")
    if req.kind is not LeaseKind.AR and o.state is LeaseState.DONE:
        want = slowed(req.effective_real_duration, config.runtime_slowdown)
        if total != want:
            v.append(f"work: {_lease(o)} is done after running {total} s in total ({where}), "
                     f"expected exactly {want} s")
    suspends = [e for e in o.events if e.kind is _K.SUSPEND]
    if suspends and not req.preemptible:
        v.append(f"work: {_lease(o)} is not preemptible but has {_ev(site, suspends[0])}")
    return v


# ------------------------------------------------------------------- 8. states

def check_states(site: Site, outcomes: Sequence[LeaseOutcome], *,
                 finished: bool) -> list[str]:
    """Unique ids; terminal states at the end; rejected/failed/done are consistent."""
    v: list[str] = []
    counts = Counter(o.request.id for o in outcomes)
    v += [f"state: lease {i} has {c} outcomes" for i, c in sorted(counts.items()) if c > 1]
    for o in outcomes:
        last = o.events[-1] if o.events else None
        tail = f" (last event: {_ev(site, last)})" if last else " (no events)"
        if finished and not o.state.terminal:
            v.append(f"state: {_lease(o)} is still {o.state} at the end of the run{tail}")
        if o.state is LeaseState.REJECTED and o.events:
            v.append(f"state: {_lease(o)} was rejected but has events, e.g. "
                     f"{_ev(site, o.events[0])}")
        if o.state in (LeaseState.REJECTED, LeaseState.FAILED) and not o.reason:
            v.append(f"state: {_lease(o)} is {o.state} without a reason")
        if o.state is LeaseState.DONE and (last is None or last.kind is not _K.SHUTDOWN):
            v.append(f"state: {_lease(o)} is done but its last event is not a shutdown{tail}")
    return v


# ----------------------------------------------------- configuration features

def check_config_features(site: Site, config: Config,
                          outcomes: Sequence[LeaseOutcome]) -> list[str]:
    """No event of a kind the configuration switches off."""
    off: dict[EventKind, str] = {}
    if not config.image_transfer:
        off[_K.TRANSFER] = "images are predeployed (image_transfer = false)"
    if not config.suspension:
        off[_K.SUSPEND] = "suspension is disabled"
    if config.migration is Migration.NO:
        off[_K.MIGRATE] = "migration is disabled"
    return [f"config: {_lease(o)} has {_ev(site, e)} but {off[e.kind]}"
            for o in outcomes for e in o.events if e.kind in off]
