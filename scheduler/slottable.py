"""The availability profile: capacity committed per node and dimension over time.

``AvailabilityProfile`` keeps a sorted list of breakpoints; each breakpoint owns a
row of a numpy array holding the usage of every node in every dimension from that
breakpoint to the next. Rows are not kept in time order in memory (a breakpoint
list maps times to rows), so inserting a breakpoint copies one row instead of
shifting the whole table. Rows before the present are pruned as time advances.
The breakpoint lists are ``array.array``s: numpy reads a stretch of them in place
(``_view``) where converting a list slice cost more than the query itself. It also
marks, per node, when capacity was last let go (``released``), so that the scheduler
can tell a retry that cannot succeed.

``Timeline`` is a much simpler structure for an exclusive channel (the image
repository's link): a sorted list of busy intervals. ``Channels`` holds the
suspend/resume exclusion channels of every node: intervals, each on a set of nodes.
"""

from __future__ import annotations

import bisect
import gc
import heapq
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from scheduler import kernels

INF = kernels.INF  # "forever": later than any schedulable instant

# Usage fits int32 when capacities stay below this: a node's usage never exceeds its
# capacity by more than the preemptible usage an AR may be placed over (twice it, at most).
_INT32_SAFE = 2**30


def _view(values: array[int], i: int, j: int) -> np.ndarray:
    """``values[i:j]`` as an int64 array sharing its memory: use it at once and keep
    no reference (an array exporting its buffer cannot grow or shrink: ``_resize``)."""
    return np.frombuffer(values, dtype=np.int64, count=j - i, offset=8 * i)


def _resize(change: Callable[[], object]) -> None:
    """Grow or shrink a breakpoint list (``change``). A view of it left in a reference
    cycle lives until the cycle collector runs, and blocks that: numba's compiler
    leaves such cycles on a kernel's first call, and a replay runs with the collector
    off. So on that error, collect, and change it then."""
    try:
        change()
    except BufferError:
        gc.collect()
        change()


class _Shape(NamedTuple):
    """A VM shape as the kernels take it (``AvailabilityProfile._shape``)."""
    slabs: np.ndarray
    pslabs: np.ndarray
    rooms: np.ndarray


@dataclass(eq=False)
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


class AvailabilityProfile:
    def __init__(self, capacity: np.ndarray) -> None:
        self.capacity = capacity.astype(np.int64)
        n = self.capacity.shape[0]
        self._times = array("q", [-INF])  # breakpoints, sorted
        self._rows = array("q", [0])  # the table row of each breakpoint
        # (slab, row, node): one slab per dimension some entry uses (and one per
        # dimension some preemptible entry uses), allocated on first use -- a site's
        # requests rarely use every dimension, and each slab is rows x nodes big.
        # Half the memory (and memory traffic) of int64 when capacities allow it: the
        # table is rows x nodes per slab, and every query gathers rows from it.
        self._dtype: type[np.signedinteger] = (
            np.int32 if int(self.capacity.max(initial=0)) < _INT32_SAFE else np.int64)
        self._usage = np.zeros((0, 64, n), dtype=self._dtype)
        self._used_slab: dict[int, int] = {}  # dimension -> slab of all usage
        self._pre_slab: dict[int, int] = {}  # dimension -> slab of preemptible usage
        self._spare = list(range(63, 0, -1))
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
        # When entries begin: usage only rises there, so a window's peak is at its start
        # or at one of these (a window often spans thousands of breakpoints, mostly ends).
        self._begins = array("q")  # distinct, sorted
        self._begin_count: dict[int, int] = {}
        self._next_id = 1
        self._pruned_at = -INF
        self.version = 0  # changes whenever any commitment does
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
        # What a checkpoint stores: not the table (rows x nodes per slab: ~100 MB at
        # 10,000 leases on 500 nodes, 0.06 s to pickle and ~1 s to compress), which the
        # entries determine, but its first row only (it may hold entries forgotten since,
        # see __setstate__). Rows are then in time order.
        state = self.__dict__.copy()
        state["_usage"] = self._usage[:, self._rows[0]].copy()
        state["_rows"] = array("q", range(len(self._rows)))
        state["_spare"] = []
        state["_memo"] = {}
        state["_shapes"] = {}
        state["_deltas"] = {}
        del state["released_at"]  # a view (unpickled, it would be a copy)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._usage = self._rebuild(state["_usage"])  # type: ignore[arg-type]
        self.released_at = self._read_only(self._released_at)

    def _rebuild(self, first: np.ndarray) -> np.ndarray:
        """The table from the entries, one row per breakpoint in time order: a row holds
        the usage at its breakpoint (uniform until the next), the sum of the entries
        under way then. Row 0 is ``first``, as stored: it covers the present, and an
        entry over by then may have been forgotten (``forget``) while its usage, equal
        to that of one that began as it ended, is still in the row."""
        times = _view(self._times, 0, len(self._times))
        slabs, n = first.shape
        usage = np.empty((slabs, len(times), n), dtype=self._dtype)
        entries = [e for e in self._entries.values() if e.end > e.start]
        # one item per (entry, node): the rows it covers, [lo, hi), and its vector
        counts = [len(e.nodes) for e in entries]
        nodes = np.concatenate([e.nodes for e in entries] or [np.zeros(0, np.intp)])
        lo = np.repeat(np.searchsorted(times, [e.start for e in entries]), counts)
        hi = np.repeat(np.searchsorted(times, [e.end for e in entries]), counts)
        vecs = np.repeat(np.array([e.vec for e in entries], dtype=np.int64).reshape(
            len(entries), self.capacity.shape[1]), counts, axis=0)
        pre = np.repeat(np.array([e.preemptible for e in entries], dtype=bool), counts)
        for slabs_of, only_pre in ((self._used_slab, False), (self._pre_slab, True)):
            for d, slab in slabs_of.items():
                # + at the first row an item covers, - after its last: the running sum
                # down the rows is the usage (values of the table's type throughout)
                take = (vecs[:, d] != 0) & (lo < hi) & (pre if only_pre else True)
                diff = np.zeros((len(times) + 1, n), dtype=self._dtype)
                np.add.at(diff, (lo[take], nodes[take]), vecs[take, d])
                np.add.at(diff, (hi[take], nodes[take]), -vecs[take, d])
                np.cumsum(diff[:-1], axis=0, out=usage[slab])
        usage[:, 0] = first
        return usage

    def add_node(self, capacity: np.ndarray) -> None:
        """A new node, free at all times."""
        self.capacity = np.vstack([self.capacity, capacity.astype(np.int64)])
        if int(capacity.max(initial=0)) >= _INT32_SAFE:
            self._dtype = np.int64
        s, rows, _ = self._usage.shape
        self._usage = np.concatenate([self._usage.astype(self._dtype, copy=False),
                                      np.zeros((s, rows, 1), self._dtype)], axis=2)
        self._by_node.append(set())
        self._last_end = np.append(self._last_end, -INF)
        self._releases += 1
        self._released_at = np.append(self._released_at, self._releases)
        self.released_at = self._read_only(self._released_at)
        self._shapes.clear()
        self.version += 1

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
        if end > start:
            count = self._begin_count.get(start, 0)
            if count == 0:
                _resize(lambda: bisect.insort(self._begins, start))
            self._begin_count[start] = count + 1
        return eid

    def remove(self, eid: int) -> None:
        entry = self._entries.pop(eid)
        self._unindex(eid, entry)
        self._release(entry.nodes)
        self._apply(entry, entry.start, entry.end, -1)
        count = self._begin_count.get(entry.start)  # None: forgotten by prune
        if count is not None and entry.end > entry.start:
            if count > 1:
                self._begin_count[entry.start] = count - 1
            else:
                del self._begin_count[entry.start]
                at = bisect.bisect_left(self._begins, entry.start)
                _resize(lambda: self._begins.pop(at))

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
        # History before the first breakpoint kept is gone (``prune``): a change to an
        # entry that began earlier (an extension, a removal) touches only the rows kept.
        # (Splitting there put a row of made-up usage before the present.)
        start = max(start, self._times[0])
        if end <= start:
            return
        self.version += 1
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
        i = self._split(start)
        j = self._split(end)
        kernels.add_usage(self._usage, plan[0], plan[1] if sign > 0 else plan[2],
                          _view(self._rows, i, j), entry.nodes)
        if sign < 0:  # drop breakpoints that no longer separate different usage
            self._merge(j)
            self._merge(i)

    def _split(self, t: int) -> int:
        """Ensure a breakpoint at ``t``; return its index."""
        i = bisect.bisect_left(self._times, t)
        if i < len(self._times) and self._times[i] == t:
            return i
        if not self._spare:
            self._grow()
        row = self._spare.pop()
        prev = self._rows[i - 1]
        kernels.copy_row(self._usage, prev, row)
        _resize(lambda: self._times.insert(i, t))
        _resize(lambda: self._rows.insert(i, row))
        return i

    def _merge(self, i: int) -> None:
        if 0 < i < len(self._times):
            a, b = self._rows[i - 1], self._rows[i]
            if kernels.same_rows(self._usage, a, b):
                _resize(lambda: self._times.pop(i))
                _resize(lambda: self._rows.pop(i))
                self._spare.append(b)

    def _grow(self) -> None:
        slabs, old, n = self._usage.shape
        # np.zeros gets zeroed pages from the OS lazily: only the old rows are written,
        # where concatenating with zeros_like wrote (and first zeroed) everything.
        grown = np.zeros((slabs, 2 * old, n), dtype=self._dtype)
        grown[:, :old] = self._usage
        self._usage = grown
        self._spare.extend(range(2 * old - 1, old - 1, -1))

    def _slab(self, slabs: dict[int, int], d: int) -> int:
        """The slab of dimension ``d`` in ``slabs``, allocated (all zero) if new."""
        if d not in slabs:
            slabs[d] = self._usage.shape[0]
            _, rows, n = self._usage.shape
            self._usage = np.concatenate([self._usage, np.zeros((1, rows, n), self._dtype)])
            self._shapes.clear()  # (they name the slabs)
        return slabs[d]

    def _row_at(self, t: int) -> int:
        """The row holding the usage at ``t`` (at or after the first breakpoint). (bisect
        keeps the GIL: numpy's searchsorted lets it go on a long breakpoint list, and in
        the service taking it back waits behind the other threads.)"""
        return self._rows[bisect.bisect_right(self._times, t) - 1]

    def prune(self, now: int) -> None:
        """Forget usage before ``now`` (keeps the breakpoint covering ``now``)."""
        self._pruned_at = max(self._pruned_at, now)
        self.released(now)  # (ends reached: counted, and unindexed)
        i = bisect.bisect_right(self._times, now) - 1
        if i > 0:
            self._spare.extend(self._rows[:i])
            _resize(lambda: self._times.__delitem__(slice(0, i)))
            _resize(lambda: self._rows.__delitem__(slice(0, i)))
        b = bisect.bisect_left(self._begins, self._times[0])
        if b > 64:  # now and then: each cut copies the list
            for t in self._begins[:b]:
                del self._begin_count[t]
            _resize(lambda: self._begins.__delitem__(slice(0, b)))

    # ---------------------------------------------------------------- queries
    # Each runs one kernel over the table (``scheduler.kernels``), given the
    # breakpoints' rows and times as arrays over the lists' memory.
    def _all_rows(self) -> np.ndarray:
        return _view(self._rows, 0, len(self._rows))

    def _all_times(self) -> np.ndarray:
        return _view(self._times, 0, len(self._times))

    def hosts_at(self, t: int, vec: np.ndarray) -> np.ndarray:
        """Per node: can it host ``vec`` at ``t``? (A new array: not remembered.)"""
        out: np.ndarray = kernels.fits_rows(
            self._usage, np.array([self._row_at(t)], dtype=np.int64), *self._shape(vec))[0]
        return out

    def ready_room(self, instants: np.ndarray, vec: np.ndarray, ready: np.ndarray
                   ) -> np.ndarray:
        """Per instant g of ``instants``: how many nodes ready by g (``ready``: per node,
        when it could begin) can host ``vec`` at g; 0 where none ready at g itself can."""
        room: np.ndarray = kernels.ready_room(
            self._usage, self._all_times(), self._all_rows(), *self._shape(vec), instants,
            ready)
        return room

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
        i = bisect.bisect_right(self._times, t) - 1
        until: np.ndarray = kernels.free_until(
            self._usage, self._all_rows(), self._all_times(),
            *self._shape(vec, ignore_preemptible), i, t)
        return self._remember(key, until)

    def free_since(self, t: int, vec: np.ndarray) -> np.ndarray:
        """For each node, the start of the longest interval [since, t) in which it can
        host ``vec`` (``t`` if it cannot just before ``t``; the oldest time still kept,
        at or before the last ``prune``, if it could all along)."""
        n = self.node_count
        if not vec.any():
            return np.full(n, self._times[0], dtype=np.int64)
        key = (t, -2, False, vec.tobytes())
        if (cached := self._recall(key)) is not None:
            return cached
        j = bisect.bisect_left(self._times, t)  # slots [0, j) lie before t
        since: np.ndarray = kernels.free_since(
            self._usage, self._all_rows(), self._all_times(), *self._shape(vec), j, t)
        return self._remember(key, since)

    def soonest_ends(self, t: int, vec: np.ndarray, nodes: np.ndarray, r: int) -> np.ndarray:
        """Positions in ``nodes`` (ascending node indices, all able to host ``vec`` at
        ``t``) of the ``r`` whose free stretch from ``t`` ends soonest (ties: lower
        index). Scans only as far as it must: once ``r`` have ended, the others end
        later."""
        busy_later = self._last_end[nodes] > t  # the others are free for good from t
        if not vec.any() or not busy_later.any():
            return np.arange(min(r, len(nodes)))
        horizon = int(self._last_end[nodes[busy_later]].max())
        last = bisect.bisect_left(self._times, horizon)  # no slot from here changes
        i = bisect.bisect_right(self._times, t) - 1
        chosen: np.ndarray = kernels.soonest_ends(
            self._usage, self._all_rows(), self._all_times(), *self._shape(vec),
            nodes, busy_later, i, last, t, r)
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
        i = bisect.bisect_right(self._times, start) - 1
        j = max(bisect.bisect_left(self._times, end), i + 1)
        b0 = bisect.bisect_right(self._begins, start)
        b1 = bisect.bisect_left(self._begins, end, b0)
        fits: np.ndarray = kernels.fits_window(
            self._usage, _view(self._rows, i, j), _view(self._times, i, j),
            _view(self._begins, b0, b1), *shape)
        return self._remember(key, fits)

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
        the current commitments. (Candidate starts: ``t0``, then each later breakpoint,
        where usage may drop.)"""
        if eligible is None:
            eligible = np.ones(self.node_count, dtype=bool)
        a = bisect.bisect_right(self._times, t0) - 1
        s, fits = kernels.earliest_fit(
            self._usage, self._all_rows(), self._all_times(),
            *self._shape(vec, ignore_preemptible), eligible, a, t0, k, duration)
        return None if len(fits) == 0 else (int(s), fits)

    def min_free(self, node: int, start: int, end: int) -> np.ndarray:
        """Free capacity of ``node`` guaranteed throughout [start, end)."""
        i = bisect.bisect_right(self._times, start) - 1
        j = bisect.bisect_left(self._times, end)
        rows = _view(self._rows, i, max(j, i + 1))
        free: np.ndarray = self.capacity[node].copy()
        for d, slab in self._used_slab.items():
            free[d] -= self._usage[slab, rows, node].max()
        return free


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
