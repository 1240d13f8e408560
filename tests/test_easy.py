"""``batch-easy`` is EASY backfilling: checked against an independent implementation.

``easy`` below is written from the textbook definition (Lifka's EASY, as in Mu'alem &
Feitelson 2001), counting nodes only, and shares no code with the scheduler: at every
instant, first the jobs that end and arrive then are applied, then the queue is
scheduled: jobs start in FCFS order while they fit; the first that does not fit (the
head) gets a reservation at the *shadow time*, when enough running jobs will have
ended by their requested times; a later job may start now only if it fits and either
ends by the shadow time or uses only the *extra* nodes the head will not need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from scheduler.config import load_profile
from scheduler.leases import DiskImage, LeaseKind, LeaseRequest, Resources, Site
from scheduler.replay import ReplayResult, replay, replay_general
from scheduler.swf import read_swf

SWF = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "swf"
NODE = Resources(cpu=100, memory=1024)


@dataclass(frozen=True)
class Job:
    id: int
    submit: int
    nodes: int
    requested: int
    runs: int  # real run time, at most the requested time


def easy(jobs: list[Job], total: int) -> dict[int, int]:
    """Start time of every job under EASY on ``total`` identical nodes."""
    arrivals = sorted(jobs, key=lambda j: j.submit)  # stable: file order on ties
    running: list[tuple[int, int, Job]] = []  # (real end, requested end, job)
    queue: list[Job] = []
    starts: dict[int, int] = {}
    free, nxt = total, 0

    def start(job: Job, t: int) -> None:
        nonlocal free
        queue.remove(job)
        starts[job.id] = t
        free -= job.nodes
        running.append((t + job.runs, t + job.requested, job))

    while nxt < len(arrivals) or running:
        instants = [r[0] for r in running]
        if nxt < len(arrivals):
            instants.append(arrivals[nxt].submit)
        t = min(instants)
        for r in [r for r in running if r[0] <= t]:  # ends first, then arrivals
            running.remove(r)
            free += r[2].nodes
        while nxt < len(arrivals) and arrivals[nxt].submit <= t:
            queue.append(arrivals[nxt])
            nxt += 1
        while queue and queue[0].nodes <= free:
            start(queue[0], t)
        if not queue:
            continue
        head, avail, shadow = queue[0], free, None
        for req_end, _, job in sorted((r[1], r[2].id, r[2]) for r in running):
            avail += job.nodes
            if avail >= head.nodes:
                shadow = req_end
                break
        assert shadow is not None, "the head can never fit"
        # every node free at the shadow time beyond what the head needs (ties included)
        extra = free + sum(r[2].nodes for r in running if r[1] <= shadow) - head.nodes
        for job in list(queue[1:]):
            if job.nodes > free:
                continue
            ends_in_time = t + job.requested <= shadow
            if ends_in_time or job.nodes <= extra:
                start(job, t)
                if not ends_in_time:
                    extra -= job.nodes
    return starts


# Both ways wsched replays a batch workload: the node-counting fast path that
# ``replay`` takes for it, and the general core.
PATHS: dict[str, Callable[..., ReplayResult]] = {"fast": replay, "general": replay_general}


def wsched_starts(requests: list[LeaseRequest], nodes: int, path: str = "fast"
                  ) -> dict[int, int]:
    config = load_profile("batch-easy")
    result = PATHS[path](Site.uniform(nodes, NODE), config, requests)
    starts = {o.request.id: o.start for o in result.outcomes}
    assert None not in starts.values()
    return {k: v for k, v in starts.items() if v is not None}


def as_requests(jobs: list[Job]) -> list[LeaseRequest]:
    return [LeaseRequest(id=j.id, kind=LeaseKind.BESTEFFORT, vms=j.nodes, resources=NODE,
                         image=DiskImage("none", 0), duration=j.requested, submit=j.submit,
                         real_duration=j.runs, preemptible=True) for j in jobs]


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("trace", ["30days"])
def test_batch_easy_matches_independent_easy_on_blue_horizon(trace: str, path: str) -> None:
    swf = read_swf(SWF / f"{trace}.swf")
    jobs = [Job(r.id, r.submit, r.vms, r.duration, r.effective_real_duration)
            for r in swf.requests]
    assert len(jobs) == 4192
    expected = easy(jobs, 144)
    got = wsched_starts(list(swf.requests), 144, path)
    different = [(j.id, expected[j.id], got[j.id]) for j in jobs if expected[j.id] != got[j.id]]
    assert different == [], f"{len(different)} jobs start elsewhere (id, EASY, wsched)"
    # not a vacuous comparison: the trace really exercises backfilling
    backfilled = sum(1 for a, b in pairwise(jobs)
                     if expected[b.id] < expected[a.id])
    assert backfilled > 100


# --- three-job probes on 4 nodes: A runs, B (the head) waits, C probes backfilling.
# Each expected start is derived by hand; both implementations must agree with it.

PROBES = {
    # C (2 nodes, 50 s) ends at 52 <= B's reservation at 100: backfilled at once
    "backfill-ends-before-shadow": (
        [Job(1, 0, 2, 100, 100), Job(2, 1, 4, 100, 100), Job(3, 2, 2, 50, 50)],
        {1: 0, 2: 100, 3: 2}),
    # C (2 nodes, 200 s) would hold 2 of B's 4 nodes past 100: it waits until B is done
    "no-backfill-that-delays-head": (
        [Job(1, 0, 2, 100, 100), Job(2, 1, 4, 100, 100), Job(3, 2, 2, 200, 200)],
        {1: 0, 2: 100, 3: 200}),
    # B needs 3 of the 4 nodes at 100: the 4th is extra, so C (1 node, 500 s) may run
    # past the shadow time on it
    "backfill-on-extra-node": (
        [Job(1, 0, 2, 100, 100), Job(2, 1, 3, 100, 100), Job(3, 2, 1, 500, 500)],
        {1: 0, 2: 100, 3: 2}),
    # ... but C with 2 nodes past the shadow time would take one of B's: it waits for B
    "extra-node-too-few": (
        [Job(1, 0, 2, 100, 100), Job(2, 1, 3, 100, 100), Job(3, 2, 2, 500, 500)],
        {1: 0, 2: 100, 3: 200}),
    # A asked for 100 s but ends at 30: B starts at 30, and C (arriving at 30, ends
    # applied before arrivals) finds no room beside B's 4 nodes
    "early-end-moves-head": (
        [Job(1, 0, 2, 100, 30), Job(2, 1, 4, 100, 100), Job(3, 30, 1, 10, 10)],
        {1: 0, 2: 30, 3: 130}),
    # C arrives at 100, the instant A ends and B starts: FCFS keeps B first, and C
    # (1 node) still fits beside B's 3 nodes
    "same-instant-end-and-arrival": (
        [Job(1, 0, 2, 100, 100), Job(2, 1, 3, 100, 100), Job(3, 100, 1, 10, 10)],
        {1: 0, 2: 100, 3: 100}),
    # C's requested time ends exactly at the shadow time: that does not delay B
    "ends-exactly-at-shadow": (
        [Job(1, 0, 2, 100, 100), Job(2, 1, 4, 100, 100), Job(3, 2, 2, 98, 98)],
        {1: 0, 2: 100, 3: 2}),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe(name: str, path: str) -> None:
    jobs, expected = PROBES[name]
    assert easy(jobs, 4) == expected
    assert wsched_starts(as_requests(jobs), 4, path) == expected


@pytest.mark.parametrize("path", sorted(PATHS))
def test_backfilled_job_never_delays_the_head_reservation(path: str) -> None:
    """The head's start without C equals its start with any C (EASY's guarantee)."""
    a, b = Job(1, 0, 2, 100, 100), Job(2, 1, 3, 100, 100)
    alone = wsched_starts(as_requests([a, b]), 4, path)[2]
    for nodes in (1, 2):
        for length in (10, 98, 99, 500):
            c = Job(3, 2, nodes, length, length)
            assert wsched_starts(as_requests([a, b, c]), 4, path)[2] == alone == 100
