"""Trace replay: drives the scheduling core through a workload in simulated time.

The simulated clock jumps from one instant to the next that matters (an arrival or
a scheduled state change); at each instant the core first applies what happens
then, and only then sees the requests that arrive.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from . import batch
from .config import Config
from .core import Scheduler
from .leases import EventKind, LeaseOutcome, LeaseRequest, LeaseState, SentImage, Site
from .metrics import transfer_stats


@dataclass
class SimulatedClock:
    """Time as the replay sets it: it only moves forward."""

    now: int = 0

    def advance(self, t: int) -> None:
        if t < self.now:
            raise ValueError(f"simulated time cannot go back from {self.now} to {t}")
        self.now = t


@dataclass(frozen=True)
class ReplayResult:
    site: Site
    config: Config
    outcomes: tuple[LeaseOutcome, ...]
    # every transfer the repository link carried (None: not known, e.g. a result built
    # from outcomes alone; then counted from the leases' transfer events)
    sent: tuple[SentImage, ...] | None = None

    def transfer_stats(self) -> tuple[int, int]:
        """(transfers, MB sent) over the link."""
        if self.sent is None:
            return transfer_stats(self.outcomes, self.config.transfer_mode == "multicast")
        return len(self.sent), sum(s.size_mb for s in self.sent)

    def summary(self) -> dict[str, Any]:
        states = Counter(str(o.state) for o in self.outcomes)
        kinds = Counter(e.kind for o in self.outcomes for e in o.events)
        ends = [o.end for o in self.outcomes if o.end is not None]
        busy = sum((e.end - e.start) * len(e.nodes) for o in self.outcomes for e in o.runs)
        makespan = max(ends, default=0)
        return {
            "leases": len(self.outcomes),
            "states": dict(sorted(states.items())),
            "makespan": makespan,
            "utilization": round(busy / (makespan * len(self.site.nodes)), 6) if makespan else 0,
            "transfers": self.transfer_stats()[0],
            "suspensions": kinds[EventKind.SUSPEND],
            "migrations": kinds[EventKind.MIGRATE],
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"leases": [lease_json(o, self.site) for o in self.outcomes]}
        if self.sent:
            out["transfers"] = [{"image": s.image, "size_mb": s.size_mb, "start": s.start,
                                 "end": s.end, "nodes": [self.site.nodes[n].name for n in s.nodes]}
                                for s in self.sent]
        out["summary"] = self.summary()
        return out


def lease_json(o: LeaseOutcome, site: Site) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": o.request.id, "kind": str(o.request.kind), "state": str(o.state),
        "submit": o.request.submit, "start": o.start, "end": o.end,
        "nodes": [site.nodes[n].name for n in o.nodes],
        "events": [e.as_dict(site) for e in o.events],
    }
    if o.reason:
        out["reason"] = o.reason
    return out


def replay(site: Site, config: Config, requests: Iterable[LeaseRequest],
           progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Replay ``requests`` (sorted by submit time) to the end; ``progress`` is called
    with the number of requests submitted so far. Plain batch workloads take the
    node-counting fast path (``batch``: textbook EASY or FCFS, the general core's
    queue passes with nodes bound when jobs start)."""
    requests = list(requests)
    if batch.applies(site, config, requests):
        outcomes = batch.replay_batch(site, config, requests, progress)
        if any(a.id > b.id for a, b in pairwise(requests)):
            outcomes = tuple(sorted(outcomes, key=lambda o: o.request.id))
        return ReplayResult(site, config, outcomes, sent=())  # (no images to send)
    return replay_general(site, config, requests, progress)


def replay_general(site: Site, config: Config, requests: Iterable[LeaseRequest],
                   progress: Callable[[int], None] | None = None) -> ReplayResult:
    """``replay`` through the general core, whatever the workload."""
    sched = Scheduler(site, config, record_transfers=True)
    clock = SimulatedClock()
    with _without_cycle_collection():
        for i, req in enumerate(requests, 1):
            clock.advance(req.submit)
            sched.advance_to(clock.now)
            sched.submit(req)
            if progress is not None:
                progress(i)
        while (t := sched.next_event_time()) is not None:
            clock.advance(t)
            sched.advance_to(t)
    outcomes = tuple(sorted(sched.outcomes(), key=lambda o: o.request.id))
    unfinished = [o.request.id for o in outcomes if not o.state.terminal]
    if unfinished:  # the core guarantees this; a failure here is a scheduler bug
        raise RuntimeError(f"replay ended with leases not finished: {unfinished[:10]}")
    return ReplayResult(site, config, outcomes, sched.sent_images())


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Python's cycle collector off for a while (back as it was after). The core makes
    next to no reference cycles (a replay of 20,000 leases left 7 objects for it), and
    refcounting frees the rest; but the collector's passes over the young objects a
    replay allocates by the million took 10-20 % of its time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_json(result: ReplayResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=1) + "\n")


__all__ = ["LeaseState", "ReplayResult", "SimulatedClock", "replay", "replay_general",
           "write_json"]
