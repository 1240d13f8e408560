"""Workload metrics on hand-built schedules (each expected value derived in a comment) and
on a real replay of the migrate scenario."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from scheduler.config import load_profile
from scheduler.leases import (
    DiskImage,
    Event,
    EventKind,
    LeaseKind,
    LeaseOutcome,
    LeaseRequest,
    LeaseState,
    Resources,
    Site,
)
from scheduler.lwf import read_lwf
from scheduler.metrics import (
    LEASE_COLUMNS,
    Summary,
    compare,
    compute,
    compute_from,
    lease_metrics,
    skipped_count,
    summarize,
    transfer_stats,
    utilization_series,
    write_leases_csv,
    write_metrics_json,
    write_summary_csv,
)
from scheduler.replay import replay

LWF = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "lwf"
SITE = Site.uniform(4, Resources(cpu=100, memory=1024))  # P1..P4 = node 0..3
K = EventKind
T, B, R, SD, SU, RE, MI = (K.TRANSFER, K.BOOT, K.RUN, K.SHUTDOWN, K.SUSPEND, K.RESUME,
                           K.MIGRATE)


def ev(kind: EventKind, start: int, end: int, *nodes: int) -> Event:
    return Event(kind, start, end, tuple(nodes))


def lease(id: int, kind: LeaseKind, submit: int, state: LeaseState, *events: Event,
          vms: int = 1, size: int = 1024, duration: int = 1000,
          start: int | None = None) -> LeaseOutcome:
    if kind is LeaseKind.AR and start is None:
        start = submit + 100
    req = LeaseRequest(id=id, kind=kind, vms=vms, resources=Resources(cpu=100, memory=1024),
                       image=DiskImage(f"img{size}", size), duration=duration, submit=submit,
                       start=start)
    return LeaseOutcome(req, state, tuple(events))


AR, BE, IM = LeaseKind.AR, LeaseKind.BESTEFFORT, LeaseKind.IMMEDIATE
DONE, REJ, CAN = LeaseState.DONE, LeaseState.REJECTED, LeaseState.CANCELLED

# A small mixed schedule on 4 nodes.
L1 = lease(1, AR, 0, DONE, ev(T, 10, 90, 0, 1), ev(B, 90, 100, 0, 1), ev(R, 100, 1100, 0, 1),
           ev(SD, 1100, 1102, 0, 1), vms=2, start=100)
# suspended on node 2, migrated to node 3, resumed there; piggybacks on lease 3's transfer
L2 = lease(2, BE, 50, DONE, ev(T, 110, 190, 2), ev(B, 200, 202, 2), ev(R, 202, 502, 2),
           ev(SU, 502, 512, 2), ev(MI, 600, 640, 2, 3), ev(RE, 640, 650, 3),
           ev(R, 650, 950, 3), ev(SD, 950, 952, 3))
L3 = lease(3, BE, 60, DONE, ev(T, 110, 190, 2), ev(R, 1105, 1110, 2))  # a 5 s run
L4 = lease(4, BE, 70, CAN, ev(R, 1000, 1050, 3))  # ran 50 s, then cancelled
L5 = lease(5, AR, 80, REJ)
L6 = lease(6, IM, 100, DONE, ev(R, 100, 200, 3))
L7 = lease(7, IM, 150, REJ)
MIXED = (L1, L2, L3, L4, L5, L6, L7)


def test_lease_metrics_by_hand() -> None:
    m1 = lease_metrics(L1)
    assert m1.wait == 100  # first run 100 - submit 0
    assert m1.response == 1100  # last run end 1100 - submit 0
    assert m1.run_time == 1000  # one run, 100..1100
    assert m1.bounded_slowdown == pytest.approx(1.1)  # 1100 / max(1000, 10)
    assert m1.nodes == 2

    m2 = lease_metrics(L2)
    assert m2.wait == 152  # first run 202 - submit 50
    assert m2.response == 900  # last run end 950 - submit 50
    assert m2.run_time == 600  # (502 - 202) + (950 - 650)
    assert m2.bounded_slowdown == pytest.approx(1.5)  # 900 / 600
    assert (m2.start, m2.end) == (202, 950)
    assert (m2.nodes, m2.suspensions, m2.migrations) == (2, 1, 1)  # ran on nodes 2 and 3

    m3 = lease_metrics(L3)
    assert m3.wait == 1045  # 1105 - 60
    assert m3.run_time == 5
    assert m3.bounded_slowdown == pytest.approx(105.0)  # (1110 - 60) / max(5, tau=10)
    # tau is a parameter: with tau = 1 the run itself bounds: 1050 / max(5, 1)
    assert lease_metrics(L3, tau=1).bounded_slowdown == pytest.approx(210.0)

    m6 = lease_metrics(L6)
    assert (m6.wait, m6.response) == (0, 100)  # runs from its submit 100 to 200
    assert m6.bounded_slowdown == 1.0  # max(1, 100 / 100)


def test_bounded_slowdown_never_below_one() -> None:
    # response 20 s, run 5 s, tau 100: 20 / 100 = 0.2, bounded up to 1
    o = lease(1, BE, 0, DONE, ev(R, 15, 20, 0))
    assert lease_metrics(o, tau=100).bounded_slowdown == 1.0


def test_rejected_and_cancelled_have_no_wait() -> None:
    m4 = lease_metrics(L4)
    assert (m4.wait, m4.response, m4.bounded_slowdown) == (None, None, None)
    assert m4.run_time == 50  # it did run 1000..1050 before the cancel
    m5 = lease_metrics(L5)
    assert (m5.wait, m5.response, m5.bounded_slowdown, m5.start, m5.end) == (None,) * 5
    assert (m5.run_time, m5.nodes) == (0, 0)


def test_summary_by_hand() -> None:
    s = summarize(MIXED, SITE, baseline_completion=1000)
    assert s.leases == 7
    assert s.besteffort_leases == 3  # leases 2, 3, 4
    assert s.besteffort_skipped == 0  # floor(3 * 5 %) = 0
    assert s.besteffort_wait_mean_all == pytest.approx(598.5)  # (152 + 1045) / 2; 4 cancelled
    assert s.besteffort_wait_mean_skip5pct == pytest.approx(598.5)  # nothing skipped
    assert s.besteffort_bsld_mean_all == pytest.approx(53.25)  # (1.5 + 105) / 2
    assert s.besteffort_completion == 1110  # lease 3's run ends last (4 ends at 1050)
    assert s.completion_ratio == pytest.approx(1.11)  # 1110 / 1000
    assert (s.first_submit, s.last_end) == (0, 1110)
    # run node-seconds: L1 1000*2 + L2 300+300 + L3 5 + L4 50 + L6 100 = 2755
    assert s.run_node_seconds == 2755
    assert s.utilization == pytest.approx(2755 / 4440)  # / (4 nodes * (1110 - 0))
    assert (s.ar_accepted, s.ar_rejected) == (1, 1)  # L1; L5
    assert (s.immediate_accepted, s.immediate_rejected) == (1, 1)  # L6; L7
    assert (s.suspensions, s.migrations) == (1, 1)  # both lease 2's
    # (10, 90, P1+P2) for lease 1; (110, 190, P3) shared by leases 2 and 3: 2 transfers
    assert (s.transfers, s.transfer_mb) == (2, 2048)  # multicast: 1024 MB each
    states = dict(s.states)
    assert (states["done"], states["cancelled"], states["rejected"]) == (4, 1, 2)
    assert sum(states.values()) == 7
    assert [st for st, _ in s.states] == [str(st) for st in LeaseState]


def test_summary_without_baseline_or_leases() -> None:
    s = summarize(MIXED, SITE)
    assert s.completion_ratio is None and s.baseline_completion is None
    empty = summarize((), SITE)
    assert empty.besteffort_wait_mean_all is None
    assert empty.besteffort_completion is None
    assert empty.utilization == 0.0
    assert (empty.transfers, empty.transfer_mb) == (0, 0)


def test_skip_first_five_percent() -> None:
    # 40 best-effort leases; 3 arrive first at t=0 (ids 9, 7, 3, listed out of order).
    # The first 2 by (submit, id) are 3 and 7; they waited 1000 s, all others 10 s.
    leases = []
    for i in range(1, 41):
        submit = 0 if i in (3, 7, 9) else 100 * i
        wait = 1000 if i in (3, 7) else 10
        leases.append(lease(i, BE, submit, DONE, ev(R, submit + wait, submit + wait + 100, 0)))
    leases.reverse()
    s = summarize(leases, SITE)
    assert s.besteffort_skipped == 2  # floor(40 * 5 %)
    assert s.besteffort_wait_mean_all == pytest.approx(59.5)  # (2 * 1000 + 38 * 10) / 40
    assert s.besteffort_wait_mean_skip5pct == pytest.approx(10.0)  # 3 and 7 dropped
    # bsld = (wait + 100) / 100: 11 for 3 and 7, 1.1 for the others
    assert s.besteffort_bsld_mean_all == pytest.approx((2 * 11 + 38 * 1.1) / 40)
    assert s.besteffort_bsld_mean_skip5pct == pytest.approx(1.1)


def test_a_transfer_begun_for_a_dropped_plan_still_counts() -> None:
    """Two full nodes, test-transfer (image b: 1,250 MB, 100 s at 100 Mbit/s). Leases 1
    and 2 run on P1 and P2; lease 3 waits for P2 (free first, at 1,004) and its image is
    sent there [0, 100). Lease 1 ends early, at 152: lease 3 moves to P1 and its image is
    sent again, [152, 252). The first transfer is no longer one it depends on, so its
    events list the second only; the replay's record of the link has both, and the
    metrics count both (2 transfers, 2,500 MB), not 1."""
    cfg = load_profile("test-transfer")
    site = Site.uniform(2, Resources(cpu=100, memory=1024))
    full = Resources(cpu=100, memory=1024)
    a, b = DiskImage("a", 0), DiskImage("b", 1250)
    result = replay(site, cfg, [LeaseRequest(1, BE, 1, full, a, 2000, 0, real_duration=150),
                                LeaseRequest(2, BE, 1, full, a, 1000, 0),
                                LeaseRequest(3, BE, 1, full, b, 100, 0)])
    third = result.outcomes[2]
    assert [(e.kind, e.start, e.end, e.nodes) for e in third.events][:2] == [
        (T, 152, 252, (0,)), (B, 252, 254, (0,))]
    assert [(s.image, s.size_mb, s.nodes, s.start, s.end) for s in result.sent or ()] == [
        ("b", 1250, (1,), 0, 100), ("b", 1250, (0,), 152, 252)]
    assert transfer_stats(result.outcomes) == (1, 1250)  # what the leases' events show
    summary = compute(result).summary
    assert (summary.transfers, summary.transfer_mb) == (2, 2500)
    assert result.summary()["transfers"] == 2
    assert result.to_json()["transfers"][0] == {"image": "b", "size_mb": 1250, "start": 0,
                                                "end": 100, "nodes": ["P2"]}


@pytest.mark.parametrize(("n", "skipped"), [(0, 0), (19, 0), (20, 1), (39, 1), (40, 2),
                                             (59, 2), (60, 3), (1000, 50)])
def test_skipped_count(n: int, skipped: int) -> None:
    assert skipped_count(n) == skipped


def test_transfers_multicast_vs_unicast() -> None:
    # multicast: one event for 3 nodes moves a 500 MB image once
    multi = [lease(1, BE, 0, DONE, ev(T, 0, 40, 0, 1, 2), ev(R, 40, 50, 0, 1, 2), size=500,
                   vms=3)]
    assert transfer_stats(multi, multicast=True) == (1, 500)
    # unicast: the core lists one event per node, back to back: 3 transfers, 3 * 500 MB
    uni = [lease(1, BE, 0, DONE, ev(T, 0, 40, 0), ev(T, 40, 80, 1), ev(T, 80, 120, 2),
                 ev(R, 120, 130, 0, 1, 2), size=500, vms=3)]
    assert transfer_stats(uni, multicast=False) == (3, 1500)
    # a unicast event naming 2 nodes stands for 2 copies: 2 * 500
    assert transfer_stats([lease(1, BE, 0, DONE, ev(T, 0, 80, 0, 1), size=500)],
                          multicast=False) == (1, 1000)
    # piggybacking: a second lease lists the same transfer; it counts once, 300 MB
    shared = [lease(1, BE, 0, DONE, ev(T, 0, 30, 0, 1), size=300),
              lease(2, BE, 5, DONE, ev(T, 0, 30, 0, 1), size=300),
              lease(3, BE, 5, DONE, ev(T, 30, 60, 2), size=300)]  # a different one
    assert transfer_stats(shared) == (2, 600)
    assert summarize(shared, SITE).transfers == 2
    # each lease lists a shared transfer for the nodes where it serves it: one transfer
    # [0, 30) to nodes 0, 1 and 2; multicast 300 MB once, unicast-style 3 copies
    subsets = [lease(1, BE, 0, DONE, ev(T, 0, 30, 0, 1), size=300),
               lease(2, BE, 5, DONE, ev(T, 0, 30, 1, 2), size=300)]
    assert transfer_stats(subsets) == (1, 300)
    assert transfer_stats(subsets, multicast=False) == (1, 900)


def test_utilization_series() -> None:
    u = utilization_series(MIXED)
    # L6 100-200 (1 VM) + L1 100-1100 (2); L2 202-502, 650-950; L4 1000-1050; L3 1105-1110
    assert u.times == (0, 100, 200, 202, 502, 650, 950, 1000, 1050, 1100, 1105, 1110)
    assert u.busy == (0, 3, 2, 3, 2, 3, 2, 3, 2, 0, 1, 0)
    # its integral is the summary's run node-seconds
    area = sum(b * (t1 - t0) for t0, t1, b in zip(u.times, u.times[1:], u.busy, strict=False))
    assert area == summarize(MIXED, SITE).run_node_seconds
    # a run ending where another begins on the same count makes no step
    back = [lease(1, BE, 0, DONE, ev(R, 0, 10, 0)), lease(2, BE, 0, DONE, ev(R, 10, 20, 0))]
    assert utilization_series(back).times == (0, 20)
    assert utilization_series([L5]).times == ()


SMALL = (lease(1, AR, 0, DONE, ev(T, 10, 90, 0, 1), ev(B, 90, 100, 0, 1),
               ev(R, 100, 400, 0, 1), ev(SD, 400, 402, 0, 1), vms=2),
         lease(2, BE, 20, DONE, ev(R, 30, 130, 2)),
         lease(3, IM, 40, REJ))


def test_leases_csv_exact(tmp_path: Path) -> None:
    path = tmp_path / "leases.csv"
    write_leases_csv(path, compute_from(SMALL, SITE).leases)
    assert path.read_text() == (
        "id,kind,state,submit,start,end,wait,response,run_time,bounded_slowdown,nodes,"
        "suspensions,migrations\n"
        "1,ar,done,0,100,400,100,400,300,1.3333333333333333,2,0,0\n"  # 400 / 300
        "2,besteffort,done,20,30,130,10,110,100,1.1,1,0,0\n"  # 110 / 100
        "3,immediate,rejected,40,,,,,0,,0,0,0\n")
    assert tuple(next(csv.reader(path.open()))) == LEASE_COLUMNS


SMALL_SUMMARY = {
    "leases": 3, "besteffort_leases": 1, "besteffort_skipped": 0,
    "besteffort_wait_mean_all": 10.0, "besteffort_wait_mean_skip5pct": 10.0,
    "besteffort_bsld_mean_all": 1.1, "besteffort_bsld_mean_skip5pct": 1.1, "bsld_tau": 10,
    "besteffort_completion": 130, "baseline_completion": 100, "completion_ratio": 1.3,
    "first_submit": 0, "last_end": 400, "run_node_seconds": 700,  # 300 * 2 + 100
    "utilization": 0.4375,  # 700 / (4 * 400)
    "ar_accepted": 1, "ar_rejected": 0, "immediate_accepted": 0, "immediate_rejected": 1,
    "suspensions": 0, "migrations": 0, "transfers": 1, "transfer_mb": 1024,
    "leases_pending": 0, "leases_rejected": 1, "leases_scheduled": 0, "leases_preparing": 0,
    "leases_ready": 0, "leases_active": 0, "leases_suspending": 0, "leases_suspended": 0,
    "leases_resuming": 0, "leases_migrating": 0, "leases_done": 2, "leases_cancelled": 0,
    "leases_failed": 0,
}


def test_summary_dict_and_csv_exact(tmp_path: Path) -> None:
    s = compute_from(SMALL, SITE, baseline_completion=100).summary
    d = s.to_dict()
    assert d == pytest.approx(SMALL_SUMMARY)
    assert list(d) == list(SMALL_SUMMARY)  # the CSV header order
    path = tmp_path / "summary.csv"
    write_summary_csv(path, s)
    assert path.read_text() == (
        ",".join(SMALL_SUMMARY) + "\n"
        "3,1,0,10.0,10.0,1.1,1.1,10,130,100,1.3,0,400,700,0.4375,1,0,0,1,0,0,1,1024,"
        "0,1,0,0,0,0,0,0,0,0,2,0,0\n")
    # several summaries, one row each; a missing value is an empty cell
    write_summary_csv(path, [s, compute_from(SMALL, SITE).summary])
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2
    assert (rows[0]["completion_ratio"], rows[1]["completion_ratio"]) == ("1.3", "")


def test_metrics_json_exact(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_metrics_json(path, compute_from(SMALL, SITE, baseline_completion=100))
    data = json.loads(path.read_text())
    assert set(data) == {"summary", "leases", "utilization"}
    assert data["summary"] == pytest.approx(SMALL_SUMMARY)
    assert data["leases"][1] == {
        "id": 2, "kind": "besteffort", "state": "done", "submit": 20, "start": 30, "end": 130,
        "wait": 10, "response": 110, "run_time": 100, "bounded_slowdown": 1.1, "nodes": 1,
        "suspensions": 0, "migrations": 0}
    assert data["leases"][2]["wait"] is None
    # busy VMs: 0; lease 2 from 30; lease 1's 2 from 100; lease 2 ends 130; lease 1 at 400
    assert data["utilization"] == {"times": [0, 30, 100, 130, 400], "busy": [0, 1, 3, 2, 0]}


def test_compare() -> None:
    a = summarize(SMALL, SITE, baseline_completion=100)
    b = summarize(MIXED, SITE, baseline_completion=100)
    c = compare(a, b)
    assert c["leases"] == {"a": 3, "b": 7, "diff": 4, "ratio": pytest.approx(7 / 3)}
    assert c["besteffort_completion"]["diff"] == 980  # 1110 - 130
    assert c["ar_rejected"]["ratio"] is None  # a is 0
    assert c["besteffort_skipped"]["diff"] == 0


def test_migrate_replay() -> None:
    """The migrate scenario under test-transfer (schedule as in the README)."""
    workload = read_lwf(LWF / "migrate.lwf")
    assert workload.site is not None
    result = replay(workload.site, load_profile("test-transfer"), workload.requests)
    m = compute(result, baseline_completion=3600)
    by_id = {lm.id: lm for lm in m.leases}
    be = by_id[3]
    assert be.wait == 172  # first run 172 - submit 0
    assert be.response == 5734  # last run ends 5734
    assert be.run_time == 3600  # (1764 - 172) + (5734 - 3726) = 1592 + 2008
    assert be.bounded_slowdown == pytest.approx(5734 / 3600)
    assert (be.nodes, be.suspensions, be.migrations) == (4, 1, 1)  # P3,P4 then P1,P2
    assert (by_id[1].wait, by_id[2].wait) == (90, 1800)  # ARs start at 90 and 1800

    s = m.summary
    assert s.besteffort_leases == 1 and s.besteffort_skipped == 0
    assert s.besteffort_wait_mean_all == 172
    assert s.besteffort_bsld_mean_skip5pct == pytest.approx(5734 / 3600)
    assert s.besteffort_completion == 5734
    assert s.completion_ratio == pytest.approx(5734 / 3600)
    # runs: AR 1 3600 * 2, AR 2 3600 * 2, lease 3 3600 * 2 = 21600 node-seconds over 4 nodes
    # from 0 to 5734
    assert s.run_node_seconds == 21600
    assert s.utilization == pytest.approx(21600 / (4 * 5734))
    assert s.utilization == pytest.approx(result.summary()["utilization"], abs=1e-6)
    assert (s.ar_accepted, s.ar_rejected, s.immediate_accepted) == (2, 0, 0)
    assert (s.suspensions, s.migrations) == (1, 1)
    # 6-88 P1,P2 (AR 1), 88-170 P3,P4 (lease 3), 1716-1798 P3,P4 (AR 2), 1024 MB each
    assert (s.transfers, s.transfer_mb) == (3, 3072)
    assert dict(s.states)["done"] == 3
    assert m.utilization.times == (0, 90, 172, 1764, 1800, 3690, 3726, 5400, 5734)
    assert m.utilization.busy == (0, 2, 4, 2, 4, 2, 4, 2, 0)
    assert isinstance(s, Summary)
