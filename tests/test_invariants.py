"""The schedule invariant checker: a valid hand-made schedule passes, and each
invariant, broken minimally, is reported with the lease, node and instant."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config import Config, Exclusion, Migration
from scheduler.invariants import InvariantViolation, assert_valid, check_schedule
from scheduler.leases import (
    DiskImage,
    Event,
    EventKind,
    LeaseKind,
    LeaseOutcome,
    LeaseRequest,
    LeaseState,
    Resources,
    SentImage,
    Site,
)

K = EventKind
SITE = Site.uniform(3, Resources(cpu=100, memory=1024, disk=20_000, net_in=100, net_out=100))
CONFIG = Config(image_transfer=True, enactment_overhead=2)
IMAGE = DiskImage("img", 1024)
FULL = Resources(cpu=100, memory=512)
HALF = Resources(cpu=50, memory=256)


def ev(kind: EventKind, start: int, end: int, *nodes: int) -> Event:
    return Event(kind, start, end, nodes)


def request(id: int, kind: LeaseKind = LeaseKind.BESTEFFORT, *, vms: int = 1,
            resources: Resources = FULL, duration: int = 100, submit: int = 0,
            start: int | None = None, real_duration: int | None = None,
            preemptible: bool = False, image: DiskImage = IMAGE) -> LeaseRequest:
    return LeaseRequest(id, kind, vms, resources, image, duration, submit, start,
                        real_duration, preemptible)


def done(req: LeaseRequest, *events: Event) -> LeaseOutcome:
    return LeaseOutcome(req, LeaseState.DONE, events)


def preempted() -> LeaseOutcome:
    """Best-effort lease 1: transfer, runs 33 s on P1, suspended, migrated to P2, runs 67 s."""
    return done(request(1, preemptible=True),
                ev(K.TRANSFER, 0, 10, 0),
                ev(K.BOOT, 10, 12, 0),
                ev(K.RUN, 12, 45, 0),
                ev(K.SUSPEND, 45, 48, 0),
                ev(K.MIGRATE, 48, 58, 0, 1),
                ev(K.RESUME, 60, 65, 1),
                ev(K.RUN, 65, 132, 1),
                ev(K.SHUTDOWN, 132, 134, 1))


def reservation() -> LeaseOutcome:
    """AR lease 2 on P1 in [50, 70): its transfer and boot are back to back with lease 1's."""
    return done(request(2, LeaseKind.AR, duration=20, start=50),
                ev(K.TRANSFER, 10, 20, 0),
                ev(K.BOOT, 48, 50, 0),
                ev(K.RUN, 50, 70, 0),
                ev(K.SHUTDOWN, 70, 72, 0))


def immediate() -> LeaseOutcome:
    """Immediate lease 3: two half-node VMs on P2 and P3, zero-length boot and shutdown."""
    return done(request(3, LeaseKind.IMMEDIATE, vms=2, resources=HALF, duration=30),
                ev(K.BOOT, 0, 0, 1, 2),
                ev(K.RUN, 0, 30, 1, 2),
                ev(K.SHUTDOWN, 30, 30, 1, 2))


def rejected() -> LeaseOutcome:
    return LeaseOutcome(request(4, vms=5), LeaseState.REJECTED, (), "needs 5 nodes, site has 3")


def valid() -> list[LeaseOutcome]:
    return [preempted(), reservation(), immediate(), rejected()]


def violations(outcomes: list[LeaseOutcome], config: Config = CONFIG, *,
               finished: bool = True) -> list[str]:
    return check_schedule(SITE, config, outcomes, finished=finished)


def only(outcomes: list[LeaseOutcome], prefix: str, config: Config = CONFIG) -> str:
    """The single violation reported, which must start with ``prefix``."""
    found = violations(outcomes, config)
    assert len(found) == 1, found
    assert found[0].startswith(prefix), found
    return found[0]


def with_events(o: LeaseOutcome, *events: Event) -> LeaseOutcome:
    return replace(o, events=events)


# ------------------------------------------------------------------ valid schedule

def test_valid_schedule_passes() -> None:
    assert violations(valid()) == []
    assert_valid(SITE, CONFIG, valid())


def test_assert_valid_raises_an_assertion_error_listing_at_most_20() -> None:
    bad = [LeaseOutcome(request(i), LeaseState.PENDING, ()) for i in range(30)]
    with pytest.raises(InvariantViolation) as info:
        assert_valid(SITE, CONFIG, bad)
    assert isinstance(info.value, AssertionError)
    assert len(info.value.violations) == 30
    message = str(info.value)
    assert message.startswith("30 schedule invariant violation(s):")
    assert "lease 19 " in message and "lease 20 " not in message
    assert "... and 10 more" in message


# ------------------------------------------------------------------ 1. capacity

def two_full_leases(first: tuple[int, int], second: tuple[int, int]) -> list[LeaseOutcome]:
    return [done(request(i, duration=b - a), ev(K.BOOT, a, a, 0), ev(K.RUN, a, b, 0),
                 ev(K.SHUTDOWN, b, b, 0))
            for i, (a, b) in ((1, first), (2, second))]


def test_capacity_overlap_by_one_second_is_reported() -> None:
    found = only(two_full_leases((0, 10), (9, 20)), "capacity:", Config())
    assert "P1" in found and "t=9" in found and "until t=10" in found
    assert "cpu 200 > 100" in found and "memory" not in found
    assert "lease(s) 1, 2" in found


def test_adjacent_intervals_are_not_flagged() -> None:
    assert violations(two_full_leases((0, 10), (10, 20)), Config()) == []


def half_lease(id: int, node: int, start: int, end: int) -> LeaseOutcome:
    return done(request(id, resources=HALF, duration=end - start), ev(K.BOOT, start, start, node),
                ev(K.RUN, start, end, node), ev(K.SHUTDOWN, end, end, node))


def test_capacity_sums_the_vms_of_all_leases_on_a_node() -> None:
    # P2 holds lease 3 (half a node) in [0, 30): one more half fits, two more do not
    assert violations([*valid(), half_lease(5, 1, 20, 30)]) == []
    found = violations([*valid(), half_lease(5, 1, 20, 30), half_lease(6, 1, 25, 35)])
    assert len(found) == 1, found
    assert "P2" in found[0] and "t=25 (until t=30)" in found[0]
    assert "cpu 150 > 100" in found[0] and "lease(s) 3, 5, 6" in found[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10), st.integers(1, 3)),
                min_size=1, max_size=8))
def test_capacity_sweep_agrees_with_a_per_second_count(
        leases: list[tuple[int, int, int]]) -> None:
    outcomes = [done(request(i, resources=Resources(cpu=25 * size), duration=max(length, 1)),
                     ev(K.BOOT, start, start, 0), ev(K.RUN, start, start + length, 0),
                     ev(K.SHUTDOWN, start + length, start + length, 0))
                for i, (start, length, size) in enumerate(leases)]
    over = [t for t in range(45)
            if sum(25 * size for start, length, size in leases
                   if start <= t < start + length) > 100]
    found = [v for v in violations(outcomes, Config()) if v.startswith("capacity")]
    assert bool(found) == bool(over), (found, over)
    if over:
        assert f"at t={over[0]} " in found[0]


def test_suspend_holds_resources_but_migrate_does_not() -> None:
    # lease 2's boot moved 1 s earlier, into lease 1's suspend on P1
    ar = reservation()
    ar = with_events(ar, ar.events[0], ev(K.BOOT, 47, 50, 0), *ar.events[2:])
    found = [v for v in violations([preempted(), ar]) if v.startswith("capacity")]
    assert len(found) == 1 and "P1" in found[0] and "t=47" in found[0], found
    # a third lease on P2 during lease 1's migration [48, 58): no conflict
    other = done(request(7, duration=10), ev(K.BOOT, 48, 48, 1), ev(K.RUN, 48, 58, 1),
                 ev(K.SHUTDOWN, 58, 58, 1))
    assert violations([*valid(), other]) == []


# --------------------------------------------------------------------- 2. shape

def test_run_not_contiguous_with_its_boot() -> None:
    o = immediate()
    o = with_events(o, ev(K.BOOT, 0, 0, 1, 2), ev(K.RUN, 1, 31, 1, 2),
                    ev(K.SHUTDOWN, 31, 31, 1, 2))
    found = only([o], "shape:")
    assert "lease 3" in found and "t=0" in found and "P2,P3" in found


def test_event_on_wrong_number_of_nodes() -> None:
    o = immediate()
    o = with_events(o, o.events[0], ev(K.RUN, 0, 30, 1, 1), o.events[2])
    found = violations([o])
    assert any("exactly 2 distinct node(s)" in v and "P2,P2" in v for v in found), found


def test_resume_elsewhere_without_migration() -> None:
    o = preempted()
    events = [e for e in o.events if e.kind is not K.MIGRATE]
    found = only([with_events(o, *events)], "shape:")
    assert "lease 1" in found and "resume [60,65) on P2" in found and "suspend" in found


def test_resume_outside_migration_destination() -> None:
    o = preempted()
    events = list(o.events)
    events[4:] = [ev(K.MIGRATE, 48, 58, 0, 1), ev(K.RESUME, 60, 65, 2),
                  ev(K.RUN, 65, 132, 2), ev(K.SHUTDOWN, 132, 134, 2)]
    found = only([with_events(o, *events)], "shape:")
    assert "neither suspended on nor migrated to" in found and "P3" in found


def test_event_before_submission() -> None:
    o = replace(immediate(), request=request(3, LeaseKind.IMMEDIATE, vms=2, resources=HALF,
                                             duration=30, submit=1))
    found = violations([o])
    assert any("before the lease's submission at t=1" in v for v in found), found


def test_events_out_of_order_and_overlapping_within_a_lease() -> None:
    o = preempted()
    events = list(o.events)
    events[2], events[3] = ev(K.RUN, 12, 46, 0), ev(K.SUSPEND, 45, 48, 0)
    found = violations([with_events(o, *events)])
    assert any("overlap on P1 at t=45" in v for v in found), found
    found = violations([with_events(o, events[1], events[0], *events[2:])])
    assert any("not sorted" in v for v in found), found


def test_segment_grammar_rejects_a_second_boot_and_a_missing_run() -> None:
    o = immediate()
    found = violations([with_events(o, o.events[0], o.events[2])], finished=False)
    assert any("expected run" in v for v in found), found
    o = preempted()
    events = (*o.events[:4], ev(K.BOOT, 60, 65, 1), *o.events[6:])
    found = violations([with_events(o, *events)])
    assert any("boot [60,65) on P2 after suspend" in v for v in found), found


# -------------------------------------------------------- 3. advance reservations

def test_ar_starting_one_second_late() -> None:
    ar = reservation()
    ar = with_events(ar, ar.events[0], ev(K.BOOT, 49, 51, 0), ev(K.RUN, 51, 71, 0),
                     ev(K.SHUTDOWN, 71, 73, 0))
    found = [v for v in violations([preempted(), ar]) if v.startswith("AR:")]
    assert any("lease 2" in v and "starts at t=51" in v and "t=50" in v for v in found), found
    assert any("ends at t=71" in v for v in found), found
    assert any("boot [49,51)" in v for v in found), found


def test_ar_cut_short_by_its_real_duration() -> None:
    ar = reservation()
    ar = replace(ar, request=request(2, LeaseKind.AR, duration=20, start=50, real_duration=15))
    found = only([preempted(), ar], "AR:")
    assert "t=65" in found
    ar = with_events(ar, *ar.events[:2], ev(K.RUN, 50, 65, 0), ev(K.SHUTDOWN, 65, 67, 0))
    assert violations([preempted(), ar]) == []


def test_cancelled_ar_may_end_early_but_not_late() -> None:
    ar = replace(reservation(), state=LeaseState.CANCELLED)
    ar = with_events(ar, *ar.events[:2], ev(K.RUN, 50, 60, 0))
    assert violations([preempted(), ar]) == []
    ar = with_events(ar, *ar.events[:2], ev(K.RUN, 50, 71, 0))
    found = violations([preempted(), ar])
    assert len(found) == 2, found
    assert found[0].startswith("AR:") and "after its requested end t=70" in found[0]
    assert found[1].startswith("work:") and "ran 21 s" in found[1]


def test_ar_is_never_suspended() -> None:
    ar = reservation()
    ar = replace(ar, request=replace(ar.request, preemptible=True), events=(
        *ar.events[:2], ev(K.RUN, 50, 60, 0), ev(K.SUSPEND, 60, 61, 0),
        ev(K.RESUME, 80, 81, 0), ev(K.RUN, 81, 91, 0), ev(K.SHUTDOWN, 91, 93, 0)))
    found = [v for v in violations([preempted(), ar]) if v.startswith("AR:")]
    assert any("never preempted" in v and "suspend [60,61)" in v for v in found), found
    assert any("2 run events" in v for v in found), found


# ---------------------------------------------------------------- 4. dependencies

def test_transfer_ending_after_boot_start() -> None:
    o = preempted()
    o = with_events(o, ev(K.TRANSFER, 0, 11, 0), *o.events[1:])
    found = only([o], "dependency:")
    assert "lease 1" in found and "transfer [0,11) on P1" in found and "t=10" in found


def test_transfer_to_a_migration_destination_ending_after_the_resume() -> None:
    """Lease 1 migrates to P2 and resumes there at 60 from a copy whose transfer (listed
    for P2) is still on its way until 61; ending at 60 is fine."""
    o = preempted()

    def listing(end: int) -> LeaseOutcome:
        return with_events(o, *sorted([*o.events, ev(K.TRANSFER, 20, end, 1)],
                                      key=lambda e: e.start))

    found = only([listing(61)], "dependency:")
    assert "transfer [20,61) on P2" in found and "resume [60,65) on P2" in found, found
    assert violations([listing(60)]) == []


def test_migrate_before_suspend_ends_and_resume_before_migrate_ends() -> None:
    o = preempted()
    events = list(o.events)
    events[4] = ev(K.MIGRATE, 47, 61, 0, 1)
    found = [v for v in violations([with_events(o, *events)]) if v.startswith("dependency")]
    assert len(found) == 2, found
    assert "migrate [47,61)" in found[0] and "before suspend [45,48) on P1 ends" in found[0]
    assert "resume [60,65) on P2 starts at t=60" in found[1]


# ------------------------------------------------------------- 5. repository link

def test_overlapping_transfers() -> None:
    ar = reservation()
    ar = with_events(ar, ev(K.TRANSFER, 9, 19, 0), *ar.events[1:])
    found = only([preempted(), ar], "repository link:")
    assert "lease 1" in found and "lease 2" in found and "t=9" in found


def test_identical_transfer_intervals_are_one_shared_transfer() -> None:
    ar = reservation()
    shared = with_events(ar, ev(K.TRANSFER, 0, 10, 0), *ar.events[1:])
    assert violations([preempted(), shared]) == []
    other_image = replace(shared, request=replace(shared.request, image=DiskImage("b", 1)))
    assert "different images" in only([preempted(), other_image], "repository link:")


def test_the_links_record_of_what_it_carried() -> None:
    """The valid schedule's two transfers, [0, 10) to P1 and [10, 20) to P1, recorded
    with a third no lease lists (begun for a plan its lease dropped), [20, 30) to P2:
    valid. Recorded overlapping, or without one a lease lists, or to other nodes: not."""
    first, second = SentImage("img", 1024, (0,), 0, 10), SentImage("img", 1024, (0,), 10, 20)
    orphan = SentImage("img", 1024, (1,), 20, 30)
    assert check_schedule(SITE, CONFIG, valid(), sent=[first, second, orphan]) == []
    late = replace(orphan, start=15)
    assert check_schedule(SITE, CONFIG, valid(), sent=[first, second, late]) == [
        "repository link: transfers of img [10,20) and img [15,30) at once"]
    assert check_schedule(SITE, CONFIG, valid(), sent=[first, orphan]) == [
        "repository link: lease 2's transfer [10,20) on P1 is not a transfer the link "
        "carried"]
    elsewhere = replace(second, nodes=(2,))
    assert len(check_schedule(SITE, CONFIG, valid(), sent=[first, elsewhere])) == 1
    # still running: a transfer not over yet is not recorded yet
    assert (check_schedule(SITE, CONFIG, valid(), sent=[first], finished=False)
            == check_schedule(SITE, CONFIG, valid(), finished=False))


# ------------------------------------------------- 6. suspend/resume exclusion

def suspended_at(lease: int, node: int, at: int) -> LeaseOutcome:
    return done(request(lease, duration=20, preemptible=True),
                ev(K.BOOT, 0, 0, node), ev(K.RUN, 0, at, node), ev(K.SUSPEND, at, at + 5, node),
                ev(K.RESUME, 100, 105, node), ev(K.RUN, 105, 105 + 20 - at, node),
                ev(K.SHUTDOWN, 125 - at, 125 - at, node))


def test_overlapping_suspends_on_one_node_under_local_exclusion() -> None:
    # two half-node leases on P1, suspending during [10,15) and [12,17)
    a = replace(suspended_at(1, 0, 10), request=request(1, duration=20, resources=HALF,
                                                         preemptible=True))
    b = replace(suspended_at(2, 0, 12), request=request(2, duration=20, resources=HALF,
                                                         preemptible=True))
    found = [v for v in violations([a, b], Config()) if v.startswith("suspend/resume")]
    assert any("(local)" in v and "node P1" in v and "t=12" in v for v in found), found
    assert any("resume [100,105)" in v for v in found), found  # same-instant resumes too


def test_local_exclusion_allows_other_nodes_but_global_does_not() -> None:
    outcomes = [suspended_at(1, 0, 10), suspended_at(2, 1, 12)]
    assert violations(outcomes, Config()) == []
    global_ = Config(suspendresume_exclusion=Exclusion.GLOBAL)
    found = violations(outcomes, global_)
    assert len(found) == 2, found
    assert "(global)" in found[0] and "the site" in found[0] and "t=12" in found[0]
    adjacent = [suspended_at(1, 0, 10), suspended_at(2, 1, 15)]
    found = violations(adjacent, global_)
    assert all("suspend [" not in v for v in found), found


# ----------------------------------------------------------------------- 7. work

def test_wrong_run_total() -> None:
    o = preempted()
    events = list(o.events)
    events[6:] = [ev(K.RUN, 65, 131, 1), ev(K.SHUTDOWN, 131, 133, 1)]
    found = only([with_events(o, *events)], "work:")
    assert "lease 1" in found and "99 s" in found and "exactly 100 s" in found


def test_run_total_with_slowdown_and_real_duration() -> None:
    slow = Config(image_transfer=True, runtime_slowdown=10.0)
    assert "exactly 110 s" in only([preempted()], "work:", slow)
    o = preempted()
    o = replace(o, request=replace(o.request, duration=80))
    assert violations([o], replace(slow, runtime_slowdown=25.0)) == []  # 80 * 1.25 = 100
    o = replace(o, request=replace(o.request, duration=91))  # ceil(91 * 1.1) = 101
    assert "running 100 s in total" in only([o], "work:", slow)
    assert "expected exactly 101 s" in only([o], "work:", slow)
    o = replace(o, request=replace(o.request, duration=200, real_duration=100))
    assert violations([o]) == []  # it ran its real duration, less than requested
    o = replace(o, request=replace(o.request, duration=200, real_duration=99))
    assert "expected exactly 99 s" in only([o], "work:")


def test_never_more_than_requested_even_if_cancelled() -> None:
    o = replace(preempted(), state=LeaseState.CANCELLED)
    o = replace(o, request=replace(o.request, duration=99))
    assert "more than its requested 99 s" in only([o], "work:")


def test_non_preemptible_lease_with_a_suspend() -> None:
    o = preempted()
    o = replace(o, request=replace(o.request, preemptible=False))
    found = only([o], "work:")
    assert "not preemptible" in found and "suspend [45,48) on P1" in found


# --------------------------------------------------------------------- 8. states

def test_non_terminal_lease_when_finished() -> None:
    o = replace(immediate(), state=LeaseState.ACTIVE)
    found = only([o], "state:")
    assert "lease 3" in found and "still active" in found and "P2,P3" in found
    assert violations([o], finished=False) == []


def test_rejected_lease_with_events_or_without_reason() -> None:
    found = violations([replace(rejected(), events=(ev(K.BOOT, 0, 0, 0),))], finished=False)
    assert any("rejected but has events" in v for v in found), found
    assert "without a reason" in only([replace(rejected(), reason="")], "state:")


def test_done_lease_must_end_with_a_shutdown() -> None:
    o = immediate()
    found = violations([with_events(o, *o.events[:2])])
    assert any("last event is not a shutdown" in v and "run [0,30)" in v for v in found), found
    assert violations([with_events(o, *o.events[:2])], finished=False) != []


def test_duplicate_lease_ids() -> None:
    assert "lease 4 has 2 outcomes" in only([rejected(), rejected()], "state:")


# ----------------------------------------------------- configuration features

def test_events_of_disabled_features() -> None:
    found = violations(valid(), Config())
    assert len(found) == 2 and all("predeployed" in v for v in found), found
    no_migration = replace(CONFIG, migration=Migration.NO)
    assert "migration is disabled" in only(valid(), "config:", no_migration)
    no_suspension = replace(CONFIG, suspension=False)
    assert "suspension is disabled" in only(valid(), "config:", no_suspension)


def killed_and_restarted(second_transfer: tuple[int, int]) -> LeaseOutcome:
    """Preemptible lease 1 (suspension off): runs 20 s on P1, is killed, and starts over
    on P2 after a second transfer (events in time order)."""
    start, end = second_transfer
    events = [ev(K.TRANSFER, 0, 10, 0), ev(K.BOOT, 10, 12, 0), ev(K.RUN, 12, 32, 0),
              ev(K.SHUTDOWN, 32, 34, 0), ev(K.TRANSFER, start, end, 1),
              ev(K.BOOT, 50, 52, 1), ev(K.RUN, 52, 152, 1), ev(K.SHUTDOWN, 152, 154, 1)]
    return done(request(1, preemptible=True), *sorted(events, key=lambda e: e.start))


def test_a_restart_transfer_under_way_when_the_lease_is_cancelled_serves_no_boot() -> None:
    """Lease 1 (suspension off) is to be killed at 32 and start over on P2; the
    restart's transfer begins at 20, and the lease is cancelled at 32 with it under way.
    That transfer serves no boot (it used to be checked against the first one, at 10:
    the checker took a lease that never booted again for one never killed)."""
    no_suspension = replace(CONFIG, suspension=False)
    events = (ev(K.TRANSFER, 0, 10, 0), ev(K.BOOT, 10, 12, 0), ev(K.RUN, 12, 32, 0),
              ev(K.TRANSFER, 20, 40, 1), ev(K.SHUTDOWN, 32, 34, 0))
    o = LeaseOutcome(request(1, preemptible=True), LeaseState.CANCELLED, events)
    assert not [v for v in violations([o], no_suspension) if v.startswith("dependency")]
    # (one beginning before the boot still serves it: test_transfer_ending_after_boot_start)


def test_kill_and_restart_needs_suspension_off_and_transfers_before_the_restart() -> None:
    no_suspension = replace(CONFIG, suspension=False)
    assert violations([killed_and_restarted((40, 50))], no_suspension) == []
    # the restart's transfer ends after the restart boots
    found = only([killed_and_restarted((41, 51))], "dependency:", no_suspension)
    assert "transfer [41,51) on P2" in found and "boot [50,52) on P2" in found
    # a transfer to P2 beginning as the first attempt boots on P1 serves the restart
    assert violations([killed_and_restarted((10, 50))], no_suspension) == []
    # with suspension on, a lease is never killed and restarted
    found = only([killed_and_restarted((40, 50))], "work:")
    assert "boots again at t=50 after a shutdown" in found
    # only the last attempt's run counts: 100 s here, as requested
    assert not [v for v in violations([killed_and_restarted((40, 50))], no_suspension)
                if v.startswith("work:")]


def test_violation_survives_pickling() -> None:
    """A sweep's worker sends it back to the parent pickled."""
    e = pickle.loads(pickle.dumps(InvariantViolation(["P1 over-committed", "AR 2 late"])))
    assert e.violations == ["P1 over-committed", "AR 2 late"]
    assert str(e) == ("2 schedule invariant violation(s):\n  - P1 over-committed\n"
                      "  - AR 2 late")
