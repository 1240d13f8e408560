"""The availability profile's queries against a brute-force reading of its entries,
and the suspend/resume exclusion channels' gaps against a brute-force search.

The profile keeps a step function per node, from the present on; here random
additions, removals, truncations and prunes are followed by queries checked against
every instant's usage, recomputed from the entries.
"""

from __future__ import annotations

import pickle
from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import kernels
from scheduler.slottable import INF, AvailabilityProfile, Channels, Timeline

NODES = 3
CAPACITY = np.array([[100, 1024, 0, 0, 0]] * NODES, dtype=np.int64)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, int, int, int, int, int]]:
    ops = []
    for _ in range(draw(st.integers(1, 25))):
        op = draw(st.sampled_from(["add", "add", "add", "remove", "truncate", "prune"]))
        start = draw(st.integers(0, 60))
        ops.append((op, start, start + draw(st.integers(0, 40)), draw(st.integers(0, 2)),
                    draw(st.integers(10, 60)), draw(st.integers(0, 10**6))))
    return ops


Live = dict[int, tuple[int, int, int, int, bool]]  # eid -> (node, start, end, cpu, pre)


def play(profile: AvailabilityProfile, ops: list[tuple[str, int, int, int, int, int]],
         live: Live, now: int) -> int:
    """Apply a history to ``profile`` (and ``live``), from time ``now``; return the time
    its prunes reached. Entries over by a prune are sometimes forgotten."""
    for op, s, e, node, amount, pick in ops:
        s, e = max(s, now), max(e, now)
        if op == "add":
            pre = pick % 2 == 0
            eid = profile.add((node,), s, e, np.array([amount, 0, 0, 0, 0]), owner=1,
                              preemptible=pre)
            live[eid] = (node, s, e, amount, pre)
        elif live and op in ("remove", "truncate"):
            eid = sorted(live)[pick % len(live)]
            n, es, ee, a, pre = live[eid]
            if op == "remove" or s <= es:
                profile.remove(eid)
                del live[eid]
            elif s < ee:
                profile.truncate(eid, s)
                live[eid] = (n, es, s, a, pre)
        elif op == "prune":
            now = max(now, s)
            profile.prune(now)
            if pick % 2:
                for eid in [eid for eid, (_, _, ee, _, _) in live.items() if ee <= now]:
                    profile.forget(eid)
                    del live[eid]
    return now


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 100), st.integers(1, 60), st.integers(10, 100),
       st.booleans())
def test_fits_window_is_the_peak_over_every_instant(
        ops: list[tuple[str, int, int, int, int, int]], start: int, length: int, cpu: int,
        ignore_preemptible: bool) -> None:
    profile = AvailabilityProfile(CAPACITY)
    live: Live = {}
    now = play(profile, ops, live, 0)
    start = max(start, now)
    vec = np.array([cpu, 0, 0, 0, 0])
    got = profile.fits_window(start, start + length, vec,
                              ignore_preemptible=ignore_preemptible).tolist()
    expected = []
    for n in range(NODES):
        peak = max(_peak(live, n, t, ignore_preemptible) for t in range(start, start + length))
        expected.append(peak <= 100 - cpu)
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 100), st.integers(1, 60), st.integers(0, 100),
       st.lists(st.one_of(st.integers(-2, 2), st.just(INF)), min_size=NODES,
                max_size=NODES))
def test_ready_window_is_the_window_fit_on_nodes_ready_by_its_start(
        ops: list[tuple[str, int, int, int, int, int]], start: int, length: int, cpu: int,
        offsets: list[int]) -> None:
    profile = AvailabilityProfile(CAPACITY)
    live: Live = {}
    now = play(profile, ops, live, 0)
    start = max(start, now)
    ready = [min(start + d, INF) for d in offsets]  # (around the start, or never)
    mask, count, exact = profile.ready_window(start, start + length,
                                              np.array([cpu, 0, 0, 0, 0]), np.array(ready))
    expected = [r <= start and all(_peak(live, n, t, False) <= 100 - cpu
                                   for t in range(start, start + length))
                for n, r in enumerate(ready)]
    assert mask.tolist() == expected
    assert count == sum(expected)
    assert exact == any(e and r == start for e, r in zip(expected, ready, strict=True))


def _peak(live: Live, n: int, t: int, ignore_preemptible: bool) -> int:
    return sum(a for node, es, ee, a, pre in live.values()
               if node == n and es <= t < ee and not (ignore_preemptible and pre))


@settings(max_examples=1500, deadline=None)
@given(histories(), st.integers(0, 100), st.integers(1, NODES), st.integers(10, 100),
       st.integers(1, 60), st.lists(st.booleans(), min_size=NODES, max_size=NODES),
       st.booleans())
def test_earliest_fit_is_the_first_instant_that_fits(
        ops: list[tuple[str, int, int, int, int, int]], t0: int, k: int, cpu: int,
        duration: int, eligible: list[bool], ignore_preemptible: bool) -> None:
    profile = AvailabilityProfile(CAPACITY)
    live: Live = {}
    t0 = max(t0, play(profile, ops, live, 0))
    got = profile.earliest_fit(t0, k, np.array([cpu, 0, 0, 0, 0]), duration,
                               eligible=np.array(eligible),
                               ignore_preemptible=ignore_preemptible)
    # every instant up to the last end (after it, all is free)
    for s in range(t0, max([t0] + [ee for _, _, ee, _, _ in live.values()]) + 1):
        fits = [eligible[n] and all(_peak(live, n, t, ignore_preemptible) <= 100 - cpu
                                    for t in range(s, s + duration)) for n in range(NODES)]
        if sum(fits) >= k:
            break
    else:
        assert got is None
        return
    assert got is not None and (got[0], got[1].tolist()) == (s, fits)


def _free(live: Live, n: int, t: int, cpu: int, ignore_preemptible: bool = False) -> bool:
    return _peak(live, n, t, ignore_preemptible) <= 100 - cpu


@settings(max_examples=500, deadline=None)
@given(histories(), st.lists(st.integers(0, 100), min_size=1, max_size=6),
       st.integers(10, 100), st.integers(0, 100), st.booleans(),
       st.lists(st.integers(0, 100), min_size=NODES, max_size=NODES))
def test_the_stretch_queries_match_every_instant(
        ops: list[tuple[str, int, int, int, int, int]], instants: list[int], cpu: int,
        t: int, ignore_preemptible: bool, ready: list[int]) -> None:
    """``hosts_at``, ``ready_room``, ``resume_room``, ``free_until``, ``free_since``,
    ``soonest_ends`` and ``min_free`` against each instant's usage recomputed from the
    entries (times are whole seconds, so checking every one is exact)."""
    profile = AvailabilityProfile(CAPACITY)
    live: Live = {}
    now = play(profile, ops, live, 0)
    vec = np.array([cpu, 0, 0, 0, 0])
    instants = [max(i, now) for i in instants]
    assert [profile.hosts_at(i, vec).tolist() for i in instants] == [
        [_free(live, n, i, cpu) for n in range(NODES)] for i in instants]

    def room(i: int, ready: list[int]) -> int:
        return sum(ready[n] <= i and _free(live, n, i, cpu) for n in range(NODES)) \
            if any(ready[n] == i and _free(live, n, i, cpu) for n in range(NODES)) else 0

    assert profile.ready_room(np.array(instants, dtype=np.int64), vec,
                              np.array(ready, dtype=np.int64)).tolist() == [
        room(i, ready) for i in instants]
    # The largest room over a suspended lease's readiness's own times: base where its
    # state is; elsewhere light, its image's copy (``ready`` as copies, from now on,
    # some never) or heavy; never on closed nodes but its own.
    ready = [INF if r > 90 else max(r, now) for r in ready]
    base = now + instants[0] % 20
    light, heavy = base + cpu % 30, base + cpu % 30 + t % 30
    holds = [n for n in range(NODES) if n % 3 == cpu % 3]
    closed = [r % 4 == 0 for r in ready]
    resume = [base if n in holds else INF if closed[n] else
              heavy if ready[n] > heavy else max(ready[n], light) for n in range(NODES)]
    assert profile.resume_room(vec, np.array(ready, dtype=np.int64),
                               np.array(holds, dtype=np.int64), base, light, heavy,
                               np.array(closed)) == max(
        (room(i, resume) for i in set(resume) - {INF}), default=0)
    t = max(t, now)
    horizon = max([t] + [ee for _, _, ee, _, _ in live.values()]) + 1  # all free from here
    until = []
    for n in range(NODES):
        u = next((i for i in range(t, horizon) if not _free(live, n, i, cpu, ignore_preemptible)),
                 INF)
        until.append(u)
    assert profile.free_until(t, vec, ignore_preemptible=ignore_preemptible).tolist() == until
    # Before a prune's time the table keeps what history it had (cut to its first row):
    # ``free_since`` is checked on the same history without prunes, where nothing is
    # booked before 0 and the table begins at -INF.
    unpruned, kept = AvailabilityProfile(CAPACITY), cast(Live, {})
    play(unpruned, [op for op in ops if op[0] != "prune"], kept, 0)
    since = []
    for n in range(NODES):
        s = t
        while s > -1 and _free(kept, n, s - 1, cpu):
            s -= 1
        since.append(-INF if s == -1 else s)
    assert unpruned.free_since(t, vec).tolist() == since
    for n in range(NODES):  # (over a window as long as cpu, 10-100 s)
        peak = max(_peak(live, n, i, False) for i in range(t, t + cpu))
        assert profile.min_free(n, t, t + cpu).tolist() == [100 - peak, 1024, 0, 0, 0]
    hosts = np.array([n for n in range(NODES) if _free(live, n, t, cpu)], dtype=np.intp)
    plain = [next((i for i in range(t, horizon) if not _free(live, n, i, cpu)), INF)
             for n in hosts]
    for r in range(1, len(hosts) + 1):
        expected = sorted(range(len(hosts)), key=lambda p: (plain[p], p))[:r]
        assert profile.soonest_ends(t, vec, hosts, r).tolist() == expected


@settings(max_examples=500, deadline=None)
@given(histories(), histories(), st.integers(0, 30), st.integers(0, 30),
       st.lists(st.tuples(st.integers(1, 60), st.integers(10, 100)), min_size=1, max_size=4))
def test_a_node_with_no_release_since_hosts_no_more_than_it_could(
        before: list[tuple[str, int, int, int, int, int]],
        after: list[tuple[str, int, int, int, int, int]], wait1: int, wait2: int,
        windows: list[tuple[int, int]]) -> None:
    """What the queue's retry skip relies on (``released``): between two calls, a node
    whose mark did not move can host, over any window from the second call's time,
    nothing it could not host over the same length of window from the first's."""
    profile = AvailabilityProfile(CAPACITY)
    live: Live = {}
    t1 = play(profile, before, live, 0) + wait1
    count = profile.released(t1)
    marks = profile.released_at.copy()
    could = {(w, cpu): profile.fits_window(t1, t1 + w, np.array([cpu, 0, 0, 0, 0])).tolist()
             for w, cpu in windows}
    # the history goes on from t1 (its times shifted there)
    t2 = play(profile, [(op, t1 + s, t1 + e, node, cpu, pick)
                        for op, s, e, node, cpu, pick in after], live, t1) + wait2
    count2, marks2 = profile.released(t2), profile.released_at
    assert count2 >= count and (marks2 >= marks).all()
    for (w, cpu), then in could.items():
        now = profile.fits_window(t2, t2 + w, np.array([cpu, 0, 0, 0, 0])).tolist()
        for n in range(NODES):
            if marks2[n] <= count:  # no release on n since
                assert then[n] or not now[n], (n, w, cpu)


def test_released_marks_removals_cuts_ends_and_new_nodes() -> None:
    p = AvailabilityProfile(CAPACITY)
    vec = np.array([60, 0, 0, 0, 0], dtype=np.int64)
    a = p.add((0,), 0, 10, vec, owner=1)
    b = p.add((1,), 0, 20, vec, owner=2)
    c = p.add((2,), 0, 30, vec, owner=3)

    def marks(t: int) -> list[int]:
        p.released(t)
        return list(p.released_at.tolist())
    assert (p.released(0), p.released_at.tolist()) == (0, [0, 0, 0])
    p.truncate(b, 15)  # let go after 15 at once, and the rest at 15
    assert (p.released(9), p.released_at.tolist()) == (1, [0, 1, 0])
    assert marks(10) == [2, 1, 0]  # a's end
    p.remove(c)
    assert marks(10) == [2, 1, 3]
    assert marks(15) == [2, 4, 3]  # b's new end (its old one: 20)
    p.prune(15)
    p.forget(a)  # counted already: nothing more
    p.forget(b)
    assert marks(30) == [2, 4, 3]  # c's old end: c is gone
    p.add_node(CAPACITY[0])
    assert (p.released(30), p.released_at.tolist()) == (5, [2, 4, 3, 5])
    with pytest.raises(ValueError, match="read-only"):
        p.released_at[0] = 0


def test_forget_drops_only_an_entry_that_is_over() -> None:
    p = AvailabilityProfile(CAPACITY)
    vec = np.array([60, 0, 0, 0, 0], dtype=np.int64)
    eid = p.add((0, 1), 0, 10, vec, owner=7)
    p.prune(5)
    with pytest.raises(ValueError, match=r"lasts until 10, after the last prune \(5\)"):
        p.forget(eid)
    assert p.owners_overlapping([0], 5, 20) == {7}
    p.prune(10)
    p.forget(eid)
    p.forget(eid)  # twice: nothing left to drop
    assert p.owners_overlapping([0, 1], 0, 20) == set()
    assert p.fits_window(10, 30, vec).tolist() == [True, True, True]


def test_channels_clash_on_shared_nodes_or_site_wide() -> None:
    """Bookings on P1+P2 over [10, 20) and on P3 over [15, 30): a window on P2 clashes
    with the first only; earliest and latest gaps step around what clashes."""
    local, site = Channels(site_wide=False), Channels(site_wide=True)
    for ch in (local, site):
        ch.add((0, 1), 10, 20)
        ch.add((2,), 15, 30)
    assert local.is_free((1,), 20, 25) and not local.is_free((1,), 19, 25)
    assert local.earliest_gap((1,), 12, 5) == 20
    assert local.earliest_gap((1, 2), 12, 5) == 30
    assert local.latest_gap((2,), 32, 5) == 10
    assert local.latest_gap((0, 2), 32, 5) == 5
    assert not site.is_free((1,), 20, 25)  # P3's booking holds the one channel
    assert site.earliest_gap((1,), 12, 5) == 30


def test_channels_forget_bookings_over_by_now() -> None:
    """200 bookings of 10 s on P1, one every 20 s from 0: pruned at 2,000, the 100 over
    by then are forgotten (removing one again is harmless), those after stay."""
    ch = Channels(site_wide=False)
    ids = [ch.add((0,), 20 * i, 20 * i + 10) for i in range(200)]
    ch.prune(2_000)
    assert len(ch._booked) == 100 and min(s for s, _, _ in ch._booked.values()) == 2_000
    ch.remove(ids[0])
    assert ch.earliest_gap((0,), 2_000, 10) == 2_010
    assert not ch.is_free((0,), 2_005, 2_011)
    ch.prune(2_100)  # too few over to be worth a cut: kept for now
    assert len(ch._booked) == 100
    for never in (0, ids[-1] + 1):
        with pytest.raises(KeyError, match=f"no booking {never} was ever made"):
            ch.remove(never)


@settings(max_examples=300, deadline=None)
@given(st.booleans(),
       st.lists(st.tuples(st.frozensets(st.integers(0, NODES - 1), min_size=1),
                          st.integers(0, 60), st.integers(0, 15)), max_size=8),
       st.frozensets(st.integers(0, NODES - 1), min_size=1), st.integers(0, 80),
       st.integers(0, 12), st.data())
def test_channels_gaps_are_the_earliest_and_latest_free_windows(
        site_wide: bool, bookings: list[tuple[frozenset[int], int, int]],
        nodes: frozenset[int], t: int, length: int, data: st.DataObject) -> None:
    ch = Channels(site_wide)
    ids = [ch.add(tuple(sorted(ns)), s, s + d) for ns, s, d in bookings]
    gone = data.draw(st.sets(st.sampled_from(range(len(ids)))) if ids else st.just(set()))
    for i in gone:
        ch.remove(ids[i])
    kept = [b for i, b in enumerate(bookings) if i not in gone]
    query = tuple(sorted(nodes))

    def free(s: int, e: int) -> bool:
        return e <= s or not any(bs < e and bs + d > s and (site_wide or ns & nodes)
                                 for ns, bs, d in kept)

    assert ch.is_free(query, t, t + length) == free(t, t + length)
    assert ch.earliest_gap(query, t, length) == next(s for s in range(t, 200)
                                                     if free(s, s + length))
    latest = ch.latest_gap(query, t, length)
    assert latest == next(s for s in range(t - length, -200, -1) if free(s, s + length))


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 100))
def test_a_pickled_profile_goes_on_as_the_original(
        ops: list[tuple[str, int, int, int, int, int]], forget_at: int) -> None:
    """Unpickled (as a checkpoint is), a profile holds the steps it had, the present's
    included when entries over by then were forgotten, and goes on as the original
    would."""
    profile = AvailabilityProfile(CAPACITY)
    live: list[int] = []
    now = 0
    for op, s, e, node, amount, pick in ops:
        s, e = max(s, now), max(e, now)
        if op == "add":
            live.append(profile.add((node, (node + 1) % NODES), s, e,
                                    np.array([amount, pick % 3 * 100, 0, 0, 0]), owner=1,
                                    preemptible=pick % 2 == 0))
        elif live and op in ("remove", "truncate"):
            eid = live[pick % len(live)]
            entry = profile._entries[eid]
            if op == "remove" or s <= entry.start:
                profile.remove(eid)
                live.remove(eid)
            elif s < entry.end:
                profile.truncate(eid, s)
        elif op == "prune":
            now = max(now, s)
            profile.prune(now)
    for eid in list(live):  # what the service forgets: entries over by the last prune
        entry = profile._entries[eid]
        if entry.end <= min(now, forget_at):
            profile.forget(eid)
            live.remove(eid)
    copy = pickle.loads(pickle.dumps(profile))
    assert copy._usage.dtype == profile._usage.dtype
    _assert_same_steps(copy, profile)
    vec = np.array([30, 100, 0, 0, 0], dtype=np.int64)
    for p in (profile, copy):  # both go on alike
        p.add((0,), now + 5, now + 50, vec, owner=2, preemptible=True)
        if live:
            p.truncate(live[0], max(now, p._entries[live[0]].start))
    _assert_same_steps(copy, profile)
    for start in range(now, now + 120, 7):
        for ignore in (False, True):
            assert copy.fits_window(start, start + 30, vec, ignore_preemptible=ignore).tolist() \
                == profile.fits_window(start, start + 30, vec,
                                       ignore_preemptible=ignore).tolist()
        # (released_at is a view of the marks: unpickled, it must still be one)
        assert (copy.released(start), copy.released_at.tolist()) == \
            (profile.released(start), profile.released_at.tolist())


def _assert_same_steps(a: AvailabilityProfile, b: AvailabilityProfile) -> None:
    assert a._count.tolist() == b._count.tolist()
    for node, c in enumerate(a._count.tolist()):
        assert a._times[node, :c].tolist() == b._times[node, :c].tolist()
        assert a._usage[:, node, :c].tolist() == b._usage[:, node, :c].tolist()


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 30))
def test_each_node_keeps_its_steps_from_the_present_on(
        ops: list[tuple[str, int, int, int, int, int]], wait: int) -> None:
    """Per node: steps in time order, each holding the usage the entries give at its
    start, and after a prune none before the one holding the present."""
    profile = AvailabilityProfile(CAPACITY)
    live: Live = {}
    now = play(profile, ops, live, 0) + wait
    profile.prune(now)
    slab = profile._used_slab.get(0)
    for node in range(NODES):
        times = profile._times[node, :profile._count[node]].tolist()
        assert times == sorted(set(times))
        assert times[0] <= now and (len(times) == 1 or times[1] > now)
        for x, t in enumerate(times):
            used = 0 if slab is None else int(profile._usage[slab, node, x])
            assert used == _peak(live, node, max(t, now), False)


def test_a_node_with_many_steps_widens_every_row() -> None:
    """Rows start 16 steps wide; a node needing more widens them all, keeping each."""
    profile = AvailabilityProfile(CAPACITY)
    vec = np.array([60, 0, 0, 0, 0], dtype=np.int64)
    width = profile._times.shape[1]
    for i in range(width):  # 2 steps each: twice the width
        profile.add((1,), 10 * i, 10 * i + 5, vec, owner=i)
    assert profile._times.shape[1] >= 2 * width and profile._count.tolist() == [1, 2 * width + 1, 1]
    assert [bool(profile.hosts_at(t, vec)[1]) for t in range(0, 10 * width, 5)] == \
        [False, True] * width
    assert profile.free_until(12, vec).tolist() == [INF, 12, INF]
    assert profile.free_until(15, vec).tolist() == [INF, 20, INF]
    profile.prune(10 * width - 13)  # between the last two entries
    assert profile._count.tolist() == [1, 3, 1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "add", "remove", "ask"]), st.integers(0, 80),
                          st.integers(1, 20), st.integers(0, 10**6)), max_size=30))
def test_link_gaps_are_the_earliest_and_latest_free_windows(
        ops: list[tuple[str, int, int, int]]) -> None:
    """The repository link's busy intervals (kept disjoint, as transfers book them):
    after every change, the same questions (the last answer is remembered) get what
    a search over every instant gives."""
    link = Timeline()
    busy: dict[int, tuple[int, int]] = {}
    for op, t, length, pick in ops:
        if op == "add":
            s = link.earliest_gap(t, length)
            busy[link.add(s, s + length)] = (s, s + length)
        elif op == "remove" and busy:
            tid = sorted(busy)[pick % len(busy)]
            link.remove(tid)
            del busy[tid]
        free = [not any(a <= x < b for a, b in busy.values()) for x in range(250)]
        for _ in range(2):  # asked twice: the second answer comes from memory
            s = link.earliest_gap(t, length)
            assert s == next(x for x in range(t, 250) if all(free[x:x + length]))
            e = link.latest_gap(t + 40, length)
            assert e == next((x for x in range(t + 40 - length, -1, -1)
                              if all(free[x:x + length])), e)
            assert link.is_free(t, t + length) == all(free[t:t + length])
        assert len(link) == len(busy)


@settings(deadline=None)  # (the first call may compile the kernel)
@given(st.lists(st.sampled_from([0, 5, 7, 2**40, INF, INF - 1]) | st.integers(0, 30),
                max_size=40))  # (more than 8 distinct values too: the kernel sorts them all)
def test_distinct_finite_is_the_sorted_set_below_inf(values: list[int]) -> None:
    got = kernels.distinct_finite(np.array(values, dtype=np.int64)).tolist()
    assert got == sorted({v for v in values if v < INF})


_TIMES = st.sampled_from([0, 3, 10, 50, 99, 100, 200, INF])


@settings(deadline=None)
@given(st.lists(_TIMES, min_size=1, max_size=10), _TIMES, _TIMES)
def test_readiness_waits_for_a_copy_or_a_new_transfer(copies: list[int], start: int,
                                                      fill: int) -> None:
    c = np.array(copies, dtype=np.int64)
    ready, has, complete = kernels.readiness(c, start, fill)
    assert has.tolist() == [v < INF for v in copies]
    assert ready.tolist() == [max(v, start) if v < INF else fill for v in copies]
    assert complete == all(v < INF for v in copies)


@settings(deadline=None)
@given(st.lists(_TIMES, min_size=1, max_size=10), st.data())
def test_resume_readiness_is_at_base_where_the_state_is(copies: list[int],
                                                        data: st.DataObject) -> None:
    n = len(copies)
    nodes = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    base, light, heavy = sorted(data.draw(st.lists(_TIMES, min_size=3, max_size=3)))
    ready, orig = kernels.resume_readiness(np.array(copies, dtype=np.int64),
                                           np.array(nodes, dtype=np.int64), base, light, heavy)
    assert orig.tolist() == [i in nodes for i in range(n)]
    assert ready.tolist() == [base if i in nodes else min(max(v, light), heavy)
                              for i, v in enumerate(copies)]
