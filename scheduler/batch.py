"""Fast path for plain batch workloads: whole-node jobs with no overheads.

When every lease of a replay is best-effort, every VM fills a node (two never fit on
one) on a site of identical nodes, and the configuration adds no overhead (no image
transfer, boot, shutdown or slowdown), a node is a node: the schedule depends only
on how many are free over time. This module then replays the workload by counting
nodes, which is what classic batch simulators do, at a small fraction of the cost of
the general core (``core.Scheduler``), which tracks every resource of every node.

It runs the general core's queue passes (see ``Scheduler._schedule_queue``): the
same triggers (a submission, a planned end, a reservation's start, an early end,
which rebuilds the reservation), the same FCFS order, the same backfilling limit (no
reservation, or one: EASY). With at most one reservation, free nodes only grow until
it begins, so whether a job fits now is textbook EASY's test: enough nodes free now,
and either it ends by the reservation's start (the *shadow time*) or it takes only
*extra* nodes, those the reservation will not need. It takes free nodes when a job
starts (the ones
freed last: any free node is as good as another), also for the head's reservation,
as batch schedulers that count nodes do; the general core binds a reservation to
nodes when it makes it, so in rare cases it finds no single node free throughout a
window where counting finds one, and backfills less. Without backfilling the two
give the same schedule; with EASY the fast path gives textbook EASY's
(``tests/test_batch.py``).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
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
    version = [0] * n
    queue: list[int] = []  # FCFS: request order is (submit, arrival) order
    free_nodes = list(range(len(site.nodes) - 1, -1, -1))  # a stack: last freed, first taken
    placed: list[tuple[int, ...]] = [()] * n
    running: list[tuple[int, int]] = []  # (planned end, job), sorted
    heap: list[tuple[int, int, int, int]] = []  # (time, kind, job, version)
    # The one reservation EASY allows: its job, start (the shadow time) and the nodes
    # free then beyond what it needs (the extra nodes a job may hold past it).
    head: int | None = None
    shadow = extra = 0
    retry = replan = False
    now = 0

    def begin(job: int) -> None:
        k = vms[job]
        placed[job] = tuple(sorted(free_nodes[-k:]))
        del free_nodes[-k:]
        start[job] = now
        insort(running, (now + wanted[job], job))
        heapq.heappush(heap, (now + real[job], _END, job, version[job]))

    def reserve(job: int) -> None:
        """The earliest start of ``job`` (it does not fit now): when enough running
        jobs will have ended by their requested times."""
        nonlocal head, shadow, extra
        k, avail, i = vms[job], len(free_nodes), 0
        while avail < k or (i < len(running) and running[i][0] == shadow):
            shadow, other = running[i]
            avail += vms[other]
            i += 1
        head, extra = job, avail - k
        heapq.heappush(heap, (shadow, _BEGIN, job, version[job]))

    def schedule_queue(new: int | None) -> None:
        nonlocal retry, replan, head, extra
        if replan and head is not None:  # capacity came free early: it may move earlier
            version[head] += 1
            insort(queue, head)
            head = None
        if replan or retry or new is None:
            candidates = list(queue)
        else:  # nothing came free since the last pass: only the newcomer can change
            candidates = [new]
            if limit == 0 and queue[0] != new:
                return
        retry = replan = False
        for job in candidates:
            free = len(free_nodes)
            if free == 0 and (head is not None or limit == 0):
                break  # nobody can start now, nor reserve
            k, end = vms[job], now + wanted[job]
            # Free nodes only grow until the reservation: only it can stand in the way.
            if k <= free and (head is None or end <= shadow or k <= extra):
                if head is not None and end > shadow:
                    extra -= k
                queue.remove(job)
                begin(job)
            elif limit == 0:
                break
            elif head is None:
                queue.remove(job)
                reserve(job)

    def advance_to(t: int) -> None:
        nonlocal now, retry, replan, head
        while heap and heap[0][0] <= t:
            now = heap[0][0]
            while heap and heap[0][0] == now:
                _, kind, job, ver = heapq.heappop(heap)
                if ver != version[job]:
                    continue
                if kind == _BEGIN:
                    head = None
                    begin(job)
                    retry = True  # the backfilling budget it held is free again
                    continue
                free_nodes.extend(placed[job])
                planned_end = now - real[job] + wanted[job]
                del running[bisect_left(running, (planned_end, job))]
                if now < planned_end:
                    replan = True
                else:
                    retry = True
            if retry or replan:
                schedule_queue(None)
        now = max(now, t)

    for i, req in enumerate(requests):
        advance_to(req.submit)
        queue.append(i)
        schedule_queue(i)
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
