"""Compiled loops over the availability profile's per-node step functions, and over the
core's per-node arrays (readiness, host choice) (numba).

The profile keeps, per node, the times at which its usage changes (``times[node, x]``
for ``x < count[node]``, ascending) and the usage from each until the next
(``usage[slab, node, x]``, one slab per dimension booked). A node can host a VM in a
step when, in every dimension the VM uses, its usage there is at most what its
capacity leaves for the VM (its *room*). Each query is one call that walks, per
node, only that node's steps: a few, where a table of every breakpoint of the site
made each query and each booking touch hundreds of rows.

Every profile kernel takes the times, counts and usage, and a VM shape as three
arrays, one entry per dimension it uses: ``slabs`` (the slab of all usage, or -1 if
none was ever booked), ``pslabs`` (the slab of preemptible usage, subtracted when
preemptible reservations are ignored; -1: nothing to subtract) and ``rooms``
(dimensions x nodes). Compiled on first use and cached beside this file
(``cache=True``), so later processes load them. They keep the GIL: in the service,
releasing and taking it back on every call would queue the engine thread behind the
gRPC threads.
"""

from __future__ import annotations

import heapq
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
def _seek(times: np.ndarray, count: np.ndarray, node: int, t: int) -> int:
    """The node's step holding ``t``: its last time at or before ``t`` (its first step
    if ``t`` is earlier than all it keeps). Most often ``t`` is the present, in the
    first step (none before the last prune is kept): a glance, before bisecting."""
    c = count[node]
    if c == 1 or times[node, 1] > t:
        return 0
    lo, hi = 2, c  # the first step beginning after t is in [lo, hi] (hi: none)
    while lo < hi:
        mid = (lo + hi) >> 1
        if times[node, mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@_inlined
def _fits(usage: np.ndarray, slabs: np.ndarray, pslabs: np.ndarray, rooms: np.ndarray,
          node: int, x: int) -> bool:
    """Can ``node`` host the shape in its step ``x``?"""
    for d in range(slabs.shape[0]):
        used = 0
        if slabs[d] >= 0:
            used = usage[slabs[d], node, x]
        if pslabs[d] >= 0:
            used -= usage[pslabs[d], node, x]
        if used > rooms[d, node]:
            return False
    return True


@_inlined
def _free_from(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
               pslabs: np.ndarray, rooms: np.ndarray, node: int, t: int) -> int:
    """The end of the node's stretch able to host the shape from ``t``: the start of its
    first step from ``t`` on where it cannot (``t`` at the earliest), or ``INF``."""
    for x in range(_seek(times, count, node, t), count[node]):
        if not _fits(usage, slabs, pslabs, rooms, node, x):
            return int(max(times[node, x], t))
    return INF


@_jit
def hosts_at(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
             pslabs: np.ndarray, rooms: np.ndarray, t: int) -> np.ndarray:
    """Per node: can it host the shape at ``t``?"""
    n = rooms.shape[1]
    out = np.empty(n, dtype=np.bool_)
    for node in range(n):
        out[node] = _fits(usage, slabs, pslabs, rooms, node, _seek(times, count, node, t))
    return out


@_jit
def ready_room(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
               pslabs: np.ndarray, rooms: np.ndarray, instants: np.ndarray,
               ready: np.ndarray) -> np.ndarray:
    """Per instant g of ``instants``: how many nodes ready by g (``ready``, per node) can
    host the shape at g, or 0 if none of them is ready exactly at g (no start at g
    can then be what preparation dictates)."""
    n = rooms.shape[1]
    room = np.zeros(instants.shape[0], dtype=np.int64)
    for i in range(instants.shape[0]):
        g = instants[i]
        c, exact = 0, False
        for node in range(n):
            if ready[node] <= g and _fits(usage, slabs, pslabs, rooms, node,
                                          _seek(times, count, node, g)):
                c += 1
                exact |= ready[node] == g
        if exact:
            room[i] = c
    return room


@_jit
def most_ready_room(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
                    pslabs: np.ndarray, rooms: np.ndarray, ready: np.ndarray) -> int:
    """``ready_room``'s largest count over the distinct finite times of ``ready``."""
    room = ready_room(times, count, usage, slabs, pslabs, rooms, distinct_finite(ready), ready)
    return int(room.max()) if room.shape[0] else 0


@_inlined
def _fits_over(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
               pslabs: np.ndarray, rooms: np.ndarray, node: int, start: int,
               end: int) -> bool:
    """Can ``node`` host the shape throughout [start, end) (every step of it that the
    window meets)?"""
    x = _seek(times, count, node, start)
    while True:
        if not _fits(usage, slabs, pslabs, rooms, node, x):
            return False
        x += 1
        if x >= count[node] or times[node, x] >= end:
            return True


@_jit
def fits_window(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
                pslabs: np.ndarray, rooms: np.ndarray, start: int, end: int) -> np.ndarray:
    """Per node: can it host the shape throughout [start, end)?"""
    n = rooms.shape[1]
    out = np.empty(n, dtype=np.bool_)
    for node in range(n):
        out[node] = _fits_over(times, count, usage, slabs, pslabs, rooms, node, start, end)
    return out


@_jit
def ready_window(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
                 pslabs: np.ndarray, rooms: np.ndarray, start: int, end: int,
                 ready: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """``fits_window`` on the nodes ready by ``start`` (``ready``: per node, when it
    could begin), False elsewhere; with how many nodes that is, and whether one of them
    is ready at ``start`` itself. (A proposal asks it per readiness group.)"""
    n = rooms.shape[1]
    out = np.zeros(n, dtype=np.bool_)
    m = 0
    exact = False
    for node in range(n):
        if ready[node] <= start and _fits_over(times, count, usage, slabs, pslabs, rooms,
                                               node, start, end):
            out[node] = True
            m += 1
            exact = exact or ready[node] == start
    return out, m, exact


@_jit
def free_since(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
               pslabs: np.ndarray, rooms: np.ndarray, t: int) -> np.ndarray:
    """Per node, the start of its last stretch able to host the shape before ``t``:
    the end of the latest step before ``t`` where it cannot (``t`` if that step holds
    ``t - 1``), or the start of its first step kept if it can in all."""
    n = rooms.shape[1]
    since = np.empty(n, dtype=np.int64)
    for node in range(n):
        since[node] = times[node, 0]
        j = _seek(times, count, node, t)  # steps [0, j) begin before t, and j if ...
        if times[node, j] < t:  # ... it begins before t too
            j += 1
        for x in range(j - 1, -1, -1):
            if not _fits(usage, slabs, pslabs, rooms, node, x):
                since[node] = t if x == j - 1 else times[node, x + 1]
                break
    return since


@_jit
def free_until(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
               pslabs: np.ndarray, rooms: np.ndarray, t: int) -> np.ndarray:
    """Per node, the end of its stretch able to host the shape from ``t`` (see
    ``_free_from``)."""
    n = rooms.shape[1]
    until = np.empty(n, dtype=np.int64)
    for node in range(n):
        until[node] = _free_from(times, count, usage, slabs, pslabs, rooms, node, t)
    return until


@_jit
def soonest_ends(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
                 pslabs: np.ndarray, rooms: np.ndarray, nodes: np.ndarray, open_: np.ndarray,
                 t: int, r: int) -> np.ndarray:
    """Positions in ``nodes`` of the ``r`` whose stretch able to host the shape from
    ``t`` ends soonest, ties to the lower position; only ``open_`` ones can end at
    all (the others are free for good)."""
    m = nodes.shape[0]
    until = np.full(m, INF, dtype=np.int64)
    for p in range(m):
        if open_[p]:
            until[p] = _free_from(times, count, usage, slabs, pslabs, rooms, nodes[p], t)
    return np.argsort(until, kind="mergesort")[:r]


@_jit
def earliest_fit(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
                 pslabs: np.ndarray, rooms: np.ndarray, eligible: np.ndarray, t0: int,
                 k: int, duration: int) -> tuple[int, np.ndarray]:
    """Earliest start ``s >= t0`` at which at least ``k`` eligible nodes can host the
    shape throughout [s, s + duration); with which can (-1 and an empty mask if
    never). Per node, each stretch able to host it from ``t0`` on, [a, b), lets it
    start anywhere in [a, b - duration]; a node's stretches are disjoint, so the
    nodes able at ``s`` are the intervals holding ``s``, and the earliest ``s`` held
    by ``k`` of them is the start of one: taken in order, with the ends of those
    begun so far in a heap."""
    n = rooms.shape[1]
    size = n  # (a node's stretches: at most one more than its steps)
    for node in range(n):
        size += count[node]
    los = np.empty(size, dtype=np.int64)
    his = np.empty(size, dtype=np.int64)
    owner = np.empty(size, dtype=np.int64)
    m = 0
    for node in range(n):
        if not eligible[node]:
            continue
        a, open_ = 0, False  # the open stretch's start, if one is open
        x = _seek(times, count, node, t0)
        while True:
            ends = x >= count[node]
            if not ends and _fits(usage, slabs, pslabs, rooms, node, x):
                if not open_:
                    a, open_ = max(times[node, x], t0), True
            elif open_:
                b = INF if ends else times[node, x]
                if b - a >= duration:
                    los[m], his[m], owner[m] = a, b - duration, node
                    m += 1
                open_ = False
            if ends:
                break
            x += 1
    order = np.argsort(los[:m])
    ending = [INF]  # (a typed list for heapq)
    ending.pop()
    for i in range(m):
        s = los[order[i]]
        heapq.heappush(ending, his[order[i]])
        if i + 1 < m and los[order[i + 1]] == s:
            continue  # every interval starting at s first
        while ending[0] < s:
            heapq.heappop(ending)
        if len(ending) >= k:
            fit = np.zeros(n, dtype=np.bool_)
            for q in range(m):
                if los[q] <= s <= his[q]:
                    fit[owner[q]] = True
            return s, fit
    return -1, np.zeros(0, dtype=np.bool_)


@_jit
def peak_usage(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
               node: int, start: int, end: int) -> np.ndarray:
    """Per slab of ``slabs``: the node's peak usage over [start, end)."""
    peak = np.zeros(slabs.shape[0], dtype=np.int64)
    x = _seek(times, count, node, start)
    while True:
        for d in range(slabs.shape[0]):
            peak[d] = max(peak[d], usage[slabs[d], node, x])
        x += 1
        if x >= count[node] or times[node, x] >= end:
            break
    return peak


@_inlined
def _split(times: np.ndarray, count: np.ndarray, usage: np.ndarray, node: int,
           t: int) -> int:
    """Ensure the node has a step beginning at ``t`` (at or after its first), with the
    usage it had there; return its index. (Room for it was made.)"""
    x = _seek(times, count, node, t)
    if times[node, x] == t:
        return x
    c = count[node]
    for y in range(c, x + 1, -1):  # shift the later steps right by one
        times[node, y] = times[node, y - 1]
        for s in range(usage.shape[0]):
            usage[s, node, y] = usage[s, node, y - 1]
    times[node, x + 1] = t
    for s in range(usage.shape[0]):
        usage[s, node, x + 1] = usage[s, node, x]
    count[node] = c + 1
    return x + 1


@_inlined
def _merge(times: np.ndarray, count: np.ndarray, usage: np.ndarray, node: int,
           x: int) -> None:
    """Drop the node's step ``x`` if its usage is its predecessor's."""
    c = count[node]
    if x <= 0 or x >= c:
        return
    for s in range(usage.shape[0]):
        if usage[s, node, x] != usage[s, node, x - 1]:
            return
    for y in range(x, c - 1):
        times[node, y] = times[node, y + 1]
        for s in range(usage.shape[0]):
            usage[s, node, y] = usage[s, node, y + 1]
    count[node] = c - 1


@_jit
def add_usage(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
              deltas: np.ndarray, nodes: np.ndarray, start: int, end: int,
              merge: bool) -> bool:
    """Add ``deltas[x]`` to slab ``slabs[x]`` of each of ``nodes`` over [start, end)
    (from its first step kept, if it began earlier); with ``merge`` (usage taken
    away), drop the steps that no longer differ from the one before. False, with
    nothing changed, if some node has no room for two more steps."""
    cap = times.shape[1]
    for node in nodes:
        if count[node] + 2 > cap:
            return False
    for node in nodes:
        a = max(start, times[node, 0])
        if end <= a:
            continue
        i = _split(times, count, usage, node, a)
        j = _split(times, count, usage, node, end)
        for x in range(slabs.shape[0]):
            s, delta = slabs[x], deltas[x]
            for y in range(i, j):
                usage[s, node, y] += delta
        if merge:
            _merge(times, count, usage, node, j)
            _merge(times, count, usage, node, i)
    return True


@_jit
def drop_before(times: np.ndarray, count: np.ndarray, usage: np.ndarray, t: int) -> None:
    """Drop every node's steps before the one holding ``t``."""
    for node in range(times.shape[0]):
        first = _seek(times, count, node, t)
        if first > 0:
            c = count[node]
            for y in range(c - first):
                times[node, y] = times[node, y + first]
                for s in range(usage.shape[0]):
                    usage[s, node, y] = usage[s, node, y + first]
            count[node] = c - first


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
def resume_room(times: np.ndarray, count: np.ndarray, usage: np.ndarray, slabs: np.ndarray,
                pslabs: np.ndarray, rooms: np.ndarray, copies: np.ndarray, nodes: np.ndarray,
                base: int, light: int, heavy: int, closed: np.ndarray) -> int:
    """``most_ready_room`` of a suspended lease's ``resume_readiness``, where nodes
    ``closed`` to new placements are never ready (but those holding its state): in one
    call, since a queue pass asks it of every suspended lease, and most cannot resume."""
    ready, orig = resume_readiness(copies, nodes, base, light, heavy)
    for i in range(ready.shape[0]):
        if closed[i] and not orig[i]:
            ready[i] = INF
    return most_ready_room(times, count, usage, slabs, pslabs, rooms, ready)


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
