"""The core's calls for the service: extend, flexible AR windows, counter-offers, fail.

Site: 2 nodes of 1 CPU; every VM takes a whole node. Profile ``test-notransfer``: each
VM command costs 2 s (boot [s, s+2), shutdown [e, e+2)); no image transfers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from scheduler.config import Backfilling, Config, Migration, TransferMode, load_profile
from scheduler.core import Lease, Scheduler, SchedulingError
from scheduler.images import Transfer
from scheduler.invariants import assert_valid
from scheduler.leases import (
    DiskImage,
    LeaseKind,
    LeaseRequest,
    LeaseState,
    Node,
    Resources,
    Site,
)

NODE = Resources(cpu=100, memory=1024)
SITE = Site.uniform(2, NODE)
CONFIG = load_profile("test-notransfer")


def req(i: int, kind: LeaseKind, vms: int, duration: int, submit: int = 0,
        start: int | None = None, start_latest: int | None = None) -> LeaseRequest:
    return LeaseRequest(i, kind, vms, NODE, DiskImage("img", 0), duration, submit,
                        start=start, start_latest=start_latest,
                        preemptible=kind is LeaseKind.BESTEFFORT)


def events(s: Scheduler, lease_id: int) -> list[tuple[str, int, int, tuple[int, ...]]]:
    return [(e.kind.value, e.start, e.end, e.nodes) for e in s.leases[lease_id].events()]


def finish(s: Scheduler) -> None:
    s.run()
    assert_valid(SITE, CONFIG, s.outcomes())


def test_extend_running_lease_in_place() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.BESTEFFORT, 1, 100))  # boot [0,2), run [2,102)
    s.advance_to(50)
    s.extend(1, 60)
    assert s.leases[1].request.duration == 160
    assert events(s, 1) == [("boot", 0, 2, (0,)), ("run", 2, 162, (0,)),
                            ("shutdown", 162, 164, (0,))]
    finish(s)
    assert s.leases[1].state is LeaseState.DONE


def test_extend_refused_when_an_ar_follows_changes_nothing() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.AR, 2, 100, start=10))  # boot [8,10), run [10,110)
    s.submit(req(2, LeaseKind.AR, 2, 100, start=200))  # boot [198,200)
    before = events(s, 1)
    with pytest.raises(SchedulingError, match=r"P1, P2 are booked from 112 s to 212 s"):
        s.extend(1, 100)
    assert events(s, 1) == before and s.leases[1].request.duration == 100
    s.extend(1, 86)  # [112, 198): exactly the room left before AR 2's boot
    assert events(s, 1)[1:] == [("run", 10, 196, (0, 1)), ("shutdown", 196, 198, (0, 1))]
    finish(s)


def test_extend_queued_and_planned_best_effort() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.BESTEFFORT, 2, 100))  # [0, 104) on both nodes
    s.submit(req(2, LeaseKind.BESTEFFORT, 2, 50))  # waits: boot [104,106), run [106,156)
    assert events(s, 2)[1] == ("run", 106, 156, (0, 1))
    s.extend(2, 30)  # not begun: re-planned with 80 s of run
    assert events(s, 2) == [("boot", 104, 106, (0, 1)), ("run", 106, 186, (0, 1)),
                            ("shutdown", 186, 188, (0, 1))]
    finish(s)


def test_flexible_ar_takes_the_earliest_start_in_its_window() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.AR, 2, 100, start=10))  # holds both nodes [8, 112)
    # asks for 50 s from 20, or as late as 500: the nodes are free from 112, so the
    # boot can begin at 112 and the run at 114
    lease = s.submit(req(2, LeaseKind.AR, 1, 50, start=20, start_latest=500))
    assert lease.request.start == 114 and lease.request.start_latest == 500
    assert events(s, 2) == [("boot", 112, 114, (0,)), ("run", 114, 164, (0,)),
                            ("shutdown", 164, 166, (0,))]
    finish(s)


def test_flexible_ar_rejected_when_its_window_is_too_early() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.AR, 2, 100, start=10))
    lease = s.submit(req(2, LeaseKind.AR, 1, 50, start=20, start_latest=100))
    assert lease.state is LeaseState.REJECTED
    assert lease.reason is not None and lease.reason.endswith(
        "; nor at any start up to its latest start 100 s")
    assert lease.request.start == 20  # the request is reported as asked


def test_counter_offer_is_accepted_when_resubmitted_and_changes_nothing() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.AR, 2, 100, start=10))
    s.submit(req(2, LeaseKind.BESTEFFORT, 1, 30))  # queued: [112, 146) on P1
    rejected = s.submit(req(3, LeaseKind.AR, 2, 40, start=50))
    assert rejected.state is LeaseState.REJECTED
    before = [(o.request.id, o.state, o.events) for o in s.outcomes()]
    # both nodes are free again from 112 (lease 2 is preemptible and may move): boot at
    # 112, start 114
    offer = s.earliest_ar_start(rejected.request)
    assert offer == 114
    assert [(o.request.id, o.state, o.events) for o in s.outcomes()] == before
    accepted = s.submit(replace(rejected.request, id=4, start=offer))
    assert accepted.state is LeaseState.SCHEDULED
    assert events(s, 4)[1] == ("run", 114, 154, (0, 1))
    finish(s)


def test_fail_destroys_vms_and_frees_the_nodes() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.BESTEFFORT, 2, 100))
    s.submit(req(2, LeaseKind.BESTEFFORT, 2, 10))  # waits for lease 1: boot at 104
    s.advance_to(40)
    s.fail(1, "hypervisor lost the domain")
    lease = s.leases[1]
    assert (lease.state, lease.reason) == (LeaseState.FAILED, "hypervisor lost the domain")
    # destroyed at 40 (no shutdown); lease 2 boots at once
    assert events(s, 1)[1:] == [("run", 2, 40, (0, 1)), ("shutdown", 40, 40, (0, 1))]
    assert events(s, 2)[0] == ("boot", 40, 42, (0, 1))
    with pytest.raises(SchedulingError, match="already failed"):
        s.fail(1, "again")
    finish(s)
    assert s.leases[1].state is LeaseState.FAILED


def test_window_only_for_ars() -> None:
    with pytest.raises(ValueError, match="only advance reservations have a start window"):
        req(1, LeaseKind.BESTEFFORT, 1, 10, start_latest=5)
    with pytest.raises(ValueError, match="the start window ends before it begins"):
        req(1, LeaseKind.AR, 1, 10, start=50, start_latest=40)


def test_add_node_starts_waiting_work_there() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.BESTEFFORT, 2, 100))  # both nodes [0, 104)
    s.submit(req(2, LeaseKind.BESTEFFORT, 1, 10))  # waits: boot at 104
    s.advance_to(20)
    s.add_node(Node(2, "P3", NODE))
    assert events(s, 2)[0] == ("boot", 20, 22, (2,))  # at once, on the new node
    with pytest.raises(SchedulingError, match="must have index 3"):
        s.add_node(Node(5, "P9", NODE))
    with pytest.raises(SchedulingError, match="named 'P3' exists already"):
        s.add_node(Node(3, "P3", NODE))
    s.run()
    assert_valid(s.site, CONFIG, s.outcomes())


def test_drain_moves_plans_but_keeps_running_work_and_remove_waits() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.BESTEFFORT, 1, 100))  # P1: [0, 104)
    s.submit(req(2, LeaseKind.BESTEFFORT, 1, 300))  # P2: [0, 304)
    s.submit(req(3, LeaseKind.BESTEFFORT, 1, 10))  # waits for P1: boot at 104
    assert events(s, 3)[0] == ("boot", 104, 106, (0,))
    s.advance_to(10)
    s.drain_node(0)  # lease 1 keeps running on P1; lease 3 must go to P2, free at 304
    assert events(s, 1)[1] == ("run", 2, 102, (0,))
    assert events(s, 3)[0] == ("boot", 304, 306, (1,))
    with pytest.raises(SchedulingError, match=r"node P1 still holds or has booked lease\(s\) 1"):
        s.remove_node(0)
    s.advance_to(104)  # lease 1 is done
    s.remove_node(0)
    late = s.submit(req(4, LeaseKind.IMMEDIATE, 1, 5, submit=104))
    assert late.state is LeaseState.REJECTED  # P1 is gone, P2 is busy
    s.run()
    assert_valid(SITE, CONFIG, s.outcomes())


def test_take_changed_reports_every_lease_whose_state_or_schedule_changed() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.BESTEFFORT, 2, 100))
    s.submit(req(2, LeaseKind.BESTEFFORT, 2, 10))
    assert s.take_changed() == {1, 2}
    assert s.take_changed() == set()
    seen = {lease_id: lease.state for lease_id, lease in s.leases.items()}
    while (t := s.next_event_time()) is not None:
        s.advance_to(t)
        changed = s.take_changed()
        now = {lease_id: lease.state for lease_id, lease in s.leases.items()}
        # a state that moved is always reported (the converse need not hold)
        assert {i for i in now if now[i] != seen[i]} <= changed
        seen = now
    assert {lease.state for lease in s.leases.values()} == {LeaseState.DONE}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_counter_offer_is_always_honoured(data: st.DataObject) -> None:
    """Random sites, configurations and bookings: resubmitting a rejected AR at the offered
    start is accepted (the offer is a dry run of exactly that)."""
    config = data.draw(st.sampled_from(
        ["test-notransfer", "test-transfer", "test-transfer-reuse", "novm-nosr"]))
    cfg = replace(load_profile(config), site_nodes=0)
    nodes = data.draw(st.integers(2, 5))
    site = Site.uniform(nodes, NODE)
    s = Scheduler(site, cfg)
    lease_id = 1
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from([LeaseKind.AR, LeaseKind.BESTEFFORT]))
        vms = data.draw(st.integers(1, nodes))
        duration = data.draw(st.integers(60, 3000))
        image = DiskImage(data.draw(st.sampled_from(["a", "b"])), 100)
        start = data.draw(st.integers(600, 5000)) if kind is LeaseKind.AR else None
        s.submit(LeaseRequest(lease_id, kind, vms, NODE, image, duration, 0, start=start,
                              preemptible=kind is LeaseKind.BESTEFFORT))
        lease_id += 1
    ar = LeaseRequest(lease_id, LeaseKind.AR, data.draw(st.integers(1, nodes)), NODE,
                      DiskImage("a", 100), data.draw(st.integers(60, 3000)), 0,
                      start=data.draw(st.integers(600, 5000)))
    lease = s.submit(ar)
    event(f"AR {lease.state}")
    if lease.state is not LeaseState.REJECTED:
        return
    offer = s.earliest_ar_start(ar)
    assert offer is not None and offer >= ar.start  # type: ignore[operator]
    retry = s.submit(replace(ar, id=lease_id + 1, start=offer))
    assert retry.state in (LeaseState.SCHEDULED, LeaseState.PREPARING), retry.reason
    s.run()
    assert_valid(site, cfg, s.outcomes())


def test_unicast_lease_boots_when_its_images_are_there() -> None:
    """Unicast with a cache: P1 keeps image a from lease 1, so lease 2 (2 VMs) needs one
    transfer, to P2 -- 100 MB at 100 Mbit/s = 8 s, [100, 108) -- and boots at 108 (not
    after two transfers' worth, 116)."""
    cfg = replace(load_profile("test-transfer-reuse"), transfer_mode=TransferMode.UNICAST)
    s = Scheduler(SITE, cfg)
    image = DiskImage("a", 100)
    s.submit(LeaseRequest(1, LeaseKind.BESTEFFORT, 1, NODE, image, 10, 0))
    s.advance_to(100)
    s.submit(LeaseRequest(2, LeaseKind.BESTEFFORT, 2, NODE, image, 10, 100))
    assert events(s, 1)[0] == ("transfer", 0, 8, (0,))
    assert events(s, 2)[:2] == [("transfer", 100, 108, (1,)), ("boot", 108, 110, (0, 1))]
    s.run()
    assert_valid(SITE, cfg, s.outcomes())


# Unicast with a shared cache, no boot or shutdown time: image c (375 MB at 100 Mbit/s)
# takes 30 s to send; VMs of half a node. AR 1 holds half of P1 for good; lease 2's
# two VMs get c on P1 [0, 30) and P2 [30, 60) and run on both from 60, filling P1.
UNICAST_SITE = Site.uniform(4, NODE)
UNICAST = replace(Config(), image_transfer=True, repository_bandwidth=100.0,
                  transfer_mode=TransferMode.UNICAST, piggybacking=False, image_cache_mb=2048)
HALF = Resources(cpu=50, memory=128)
IMAGE_C, NO_IMAGE = DiskImage("c", 375), DiskImage("z", 0)


def test_an_immediate_lease_needing_fewer_transfers_than_first_counted_boots_sooner() -> None:
    """Immediate lease 3 (2 VMs of c): counting no transfer, it would take P3 and P4 at
    once: two transfers. Counting two, the link is free from 60, so they end at 120 and
    it takes P2 (c there at 60) and P3 at 120 -- one transfer. Counting one, P3 has c at
    90: it boots at 90 on P2 and P3, when its images are there (not at 120)."""
    s = Scheduler(UNICAST_SITE, UNICAST)
    s.submit(LeaseRequest(1, LeaseKind.AR, 1, HALF, NO_IMAGE, 300, 0, start=0))
    s.submit(LeaseRequest(2, LeaseKind.BESTEFFORT, 2, HALF, IMAGE_C, 100, 0))
    s.submit(LeaseRequest(3, LeaseKind.IMMEDIATE, 2, HALF, IMAGE_C, 60, 0))
    assert events(s, 2)[:3] == [("transfer", 0, 30, (0,)), ("transfer", 30, 60, (1,)),
                                ("boot", 60, 60, (0, 1))]
    assert events(s, 3) == [("transfer", 30, 60, (1,)), ("transfer", 60, 90, (2,)),
                            ("boot", 90, 90, (1, 2)), ("run", 90, 150, (1, 2)),
                            ("shutdown", 150, 150, (1, 2))]
    s.run()
    assert_valid(UNICAST_SITE, UNICAST, s.outcomes())


def test_an_immediate_lease_boots_when_its_unicast_images_are_there() -> None:
    """Lease 1 (c sent to P1 [0, 30)) runs on half of P1 from 30; AR 2 fills the rest of
    P1 in [40, 80). Immediate lease 3 (2 VMs of c), counting one transfer (c elsewhere at
    60), finds P1 full at 60 and takes P2 and P3: two transfers. Counting two (c elsewhere
    at 90), the greedy choice is P1 (free again) and P2 -- one transfer, [30, 60), then 30 s
    idle. Choosing exactly two nodes without c makes the boot exact: P2 [30, 60) and
    P3 [60, 90), boot at 90 (it used to keep P1 and P2 and boot 30 s after its image)."""
    s = Scheduler(UNICAST_SITE, UNICAST)
    s.submit(LeaseRequest(1, LeaseKind.BESTEFFORT, 1, HALF, IMAGE_C, 200, 0))
    s.submit(LeaseRequest(2, LeaseKind.AR, 1, HALF, NO_IMAGE, 40, 0, start=40))
    s.submit(LeaseRequest(3, LeaseKind.IMMEDIATE, 2, HALF, IMAGE_C, 60, 0))
    assert events(s, 3) == [("transfer", 30, 60, (1,)), ("transfer", 60, 90, (2,)),
                            ("boot", 90, 90, (1, 2)), ("run", 90, 150, (1, 2)),
                            ("shutdown", 150, 150, (1, 2))]
    s.run()
    assert s.leases[3].state is LeaseState.DONE
    assert_valid(UNICAST_SITE, UNICAST, s.outcomes())


def test_an_early_end_with_no_time_to_shut_down_before_a_suspension_destroys_the_vm() -> None:
    """Lease 1 (60 s asked, 37 s of real work) must be suspended for AR 2 at 44: with
    128 MB at 32 MB/s, it runs until 40 and suspends [40, 44). Its work ends at 37,
    when a shutdown (10 s) would end after 44: its VM is destroyed then, and it is done
    after its 37 s (it used to stay, suspend, resume after the AR and run 20 s more)."""
    site = Site.uniform(1, NODE)
    cfg = replace(Config(), shutdown_time=10)
    small = Resources(cpu=100, memory=128)
    s = Scheduler(site, cfg)
    s.submit(LeaseRequest(1, LeaseKind.BESTEFFORT, 1, small, NO_IMAGE, 60, 0, real_duration=37,
                          preemptible=True))
    s.submit(LeaseRequest(2, LeaseKind.AR, 1, small, NO_IMAGE, 10, 0, start=44))
    assert events(s, 1)[1:3] == [("run", 0, 40, (0,)), ("suspend", 40, 44, (0,))]
    s.run()
    assert s.leases[1].state is LeaseState.DONE
    assert events(s, 1) == [("boot", 0, 0, (0,)), ("run", 0, 37, (0,)),
                            ("shutdown", 37, 37, (0,))]
    assert events(s, 2) == [("boot", 44, 44, (0,)), ("run", 44, 54, (0,)),
                            ("shutdown", 54, 64, (0,))]
    assert_valid(site, cfg, s.outcomes())


def test_a_sooner_transfer_takes_a_node_off_the_slower_one() -> None:
    """Image b (1 MB at 8 Mbit/s: 1 s). AR 4 (P1, P2 at 20) gets it by [19, 20); AR 5
    (P1 at 10) by [9, 10), which P1's copy then comes with: AR 4's transfer goes to P2
    only (the image used to go to P1 twice), and AR 4 depends on AR 5's for P1.
    Cancelled at 5, AR 5 lets go of its transfer, which stays for AR 4: P1's copy still
    comes at 10, and AR 7 (one VM at 30) uses it."""
    cfg = replace(Config(), image_transfer=True, repository_bandwidth=8.0)
    small, image = Resources(cpu=25, memory=128), DiskImage("b", 1)
    s = Scheduler(SITE, cfg)
    s.submit(LeaseRequest(4, LeaseKind.AR, 2, small, image, 60, 0, start=20))
    s.submit(LeaseRequest(5, LeaseKind.AR, 1, small, image, 60, 0, start=10))
    assert events(s, 5)[0] == ("transfer", 9, 10, (0,))
    assert events(s, 4)[:3] == [("transfer", 9, 10, (0,)), ("transfer", 19, 20, (1,)),
                                ("boot", 20, 20, (0, 1))]
    assert s.images.ready_times("b", never=-1).tolist() == [10, 20]
    s.advance_to(5)
    s.cancel(5)
    assert s.images.ready_times("b", never=-1).tolist() == [10, 20]
    assert events(s, 4)[:2] == [("transfer", 9, 10, (0,)), ("transfer", 19, 20, (1,))]
    s.submit(LeaseRequest(7, LeaseKind.AR, 1, small, image, 10, 5, start=30))
    assert events(s, 7)[:2] == [("transfer", 9, 10, (0,)), ("boot", 30, 30, (0,))]
    s.run()
    assert_valid(SITE, cfg, s.outcomes())


def test_a_lease_whose_transfer_another_moves_is_reported_changed() -> None:
    """AR 4 (P1 at 20) gets image b by [19, 20). AR 5 (P1 at 20, image c) is due at the
    same instant: EDF keeps request order, so AR 4's transfer moves to [18, 19). AR 4's
    schedule changed though only AR 5 was submitted: a mirror of the core (the
    service's database, its enactment) must hear of it (it used to hear of AR 5 only)."""
    cfg = replace(Config(), image_transfer=True, repository_bandwidth=8.0)
    small = Resources(cpu=25, memory=128)
    s = Scheduler(SITE, cfg)
    s.submit(LeaseRequest(4, LeaseKind.AR, 1, small, DiskImage("b", 1), 60, 0, start=20))
    assert events(s, 4)[0] == ("transfer", 19, 20, (0,))
    s.take_changed()
    s.submit(LeaseRequest(5, LeaseKind.AR, 1, small, DiskImage("c", 1), 60, 0, start=20))
    assert events(s, 4)[0] == ("transfer", 18, 19, (0,))
    assert events(s, 5)[0] == ("transfer", 19, 20, (0,))
    assert s.take_changed() == {4, 5}
    s.run()
    assert_valid(SITE, cfg, s.outcomes())


def test_a_transfer_left_with_no_destination_is_cancelled() -> None:
    """AR 4 (P1 at 20) gets image b by [19, 20); AR 5 (P1 at 10) sends it by [9, 10):
    P1 needs it once, so AR 4's transfer goes nowhere and leaves the link (AR 4 boots
    from AR 5's copy), and the link carries one transfer."""
    cfg = replace(Config(), image_transfer=True, repository_bandwidth=8.0)
    small, image = Resources(cpu=25, memory=128), DiskImage("b", 1)
    s = Scheduler(SITE, cfg)
    s.submit(LeaseRequest(4, LeaseKind.AR, 1, small, image, 60, 0, start=20))
    s.submit(LeaseRequest(5, LeaseKind.AR, 1, small, image, 60, 0, start=10))
    assert events(s, 4)[:2] == [("transfer", 9, 10, (0,)), ("boot", 20, 20, (0,))]
    assert events(s, 5)[:2] == [("transfer", 9, 10, (0,)), ("boot", 10, 10, (0,))]
    assert [(t.start, t.end, t.nodes) for t in s.images.transfers] == [(9, 10, (0,))]
    s.run()
    assert_valid(SITE, cfg, s.outcomes())


def test_killed_lease_starts_over_only_once_its_attempt_has_stopped() -> None:
    """novm-nosr (no overheads, no suspension); P2 has more memory. Lease 1 (60 s) runs
    on P1 from 0; AR A (1500 MB: only P2) holds P2 over [70, 170). AR B, asked at 10 for
    [40, 140), can only have P1: lease 1 is killed at 40. P2 is free over [10, 70), room
    for all 60 s, but lease 1 may not start over before its first attempt stops at 40:
    then only P1 after AR B, at 140, has room."""
    site = Site((Node(0, "P1", NODE), Node(1, "P2", Resources(cpu=100, memory=2048))))
    cfg = replace(load_profile("novm-nosr"), site_nodes=0)
    s = Scheduler(site, cfg)
    x = DiskImage("x", 0)
    s.submit(LeaseRequest(1, LeaseKind.BESTEFFORT, 1, NODE, x, 60, 0, preemptible=True))
    s.submit(LeaseRequest(2, LeaseKind.AR, 1, Resources(cpu=100, memory=1500), x, 100, 0,
                          start=70))
    assert events(s, 1)[1] == ("run", 0, 60, (0,)) and events(s, 2)[1] == (
        "run", 70, 170, (1,))
    s.advance_to(10)
    assert s.submit(LeaseRequest(3, LeaseKind.AR, 1, NODE, x, 100, 10, start=40)).state \
        is LeaseState.SCHEDULED
    assert events(s, 1) == [
        ("boot", 0, 0, (0,)), ("run", 0, 40, (0,)), ("shutdown", 40, 40, (0,)),
        ("boot", 140, 140, (0,)), ("run", 140, 200, (0,)), ("shutdown", 200, 200, (0,))]
    s.run()
    assert_valid(site, cfg, s.outcomes())


def test_early_end_at_a_free_resumption_does_not_loop() -> None:
    """novm-sr (suspend, migrate, resume cost nothing). Lease 1 (100 s, really 40 s) is
    planned to run [0, 40) on P1, suspend at 40 before an AR, and resume at 40 on P2.
    Its work ends at 40 by itself, the very instant its resumption could begin: it is
    done with exactly 40 s of run. (The replay of 30days.swf with
    work_05-dur_3h-size_3large under novm-sr once looped for ever on such an instant.)"""
    cfg = replace(load_profile("novm-sr"), site_nodes=0)
    s = Scheduler(SITE, cfg)
    x = DiskImage("x", 0)
    s.submit(LeaseRequest(2, LeaseKind.AR, 1, NODE, x, 100, 0, start=40))
    s.submit(LeaseRequest(3, LeaseKind.AR, 1, NODE, x, 40, 0, start=80))
    s.submit(LeaseRequest(1, LeaseKind.BESTEFFORT, 1, NODE, x, 100, 0, real_duration=40,
                          preemptible=True))
    s.run()
    assert s.leases[1].state is LeaseState.DONE
    runs = [(e.start, e.end) for e in s.leases[1].events() if e.kind.value == "run"]
    assert sum(b - a for a, b in runs) == 40
    assert_valid(SITE, cfg, s.outcomes())


def test_a_lease_being_killed_is_killed_sooner_for_a_sooner_ar() -> None:
    """Suspension off, no overheads. Lease 1 (2 VMs of 75 % CPU) runs from 0. At 59, AR 2
    (50 %) asks for [60, 120): lease 1 is to be killed at 60. Then AR 3 (50 %) asks for
    [59, 119) on the other node: lease 1 must go at 59 already, not hold 75 % beside
    AR 3's 50 % until 60."""
    cfg = replace(load_profile("novm-nosr"), site_nodes=0, backfilling=Backfilling.OFF)
    s = Scheduler(SITE, cfg)
    x = DiskImage("x", 0)
    big, small = Resources(cpu=75, memory=100), Resources(cpu=50, memory=100)
    s.submit(LeaseRequest(1, LeaseKind.BESTEFFORT, 2, big, x, 61, 0, preemptible=True))
    s.advance_to(59)
    s.submit(LeaseRequest(2, LeaseKind.AR, 1, small, x, 60, 59, start=60))
    assert events(s, 1)[1] == ("run", 0, 60, (0, 1))
    third = s.submit(LeaseRequest(3, LeaseKind.AR, 1, small, x, 60, 59, start=59))
    assert third.state is LeaseState.ACTIVE
    assert events(s, 1)[1:3] == [("run", 0, 59, (0, 1)), ("shutdown", 59, 59, (0, 1))]
    s.run()
    assert_valid(SITE, cfg, s.outcomes())


def test_a_lease_ending_early_with_no_shutdown_lets_go_of_its_image_at_once() -> None:
    """One node, unicast, no piggybacking, no cache. Lease 2 gets image c over [0, 1),
    runs from 1 and ends by itself at 2. Lease 4 (image c too, more cpu than is left)
    was planned after the AR's end, with its own transfer [1, 2). When 2 ends early at
    2 (no shutdown time), it must be closed then and let go of its copy: lease 4 then
    boots at 2 from the copy there. (It used to stay open, the copy still its own, and
    lease 4 sent the image again, [2, 3), and booted at 3.)"""
    cfg = replace(load_profile("test-transfer"), transfer_mode=TransferMode.UNICAST,
                  piggybacking=False, enactment_overhead=0)
    site = Site.uniform(1, NODE)
    small = Resources(cpu=25, memory=128)
    a, c = DiskImage("a", 0), DiskImage("c", 1)
    s = Scheduler(site, cfg)
    s.submit(LeaseRequest(1, LeaseKind.AR, 1, small, a, 60, 0, start=0, preemptible=True))
    s.submit(LeaseRequest(2, LeaseKind.BESTEFFORT, 1, small, c, 60, 0, real_duration=1,
                          preemptible=True))
    s.submit(LeaseRequest(3, LeaseKind.BESTEFFORT, 1, small, a, 60, 0, preemptible=True))
    s.submit(LeaseRequest(4, LeaseKind.BESTEFFORT, 1, Resources(cpu=50, memory=128), c, 60,
                          0, preemptible=True))
    assert events(s, 4)[:2] == [("transfer", 1, 2, (0,)), ("boot", 60, 60, (0,))]
    s.advance_to(2)
    assert s.leases[2].finished and s.leases[2].state is LeaseState.DONE
    later = events(s, 4)
    assert later[-3:] == [("boot", 2, 2, (0,)), ("run", 2, 62, (0,)),
                          ("shutdown", 62, 62, (0,))]
    assert [e for e in later if e[0] == "transfer" and e[1] >= 2] == []
    s.run()
    assert_valid(site, cfg, s.outcomes())


def test_a_replanned_lease_keeps_the_copy_a_multicast_still_brings() -> None:
    """Three nodes, multicast, a cache, no piggybacking. Lease 4 (3 VMs) waits for the
    others on P1; its image goes to P2 and P3 by one multicast [1, 2), which lease 6
    (1 VM on P2) shares through the cache (and lists for P2, where it serves lease 6).
    Lease 1 is cancelled: lease 4 is re-planned
    and boots at 2 on all three nodes, from the multicast that still goes on. (P3's copy
    used to be dropped with lease 4's old plan, while the multicast still went there,
    and the image was sent to P3 again, [2, 3).)"""
    cfg = replace(load_profile("test-transfer-reuse"), enactment_overhead=0,
                  piggybacking=False, image_cache_mb=2048, migration=Migration.NO)
    site = Site.uniform(3, NODE)
    img = DiskImage("a", 1)

    def be(i: int, vms: int, cpu: int) -> LeaseRequest:
        return LeaseRequest(i, LeaseKind.BESTEFFORT, vms, Resources(cpu=cpu, memory=128),
                            img, 60, 0, preemptible=True)

    s = Scheduler(site, cfg)
    for r in (be(1, 1, 25), be(2, 1, 25), be(3, 1, 50), be(4, 3, 25)):
        s.submit(r)
    s.submit(LeaseRequest(5, LeaseKind.AR, 1, Resources(cpu=25, memory=128), img, 60, 0,
                          start=0, preemptible=True))  # rejected: no image by 0
    s.submit(be(6, 1, 25))
    assert events(s, 6)[0] == ("transfer", 1, 2, (1,))
    s.cancel(1)
    assert [e for e in events(s, 4) if e[0] in ("transfer", "boot")] == [
        ("transfer", 0, 1, (0,)), ("transfer", 1, 2, (1, 2)), ("boot", 2, 2, (0, 1, 2))]
    s.run()
    assert_valid(site, cfg, s.outcomes())


def test_a_cancelled_lease_takes_its_redundant_transfer_off_the_link() -> None:
    """Two nodes, unicast, no sharing. AR 1 (2 VMs at 5) sends its image to P1 [3, 4)
    and P2 [4, 5). AR 4 (1 VM on P1 at 2) sends it to P1 sooner, [1, 2): their copies
    merge, arriving at 2, and lease 1's [3, 4) is kept only in case [1, 2) is dropped.
    Lease 1 is cancelled: both its transfers leave the link. (The one to P1 stayed, and
    the next AR's placement moved it and made lease 1 pending again.)"""
    cfg = replace(load_profile("test-transfer"), transfer_mode=TransferMode.UNICAST,
                  piggybacking=False, image_cache_mb=0, enactment_overhead=0,
                  migration=Migration.NO, backfilling=Backfilling.OFF)
    site = Site.uniform(2, NODE)
    small, img = Resources(cpu=25, memory=128), DiskImage("b", 1)

    def ar(i: int, vms: int, submit: int, start: int) -> LeaseRequest:
        return LeaseRequest(i, LeaseKind.AR, vms, small, img, 60, submit, start=start,
                            preemptible=True)

    s = Scheduler(site, cfg)

    def link() -> list[tuple[int, int, tuple[int, ...], list[int]]]:
        return sorted((t.start, t.end, t.nodes, sorted(t.users)) for t in s.images.transfers)

    s.submit(ar(1, 2, 0, 5))
    s.advance_to(1)
    s.submit(ar(4, 1, 1, 2))
    assert link() == [(1, 2, (0,), [4]), (3, 4, (0,), [1]), (4, 5, (1,), [1])]
    s.cancel(1)
    assert s.leases[1].state is LeaseState.CANCELLED
    assert link() == [(1, 2, (0,), [4])]
    s.submit(ar(9, 1, 1, 3))
    assert events(s, 9)[0] == ("transfer", 2, 3, (0,))
    assert s.leases[1].state is LeaseState.CANCELLED and events(s, 1) == []
    s.run()
    assert_valid(site, cfg, s.outcomes())


def test_a_lease_lists_a_transfer_for_the_nodes_where_it_serves_it() -> None:
    """Four nodes, multicast, piggybacking, no cache (Hypothesis seed 13). Lease 1 (4 VMs)
    sends the image to all four nodes [0, 82); lease 3 (3 VMs, waiting for it) will use
    the copies on P1-P3. At 164 lease 1 is cancelled: P4's copy goes with it (no cache),
    lease 2 resumes on P1, and lease 3 is re-planned onto P2-P4, sending the image to P4
    again, [164, 246). Lease 3 lists the multicast for P2 and P3 only, the new transfer
    for P4: the image reached each of its nodes once for it. (It used to list the
    multicast whole, P4 included: twice to P4.) Lease 1 lists the multicast whole."""
    cfg = replace(load_profile("test-transfer"), enactment_overhead=0, migration=Migration.NO)
    site = Site.uniform(4, NODE)
    img_c, empty = DiskImage("c", 1024), DiskImage("b", 0)
    s = Scheduler(site, cfg)
    for r in (
            LeaseRequest(1, LeaseKind.BESTEFFORT, 4, NODE, img_c, 243, 0),
            LeaseRequest(2, LeaseKind.BESTEFFORT, 1, Resources(cpu=100, memory=512), empty,
                         325, 0, preemptible=True),
            LeaseRequest(3, LeaseKind.BESTEFFORT, 3, NODE, img_c, 189, 0)):
        s.submit(r)
    s.advance_to(164)
    s.cancel(1)
    s.run()
    transfers = [e for e in events(s, 3) if e[0] == "transfer"]
    assert transfers == [("transfer", 0, 82, (1, 2)), ("transfer", 164, 246, (3,))]
    assert events(s, 3)[len(transfers)] == ("boot", 246, 246, (1, 2, 3))
    assert [e for e in events(s, 1) if e[0] == "transfer"] == [
        ("transfer", 0, 82, (0, 1, 2, 3))]
    assert_valid(site, cfg, s.outcomes())


def test_an_ar_transfer_a_sooner_boot_shares_never_moves_past_it() -> None:
    """Three nodes, unicast, piggybacking (Hypothesis seed 31). AR 6 (3 VMs at 61) sends
    its image to P2 [59, 60) and P3 [60, 61), as late as its start allows. Lease 7 (best
    effort) waits for P2 until 60 and piggybacks on [59, 60). AR 6 is cancelled; AR 11
    (at 3) needs the link [2, 3), and the pending AR transfers are placed again: [59, 60)
    must still end by 60, when lease 7 boots from it. (It kept AR 6's deadline, 61, and
    moved to [60, 61): lease 7 booted before its image was there.)"""
    cfg = replace(load_profile("test-transfer"), transfer_mode=TransferMode.UNICAST,
                  enactment_overhead=0, migration=Migration.NO, backfilling=Backfilling.OFF)
    site = Site.uniform(3, NODE)
    small, img = Resources(cpu=25, memory=128), DiskImage("a", 1)
    s = Scheduler(site, cfg)
    s.submit(LeaseRequest(1, LeaseKind.BESTEFFORT, 1, Resources(cpu=100, memory=128), img,
                          60, 0, preemptible=True))  # P1 [1, 61)
    s.submit(LeaseRequest(5, LeaseKind.BESTEFFORT, 1, Resources(cpu=25, memory=1024),
                          DiskImage("b", 0), 60, 0, preemptible=True))  # P2 [0, 60)
    s.advance_to(1)
    s.submit(LeaseRequest(6, LeaseKind.AR, 3, small, img, 60, 1, start=61, preemptible=True))
    s.submit(LeaseRequest(7, LeaseKind.BESTEFFORT, 1, small, img, 60, 1, preemptible=True))
    assert events(s, 6)[:2] == [("transfer", 59, 60, (1,)), ("transfer", 60, 61, (2,))]
    assert events(s, 7)[:2] == [("transfer", 59, 60, (1,)), ("boot", 60, 60, (1,))]
    s.cancel(6)
    s.advance_to(2)
    s.submit(LeaseRequest(11, LeaseKind.AR, 1, small, img, 60, 2, start=3, preemptible=True))
    assert events(s, 11)[:2] == [("transfer", 2, 3, (2,)), ("boot", 3, 3, (2,))]
    assert events(s, 7)[:2] == [("transfer", 59, 60, (1,)), ("boot", 60, 60, (1,))]
    s.run()
    assert_valid(site, cfg, s.outcomes())


def test_a_migration_never_resumes_before_the_copy_it_uses_is_there() -> None:
    """Three nodes, unicast, piggybacking, no backfilling; image b takes 164 s to send
    (2,048 MB at 100 Mbit/s). Lease 2 (3 VMs) sends it to P1 [0, 164), P2 [164, 328)
    and P3 [328, 492), FIFO, and boots at 492; lease 3 (2 VMs) piggybacks on P1 and P2
    and runs [328, 411). Lease 4 (one VM holding a node's whole memory) piggybacks on
    P1 at 164 and runs until lease 3 needs P1: suspended [296, 328) (1,024 MB at 32 MB/s).
    It used to migrate to P3 [328, 410) (its memory only: 82 s), counting P3's copy as
    there, and resume at 410: 82 s before that copy arrived. Now P3 is ready at 492 (the
    copy; bringing the image along too takes 246 s, to 574): it resumes on P1 when
    lease 3 ends, [411, 443), and runs its last 33 s (Hypothesis found it with the
    schedule's own check of the copy's arrival)."""
    cfg = replace(load_profile("test-transfer"), transfer_mode=TransferMode.UNICAST,
                  enactment_overhead=0, backfilling=Backfilling.OFF)
    site = Site.uniform(3, NODE)
    small, b = Resources(cpu=25, memory=128), DiskImage("b", 2048)
    be = LeaseKind.BESTEFFORT
    s = Scheduler(site, cfg)
    for r in (LeaseRequest(1, be, 1, small, DiskImage("a", 0), 60, 0, preemptible=True),
              LeaseRequest(2, be, 3, small, b, 60, 0, preemptible=True),
              LeaseRequest(3, be, 2, small, b, 83, 0, preemptible=True),
              LeaseRequest(4, be, 1, Resources(cpu=25, memory=1024), b, 165, 0,
                           preemptible=True)):
        s.submit(r)
    s.run()
    assert events(s, 2)[:4] == [("transfer", 0, 164, (0,)), ("transfer", 164, 328, (1,)),
                                ("transfer", 328, 492, (2,)), ("boot", 492, 492, (0, 1, 2))]
    assert events(s, 3)[2:4] == [("boot", 328, 328, (0, 1)), ("run", 328, 411, (0, 1))]
    assert events(s, 4) == [
        ("transfer", 0, 164, (0,)), ("boot", 164, 164, (0,)), ("run", 164, 296, (0,)),
        ("suspend", 296, 328, (0,)), ("resume", 411, 443, (0,)), ("run", 443, 476, (0,)),
        ("shutdown", 476, 476, (0,))]
    assert_valid(site, cfg, s.outcomes())


def test_a_transfer_is_listed_for_the_nodes_it_serves_once_it_has_ended() -> None:
    """Four nodes, multicast, no piggybacking, no cache; image c takes 30 s to send.
    Lease 1 (1 VM) gets it on P1 [0, 30) and boots at 30. Lease 2 (2 VMs) gets it on P1
    and P2 [30, 60) to boot at 60, but the AR (3 whole nodes at 60) takes P1, P3 and P4:
    lease 2's plan is dropped (its copies, on their way, are nobody's now) and lease 1 is
    suspended [56, 60), migrates to P2 [60, 71) and resumes there at 71 from the copy
    that arrived at 60. That transfer serves lease 1 on P2 only: it used to be listed on
    P1 too (it had begun by lease 1's boot there, at 30), as if the boot had not waited
    for it (Hypothesis found it with the schedule's own dependency check)."""
    cfg = replace(load_profile("test-transfer"), piggybacking=False, enactment_overhead=0,
                  backfilling=Backfilling.OFF)
    site = Site.uniform(4, NODE)
    small, c = Resources(cpu=25, memory=128), DiskImage("c", 363)
    be = LeaseKind.BESTEFFORT
    s = Scheduler(site, cfg, record_transfers=True)
    s.submit(LeaseRequest(1, be, 1, small, c, 60, 0, preemptible=True))
    s.submit(LeaseRequest(2, be, 2, small, c, 60, 0, preemptible=True))
    s.advance_to(42)
    s.submit(LeaseRequest(3, LeaseKind.AR, 3, NODE, DiskImage("b", 0), 60, 42, start=60))
    s.run()
    assert events(s, 1) == [
        ("transfer", 0, 30, (0,)), ("boot", 30, 30, (0,)), ("run", 30, 56, (0,)),
        ("transfer", 30, 60, (1,)), ("suspend", 56, 60, (0,)), ("migrate", 60, 71, (0, 1)),
        ("resume", 71, 75, (1,)), ("run", 75, 109, (1,)), ("shutdown", 109, 109, (1,))]
    assert events(s, 3)[0] == ("boot", 60, 60, (0, 2, 3))
    assert_valid(site, cfg, s.outcomes(), sent=s.sent_images())


def test_a_transfer_serving_no_boot_is_listed_where_no_later_one_goes() -> None:
    """A waiting lease got its image on P1-P4 [348, 356), was re-planned off P1 and P2
    (no cache: those copies went) and back, which sent it there again [610, 618); then
    it was cancelled before booting. Neither transfer served a boot: each is listed for
    the nodes where it is the lease's latest, not the first one whole (which read as the
    image sent twice to P1 and P2 for one attempt; Hypothesis, strict, seed 75)."""
    lease = Lease(req(7, LeaseKind.BESTEFFORT, 4, 435), 0, 435, 435)
    lease.transfers = [Transfer("img", 91, (0, 1, 2, 3), 348, 356, None, 1),
                       Transfer("img", 91, (0, 1), 610, 618, None, 2)]
    assert [(e.start, e.end, e.nodes) for e in lease.events()] == [
        (348, 356, (2, 3)), (610, 618, (0, 1))]


def test_forget_drops_a_finished_lease_and_nothing_else_changes() -> None:
    s = Scheduler(SITE, CONFIG)
    s.submit(req(1, LeaseKind.BESTEFFORT, 1, 100))  # boot [0,2), run [2,102), shutdown [102,104)
    s.submit(req(2, LeaseKind.BESTEFFORT, 2, 50))  # waits for node 0: boot [104,106) ...
    with pytest.raises(SchedulingError, match="lease 1 is preparing: only a finished"):
        s.forget(1)
    s.advance_to(104)
    assert s.leases[1].state is LeaseState.DONE
    s.forget(1)
    assert 1 not in s.leases and 1 not in s.take_changed()
    with pytest.raises(SchedulingError, match="no lease 1"):
        s.cancel(1)
    # its reservations are history: a new lease may use the node from now on
    s.submit(req(3, LeaseKind.BESTEFFORT, 1, 10, submit=104))
    s.run()
    assert events(s, 2) == [("boot", 104, 106, (0, 1)), ("run", 106, 156, (0, 1)),
                            ("shutdown", 156, 158, (0, 1))]
    assert events(s, 3)[0] == ("boot", 158, 160, (0,))
    assert_valid(SITE, CONFIG, s.outcomes())


def test_a_transfer_over_before_a_lease_is_placed_is_not_listed_as_its_own() -> None:
    """advance_to may cross many instants in one call (a replay jumps to the next
    submission): a transfer that ended at one of them is history for a lease placed at
    a later one, which boots from the copy it left (cached) without waiting for it."""
    cfg = replace(load_profile("test-transfer-reuse"), backfilling=Backfilling.OFF)
    image = DiskImage("X", 125)  # 125 MB at 100 Mbit/s: 10 s
    s = Scheduler(SITE, cfg)
    s.submit(LeaseRequest(1, LeaseKind.BESTEFFORT, 1, NODE, image, 100, 0))
    s.submit(LeaseRequest(2, LeaseKind.BESTEFFORT, 2, NODE, image, 50, 0))  # waits for 1
    s.advance_to(500)  # one call: 1 ends at 114 (transfer [0,10), boot, run, shutdown)
    s.run()
    assert events(s, 1) == [("transfer", 0, 10, (0,)), ("boot", 10, 12, (0,)),
                            ("run", 12, 112, (0,)), ("shutdown", 112, 114, (0,))]
    # node 1 needs the image (a new transfer from 114); node 0 has it, cached since 10
    assert events(s, 2) == [("transfer", 114, 124, (1,)), ("boot", 124, 126, (0, 1)),
                            ("run", 126, 176, (0, 1)), ("shutdown", 176, 178, (0, 1))]
    assert_valid(SITE, cfg, s.outcomes())
