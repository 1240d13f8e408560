"""The node-counting fast path (``scheduler.batch``) for plain batch workloads.

``replay`` takes it for whole-node jobs without overheads. With EASY backfilling it
must give textbook EASY's starts (``test_easy.easy``, an independent implementation)
and a valid schedule; without backfilling (FCFS) the general core's exact schedule
(the nodes may differ: any free node is as good as another). Where the two paths
differ under EASY, the fast path backfills more: it picks a reservation's nodes when
the reservation begins, the general core when it makes it (``test_late_binding``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_easy import Job, easy

from scheduler import batch
from scheduler.config import Backfilling, Config, load_profile
from scheduler.invariants import check_schedule
from scheduler.leases import DiskImage, LeaseKind, LeaseOutcome, LeaseRequest, Resources, Site
from scheduler.replay import replay, replay_general
from scheduler.swf import read_swf

SWF30 = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "swf" / "30days.swf"
NODE = Resources(cpu=100, memory=1024)
EASY = load_profile("batch-easy")


def job(id_: int, submit: int, vms: int, duration: int, real: int,
        kind: LeaseKind = LeaseKind.BESTEFFORT, resources: Resources = NODE) -> LeaseRequest:
    return LeaseRequest(id=id_, kind=kind, vms=vms, resources=resources,
                        image=DiskImage("none", 0), duration=duration, submit=submit,
                        real_duration=real, preemptible=True,
                        start=submit + 10 if kind is LeaseKind.AR else None)


def shape(outcomes: tuple[LeaseOutcome, ...]) -> list[tuple[object, ...]]:
    """Everything but which nodes: state, and each event's kind, times and width."""
    return [(o.request.id, o.state, tuple((e.kind, e.start, e.end, len(e.nodes))
                                          for e in o.events)) for o in outcomes]


@st.composite
def batch_workloads(draw: st.DrawFn) -> tuple[int, list[LeaseRequest]]:
    nodes = draw(st.integers(1, 8))
    submit, jobs = 0, []
    for i in range(draw(st.integers(1, 30))):
        submit += draw(st.integers(0, 30))
        duration = draw(st.integers(1, 120))
        real = draw(st.one_of(st.just(duration), st.integers(1, duration)))
        jobs.append(job(i + 1, submit, draw(st.integers(1, nodes)), duration, real))
    return nodes, jobs


@settings(max_examples=300, deadline=None)
@given(batch_workloads())
def test_easy_fast_path_is_textbook_easy(workload: tuple[int, list[LeaseRequest]]) -> None:
    nodes, jobs = workload
    site = Site.uniform(nodes, NODE)
    assert batch.applies(site, EASY, jobs)
    fast = replay(site, EASY, jobs).outcomes
    assert check_schedule(site, EASY, fast) == []
    expected = easy([Job(r.id, r.submit, r.vms, r.duration, r.effective_real_duration)
                     for r in jobs], nodes)
    assert {o.request.id: o.start for o in fast} == expected
    assert all(o.end == (o.start or 0) + o.request.effective_real_duration for o in fast)


@settings(max_examples=200, deadline=None)
@given(batch_workloads())
def test_fcfs_fast_path_is_the_general_core(workload: tuple[int, list[LeaseRequest]]) -> None:
    nodes, jobs = workload
    site, config = Site.uniform(nodes, NODE), replace(EASY, backfilling=Backfilling.OFF)
    assert batch.applies(site, config, jobs)
    fast = replay(site, config, jobs).outcomes
    assert shape(fast) == shape(replay_general(site, config, jobs).outcomes)
    assert check_schedule(site, config, fast) == []


def test_late_binding() -> None:
    """7 nodes, all at 0: A (1 node, 3 s), B and C (1 node, 1 s), D (3 nodes, 2 s) start;
    E (5 nodes, 1 s) is the head, reserved at 2 (D's end); F (1 node, 2 s) backfills on
    the last free node until 2; G and H (1 node, 1 s and 2 s) wait. At 1 (B, C end) two
    nodes are free: G takes one; H needs a node for [1, 3). Counting, there is one free
    throughout (B's or C's until 2, then F's); E, started at 2, takes the other five.
    The general core had bound E to B's, C's and D's nodes at 0, so H waits for 2."""
    jobs = [job(1, 0, 1, 3, 3), job(2, 0, 1, 1, 1), job(3, 0, 1, 1, 1), job(4, 0, 3, 2, 2),
            job(5, 0, 5, 1, 1), job(6, 0, 1, 2, 2), job(7, 0, 1, 1, 1), job(8, 0, 1, 2, 2)]
    site = Site.uniform(7, NODE)
    fast = replay(site, EASY, jobs).outcomes
    general = replay_general(site, EASY, jobs).outcomes
    assert [o.start for o in fast] == [0, 0, 0, 0, 2, 0, 1, 1]
    assert [o.start for o in general] == [0, 0, 0, 0, 2, 0, 1, 2]
    assert check_schedule(site, EASY, fast) == []
    assert easy([Job(r.id, r.submit, r.vms, r.duration, r.effective_real_duration)
                 for r in jobs], 7) == {o.request.id: o.start for o in fast}


def test_thirty_days_same_schedule_and_valid() -> None:
    jobs = list(read_swf(SWF30).requests)
    site = EASY.default_site()
    assert site is not None and batch.applies(site, EASY, jobs)
    fast = replay(site, EASY, jobs).outcomes
    assert check_schedule(site, EASY, fast) == []
    assert shape(fast) == shape(replay_general(site, EASY, jobs).outcomes)
    assert sum(o.end or 0 for o in fast) == sum(o.request.submit for o in fast) + sum(
        (o.start or 0) - o.request.submit + o.request.effective_real_duration for o in fast)


def test_hand_example() -> None:
    """4 nodes: A (2 nodes) 0-100 ends at 30; B (4) is the head and starts at 30;
    C (1 node, 10 s) arrives at 30 and waits for B: 130."""
    jobs = [job(1, 0, 2, 100, 30), job(2, 1, 4, 100, 100), job(3, 30, 1, 10, 10)]
    out = replay(Site.uniform(4, NODE), EASY, jobs).outcomes
    assert [(o.start, o.end) for o in out] == [(0, 30), (30, 130), (130, 140)]
    assert [len(o.nodes) for o in out] == [2, 4, 1]


def _config(**changes: object) -> Config:
    return replace(EASY, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("why", "config", "jobs"), [
    ("an AR", EASY, [job(1, 0, 1, 10, 10), job(2, 0, 1, 10, 10, LeaseKind.AR)]),
    ("an immediate lease", EASY, [job(1, 0, 1, 10, 10, LeaseKind.IMMEDIATE)]),
    ("VMs that share nodes", EASY, [job(1, 0, 1, 10, 10, resources=Resources(50, 512))]),
    ("two VM shapes", EASY, [job(1, 0, 1, 10, 10),
                            job(2, 0, 1, 10, 10, resources=Resources(100, 1000))]),
    ("more VMs than nodes", EASY, [job(1, 0, 5, 10, 10)]),
    ("boot time", _config(boot_time=20), [job(1, 0, 1, 10, 10)]),
    ("enactment overhead", _config(enactment_overhead=2), [job(1, 0, 1, 10, 10)]),
    ("runtime slowdown", _config(runtime_slowdown=5.0), [job(1, 0, 1, 10, 10)]),
    ("image transfers", _config(image_transfer=True), [job(1, 0, 1, 10, 10)]),
    ("conservative backfilling", load_profile("batch-conservative"), [job(1, 0, 1, 10, 10)]),
    ("submissions out of order", EASY, [job(1, 5, 1, 10, 10), job(2, 0, 1, 10, 10)]),
    ("a repeated id", EASY, [job(1, 0, 1, 10, 10), job(1, 1, 1, 10, 10)]),
    ("no requests", EASY, []),
])
def test_general_core_takes_what_counting_cannot_replay(
        why: str, config: Config, jobs: list[LeaseRequest]) -> None:
    assert not batch.applies(Site.uniform(4, NODE), config, jobs), why


@pytest.mark.parametrize("profile", ["novm-nosr", "novm-sr", "batch-easy"])
def test_paper_baselines_without_vms_take_the_fast_path(profile: str) -> None:
    config = load_profile(profile)
    site = config.default_site()
    assert site is not None
    assert batch.applies(site, config, [job(1, 0, 4, 10, 10)])
