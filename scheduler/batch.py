"""Fast path for plain batch workloads: whole-node jobs with no overheads.

When every lease of a replay is best-effort, every VM fills a node (two never fit on
one) on a site of identical nodes, and the configuration adds no overhead (no image
transfer, boot, shutdown or slowdown), a node is a node: the schedule depends only
on how many are free over time. This module then replays the workload by counting
nodes, which is what classic batch simulators do, at a small fraction of the cost of
the general core (``core.Scheduler``), which tracks every resource of every node.

It mirrors the general core's queue pass step by step (see
``Scheduler._schedule_queue``): the same triggers (a submission, a planned end, a
reservation's start, an early end, which rebuilds the reservations), the same FCFS
order, the same backfilling limit. It takes free nodes when a job starts (the ones
freed last: any free node is as good as another), also for the head's reservation,
as batch schedulers that count nodes do; the general core binds a reservation to
nodes when it makes it, so in rare cases it finds no single node free throughout a
window where counting finds one, and backfills less. Without backfilling the two
give the same schedule; with EASY the fast path gives textbook EASY's
(``tests/test_batch.py``).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np

from .config import Config
from .leases import Event, EventKind, LeaseKind, LeaseOutcome, LeaseRequest, LeaseState, Site
from .overheads import Overheads
from .policies import make_policies

# Heap entry kinds at one instant: ends (early or planned), then reservations begin.
_END, _BEGIN = 0, 1


def applies(site: Site, config: Config, requests: Sequence[LeaseRequest]) -> bool:
    """Can ``requests`` be replayed by counting nodes (see the module docstring)?"""
    if not site.nodes or not requests:
        return False
    ovh = Overheads(config)
    if config.image_transfer or ovh.boot or ovh.shutdown or config.runtime_slowdown:
        return False
    cap = site.nodes[0].capacity.as_array()
    if any(not np.array_equal(n.capacity.as_array(), cap) for n in site.nodes):
        return False
    vectors = {r.resources for r in requests}
    if len(vectors) != 1:
        return False
    vec = next(iter(vectors)).as_array()
    exclusive = bool((vec <= cap).all()) and not bool((2 * vec <= cap).all())
    # Checked against independent FCFS and EASY; with more reservations (conservative
    # backfilling) the general core's node-level reservations are the reference.
    reservations = make_policies(config).backfilling.max_future
    return exclusive and reservations in (0, 1) and all(
        r.kind is LeaseKind.BESTEFFORT and 0 < r.vms <= len(site.nodes) for r in requests
    ) and all(a.submit <= b.submit for a, b in pairwise(requests)) \
        and len({r.id for r in requests}) == len(requests)  # else the core says what is wrong


class _FreeNodes:
    """How many nodes are free over time, as planned: a step function whose value
    ``free[i]`` holds from ``times[i]`` until the next breakpoint."""

    def __init__(self, total: int) -> None:
        self.times = [0]
        self.free = [total]

    def _split(self, t: int) -> int:
        i = bisect_right(self.times, t) - 1
        if self.times[i] == t:
            return i
        self.times.insert(i + 1, t)
        self.free.insert(i + 1, self.free[i])
        return i + 1

    def book(self, start: int, end: int, k: int) -> None:
        """Take (``k`` > 0) or give back (``k`` < 0) ``k`` nodes over [start, end)."""
        i, j = self._split(start), self._split(end)
        self.free[i:j] = [f - k for f in self.free[i:j]]

    def fits(self, start: int, end: int, k: int) -> bool:
        i = bisect_right(self.times, start) - 1
        j = bisect_left(self.times, end, i)
        return min(self.free[i:j]) >= k

    def earliest(self, t: int, k: int, length: int) -> int:
        """The earliest start >= t of ``length`` seconds with ``k`` nodes free."""
        times, free = self.times, self.free
        i = bisect_right(times, t) - 1
        start = t
        while True:
            if free[i] < k:
                i += 1
                start = times[i]  # the last step is everything free: always fits
            elif i + 1 == len(times) or times[i + 1] >= start + length:
                return start
            else:
                i += 1

    def prune(self, now: int) -> None:
        i = bisect_right(self.times, now) - 1
        if i > 64:  # now and then: each cut copies the lists
            del self.times[:i]
            del self.free[:i]


def replay_batch(site: Site, config: Config, requests: Sequence[LeaseRequest],
                 progress: Callable[[int], None] | None = None) -> tuple[LeaseOutcome, ...]:
    """Replay ``requests`` (sorted by submit time, ``applies`` true) to the end: the
    outcome of every lease, in request order."""
    limit = make_policies(config).backfilling.max_future
    n = len(requests)
    vms = [r.vms for r in requests]
    wanted = [r.duration for r in requests]  # no slowdown: run time = requested time
    real = [r.effective_real_duration for r in requests]
    start: list[int | None] = [None] * n
    reserved: dict[int, int] = {}  # job -> start of its reservation (not begun)
    version = [0] * n
    queue: list[int] = []  # FCFS: request order is (submit, arrival) order
    profile = _FreeNodes(len(site.nodes))
    free_nodes = list(range(len(site.nodes) - 1, -1, -1))  # a stack: last freed, first taken
    placed: list[tuple[int, ...]] = [()] * n
    heap: list[tuple[int, int, int, int]] = []  # (time, kind, job, version)
    retry = replan = False
    now = 0

    def begin(job: int) -> None:
        k = vms[job]
        placed[job] = tuple(sorted(free_nodes[-k:]))
        del free_nodes[-k:]
        start[job] = now
        heapq.heappush(heap, (now + real[job], _END, job, version[job]))

    def commit_now(job: int) -> None:
        profile.book(now, now + wanted[job], vms[job])
        begin(job)

    def schedule_queue(new: int | None) -> None:
        nonlocal retry, replan
        if replan:  # capacity came free early: reservations may move earlier
            for job, s in reserved.items():
                profile.book(s, s + wanted[job], -vms[job])
                version[job] += 1
                insort(queue, job)
            reserved.clear()
            candidates = list(queue)
        elif retry or new is None:
            candidates = list(queue)
        else:  # nothing came free since the last pass: only the newcomer can change
            candidates = [new]
            if limit == 0 and queue[0] != new:
                return
        retry = replan = False
        used = len(reserved)
        free_now = profile.free[bisect_right(profile.times, now) - 1]
        for job in candidates:
            if free_now == 0 and limit is not None and used >= limit:
                break  # nobody can start now, nor reserve
            k, length = vms[job], wanted[job]
            # With no reservation ahead, free nodes only grow: k free now is enough.
            if k <= free_now and (not reserved or profile.fits(now, now + length, k)):
                queue.remove(job)
                commit_now(job)
                free_now -= k
                continue
            if limit is not None and used >= limit:
                if limit == 0:
                    break
                continue
            s = profile.earliest(now, k, length)
            profile.book(s, s + length, k)
            queue.remove(job)
            reserved[job] = s
            heapq.heappush(heap, (s, _BEGIN, job, version[job]))
            used += 1

    def advance_to(t: int) -> None:
        nonlocal now, retry, replan
        while heap and heap[0][0] <= t:
            now = heap[0][0]
            while heap and heap[0][0] == now:
                _, kind, job, ver = heapq.heappop(heap)
                if ver != version[job]:
                    continue
                if kind == _BEGIN:
                    del reserved[job]
                    begin(job)
                    retry = True  # the backfilling budget it held is free again
                    continue
                free_nodes.extend(placed[job])
                planned_end = now - real[job] + wanted[job]
                if now < planned_end:
                    profile.book(now, planned_end, -vms[job])
                    replan = True
                else:
                    retry = True
            if retry or replan:
                schedule_queue(None)
        now = max(now, t)
        profile.prune(now)

    for i, req in enumerate(requests):
        advance_to(req.submit)
        queue.append(i)
        schedule_queue(i)
        if retry or replan:
            schedule_queue(None)
        if progress is not None:
            progress(i + 1)
    while heap:
        advance_to(heap[0][0])
    done, boot, run, shutdown = LeaseState.DONE, EventKind.BOOT, EventKind.RUN, EventKind.SHUTDOWN
    out = []
    for req, s, r, nodes in zip(requests, start, real, placed, strict=True):
        assert s is not None, "every job of a batch replay runs"
        out.append(LeaseOutcome(req, done, (Event(boot, s, s, nodes), Event(run, s, s + r, nodes),
                                            Event(shutdown, s + r, s + r, nodes))))
    return tuple(out)
