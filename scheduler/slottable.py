"""The availability profile: capacity committed per node and dimension over time.

``AvailabilityProfile`` keeps, per node, a step function of its usage: the times at
which the node's usage changes and, per dimension, the usage from each until the
next. They live in numpy arrays of one row per node (widened when some node needs
more steps), so that a booking rewrites only its own nodes' few steps and each query
walks every node's steps in one compiled call (``scheduler.kernels``). Steps before
the present are dropped as time advances. The profile also marks, per node, when
capacity was last let go (``released``), so that the scheduler can tell a retry that
cannot succeed.

``Timeline`` is a much simpler structure for an exclusive channel (the image
repository's link): a sorted list of busy intervals. ``Channels`` holds the
suspend/resume exclusion channels of every node: intervals, each on a set of nodes.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from mypy_extensions import mypyc_attr

from scheduler import kernels
from scheduler.pickling import attributes, set_attributes

INF = kernels.INF  # "forever": later than any schedulable instant

# Usage fits int32 when capacities stay below this: a node's usage never exceeds its
# capacity by more than the preemptible usage an AR may be placed over (twice it, at most).
_INT32_SAFE = 2**30


class _Shape(NamedTuple):
    """A VM shape as the kernels take it (``AvailabilityProfile._shape``)."""
    slabs: np.ndarray
    pslabs: np.ndarray
    rooms: np.ndarray


@dataclass(eq=False)
@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class _Entry:
    nodes: np.ndarray
    start: int
    end: int
    vec: np.ndarray
    preemptible: bool
    owner: int

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # A checkpoint holds one per reservation: lists pickle ~5x faster than arrays.
        return _entry, (self.nodes.tolist(), self.start, self.end, self.vec.tolist(),
                        self.vec.dtype.str, self.preemptible, self.owner)


def _entry(nodes: list[int], start: int, end: int, vec: list[int], vec_dtype: str,
           preemptible: bool, owner: int) -> _Entry:
    return _Entry(np.array(nodes, dtype=np.intp), start, end, np.array(vec, dtype=vec_dtype),
                  preemptible, owner)


@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class AvailabilityProfile:
    def __init__(self, capacity: np.ndarray) -> None:
        self.capacity = capacity.astype(np.int64)
        n = self.capacity.shape[0]
        # Per node, the start times of its steps (``_count`` of them, ascending; the
        # first at -INF until a prune lets history go) and, per (slab, node, step), the
        # usage throughout the step. One slab per dimension some entry uses (and one per
        # dimension some preemptible entry uses), allocated on first use: a site's
        # requests rarely use every dimension.
        self._times = np.full((n, 16), INF, dtype=np.int64)
        self._times[:, 0] = -INF
        self._count = np.ones(n, dtype=np.int64)
        # Half the memory of int64 when capacities allow it.
        self._dtype: type[np.signedinteger] = (
            np.int32 if int(self.capacity.max(initial=0)) < _INT32_SAFE else np.int64)
        self._usage = np.zeros((0, n, 16), dtype=self._dtype)
        self._used_slab: dict[int, int] = {}  # dimension -> slab of all usage
        self._pre_slab: dict[int, int] = {}  # dimension -> slab of preemptible usage
        self._entries: dict[int, _Entry] = {}
        # Entry ids per node, for owners_overlapping (asked only when an AR may preempt
        # or a node leaves): entries are indexed when it is next asked, since most are
        # over, and unindexed, by then.
        self._by_node: list[set[int]] = [set() for _ in range(n)]
        self._unindexed: set[int] = set()
        # per node, no earlier than the end of its last entry: past it the node is free
        # for good (not lowered when entries are removed or cut: a bound is enough)
        self._last_end = np.full(n, -INF, dtype=np.int64)
        # (end, entry id) of every entry, pushed when it is added or cut short, popped
        # once ``released`` reaches that end: a heap
        self._expiry: list[tuple[int, int]] = []
        self._next_id = 1
        self._pruned_at = -INF
        self.version = 0  # changes whenever any commitment does
        # changes whenever capacity at some instant grows (an entry removed or cut short,
        # a node added; not an entry's planned end, which it already showed): over a
        # fixed window, what did not fit still does not while it stays the same
        self.grown = 0
        # Capacity let go (see ``released``): a count of the times it was, and per node
        # the count when it last was. Removals and truncations count at once, planned
        # ends once ``released`` reaches them (``_expiry``).
        self._releases = 0
        self._released_at = np.zeros(n, dtype=np.int64)
        self.released_at = self._read_only(self._released_at)
        self._released_by = -INF  # the last ``released`` call's time
        self._memo: dict[tuple[int, int, bool, bytes], np.ndarray] = {}
        self._memo_version = 0
        # per VM shape (vec's bytes, ignoring preemptible usage or not): its arguments
        # to the kernels (few shapes recur)
        self._shapes: dict[tuple[bytes, bool], _Shape] = {}
        # per entry vector (its bytes, preemptible or not): the slabs it changes, and
        # what it adds to each when it is added (+) and removed (-)
        self._deltas: dict[tuple[bytes, bool], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, object]:
        state = attributes(self)
        state["_memo"] = {}
        state["_shapes"] = {}
        state["_deltas"] = {}
        del state["released_at"]  # a view (unpickled, it would be a copy)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        set_attributes(self, state)
        self.released_at = self._read_only(self._released_at)

    def add_node(self, capacity: np.ndarray) -> None:
        """A new node, free at all times."""
        self.capacity = np.vstack([self.capacity, capacity.astype(np.int64)])
        if int(capacity.max(initial=0)) >= _INT32_SAFE:
            self._dtype = np.int64
        s, _, width = self._usage.shape
        self._usage = np.concatenate([self._usage.astype(self._dtype, copy=False),
                                      np.zeros((s, 1, width), self._dtype)], axis=1)
        row = np.full((1, width), INF, dtype=np.int64)
        row[0, 0] = -INF
        self._times = np.vstack([self._times, row])
        self._count = np.append(self._count, 1)
        self._by_node.append(set())
        self._last_end = np.append(self._last_end, -INF)
        self._releases += 1
        self._released_at = np.append(self._released_at, self._releases)
        self.released_at = self._read_only(self._released_at)
        self._shapes.clear()
        self.version += 1
        self.grown += 1

    @property
    def node_count(self) -> int:
        return int(self.capacity.shape[0])

    def _shape(self, vec: np.ndarray, ignore_preemptible: bool = False) -> _Shape:
        """The kernels' view of ``vec`` (see ``scheduler.kernels``): per dimension it
        uses, the slab of its usage (-1: none ever), the slab of preemptible usage to
        subtract (-1: none), and the usage a node may have for it to fit there: its
        capacity less ``vec``. Empty if it uses none."""
        key = (vec.tobytes(), ignore_preemptible)
        shape = self._shapes.get(key)
        if shape is None:
            dims = np.flatnonzero(vec).tolist()
            slabs = np.array([self._used_slab.get(d, -1) for d in dims], dtype=np.int64)
            pslabs = np.array([self._pre_slab.get(d, -1) if ignore_preemptible else -1
                               for d in dims], dtype=np.int64)
            rooms = np.array([self.capacity[:, d] - vec[d] for d in dims],
                             dtype=np.int64).reshape(len(dims), self.node_count)
            shape = self._shapes[key] = _Shape(slabs, pslabs, rooms)
        return shape

    # ----------------------------------------------------------- reservations
    def add(self, nodes: tuple[int, ...], start: int, end: int, vec: np.ndarray,
            *, owner: int, preemptible: bool = False) -> int:
        """Commit ``vec`` on each of ``nodes`` over [start, end); returns an entry id."""
        eid = self._next_id
        self._next_id += 1
        entry = _Entry(np.array(nodes, dtype=np.intp), start, end, vec, preemptible, owner)
        self._entries[eid] = entry
        self._unindexed.add(eid)
        self._last_end[entry.nodes] = np.maximum(self._last_end[entry.nodes], end)
        heapq.heappush(self._expiry, (end, eid))
        self._apply(entry, start, end, +1)
        return eid

    def remove(self, eid: int) -> None:
        entry = self._entries.pop(eid)
        self._unindex(eid, entry)
        self._release(entry.nodes)
        self._apply(entry, entry.start, entry.end, -1)

    def forget(self, eid: int) -> None:
        """Drop the record of an entry that is over: its usage is history, pruned or
        about to be (``remove`` would rewrite that history)."""
        entry = self._entries.get(eid)
        if entry is None:
            return
        if entry.end > self._pruned_at and entry.end > entry.start:
            raise ValueError(f"entry {eid} lasts until {entry.end}, after the last prune "
                             f"({self._pruned_at})")
        del self._entries[eid]
        self._unindex(eid, entry)
        if entry.end > self._released_by:  # its end is still to count (see released)
            self._release(entry.nodes)

    def truncate(self, eid: int, end: int) -> None:
        """Release the part of an entry after ``end``."""
        entry = self._entries[eid]
        if end <= entry.start:
            self.remove(eid)
        elif end < entry.end:
            # capacity after ``end`` is let go now, and before it, at its new end
            self._release(entry.nodes)
            heapq.heappush(self._expiry, (end, eid))
            self._apply(entry, end, entry.end, -1)
            entry.end = end

    def released(self, t: int) -> int:
        """How often capacity was let go by ``t`` (no earlier than the last call's): a
        count that grows each time some was -- an entry removed, cut short or over, a
        node added. ``released_at`` then holds, per node, the count when it last was.

        A node with no release between two calls can host, over any window from the
        second call's ``t``, only what it could from the first's: its usage has only
        grown since, and what made it busy then would have had to end by now."""
        self._released_by = t
        while self._expiry and self._expiry[0][0] <= t:
            eid = heapq.heappop(self._expiry)[1]
            entry = self._entries.get(eid)
            if entry is not None:  # (else counted when removed or forgotten)
                self._release(entry.nodes)
                # Over by now, it can overlap no query window any more: unindexed, so
                # owners_overlapping scans what is current, not every entry ever made.
                self._unindex(eid, entry)
        return self._releases

    def _unindex(self, eid: int, entry: _Entry) -> None:
        if eid in self._unindexed:
            self._unindexed.discard(eid)
        else:
            for n in entry.nodes.tolist():
                self._by_node[n].discard(eid)

    @staticmethod
    def _read_only(values: np.ndarray) -> np.ndarray:
        view = values.view()
        view.flags.writeable = False
        return view

    def _release(self, nodes: np.ndarray) -> None:
        self._releases += 1
        self._released_at[nodes] = self._releases

    def owners_overlapping(self, nodes: np.ndarray | list[int], start: int, end: int,
                           *, preemptible_only: bool = False) -> set[int]:
        """Owners of entries on any of ``nodes`` that overlap [start, end), for
        ``start`` at or after the last time given to ``released`` or ``prune`` (entries
        over by then are not indexed)."""
        for eid in self._unindexed:
            for n in self._entries[eid].nodes.tolist():
                self._by_node[n].add(eid)
        self._unindexed.clear()
        found: set[int] = set()
        for n in nodes:
            for eid in self._by_node[int(n)]:
                e = self._entries[eid]
                if e.start < end and start < e.end and (e.preemptible or not preemptible_only):
                    found.add(e.owner)
        return found

    def _apply(self, entry: _Entry, start: int, end: int, sign: int) -> None:
        if end <= start:
            return
        self.version += 1
        if sign < 0:
            self.grown += 1
        key = (entry.vec.tobytes(), entry.preemptible)
        if (plan := self._deltas.get(key)) is None:
            slabs, deltas = [], []
            for d in np.flatnonzero(entry.vec).tolist():  # only the dimensions it uses
                slabs.append(self._slab(self._used_slab, d))  # (may reallocate the table)
                deltas.append(int(entry.vec[d]))
                if entry.preemptible:
                    slabs.append(self._slab(self._pre_slab, d))
                    deltas.append(int(entry.vec[d]))
            added = np.array(deltas, dtype=np.int64)
            plan = self._deltas[key] = (np.array(slabs, dtype=np.int64), added, -added)
        # (A removal drops the steps that no longer differ: rows stay short.)
        while not kernels.add_usage(self._times, self._count, self._usage, plan[0],
                                    plan[1] if sign > 0 else plan[2], entry.nodes, start,
                                    end, sign < 0):
            self._widen()

    def _widen(self) -> None:
        """Twice the steps per node."""
        n, width = self._times.shape
        times = np.full((n, 2 * width), INF, dtype=np.int64)
        times[:, :width] = self._times
        usage = np.zeros((self._usage.shape[0], n, 2 * width), dtype=self._dtype)
        usage[:, :, :width] = self._usage
        self._times, self._usage = times, usage

    def _slab(self, slabs: dict[int, int], d: int) -> int:
        """The slab of dimension ``d`` in ``slabs``, allocated (all zero) if new."""
        if d not in slabs:
            slabs[d] = self._usage.shape[0]
            _, n, width = self._usage.shape
            self._usage = np.concatenate([self._usage, np.zeros((1, n, width), self._dtype)])
            self._shapes.clear()  # (they name the slabs)
        return slabs[d]

    def prune(self, now: int) -> None:
        """Forget usage before ``now`` (keeps each node's step holding ``now``)."""
        self._pruned_at = max(self._pruned_at, now)
        kernels.drop_before(self._times, self._count, self._usage, self._pruned_at)
        self.released(now)  # (ends reached: counted, and unindexed)

    # ---------------------------------------------------------------- queries
    # Each runs one kernel over every node's steps (``scheduler.kernels``).
    def hosts_at(self, t: int, vec: np.ndarray) -> np.ndarray:
        """Per node: can it host ``vec`` at ``t``? (A new array: not remembered.)"""
        out: np.ndarray = kernels.hosts_at(self._times, self._count, self._usage,
                                           *self._shape(vec), t)
        return out

    def ready_room(self, instants: np.ndarray, vec: np.ndarray, ready: np.ndarray
                   ) -> np.ndarray:
        """Per instant g of ``instants``: how many nodes ready by g (``ready``: per node,
        when it could begin) can host ``vec`` at g; 0 where none ready at g itself can."""
        room: np.ndarray = kernels.ready_room(self._times, self._count, self._usage,
                                              *self._shape(vec), instants, ready)
        return room

    def resume_room(self, vec: np.ndarray, copies: np.ndarray, nodes: np.ndarray, base: int,
                    light: int, heavy: int, closed: np.ndarray) -> int:
        """``ready_room``'s largest count over the distinct finite times of a suspended
        lease's readiness (fewer than k: no k VMs can resume at any of them): ``base`` on
        ``nodes`` (its state's), elsewhere ``light``, the image's copy (``copies``) or
        ``heavy`` (``kernels.resume_readiness``), never on other ``closed`` nodes."""
        return int(kernels.resume_room(self._times, self._count, self._usage,
                                       *self._shape(vec), copies, nodes, base, light, heavy,
                                       closed))

    def free_until(self, t: int, vec: np.ndarray, *,
                   ignore_preemptible: bool = False) -> np.ndarray:
        """For each node, the end of the longest interval [t, end) in which it can host
        ``vec`` (``t`` itself if it cannot at ``t``; ``INF`` if it can forever)."""
        n = self.node_count
        if not vec.any():
            return np.full(n, INF, dtype=np.int64)
        key = (t, -1, ignore_preemptible, vec.tobytes())
        if (hit := self._recall(key)) is not None:
            return hit
        until: np.ndarray = kernels.free_until(
            self._times, self._count, self._usage, *self._shape(vec, ignore_preemptible), t)
        return self._remember(key, until)

    def free_since(self, t: int, vec: np.ndarray) -> np.ndarray:
        """For each node, the start of the longest interval [since, t) in which it can
        host ``vec`` (``t`` if it cannot just before ``t``; if it could all along, the
        start of its oldest step kept: at or before the last ``prune``)."""
        key = (t, -2, False, vec.tobytes())
        if (cached := self._recall(key)) is not None:
            return cached
        since: np.ndarray = kernels.free_since(
            self._times, self._count, self._usage, *self._shape(vec), t)
        return self._remember(key, since)

    def soonest_ends(self, t: int, vec: np.ndarray, nodes: np.ndarray, r: int) -> np.ndarray:
        """Positions in ``nodes`` (ascending node indices, all able to host ``vec`` at
        ``t``) of the ``r`` whose free stretch from ``t`` ends soonest (ties: lower
        index)."""
        busy_later = self._last_end[nodes] > t  # the others are free for good from t
        if not vec.any() or not busy_later.any():
            return np.arange(min(r, len(nodes)))
        chosen: np.ndarray = kernels.soonest_ends(
            self._times, self._count, self._usage, *self._shape(vec), nodes, busy_later,
            t, r)
        return chosen

    def fits_window(self, start: int, end: int, vec: np.ndarray, *,
                    ignore_preemptible: bool = False) -> np.ndarray:
        """For each node, whether it can host ``vec`` throughout [start, end)."""
        shape = self._shape(vec, ignore_preemptible)
        if not len(shape.slabs):
            return np.ones(self.node_count, dtype=bool)
        key = (start, end, ignore_preemptible, vec.tobytes())
        if (hit := self._recall(key)) is not None:
            return hit
        fits: np.ndarray = kernels.fits_window(self._times, self._count, self._usage,
                                               *shape, start, end)
        return self._remember(key, fits)

    def ready_window(self, start: int, end: int, vec: np.ndarray, ready: np.ndarray
                     ) -> tuple[np.ndarray, int, bool]:
        """``fits_window & (ready <= start)`` (``ready``: per node, when it could begin),
        how many nodes that is, and whether one of them is ready at ``start`` itself."""
        shape = self._shape(vec)
        if not len(shape.slabs):
            mask = ready <= start
            return mask, int(np.count_nonzero(mask)), bool((ready == start).any())
        mask, m, exact = kernels.ready_window(self._times, self._count, self._usage, *shape,
                                              start, end, ready)
        return mask, int(m), bool(exact)

    # Queue passes ask the same questions for many leases between two changes.
    def _recall(self, key: tuple[int, int, bool, bytes]) -> np.ndarray | None:
        if self._memo_version != self.version:
            self._memo.clear()
            self._memo_version = self.version
        return self._memo.get(key)

    def _remember(self, key: tuple[int, int, bool, bytes], value: np.ndarray) -> np.ndarray:
        value.flags.writeable = False
        self._memo[key] = value
        return value

    def earliest_fit(self, t0: int, k: int, vec: np.ndarray, duration: int, *,
                     eligible: np.ndarray | None = None,
                     ignore_preemptible: bool = False) -> tuple[int, np.ndarray] | None:
        """Earliest start ``s >= t0`` at which at least ``k`` eligible nodes can host
        ``vec`` throughout [s, s + duration) (``duration > 0``). Returns ``(s, fits)``,
        ``fits`` telling which eligible nodes can, or None if that never happens with
        the current commitments."""
        if eligible is None:
            eligible = np.ones(self.node_count, dtype=bool)
        s, fits = kernels.earliest_fit(
            self._times, self._count, self._usage, *self._shape(vec, ignore_preemptible),
            eligible, t0, k, duration)
        return None if len(fits) == 0 else (int(s), fits)

    def min_free(self, node: int, start: int, end: int) -> np.ndarray:
        """Free capacity of ``node`` guaranteed throughout [start, end)."""
        free: np.ndarray = self.capacity[node].copy()
        dims = list(self._used_slab)
        slabs = np.array([self._used_slab[d] for d in dims], dtype=np.int64)
        free[dims] -= kernels.peak_usage(self._times, self._count, self._usage, slabs, node,
                                         start, end)
        return free


@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class Timeline:
    """Busy intervals of one exclusive channel (e.g. the repository link)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._ids: list[int] = []
        self._start_of: dict[int, int] = {}  # so a removal finds its place by bisection
        self._next = 1
        self.version = 0  # changes whenever an interval is added or removed
        # the last earliest_gap answer, (version, t, length, s): a queue pass asks the
        # same for every waiting lease, and a busy link has many intervals to walk
        self._last_gap = (-1, 0, 0, 0)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, start: int, end: int) -> int:
        tid = self._next
        self._next += 1
        self.version += 1
        i = bisect.bisect_left(self._starts, start)
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        self._ids.insert(i, tid)
        self._start_of[tid] = start
        return tid

    def remove(self, tid: int) -> None:
        # Timelines keep past intervals, so a linear search grows with the run's length.
        start = self._start_of.pop(tid)
        self.version += 1
        i = bisect.bisect_left(self._starts, start)
        i = self._ids.index(tid, i)
        del self._starts[i], self._ends[i], self._ids[i]

    def is_free(self, start: int, end: int) -> bool:
        if end <= start:
            return True
        # Intervals are disjoint and sorted: only the last one starting before `end`
        # can reach past `start`.
        i = bisect.bisect_left(self._starts, end)
        return i == 0 or self._ends[i - 1] <= start

    def earliest_gap(self, t: int, length: int) -> int:
        """Earliest ``s >= t`` with [s, s + length) free."""
        s = t
        if length <= 0:
            return s
        version, t_, length_, found = self._last_gap
        if (version, t_, length_) == (self.version, t, length):
            return found
        i = max(0, bisect.bisect_right(self._starts, s) - 1)
        for k in range(i, len(self._starts)):
            if self._starts[k] >= s + length:
                break
            if self._ends[k] > s:
                s = self._ends[k]
        self._last_gap = (self.version, t, length, s)
        return s

    def latest_gap(self, deadline: int, length: int) -> int:
        """Latest ``s`` with [s, s + length) free and ``s + length <= deadline``."""
        e = deadline
        if length <= 0:
            return e
        i = bisect.bisect_left(self._starts, e)
        for k in range(i - 1, -1, -1):
            if self._ends[k] <= e - length:
                break
            if self._starts[k] < e:
                e = min(e, self._starts[k])
        return e - length


@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class Channels:
    """Suspend/resume exclusion: one channel per node (local) or one for the whole site.
    A booking holds the channels of a set of nodes over an interval; two bookings clash
    when they overlap in time and share a channel (site-wide, always). One booking per
    segment, where a ``Timeline`` per node took one per node of the segment."""

    def __init__(self, site_wide: bool) -> None:
        self.site_wide = site_wide
        self._starts: list[int] = []  # sorted
        self._ids: list[int] = []  # the bookings, in the order of _starts
        self._booked: dict[int, tuple[int, int, frozenset[int]]] = {}
        self._longest = 0  # no booking lasts longer: how far back a clash can start
        self._next = 1

    def add(self, nodes: tuple[int, ...], start: int, end: int) -> int:
        bid = self._next
        self._next += 1
        i = bisect.bisect_left(self._starts, start)
        self._starts.insert(i, start)
        self._ids.insert(i, bid)
        self._booked[bid] = (start, end, frozenset(nodes))
        self._longest = max(self._longest, end - start)
        return bid

    def remove(self, bid: int) -> None:
        booking = self._booked.pop(bid, None)
        if booking is None:
            if not 0 < bid < self._next:
                raise KeyError(f"no booking {bid} was ever made")
            return  # pruned (it was over) or removed already
        start = booking[0]
        i = self._ids.index(bid, bisect.bisect_left(self._starts, start))
        del self._starts[i], self._ids[i]

    def prune(self, now: int) -> None:
        """Forget bookings over by ``now`` (no query looks before it), so that a service
        running for months does not keep every suspension it ever made. Now and then
        only: each cut copies the lists."""
        cut = bisect.bisect_right(self._starts, now - self._longest)  # all ended by now
        if cut > 64:
            for bid in self._ids[:cut]:
                del self._booked[bid]
            del self._starts[:cut], self._ids[:cut]

    def _clashes(self, nodes: tuple[int, ...], start: int, end: int
                 ) -> list[tuple[int, int]]:
        """(start, end) of the bookings on ``nodes``' channels that overlap [start, end)."""
        lo = bisect.bisect_left(self._starts, start - self._longest)
        hi = bisect.bisect_left(self._starts, end)
        found = []
        for bid in self._ids[lo:hi]:
            s, e, held = self._booked[bid]
            if e > start and (self.site_wide or not held.isdisjoint(nodes)):
                found.append((s, e))
        return found

    def is_free(self, nodes: tuple[int, ...], start: int, end: int) -> bool:
        return end <= start or not self._clashes(nodes, start, end)

    def earliest_gap(self, nodes: tuple[int, ...], t: int, length: int) -> int:
        """Earliest ``s >= t`` with [s, s + length) free on every channel of ``nodes``."""
        s = t
        while length > 0 and (clashes := self._clashes(nodes, s, s + length)):
            s = max(e for _, e in clashes)  # nothing clashing ends later: no sooner fit
        return s

    def latest_gap(self, nodes: tuple[int, ...], deadline: int, length: int) -> int:
        """Latest ``s`` with [s, s + length) free on every channel of ``nodes`` and
        ``s + length <= deadline``."""
        e = deadline
        while length > 0 and (clashes := self._clashes(nodes, e - length, e)):
            e = min(s for s, _ in clashes)
        return e - length
