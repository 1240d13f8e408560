"""Host selection: ``Greedy``'s choice against its order written out as a sort."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.policies import Greedy, HostCandidates


def _reference(k: int, c: HostCandidates) -> tuple[int, ...] | None:
    """The order in full: no preemption, holds the state, has the image, free latest,
    then (among those tied with the k-th on all of these) booked soonest after."""
    m = len(c.nodes)
    if m < k:
        return None
    keys = [(bool(c.needs_preemption[p]), not c.holds_state[p], not c.has_image[p],
             -int(c.free_since[p])) for p in range(m)]
    order = sorted(range(m), key=lambda p: (keys[p], int(c.nodes[p])))
    kth = keys[order[k - 1]]
    sure = [p for p in order[:k] if keys[p] != kth]
    tied = np.array([p for p in range(m) if keys[p] == kth], dtype=np.int64)
    rest = c.booked_soonest(tied, k - len(sure)).tolist()
    return tuple(sorted(int(c.nodes[p]) for p in sure + rest))


@settings(max_examples=1000, deadline=None)  # (the first call may compile the kernel)
@given(st.data())
def test_greedy_takes_the_first_k_in_its_order(data: st.DataObject) -> None:
    m = data.draw(st.integers(1, 12))
    k = data.draw(st.integers(1, m + 1))
    flags = st.lists(st.booleans(), min_size=m, max_size=m)
    nodes = np.array(sorted(data.draw(st.sets(st.integers(0, 40), min_size=m, max_size=m))),
                     dtype=np.int64)
    since = np.array(data.draw(st.lists(st.integers(0, 3), min_size=m, max_size=m)),
                     dtype=np.int64)
    ends = data.draw(st.lists(st.integers(0, 3), min_size=m, max_size=m))

    def booked_soonest(positions: np.ndarray, r: int) -> np.ndarray:
        # ends soonest, ties to the lower position (as the profile's query)
        return np.array(sorted(positions.tolist(), key=lambda p: (ends[p], p))[:r],
                        dtype=np.int64)

    c = HostCandidates(nodes, np.array(data.draw(flags)), np.array(data.draw(flags)),
                       np.array(data.draw(flags)), since, booked_soonest)
    got = Greedy().choose(k, c)
    assert got == _reference(k, c)
    if got is not None:
        assert len(set(got)) == k
