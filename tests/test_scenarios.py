"""Exact schedules of the nine LWF reference scenarios under the three reference profiles.

Every expected value is derived by hand from the model; the constants below are the
reference parameters (4 nodes of 100 CPU / 1024 MB, VMs of 100 CPU / 1024 MB, 1024 MB
images), and each line's comment is its derivation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.config import load_profile
from scheduler.invariants import assert_valid
from scheduler.lwf import read_lwf
from scheduler.replay import ReplayResult, replay

LWF = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "lwf"
PROFILES = ("test-notransfer", "test-transfer", "test-transfer-reuse")

E = 2  # enactment overhead per VM command: boot = shutdown = 2 s (boot/shutdown time 0)
SR = 1024 // 32 + E  # suspend = resume = 1024 MB / 32 MB/s + 2 s = 34 s
TX = 82  # transfer: ceil(1024 MB * 8 / 100 Mbit/s = 81.92 s) = 82 s
MIG = 82  # migration, memory only (image predeployed): ceil(1024 * 8 / 100) = 82 s
MIG_IMG = 164  # migration, memory + image: ceil(2048 * 8 / 100 = 163.84) = 164 s

Ev = tuple[str, int, int, str]  # kind, start, end, nodes ("P1,P2")


def run(scenario: str, profile: str) -> ReplayResult:
    workload = read_lwf(LWF / f"{scenario}.lwf")
    assert workload.site is not None
    config = load_profile(profile)
    result = replay(workload.site, config, workload.requests)
    assert_valid(workload.site, config, result.outcomes)
    return result


def schedule(result: ReplayResult) -> dict[int, list[Ev]]:
    names = [n.name for n in result.site.nodes]
    return {o.request.id: [(e.kind.value, e.start, e.end, ",".join(names[n] for n in e.nodes))
                           for e in o.events] for o in result.outcomes}


def check(scenario: str, profile: str, expected: dict[int, list[Ev]]) -> ReplayResult:
    result = run(scenario, profile)
    assert schedule(result) == expected
    assert all(o.state == "done" for o in result.outcomes)
    return result


ALL = "P1,P2,P3,P4"


# ---------------------------------------------------------------- preemption
# Lease 1: best-effort, 1 VM, 1 h, preemptible, arrives at 0. Lease 2: AR on all 4 nodes,
# arrives 900, starts 1800 for 30 min: it preempts lease 1.
def test_preemption_notransfer() -> None:
    result = check("preemption", "test-notransfer", {
        1: [("boot", 0, 2, "P1"),  # starts at once on the lowest free node
            ("run", 2, 1764, "P1"),  # runs until its suspension must begin
            ("suspend", 1764, 1798, "P1"),  # ends exactly when the AR's boot needs P1: 1800-2
            ("resume", 3602, 3636, "P1"),  # after the AR's shutdown (3600+2), on its own node
            ("run", 3636, 5474, "P1"),  # remaining 3600 - (1764-2) = 1838 s
            ("shutdown", 5474, 5476, "P1")],
        2: [("boot", 1798, 1800, ALL),  # boot scheduled before the start, never deducted
            ("run", 1800, 3600, ALL),  # exactly its window
            ("shutdown", 3600, 3602, ALL)],
    })
    o1 = result.outcomes[0]
    assert (o1.start, o1.end, o1.nodes) == (2, 5474, (0,))


def test_preemption_transfer() -> None:
    expected = {
        1: [("transfer", 0, TX, "P1"),  # FIFO: link free at 0
            ("boot", 82, 84, "P1"),
            ("run", 84, 1764, "P1"),  # suspension still ends at 1798
            ("suspend", 1764, 1798, "P1"),
            ("resume", 3602, 3636, "P1"),  # its image stays on P1 while suspended
            ("run", 3636, 5556, "P1"),  # remaining 3600 - (1764-84) = 1920 s
            ("shutdown", 5556, 5558, "P1")],
        2: [("transfer", 1716, 1798, ALL),  # multicast, EDF as late as possible: ends at boot
            ("boot", 1798, 1800, ALL),
            ("run", 1800, 3600, ALL),
            ("shutdown", 3600, 3602, ALL)],
    }
    check("preemption", "test-transfer", expected)
    check("preemption", "test-transfer-reuse", expected)  # different images: cache moot


# Same, but lease 1 really runs only 45 min (2700 s).
def test_preemption_prematureend_notransfer() -> None:
    check("preemption_prematureend", "test-notransfer", {
        1: [("boot", 0, 2, "P1"), ("run", 2, 1764, "P1"), ("suspend", 1764, 1798, "P1"),
            ("resume", 2702, 2736, "P1"),  # AR (15 min) ends 2700, shut down by 2702
            ("run", 2736, 3674, "P1"),  # real work left: 2700 - 1762 = 938 s
            ("shutdown", 3674, 3676, "P1")],
        2: [("boot", 1798, 1800, ALL), ("run", 1800, 2700, ALL), ("shutdown", 2700, 2702, ALL)],
    })


def test_preemption_prematureend_transfer() -> None:
    expected = {
        1: [("transfer", 0, 82, "P1"), ("boot", 82, 84, "P1"), ("run", 84, 1764, "P1"),
            ("suspend", 1764, 1798, "P1"), ("resume", 2702, 2736, "P1"),
            ("run", 2736, 3756, "P1"),  # real work left: 2700 - 1680 = 1020 s
            ("shutdown", 3756, 3758, "P1")],
        2: [("transfer", 1716, 1798, ALL), ("boot", 1798, 1800, ALL), ("run", 1800, 2700, ALL),
            ("shutdown", 2700, 2702, ALL)],
    }
    check("preemption_prematureend", "test-transfer", expected)
    check("preemption_prematureend", "test-transfer-reuse", expected)


# Both end early: the AR after 10 min, so the resumption moves earlier.
def test_preemption_prematureend2_notransfer() -> None:
    check("preemption_prematureend2", "test-notransfer", {
        1: [("boot", 0, 2, "P1"), ("run", 2, 1764, "P1"), ("suspend", 1764, 1798, "P1"),
            ("resume", 2402, 2436, "P1"),  # planned at 2702; AR ended at 2400 (+2 shutdown)
            ("run", 2436, 3374, "P1"),  # 938 s of real work left
            ("shutdown", 3374, 3376, "P1")],
        2: [("boot", 1798, 1800, ALL), ("run", 1800, 2400, ALL),  # ran its real 10 min
            ("shutdown", 2400, 2402, ALL)],
    })


def test_preemption_prematureend2_transfer() -> None:
    expected = {
        1: [("transfer", 0, 82, "P1"), ("boot", 82, 84, "P1"), ("run", 84, 1764, "P1"),
            ("suspend", 1764, 1798, "P1"), ("resume", 2402, 2436, "P1"),
            ("run", 2436, 3456, "P1"),  # 1020 s of real work left
            ("shutdown", 3456, 3458, "P1")],
        2: [("transfer", 1716, 1798, ALL), ("boot", 1798, 1800, ALL), ("run", 1800, 2400, ALL),
            ("shutdown", 2400, 2402, ALL)],
    }
    check("preemption_prematureend2", "test-transfer", expected)
    check("preemption_prematureend2", "test-transfer-reuse", expected)


# ---------------------------------------------------------------- reservation
# Lease 1: 1 VM for 1 h at 0. Lease 2: all 4 nodes for 15 min at 900: it cannot start, so
# (aggressive backfilling) it gets a reservation in the future, after lease 1.
def test_reservation_notransfer() -> None:
    check("reservation", "test-notransfer", {
        1: [("boot", 0, 2, "P1"), ("run", 2, 3602, "P1"), ("shutdown", 3602, 3604, "P1")],
        2: [("boot", 3604, 3606, ALL),  # reserved when P1 comes free
            ("run", 3606, 4506, ALL), ("shutdown", 4506, 4508, ALL)],
    })


def test_reservation_transfer() -> None:
    expected = {
        1: [("transfer", 0, 82, "P1"), ("boot", 82, 84, "P1"), ("run", 84, 3684, "P1"),
            ("shutdown", 3684, 3686, "P1")],
        2: [("transfer", 900, 982, ALL),  # FIFO: sent at once, long before it is needed
            ("boot", 3686, 3688, ALL), ("run", 3688, 4588, ALL), ("shutdown", 4588, 4590, ALL)],
    }
    check("reservation", "test-transfer", expected)
    check("reservation", "test-transfer-reuse", expected)


# Lease 1 ends after 30 min: lease 2's reservation moves earlier.
def test_reservation_prematureend_notransfer() -> None:
    check("reservation_prematureend", "test-notransfer", {
        1: [("boot", 0, 2, "P1"), ("run", 2, 1802, "P1"),  # real 1800 s
            ("shutdown", 1802, 1804, "P1")],
        2: [("boot", 1804, 1806, ALL),  # was reserved for 3604
            ("run", 1806, 2706, ALL), ("shutdown", 2706, 2708, ALL)],
    })


def test_reservation_prematureend_transfer() -> None:
    expected = {
        1: [("transfer", 0, 82, "P1"), ("boot", 82, 84, "P1"), ("run", 84, 1884, "P1"),
            ("shutdown", 1884, 1886, "P1")],
        2: [("transfer", 900, 982, ALL),  # done before the re-plan: the image is reused
            ("boot", 1886, 1888, ALL),  # was reserved for 3686
            ("run", 1888, 2788, ALL), ("shutdown", 2788, 2790, ALL)],
    }
    check("reservation_prematureend", "test-transfer", expected)
    check("reservation_prematureend", "test-transfer-reuse", expected)


# ---------------------------------------------------------------- migrate
# AR 1 on 2 nodes at 90 s for 1 h, AR 2 on 2 nodes at 1800 for 1 h, best-effort 3 on 2
# nodes for 1 h: 3 fits only partly on P3,P4 before AR 2, is suspended, and resumes on
# P1,P2 (free first, after AR 1), migrating its state there.
def test_migrate_notransfer() -> None:
    check("migrate", "test-notransfer", {
        1: [("boot", 88, 90, "P1,P2"), ("run", 90, 3690, "P1,P2"),
            ("shutdown", 3690, 3692, "P1,P2")],
        2: [("boot", 1798, 1800, "P3,P4"),  # P1,P2 are taken by AR 1
            ("run", 1800, 5400, "P3,P4"), ("shutdown", 5400, 5402, "P3,P4")],
        3: [("boot", 0, 2, "P3,P4"),  # P1,P2 only free for 88 s: too short to be worth it
            ("run", 2, 1764, "P3,P4"),
            ("suspend", 1764, 1798, "P3,P4"),  # done when AR 2 boots
            ("migrate", 3610, 3692, ALL),  # memory only, 82 s, ends when P1,P2 are free
            ("resume", 3692, 3726, "P1,P2"),  # P1,P2 free at 3692, P3,P4 only at 5402
            ("run", 3726, 5564, "P1,P2"),  # 3600 - 1762 = 1838 s left
            ("shutdown", 5564, 5566, "P1,P2")],
    })


def test_migrate_transfer() -> None:
    expected = {
        1: [("transfer", 6, 88, "P1,P2"),  # EDF, as late as possible before its boot
            ("boot", 88, 90, "P1,P2"), ("run", 90, 3690, "P1,P2"),
            ("shutdown", 3690, 3692, "P1,P2")],
        2: [("transfer", 1716, 1798, "P3,P4"), ("boot", 1798, 1800, "P3,P4"),
            ("run", 1800, 5400, "P3,P4"), ("shutdown", 5400, 5402, "P3,P4")],
        3: [("transfer", 88, 170, "P3,P4"),  # FIFO: first gap on the link after AR 1's
            ("boot", 170, 172, "P3,P4"), ("run", 172, 1764, "P3,P4"),
            ("suspend", 1764, 1798, "P3,P4"),
            ("migrate", 3528, 3692, ALL),  # memory + image (P1,P2 lack foobar3): 164 s
            ("resume", 3692, 3726, "P1,P2"),
            ("run", 3726, 5734, "P1,P2"),  # 3600 - 1592 = 2008 s left
            ("shutdown", 5734, 5736, "P1,P2")],
    }
    check("migrate", "test-transfer", expected)
    check("migrate", "test-transfer-reuse", expected)  # P1,P2 cache foobar2, not foobar3


# ---------------------------------------------------------------- reuse1
# AR 1 (1 VM, 900-1800, foobar.img), then best-effort 2 at 2700 with the same image.
AR_REUSE1_NT = [("boot", 898, 900, "P1"), ("run", 900, 1800, "P1"),
                ("shutdown", 1800, 1802, "P1")]
AR_REUSE1 = [("transfer", 816, 898, "P1"), *AR_REUSE1_NT]


def test_reuse1() -> None:
    check("reuse1", "test-notransfer", {
        1: AR_REUSE1_NT,
        2: [("boot", 2700, 2702, "P1"), ("run", 2702, 3602, "P1"),
            ("shutdown", 3602, 3604, "P1")],
    })
    check("reuse1", "test-transfer", {
        1: AR_REUSE1,
        2: [("transfer", 2700, 2782, "P1"),  # no cache: the image left with AR 1
            ("boot", 2782, 2784, "P1"), ("run", 2784, 3684, "P1"),
            ("shutdown", 3684, 3686, "P1")],
    })
    check("reuse1", "test-transfer-reuse", {
        1: AR_REUSE1,
        2: [("boot", 2700, 2702, "P1"),  # cached on P1: no transfer, 82 s earlier
            ("run", 2702, 3602, "P1"), ("shutdown", 3602, 3604, "P1")],
    })


# ---------------------------------------------------------------- reuse2
# ARs 1 (foobar1) and 2 (foobar2), 2 nodes each at 900-1800; best-effort 3 (foobar2) at 2700.
def test_reuse2() -> None:
    ar = [("boot", 898, 900), ("run", 900, 1800), ("shutdown", 1800, 1802)]
    check("reuse2", "test-notransfer", {
        1: [(k, s, e, "P1,P2") for k, s, e in ar],
        2: [(k, s, e, "P3,P4") for k, s, e in ar],
        3: [("boot", 2700, 2702, "P1"), ("run", 2702, 3602, "P1"),
            ("shutdown", 3602, 3604, "P1")],
    })
    with_transfers = {
        1: [("transfer", 734, 816, "P1,P2"),  # equal deadlines: in request order, so AR 1's
            *[(k, s, e, "P1,P2") for k, s, e in ar]],  # moved earlier when AR 2 came
        2: [("transfer", 816, 898, "P3,P4"),  # the later one ends exactly at the boot
            *[(k, s, e, "P3,P4") for k, s, e in ar]],
    }
    check("reuse2", "test-transfer", {
        **with_transfers,
        3: [("transfer", 2700, 2782, "P1"),  # no cache: lowest free node, new transfer
            ("boot", 2782, 2784, "P1"), ("run", 2784, 3684, "P1"),
            ("shutdown", 3684, 3686, "P1")],
    })
    check("reuse2", "test-transfer-reuse", {
        **with_transfers,
        3: [("boot", 2700, 2702, "P3"),  # greedy prefers P3, where foobar2 is cached
            ("run", 2702, 3602, "P3"), ("shutdown", 3602, 3604, "P3")],
    })


# ---------------------------------------------------------------- wait
# Eight best-effort leases on all 4 nodes, 15 min each, all at 0, different images.
def test_wait_notransfer() -> None:
    # Each occupies the nodes for 2 + 900 + 2 = 904 s; lease i boots at 904 (i-1).
    check("wait", "test-notransfer", {
        i: [("boot", 904 * (i - 1), 904 * (i - 1) + 2, ALL),
            ("run", 904 * (i - 1) + 2, 904 * (i - 1) + 902, ALL),
            ("shutdown", 904 * (i - 1) + 902, 904 * i, ALL)]
        for i in range(1, 9)
    })


@pytest.mark.parametrize("profile", ["test-transfer", "test-transfer-reuse"])
def test_wait_transfer(profile: str) -> None:
    def lease(i: int) -> list[Ev]:
        boot = 82 + 904 * (i - 1)  # lease 1 boots after its transfer; then every 904 s
        if i == 1:
            tx = 0
        elif i == 2:
            tx = 82  # the queue head's reservation: its transfer goes right after lease 1's
        else:
            tx = boot - 904  # no reservation until the one before starts (aggressive)
        return [("transfer", tx, tx + TX, ALL), ("boot", boot, boot + 2, ALL),
                ("run", boot + 2, boot + 902, ALL), ("shutdown", boot + 902, boot + 904, ALL)]

    check("wait", profile, {i: lease(i) for i in range(1, 9)})


# ------------------------------------------------------- what each scenario shows
def test_scenarios_show_what_they_claim() -> None:
    # An AR preempts a running lease: its suspension ends exactly when the AR needs P1.
    pre = {o.request.id: o for o in run("preemption", "test-notransfer").outcomes}
    susp = [e for e in pre[1].events if e.kind == "suspend"]
    ar_boot = next(e for e in pre[2].events if e.kind == "boot")
    assert len(susp) == 1 and susp[0].end == ar_boot.start and 0 in ar_boot.nodes
    # A waiting reservation moves earlier when capacity comes free early.
    late = run("reservation", "test-notransfer").outcomes[1].start
    early = run("reservation_prematureend", "test-notransfer").outcomes[1].start
    assert (late, early) == (3606, 1806)
    # A lease migrates: suspended on P3,P4, resumed on P1,P2.
    mig = run("migrate", "test-notransfer").outcomes[2]
    kinds = [e.kind.value for e in mig.events]
    assert kinds == ["boot", "run", "suspend", "migrate", "resume", "run", "shutdown"]
    assert mig.runs[0].nodes == (2, 3) and mig.runs[1].nodes == (0, 1)
    # An image is reused: with the cache, the best-effort lease needs no transfer.
    for scenario, lease in (("reuse1", 2), ("reuse2", 3)):
        cached = run(scenario, "test-transfer-reuse").outcomes[lease - 1]
        uncached = run(scenario, "test-transfer").outcomes[lease - 1]
        assert next(e.kind.value for e in cached.events) == "boot"
        assert next(e.kind.value for e in uncached.events) == "transfer"
    # Everyone but the first waits, in FCFS order.
    starts = [o.start or 0 for o in run("wait", "test-notransfer").outcomes]
    assert starts == sorted(starts) and all(s > 0 for s in starts[1:])


def test_replay_leaves_the_cycle_collector_as_it_was() -> None:
    """A replay runs with the cycle collector off (``replay._without_cycle_collection``)
    and puts it back as it found it, on or off, even when the replay raises."""
    import gc

    from scheduler import replay as replay_module

    assert gc.isenabled()
    seen: list[bool] = []
    with replay_module._without_cycle_collection():
        seen.append(gc.isenabled())
    assert seen == [False] and gc.isenabled()
    with pytest.raises(RuntimeError), replay_module._without_cycle_collection():
        raise RuntimeError("a replay that fails")
    assert gc.isenabled()
    gc.disable()
    try:
        run("wait", "test-notransfer")
        assert not gc.isenabled()  # (a caller that had it off keeps it off)
    finally:
        gc.enable()
