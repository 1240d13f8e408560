"""Workload metrics of a finished (or planned) schedule, and their JSON/CSV writers.

Owns the per-lease figures (wait, response, run time, bounded slowdown; Feitelson's
definitions), the run summary (best-effort averages with and without the warm-up
discarded as in Sotomayor et al., HPDC 2008; completion time and its ratio to a
baseline; utilization; admission, suspension, migration and transfer counts; leases by
state) and the utilization-over-time step series used by the plots.

Times are seconds from the trace start, as in the schedule. Only ``run`` events count
as the user's time; every overhead is an event of its own and counts as idle here.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .leases import EventKind, LeaseKind, LeaseOutcome, LeaseState, Site

if TYPE_CHECKING:  # replay may come to import this module: avoid a cycle at run time
    from .replay import ReplayResult

#: Default bound of the bounded slowdown (seconds): shorter runs count as this long.
TAU = 10
#: Fraction of the best-effort leases (the first ones, by submit time then id) left out
#: of the "skip5pct" averages, to drop the warm-up of an empty site (HPDC 2008).
SKIP_FRACTION = 0.05


@dataclass(frozen=True)
class LeaseMetrics:
    """One lease's figures. ``wait``, ``response`` and ``bounded_slowdown`` are None
    unless the lease is done and ran; ``nodes`` is the number of distinct nodes it ran
    on (a migrated lease counts both its old and new nodes)."""

    id: int
    kind: str
    state: str
    submit: int
    start: int | None  # first run start
    end: int | None  # last run end
    wait: int | None  # start - submit
    response: int | None  # end - submit
    run_time: int  # sum of the lengths of its run events
    bounded_slowdown: float | None  # max(1, response / max(run_time, tau))
    nodes: int
    suspensions: int
    migrations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Column order of :func:`write_leases_csv`.
LEASE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LeaseMetrics))


def lease_metrics(outcome: LeaseOutcome, tau: int = TAU) -> LeaseMetrics:
    """Figures of one lease; ``tau`` bounds the slowdown's denominator (seconds)."""
    req = outcome.request
    run_time = sum(e.end - e.start for e in outcome.runs)
    start, end = outcome.start, outcome.end
    wait = response = None
    bsld: float | None = None
    # Rejected, cancelled or failed leases did not get what they asked for: a wait or
    # slowdown for them would flatter the schedule, so they have none.
    if outcome.state is LeaseState.DONE and start is not None and end is not None:
        wait = start - req.submit
        response = end - req.submit
        bsld = max(1.0, response / max(run_time, tau))
    suspensions = migrations = 0  # (counted in a loop: a sweep does this per lease)
    for e in outcome.events:
        if e.kind is EventKind.SUSPEND:
            suspensions += 1
        elif e.kind is EventKind.MIGRATE:
            migrations += 1
    return LeaseMetrics(
        id=req.id, kind=str(req.kind), state=str(outcome.state), submit=req.submit,
        start=start, end=end, wait=wait, response=response, run_time=run_time,
        bounded_slowdown=bsld, nodes=len(outcome.nodes),
        suspensions=suspensions, migrations=migrations)


@dataclass(frozen=True)
class Summary:
    """Figures of a whole run (see :func:`summarize` for the definitions).

    Means are None when no lease contributes; ``completion_ratio`` is None without a
    baseline. :meth:`to_dict` is flat (one ``leases_<state>`` key per lease state, in
    the enum's order) so that every summary has the same keys: a CSV header.
    """

    leases: int
    besteffort_leases: int
    besteffort_skipped: int  # how many the skip5pct means leave out
    besteffort_wait_mean_all: float | None
    besteffort_wait_mean_skip5pct: float | None
    besteffort_bsld_mean_all: float | None
    besteffort_bsld_mean_skip5pct: float | None
    bsld_tau: int
    besteffort_completion: int | None
    baseline_completion: float | None
    completion_ratio: float | None
    first_submit: int | None
    last_end: int | None
    run_node_seconds: int
    utilization: float
    ar_accepted: int
    ar_rejected: int
    immediate_accepted: int
    immediate_rejected: int
    suspensions: int
    migrations: int
    transfers: int
    transfer_mb: int
    states: tuple[tuple[str, int], ...]  # (state, leases), every LeaseState in enum order

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "states"}
        out.update({f"leases_{state}": count for state, count in self.states})
        return out


@dataclass(frozen=True)
class UtilizationSeries:
    """A step function: ``busy[i]`` VMs run user time during ``[times[i], times[i+1])``;
    the last value (0) holds from the last run end on. With one VM per node (the
    reference workloads) it is the number of busy nodes; leases sharing a node count
    once each, so that its integral is exactly the run node-seconds of the summary."""

    times: tuple[int, ...]
    busy: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"times": list(self.times), "busy": list(self.busy)}


@dataclass(frozen=True)
class Metrics:
    """Everything :func:`compute` derives from one schedule."""

    summary: Summary
    leases: tuple[LeaseMetrics, ...]
    utilization: UtilizationSeries

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary.to_dict(),
                "leases": [m.to_dict() for m in self.leases],
                "utilization": self.utilization.to_dict()}


def transfer_stats(outcomes: Iterable[LeaseOutcome], multicast: bool = True) -> tuple[int, int]:
    """(distinct transfers, MB moved) over all leases' transfer events.

    Leases that share a transfer (a multicast, or piggybacking) each list it, with its
    interval and the nodes where it serves them: it counts once. The repository link
    carries one transfer at a time, so the interval names it. A multicast transfer sends
    the image once whatever the number of nodes; a unicast one (the core lists each
    node's separately) once per node.
    """
    sizes: dict[tuple[int, int], int] = {}
    nodes: dict[tuple[int, int], set[int]] = {}
    for o in outcomes:
        for e in o.events:
            if e.kind is EventKind.TRANSFER:
                key = (e.start, e.end)
                sizes.setdefault(key, o.request.image.size_mb)
                nodes.setdefault(key, set()).update(e.nodes)
    mb = sum(size * (1 if multicast else len(nodes[key])) for key, size in sizes.items())
    return len(sizes), mb


def _mean(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def skipped_count(n: int) -> int:
    """Leases left out of the skip5pct means: the first 5 %, rounded down (40 -> 2)."""
    return math.floor(n * SKIP_FRACTION + 1e-9)  # 0.05 * n is not exact in binary


def summarize(outcomes: Sequence[LeaseOutcome], site: Site, *,
              baseline_completion: float | None = None, tau: int = TAU,
              multicast: bool = True, link: tuple[int, int] | None = None,
              per: Sequence[LeaseMetrics] | None = None) -> Summary:
    """Summary of a schedule on ``site``.

    - Best-effort means: over the best-effort leases that are done (others have no wait
      or slowdown); ``*_skip5pct`` first drops the first 5 % of *all* best-effort leases
      by (submit, id), done or not, as in HPDC 2008.
    - ``besteffort_completion``: the latest run end of any best-effort lease (the user's
      time; the final shutdown is overhead). ``completion_ratio`` is it divided by
      ``baseline_completion`` (e.g. the same trace without ARs).
    - ``utilization`` = run node-seconds / (nodes x (last run end - first submit)): the
      share of the site's capacity, from the first arrival to the end of the last user
      time, spent running leases (a VM on a node for a second is one node-second; every
      lease's runs count, cancelled ones included). 0 when nothing ran.
    - ARs and immediate leases: accepted = not rejected (an accepted lease cancelled
      later still counts as accepted).
    - ``suspensions``/``migrations``: suspend/migrate events; ``transfers``/``transfer_mb``:
      ``link`` (transfers and MB the repository link carried, as a replay records them)
      where given, else :func:`transfer_stats` of the leases' events (which miss a
      transfer begun for a plan its lease dropped since).

    ``per``: the outcomes' ``lease_metrics`` with ``tau``, if already computed.
    """
    if per is None:
        per = [lease_metrics(o, tau) for o in outcomes]
    be = sorted((m for m in per if m.kind == LeaseKind.BESTEFFORT), key=lambda m: (m.submit, m.id))
    skip = skipped_count(len(be))
    kept = be[skip:]
    be_ends = [m.end for m in be if m.end is not None]
    completion = max(be_ends) if be_ends else None
    ratio = (completion / baseline_completion
             if completion is not None and baseline_completion else None)

    ends = [m.end for m in per if m.end is not None]
    first_submit = min((o.request.submit for o in outcomes), default=None)
    last_end = max(ends) if ends else None
    busy = sum((e.end - e.start) * len(e.nodes) for o in outcomes for e in o.runs)
    span = (last_end - first_submit) if last_end is not None and first_submit is not None else 0
    utilization = busy / (len(site.nodes) * span) if span > 0 and site.nodes else 0.0

    def admitted(kind: LeaseKind) -> tuple[int, int]:
        of_kind = [o for o in outcomes if o.request.kind is kind]
        rejected = sum(o.state is LeaseState.REJECTED for o in of_kind)
        return len(of_kind) - rejected, rejected

    ar_ok, ar_no = admitted(LeaseKind.AR)
    im_ok, im_no = admitted(LeaseKind.IMMEDIATE)
    transfers, mb = link if link is not None else transfer_stats(outcomes, multicast)
    states = Counter(o.state for o in outcomes)
    return Summary(
        leases=len(outcomes), besteffort_leases=len(be), besteffort_skipped=skip,
        besteffort_wait_mean_all=_mean(m.wait for m in be),
        besteffort_wait_mean_skip5pct=_mean(m.wait for m in kept),
        besteffort_bsld_mean_all=_mean(m.bounded_slowdown for m in be),
        besteffort_bsld_mean_skip5pct=_mean(m.bounded_slowdown for m in kept),
        bsld_tau=tau, besteffort_completion=completion,
        baseline_completion=baseline_completion, completion_ratio=ratio,
        first_submit=first_submit, last_end=last_end, run_node_seconds=busy,
        utilization=utilization, ar_accepted=ar_ok, ar_rejected=ar_no,
        immediate_accepted=im_ok, immediate_rejected=im_no,
        suspensions=sum(m.suspensions for m in per), migrations=sum(m.migrations for m in per),
        transfers=transfers, transfer_mb=mb,
        states=tuple((str(s), states[s]) for s in LeaseState))


def utilization_series(outcomes: Iterable[LeaseOutcome]) -> UtilizationSeries:
    """Busy VMs (running user time) over time, as a step series starting at the first
    submit; empty when no lease ran."""
    outcomes = list(outcomes)
    delta: Counter[int] = Counter()
    for o in outcomes:
        for e in o.runs:
            delta[e.start] += len(e.nodes)
            delta[e.end] -= len(e.nodes)
    if not delta:
        return UtilizationSeries((), ())
    first = min(o.request.submit for o in outcomes)
    times: list[int] = []
    busy: list[int] = []
    level = 0
    for t in sorted({first, *delta}):
        level += delta[t]
        if busy and busy[-1] == level:
            continue  # a run ending where another begins: no step
        times.append(t)
        busy.append(level)
    return UtilizationSeries(tuple(times), tuple(busy))


def compute_from(outcomes: Sequence[LeaseOutcome], site: Site, *,
                 baseline_completion: float | None = None, tau: int = TAU,
                 multicast: bool = True, link: tuple[int, int] | None = None) -> Metrics:
    """All metrics of ``outcomes`` on ``site`` (``multicast``, ``link``: see
    :func:`summarize`)."""
    per = tuple(lease_metrics(o, tau) for o in outcomes)
    return Metrics(
        summary=summarize(outcomes, site, baseline_completion=baseline_completion, tau=tau,
                          multicast=multicast, link=link, per=per),
        leases=per,
        utilization=utilization_series(outcomes))


def compute(result: ReplayResult, *, baseline_completion: float | None = None,
            tau: int = TAU) -> Metrics:
    """All metrics of a replay (transfers: those its link carried)."""
    return compute_from(result.outcomes, result.site, baseline_completion=baseline_completion,
                        tau=tau, link=result.transfer_stats())


def compare(a: Summary, b: Summary) -> dict[str, dict[str, Any]]:
    """Key by key: ``{"a", "b", "diff" (b - a), "ratio" (b / a)}`` for numbers, where
    both are present (diff/ratio None otherwise, ratio None when a is 0)."""
    da, db = a.to_dict(), b.to_dict()
    out: dict[str, dict[str, Any]] = {}
    for key, va in da.items():
        vb = db[key]
        numeric = (isinstance(va, int | float) and isinstance(vb, int | float)
                   and not isinstance(va, bool) and not isinstance(vb, bool))
        out[key] = {"a": va, "b": vb,
                    "diff": vb - va if numeric else None,
                    "ratio": vb / va if numeric and va else None}
    return out


def write_metrics_json(path: Path | str, metrics: Metrics) -> None:
    """``{"summary": {...}, "leases": [...], "utilization": {"times", "busy"}}``."""
    Path(path).write_text(json.dumps(metrics.to_dict(), indent=1) + "\n")


def _cell(value: Any) -> Any:
    return "" if value is None else value  # csv would write None as "" anyway; be explicit


def write_leases_csv(path: Path | str, leases: Iterable[LeaseMetrics]) -> None:
    """One row per lease, columns :data:`LEASE_COLUMNS`; missing values are empty."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")  # Unix lines, as the JSON output
        w.writerow(LEASE_COLUMNS)
        for m in leases:
            w.writerow([_cell(getattr(m, c)) for c in LEASE_COLUMNS])


def write_summary_csv(path: Path | str, summary: Summary | Sequence[Summary]) -> None:
    """A header (the keys of :meth:`Summary.to_dict`) and one row per summary."""
    rows = [summary] if isinstance(summary, Summary) else list(summary)
    if not rows:
        raise ValueError("no summary to write")
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")  # Unix lines, as the JSON output
        keys = list(rows[0].to_dict())
        w.writerow(keys)
        for s in rows:
            d = s.to_dict()
            w.writerow([_cell(d[k]) for k in keys])


__all__ = ["LEASE_COLUMNS", "SKIP_FRACTION", "TAU", "LeaseMetrics", "Metrics", "Summary",
           "UtilizationSeries", "compare", "compute", "compute_from", "lease_metrics",
           "skipped_count", "summarize", "transfer_stats", "utilization_series",
           "write_leases_csv", "write_metrics_json", "write_summary_csv"]
