"""Compiled loops over the availability profile's table, and over the core's per-node
arrays (readiness, host choice) (numba).

The profile's queries walk a (slab, row, node) usage table: a node can host a VM in
a row when, in every dimension the VM uses, the node's usage there is at most what
its capacity leaves for the VM (its *room*). Written with numpy, each query took
tens of array operations on small arrays (a site has tens to hundreds of nodes),
and their dispatch cost more than the arithmetic; each loop here is one call, and
stops as soon as its answer is known.

Every profile kernel takes the table, the breakpoints' rows (``rows``, in time order) and a
VM shape as three arrays, one entry per dimension it uses: ``slabs`` (the slab of
all usage, or -1 if none was ever booked), ``pslabs`` (the slab of preemptible
usage, subtracted when preemptible reservations are ignored; -1: nothing to
subtract) and ``rooms`` (dimensions x nodes). Compiled on first use and cached
beside this file (``cache=True``), so later processes load them. They keep the GIL:
in the service, releasing and taking it back on every call would queue the engine
thread behind the gRPC threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])
INF = 2**62  # "forever": later than any schedulable instant (slottable.INF)


def _jit(f: F) -> F:
    return cast(F, numba.njit(cache=True)(f))


def _inlined(f: F) -> F:
    return cast(F, numba.njit(cache=True, inline="always")(f))


@_inlined
def _fits(usage: np.ndarray, slabs: np.ndarray, pslabs: np.ndarray, rooms: np.ndarray,
          row: int, node: int) -> bool:
    """Can ``node`` host the shape in ``row``? (For scans that stop per node.)"""
    for d in range(slabs.shape[0]):
        used = 0
        if slabs[d] >= 0:
            used = usage[slabs[d], row, node]
        if pslabs[d] >= 0:
            used -= usage[pslabs[d], row, node]
        if used > rooms[d, node]:
            return False
    return True


@_inlined
def _row_fits(usage: np.ndarray, slabs: np.ndarray, pslabs: np.ndarray, rooms: np.ndarray,
              row: int, out: np.ndarray) -> None:
    """``out[node]``: can the node host the shape in ``row``? A loop per dimension
    over all nodes, without branches, which the compiler vectorizes."""
    n = out.shape[0]
    for node in range(n):
        out[node] = True
    for d in range(slabs.shape[0]):
        s, p = slabs[d], pslabs[d]
        if s < 0:
            for node in range(n):
                out[node] &= rooms[d, node] >= 0
        elif p < 0:
            for node in range(n):
                out[node] &= usage[s, row, node] <= rooms[d, node]
        else:
            for node in range(n):
                out[node] &= usage[s, row, node] - usage[p, row, node] <= rooms[d, node]


@_jit
def fits_rows(usage: np.ndarray, rows: np.ndarray, slabs: np.ndarray, pslabs: np.ndarray,
              rooms: np.ndarray) -> np.ndarray:
    """(rows, nodes) booleans: can the node host the shape in that row?"""
    out = np.empty((rows.shape[0], rooms.shape[1]), dtype=np.bool_)
    for i in range(rows.shape[0]):
        _row_fits(usage, slabs, pslabs, rooms, rows[i], out[i])
    return out


@_jit
def ready_room(usage: np.ndarray, times: np.ndarray, rows: np.ndarray, slabs: np.ndarray,
               pslabs: np.ndarray, rooms: np.ndarray, instants: np.ndarray,
               ready: np.ndarray) -> np.ndarray:
    """Per instant g of ``instants``: how many nodes ready by g (``ready``, per node) can
    host the shape at g, or 0 if none of them is ready exactly at g (no start at g
    can then be what preparation dictates). ``times`` and ``rows``: the breakpoints,
    and their rows; an instant's usage is its breakpoint's."""
    n = rooms.shape[1]
    room = np.zeros(instants.shape[0], dtype=np.int64)
    fit = np.empty(n, dtype=np.bool_)
    for i in range(instants.shape[0]):
        g = instants[i]
        _row_fits(usage, slabs, pslabs, rooms, rows[np.searchsorted(times, g, "right") - 1],
                  fit)
        count, exact = 0, False
        for node in range(n):
            if fit[node] and ready[node] <= g:
                count += 1
                exact |= ready[node] == g
        if exact:
            room[i] = count
    return room


@_jit
def fits_window(usage: np.ndarray, rows: np.ndarray, times: np.ndarray, begins: np.ndarray,
                slabs: np.ndarray, pslabs: np.ndarray, rooms: np.ndarray) -> np.ndarray:
    """Per node: can it host the shape throughout a window whose slots are ``rows``
    (starting at ``times``), given the entries' ``begins`` within it (ascending)?
    Usage rises only where an entry begins, so a node's peak is in the first slot or
    in one where an entry begins: only those are scanned (a window often spans
    thousands of breakpoints, mostly ends). Per dimension, the peak against the room."""
    m = rows.shape[0]
    scan = np.empty(m, dtype=np.int64)
    scan[0] = rows[0]
    c, q = 1, 0
    for b in begins:  # (merged with the slots: both ascending)
        at = q
        while at + 1 < m and times[at + 1] <= b:
            at += 1
        if at != q:
            scan[c] = rows[at]
            c += 1
            q = at
    n = rooms.shape[1]
    out = np.ones(n, dtype=np.bool_)
    peak = np.empty(n, dtype=np.int64)
    for d in range(slabs.shape[0]):
        s, p = slabs[d], pslabs[d]
        peak[:] = -INF if s >= 0 else 0  # (never booked: no usage)
        if s >= 0:
            for x in range(c):
                row = scan[x]
                if p < 0:
                    for node in range(n):
                        peak[node] = max(peak[node], usage[s, row, node])
                else:
                    for node in range(n):
                        peak[node] = max(peak[node], usage[s, row, node] - usage[p, row, node])
        for node in range(n):
            out[node] &= peak[node] <= rooms[d, node]
    return out


@_jit
def free_since(usage: np.ndarray, rows: np.ndarray, times: np.ndarray, slabs: np.ndarray,
               pslabs: np.ndarray, rooms: np.ndarray, j: int, t: int) -> np.ndarray:
    """Per node, the start of its last stretch able to host the shape before ``t``
    (slots ``[0, j)`` lie before it): the end of the latest slot where it cannot
    (``t`` for slot ``j - 1``), or ``times[0]`` if it can in all."""
    n = rooms.shape[1]
    since = np.full(n, times[0], dtype=np.int64)
    for node in range(n):
        for s in range(j - 1, -1, -1):
            if not _fits(usage, slabs, pslabs, rooms, rows[s], node):
                since[node] = t if s == j - 1 else times[s + 1]
                break
    return since


@_jit
def free_until(usage: np.ndarray, rows: np.ndarray, times: np.ndarray, slabs: np.ndarray,
               pslabs: np.ndarray, rooms: np.ndarray, i: int, t: int) -> np.ndarray:
    """Per node, the end of its stretch able to host the shape from ``t`` (in slot
    ``i``): the start of the first slot from ``i`` where it cannot (no earlier than
    ``t``), or ``INF``."""
    n = rooms.shape[1]
    until = np.full(n, INF, dtype=np.int64)
    for node in range(n):
        for s in range(i, times.shape[0]):
            if not _fits(usage, slabs, pslabs, rooms, rows[s], node):
                until[node] = max(times[s], t)
                break
    return until


@_jit
def soonest_ends(usage: np.ndarray, rows: np.ndarray, times: np.ndarray, slabs: np.ndarray,
                 pslabs: np.ndarray, rooms: np.ndarray, nodes: np.ndarray, open_: np.ndarray,
                 i: int, last: int, t: int, r: int) -> np.ndarray:
    """Positions in ``nodes`` of the ``r`` whose stretch able to host the shape from
    ``t`` (in slot ``i``) ends soonest, ties to the lower position; only ``open_``
    ones can end before slot ``last``. Slot by slot: once ``r`` have ended, every
    other ends later."""
    m = nodes.shape[0]
    until = np.full(m, INF, dtype=np.int64)
    open_ = open_.copy()
    found = 0
    s = i
    while s < last and found < r:
        for p in range(m):
            if open_[p] and not _fits(usage, slabs, pslabs, rooms, rows[s], nodes[p]):
                until[p] = max(times[s], t)
                open_[p] = False
                found += 1
        s += 1
    return np.argsort(until, kind="mergesort")[:r]


@_jit
def earliest_fit(usage: np.ndarray, rows: np.ndarray, times: np.ndarray, slabs: np.ndarray,
                 pslabs: np.ndarray, rooms: np.ndarray, eligible: np.ndarray, a: int,
                 t0: int, k: int, duration: int) -> tuple[int, np.ndarray]:
    """Earliest candidate start (slot ``a``'s at ``t0``, then each later breakpoint) at
    which at least ``k`` eligible nodes can host the shape for ``duration``; with
    which can. A window slides over the slots, counting per node the slots in it
    where the node cannot: each slot is judged once on entering, once on leaving.
    (-1 and an empty mask if there is none.)"""
    n = rooms.shape[1]
    total = times.shape[0]
    bad = np.zeros(n, dtype=np.int64)  # per node, the window's slots it cannot host in
    fit = np.empty(n, dtype=np.bool_)
    good = 0  # eligible nodes with none
    for node in range(n):
        good += eligible[node]
    q = a  # the window is slots [j, q)
    for j in range(a, total):
        start = max(times[j], t0)
        end = start + duration
        while q < total and times[q] < end:
            _row_fits(usage, slabs, pslabs, rooms, rows[q], fit)
            for node in range(n):
                if eligible[node] and not fit[node]:
                    good -= bad[node] == 0
                    bad[node] += 1
            q += 1
        if good >= k:
            for node in range(n):
                fit[node] = eligible[node] and bad[node] == 0
            return start, fit
        _row_fits(usage, slabs, pslabs, rooms, rows[j], fit)
        for node in range(n):
            if eligible[node] and not fit[node]:
                bad[node] -= 1
                good += bad[node] == 0
    return -1, np.zeros(0, dtype=np.bool_)


@_jit
def add_usage(usage: np.ndarray, slabs: np.ndarray, deltas: np.ndarray, rows: np.ndarray,
              nodes: np.ndarray) -> None:
    """Add ``deltas[x]`` to slab ``slabs[x]`` at every (row, node) of ``rows`` x
    ``nodes``."""
    for x in range(slabs.shape[0]):
        s, delta = slabs[x], deltas[x]
        for row in rows:
            for node in nodes:
                usage[s, row, node] += delta


@_jit
def copy_row(usage: np.ndarray, src: int, dst: int) -> None:
    """Row ``dst`` := row ``src``, in every slab."""
    for s in range(usage.shape[0]):
        for node in range(usage.shape[2]):
            usage[s, dst, node] = usage[s, src, node]


@_jit
def same_rows(usage: np.ndarray, a: int, b: int) -> bool:
    """Do rows ``a`` and ``b`` hold the same usage in every slab?"""
    for s in range(usage.shape[0]):
        for node in range(usage.shape[2]):
            if usage[s, a, node] != usage[s, b, node]:
                return False
    return True


@_jit
def distinct_finite(values: np.ndarray) -> np.ndarray:
    """The distinct values below ``INF``, ascending."""
    # A readiness has a few distinct times, most often: collect them, sort only those.
    few = np.empty(8, dtype=np.int64)
    m = 0
    for v in values:
        if v >= INF:
            continue
        seen = False
        for j in range(m):
            if few[j] == v:
                seen = True
                break
        if not seen:
            if m == few.shape[0]:
                m = -1  # many: sort them all (below)
                break
            few[m] = v
            m += 1
    if m >= 0:
        return np.sort(few[:m])
    ordered = np.sort(values)
    out = np.empty(ordered.shape[0], dtype=np.int64)
    m = 0
    for v in ordered:
        if v >= INF:
            break
        if m == 0 or out[m - 1] != v:
            out[m] = v
            m += 1
    return out[:m]


@_jit
def readiness(copies: np.ndarray, start: int, fill: int
              ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per node, when a lease could open there from ``start``: once its copy of the
    image is ready (``copies``: when, ``INF`` where there is none), else at ``fill``
    (when a new transfer would bring it); whether the node has a copy; and whether
    every node has."""
    n = copies.shape[0]
    ready = np.empty(n, dtype=np.int64)
    has = np.empty(n, dtype=np.bool_)
    complete = True
    for i in range(n):
        c = copies[i]
        if c < INF:
            has[i] = True
            ready[i] = c if c > start else start
        else:
            has[i] = False
            ready[i] = fill
            complete = False
    return ready, has, complete


@_jit
def resume_readiness(copies: np.ndarray, nodes: np.ndarray, base: int, light: int,
                     heavy: int) -> tuple[np.ndarray, np.ndarray]:
    """Per node, when a suspended lease could resume there: at ``base`` on ``nodes``
    (where its state is); elsewhere once its state has moved, at ``light``, or when
    its image is there too: the copy's (``copies``), or ``heavy`` if the image moves
    with the state sooner. And which nodes hold its state."""
    n = copies.shape[0]
    ready = np.empty(n, dtype=np.int64)
    orig = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        c = copies[i]
        ready[i] = heavy if c > heavy else (light if c < light else c)
    for node in nodes:
        ready[node] = base
        orig[node] = True
    return ready, orig


@_jit
def greedy_split(free_since: np.ndarray, has_image: np.ndarray, holds_state: np.ndarray,
                 needs_preemption: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``Greedy``'s order of m > k candidates (needing no preemption, holding the
    state, having the image, free latest), the positions sure to be among the first
    ``k`` (ranked strictly before the k-th) and those tied with the k-th, ascending.
    The three flags make 8 classes: counting them finds the k-th's class, and only
    within it are the times sorted."""
    m = free_since.shape[0]
    cls = np.empty(m, dtype=np.int64)
    counts = np.zeros(8, dtype=np.int64)
    for p in range(m):
        c = 4 * int(needs_preemption[p]) + 2 * int(not holds_state[p]) \
            + int(not has_image[p])
        cls[p] = c
        counts[c] += 1
    ck, before = 0, 0
    while before + counts[ck] < k:
        before += counts[ck]
        ck += 1
    times = np.empty(counts[ck], dtype=np.int64)
    j = 0
    for p in range(m):
        if cls[p] == ck:
            times[j] = free_since[p]
            j += 1
    times.sort()
    kth = times[times.shape[0] - (k - before)]  # the (k - before)-th latest
    sure = np.empty(m, dtype=np.int64)
    tied = np.empty(m, dtype=np.int64)
    a = b = 0
    for p in range(m):
        if cls[p] < ck or (cls[p] == ck and free_since[p] > kth):
            sure[a] = p
            a += 1
        elif cls[p] == ck and free_since[p] == kth:
            tied[b] = p
            b += 1
    return sure[:a], tied[:b]
