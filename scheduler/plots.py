"""Figures of schedules and experiments: Gantt chart, utilization over time, and the
figures of a trace-replay sweep (a metric against rho, as the paper's completion-time
ratio).

Every function builds its own ``matplotlib.figure.Figure`` (no pyplot, no global state)
and writes PNG, SVG or PDF by the file suffix. Drawn elements carry SVG ids
(``set_gid``) so tests and post-processing can find them:

- Gantt: ``event-<lease>-<kind>-<i>-<node>`` for the i-th (0-based) event of that kind
  of a lease, on one node (``events-<lease kind>-<event kind>[-thin]`` per collection
  when a chart has too many bars for one patch each); ``label-<lease>-<i>-<node>`` for a run
  bar's lease id;
- utilization: ``utilization`` (the step line), ``capacity`` (the site's nodes);
- sweep figures: ``panel-nu-<nu>-profile-<profile>`` per axes (``panel-nu-<nu>-delta-<delta>``
  with a row per delta, ``panel-nu-<nu>`` in one row), ``line-<profile>-delta-<delta>-nu-<nu>``
  per line, ``legend``;
- everywhere: ``title``, ``xlabel-…``/``ylabel-…`` for the texts.

Time axes are in days, hours, minutes or seconds by the span drawn (``time_unit``); the
Gantt chart and the utilization plot may draw one stretch of a replay (``window``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .leases import EventKind, LeaseKind, LeaseOutcome, Site
from .metrics import summarize, utilization_series

if TYPE_CHECKING:  # replay may come to import this module: avoid a cycle at run time
    from .replay import ReplayResult

FORMATS = (".png", ".svg", ".pdf")

#: Colour of a lease kind (its run bars; its overheads use a lighter shade of it).
KIND_COLORS: dict[LeaseKind, str] = {
    LeaseKind.AR: "#d62728",
    LeaseKind.BESTEFFORT: "#1f77b4",
    LeaseKind.IMMEDIATE: "#2ca02c",
}
KIND_LABELS: dict[LeaseKind, str] = {
    LeaseKind.AR: "advance reservation",
    LeaseKind.BESTEFFORT: "best-effort",
    LeaseKind.IMMEDIATE: "immediate",
}
#: Hatch of each overhead kind; runs are plain.
HATCHES: dict[EventKind, str] = {
    EventKind.TRANSFER: "////",
    EventKind.MIGRATE: "\\\\\\\\",
    EventKind.BOOT: "...",
    EventKind.SHUTDOWN: "---",
    EventKind.SUSPEND: "xxx",
    EventKind.RESUME: "+++",
}
#: Network activity overlaps other leases' VMs on the same node: drawn as a strip.
_NETWORK = frozenset({EventKind.TRANSFER, EventKind.MIGRATE})


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: unknown figure format {path.suffix!r} "
                         f"(use one of {', '.join(FORMATS)})")


def _save(fig: Figure, path: Path | str) -> None:
    path = Path(path)
    _check_suffix(path)
    # No date in SVG/PDF metadata, so the same figure gives the same bytes.
    metadata: dict[str, Any] | None = (
        {"Date": None} if path.suffix.lower() == ".svg"
        else {"CreationDate": None} if path.suffix.lower() == ".pdf" else None)
    fig.savefig(path, dpi=fig.dpi, metadata=metadata)


def _lighter(color: str, amount: float = 0.55) -> tuple[float, float, float]:
    r, g, b = to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _darker(color: str, amount: float = 0.35) -> tuple[float, float, float]:
    r, g, b = to_rgb(color)
    return (r * (1 - amount), g * (1 - amount), b * (1 - amount))


def _labels(ax: Axes, xlabel: str, ylabel: str, suffix: str = "") -> None:
    ax.set_xlabel(xlabel).set_gid(f"xlabel{suffix}")
    ax.set_ylabel(ylabel).set_gid(f"ylabel{suffix}")


#: Units of the time axes, largest first: a plot uses the largest of which its span
#: holds at least two (a 30-day replay in days, a one-hour scenario in minutes).
TIME_UNITS: tuple[tuple[int, str], ...] = ((86400, "days"), (3600, "h"), (60, "min"),
                                           (1, "s"))
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|m|min|h|d)?")


def time_unit(span: float) -> tuple[int, str]:
    """The unit (seconds, name) of a time axis spanning ``span`` seconds."""
    return next(((sec, name) for sec, name in TIME_UNITS if span >= 2 * sec), TIME_UNITS[-1])


def parse_window(text: str) -> tuple[int, int]:
    """``FROM:TO``, two times since the trace's start, each in seconds or with a unit
    (``s``, ``m``/``min``, ``h``, ``d``): ``2d:3d``, ``36h:40h``, ``0:5400``."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"time window {text!r}: expected FROM:TO, e.g. 2d:3d")
    bounds = []
    for part in parts:
        m = _DURATION.fullmatch(part.strip())
        if m is None:
            raise ValueError(f"time window {text!r}: {part!r} is not a time (seconds, or "
                             "a number with s, m, h or d)")
        scale = {"d": 86400, "h": 3600, "m": 60, "min": 60}.get(m[2] or "s", 1)
        bounds.append(round(float(m[1]) * scale))
    start, end = bounds
    if end <= start:
        raise ValueError(f"time window {text!r}: its end must come after its start")
    return start, end


# ------------------------------------------------------------------------------- Gantt


def gantt_figure(outcomes: Sequence[LeaseOutcome], site: Site, *, title: str | None = None,
                 size: tuple[float, float] | None = None, dpi: int = 100,
                 max_patches: int = 5000, window: tuple[int, int] | None = None) -> Figure:
    """Nodes (P1 at the top) x time; each event is a bar on each of its nodes.

    Colour = lease kind. Runs are solid; overheads are a lighter shade of the same colour,
    hatched by kind (see :data:`HATCHES`). Transfers and migrations use the network, not
    the node's VM slots, and often overlap other leases running there, so they are thin
    strips along the bottom of the row, drawn on top. A run bar shows its lease id when
    the label fits. ``size`` is in inches (default: 10 wide, 0.3 per node high).
    Beyond ``max_patches`` bars, bars of one style are drawn as one collection (SVG id
    ``events-<lease kind>-<event kind>``, plus ``…-thin`` for the unhatched bars under
    2 pixels wide), without per-bar ids: large traces stay fast. ``window`` (start,
    end), in seconds: draw only that stretch of time (a month-long replay shows its
    overheads only close up). Time is in the unit of :func:`time_unit`.
    """
    n = len(site.nodes)
    if size is None:
        size = (10.0, min(40.0, 1.6 + 0.3 * max(n, 1)))
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    if window is None:
        starts = [e.start for o in outcomes for e in o.events]
        ends = [e.end for o in outcomes for e in o.events]
        t0 = min([*starts, *(o.request.submit for o in outcomes)], default=0)
        t1 = max(ends, default=t0 + 1)
        span = max(t1 - t0, 1)
        lo, hi = t0 - span * 0.01, t1 + span * 0.01
    else:
        lo, hi = t0, t1 = window
        span = max(t1 - t0, 1)
    unit, unit_name = time_unit(span)
    # Room for a label: the bar's width on screen against the label's. The axes take
    # roughly 80 % of the figure's width (legend on the right).
    px_per_s = size[0] * 0.8 * dpi / span
    fontsize = 7.0
    char_px = 0.6 * fontsize * dpi / 72

    # (lease kind, event kind) -> bars (gid, x, y, width, height); one style per group
    bars: dict[tuple[LeaseKind, EventKind], list[tuple[str, int, float, int, float]]] = (
        defaultdict(list))
    for o in outcomes:
        seen: dict[EventKind, int] = defaultdict(int)
        for e in o.events:
            i = seen[e.kind]  # (counted outside the window too: ids do not depend on it)
            seen[e.kind] += 1
            if window is not None and (e.end < t0 or e.start > t1):
                continue
            y_off, height = (0.12, 0.28) if e.kind in _NETWORK else (-0.4, 0.8)
            label = str(o.request.id)
            shown = (max(e.start, t0), min(e.end, t1)) if window else (e.start, e.end)
            fits = (e.kind is EventKind.RUN
                    and (shown[1] - shown[0]) * px_per_s >= (len(label) + 1) * char_px)
            for node in e.nodes:
                name = site.nodes[node].name
                bars[(o.request.kind, e.kind)].append(
                    (f"event-{o.request.id}-{e.kind}-{i}-{name}", e.start, node + y_off,
                     e.end - e.start, height))
                if fits:
                    text = ax.text(sum(shown) / 2 / unit, node, label, ha="center",
                                   va="center", fontsize=fontsize, color="white", zorder=4,
                                   clip_on=True)
                    text.set_gid(f"label-{o.request.id}-{i}-{name}")

    # One patch per bar gives each its SVG id, but costs ~1 ms per bar to build and
    # again to render: past max_patches, one collection per style instead.
    separate = sum(len(b) for b in bars.values()) <= max_patches
    for (kind, ekind), group in bars.items():
        base = KIND_COLORS[kind]
        style: dict[str, Any] = {
            "facecolor": base if ekind is EventKind.RUN else _lighter(base),
            "edgecolor": _darker(base), "hatch": HATCHES.get(ekind), "linewidth": 0.5,
            "zorder": 3.0 if ekind in _NETWORK else 2.0}
        if separate:
            for gid, x, y, w, h in group:
                bar = Rectangle((x / unit, y), w / unit, h, **style)
                bar.set_gid(gid)
                ax.add_artist(bar)  # not add_patch: limits are set below, once
        else:
            # Agg hatches each path over its whole extent, even sub-pixel ones (minutes
            # for tens of thousands of bars): bars too thin to show a hatch get none.
            wide = [g for g in group if g[3] * px_per_s >= 2]
            thin = [g for g in group if g[3] * px_per_s < 2]
            for part, hatch, suffix in ((wide, style["hatch"], ""), (thin, None, "-thin")):
                if not part:
                    continue
                coll = PolyCollection([[(x / unit, y), ((x + w) / unit, y),
                                        ((x + w) / unit, y + h), (x / unit, y + h)]
                                       for _, x, y, w, h in part], **{**style, "hatch": hatch})
                coll.set_gid(f"events-{kind}-{ekind}{suffix}")
                ax.add_collection(coll, autolim=False)

    ax.set_xlim(lo / unit, hi / unit)
    ax.set_ylim(n - 0.5, -0.5)  # P1 at the top
    ax.set_yticks(range(n), [node.name for node in site.nodes])
    if n > 40:  # tick labels would overlap: keep about 40
        step = -(-n // 40)
        ax.set_yticks(range(0, n, step), [site.nodes[i].name for i in range(0, n, step)])
    _labels(ax, f"time ({unit_name})", "node")
    ax.set_title(title if title is not None else "Schedule").set_gid("title")
    ax.grid(axis="x", linewidth=0.3, alpha=0.5)

    handles = [Patch(facecolor=KIND_COLORS[k], edgecolor=_darker(KIND_COLORS[k]),
                     label=KIND_LABELS[k]) for k in LeaseKind]
    handles += [Patch(facecolor="#dddddd", edgecolor="#555555", hatch=h, label=str(k))
                for k, h in HATCHES.items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    return fig


def gantt(result: ReplayResult, path: Path | str, *, title: str | None = None,
          size: tuple[float, float] | None = None, dpi: int = 100,
          max_patches: int = 5000, window: tuple[int, int] | None = None) -> None:
    """Write the Gantt chart of a replay (see :func:`gantt_figure`) to ``path``."""
    _check_suffix(Path(path))
    _save(gantt_figure(result.outcomes, result.site, title=title, size=size, dpi=dpi,
                       max_patches=max_patches, window=window), path)


# ------------------------------------------------------------------------- utilization


def utilization_figure(outcomes: Sequence[LeaseOutcome], site: Site, *,
                       title: str | None = None, size: tuple[float, float] = (8.0, 3.0),
                       dpi: int = 100, window: tuple[int, int] | None = None) -> Figure:
    """Busy nodes (running user time) over time, as a step line, with the site's node
    count dashed; the default title gives the utilization of the summary (of the whole
    replay, ``window`` or not). ``window``: as :func:`gantt_figure`'s."""
    series = utilization_series(outcomes)
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    n = len(site.nodes)
    span = (window[1] - window[0] if window is not None
            else series.times[-1] - series.times[0] if series.times else 1)
    unit, unit_name = time_unit(span)
    if series.times:
        (line,) = ax.step([t / unit for t in series.times], series.busy, where="post",
                          color=KIND_COLORS[LeaseKind.BESTEFFORT], linewidth=1.0)
        line.set_gid("utilization")
    capacity = ax.axhline(n, color="black", linestyle="--", linewidth=0.8)
    capacity.set_gid("capacity")
    if window is not None:
        ax.set_xlim(window[0] / unit, window[1] / unit)
    ax.set_ylim(0, max(n, max(series.busy, default=0)) * 1.05 + 0.5)
    _labels(ax, f"time ({unit_name})", "busy nodes (user time)")
    if title is None:
        title = f"Utilization {summarize(outcomes, site).utilization:.1%}"
    ax.set_title(title).set_gid("title")
    return fig


def utilization_plot(result: ReplayResult, path: Path | str, *, title: str | None = None,
                     size: tuple[float, float] = (8.0, 3.0), dpi: int = 100,
                     window: tuple[int, int] | None = None) -> None:
    """Write the utilization-over-time plot of a replay to ``path``."""
    _check_suffix(Path(path))
    _save(utilization_figure(result.outcomes, result.site, title=title, size=size, dpi=dpi,
                             window=window), path)


# ------------------------------------------------------------- sweep figures (vs rho)

#: Panel order of the AR sizes nu of the reference injections.
NU_ORDER = ("small", "medium", "large")


@dataclass(frozen=True)
class Metric:
    """How a figure shows a column of a sweep's table: its axis label, the factor its
    values are multiplied by, the reference line drawn (None: none) and the title."""

    label: str
    title: str
    scale: float = 1.0
    reference: float | None = None


#: The columns the figures know (any other numeric column is drawn as it is).
METRICS: Mapping[str, Metric] = {
    "completion_ratio": Metric("completion time ratio",
                               "Best-effort completion time with ARs", reference=1.0),
    "besteffort_wait_mean_skip5pct": Metric("mean wait (h), first 5 % skipped",
                                            "Best-effort wait with ARs", scale=1 / 3600),
    "besteffort_wait_mean_all": Metric("mean wait (h)", "Best-effort wait with ARs",
                                       scale=1 / 3600),
    "besteffort_bsld_mean_skip5pct": Metric("mean bounded slowdown, first 5 % skipped",
                                            "Best-effort bounded slowdown with ARs"),
    "besteffort_bsld_mean_all": Metric("mean bounded slowdown",
                                       "Best-effort bounded slowdown with ARs"),
    "utilization": Metric("utilization", "Utilization with ARs"),
}


def metric_of(column: str) -> Metric:
    return METRICS.get(column) or Metric(column, f"{column} with ARs")


@dataclass(frozen=True)
class SweepRow:
    """One replay of a sweep: ``profile`` (configuration name), ``rho`` (ARs' aggregate
    duration, % of the trace's CPU-hours), ``delta`` (mean AR duration, hours), ``nu``
    (AR size: small, medium, large, a leading number as in ``1small`` dropped; or a
    node range such as ``10-20``) and ``value``, that of the metric drawn (e.g. the
    completion ratio: best-effort completion time / the baseline's)."""

    profile: str
    rho: float
    delta: float
    nu: str
    value: float

    @classmethod
    def of(cls, row: SweepRow | Mapping[str, Any], metric: str = "completion_ratio"
           ) -> SweepRow:
        """From a row or a mapping with those keys and ``metric`` (values may be
        strings, as a ``csv.DictReader`` gives them)."""
        if isinstance(row, SweepRow):
            return row
        return cls(profile=str(row["profile"]), rho=float(row["rho"]),
                   delta=float(row["delta"]),
                   nu=re.sub(r"^\d+(?=[a-z])", "", str(row["nu"]).strip().lower()),
                   value=float(row[metric]))


def _nu_key(nu: str) -> tuple[int, tuple[int, ...], str]:
    """Panel order: the study's sizes, then node ranges by their numbers (2-3 before
    10-20), then anything else."""
    if nu in NU_ORDER:
        return NU_ORDER.index(nu), (), nu
    numbers = tuple(int(n) for n in re.findall(r"\d+", nu))
    return len(NU_ORDER), numbers, nu


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: Layouts of the sweep figures (see :func:`sweep_figure_of`).
LAYOUTS = ("profiles", "deltas", "combined")
_LEGEND_ENTRY_IN = 0.16  # height of a legend entry at fontsize 7, with its spacing
_PANEL_IN = (3.2, 2.6)  # width and height of a panel


def sweep_figure_of(rows: Iterable[SweepRow | Mapping[str, Any]], *,
                    metric: str = "completion_ratio", layout: str = "profiles",
                    title: str | None = None, size: tuple[float, float] | None = None,
                    dpi: int = 100) -> Figure:
    """A column of the sweep's table (``metric``; default: the completion-time ratio, as
    in the paper's figures) (y) against rho (x), a column of panels per nu (small,
    medium, large). ``layout`` says what the rows and lines are:

    - ``profiles`` (the paper's figures): a row per profile, a line per delta; the y axis
      is shared along each row only, since profiles differ far more than the deltas of
      one profile do;
    - ``deltas``: a row per delta, a line per profile (colour = profile);
    - ``combined``: one row, a line per (profile, delta): colour = profile, line style
      and marker = delta.

    Profiles come in the order the rows first name them (a sweep's table: the order of
    its ``--profiles``). Rows repeating the same (profile, delta, nu, rho), e.g. several
    seeds, are averaged.
    Labels, scale, title and a reference line (ratio 1, the baseline, for the
    completion ratio) come from :data:`METRICS` (waits in hours). The figure is tall
    enough for its legend.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (use one of {', '.join(LAYOUTS)})")
    shown = metric_of(metric)
    data = [SweepRow.of(r, metric) for r in rows]
    if not data:
        raise ValueError("no rows to plot")
    nus = sorted({r.nu for r in data}, key=_nu_key)
    deltas = sorted({r.delta for r in data})
    profiles = list(dict.fromkeys(r.profile for r in data))  # as the table lists them
    style = {d: (_LINESTYLES[i % len(_LINESTYLES)], _MARKERS[i % len(_MARKERS)])
             for i, d in enumerate(deltas)}
    points: dict[tuple[str, float, str], dict[float, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for r in data:
        points[(r.profile, r.delta, r.nu)][r.rho].append(r.value * shown.scale)

    # Each row of panels: the profiles and deltas its lines are drawn for.
    panel_rows: list[tuple[list[str], list[float]]]
    if layout == "profiles":
        panel_rows = [([p], deltas) for p in profiles]
        color = {(p, d): f"C{i % 10}" for p in profiles for i, d in enumerate(deltas)}
        entries = len(deltas)
    else:
        panel_rows = [(profiles, [d]) for d in deltas] if layout == "deltas" \
            else [(profiles, deltas)]
        color = {(p, d): f"C{i % 10}" for i, p in enumerate(profiles) for d in deltas}
        entries = len(profiles) * (1 if layout == "deltas" else len(deltas))
    if size is None:
        width, height = _PANEL_IN
        size = (width * len(nus) + (2.2 if layout == "combined" else 1.4),
                max(height * len(panel_rows), _LEGEND_ENTRY_IN * entries) + 0.6)
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    axes = fig.subplots(len(panel_rows), len(nus), sharex=True,
                        sharey="row" if layout == "profiles" else True, squeeze=False)
    for row_i, (row_profiles, row_deltas) in enumerate(panel_rows):
        for col_i, nu in enumerate(nus):
            ax: Axes = axes[row_i][col_i]
            suffix, heading = f"-nu-{nu}", rf"$\nu$ = {nu}"
            if layout == "profiles":
                suffix += f"-profile-{row_profiles[0]}"
                heading = f"{row_profiles[0]}, {heading}"
            elif layout == "deltas":
                suffix += f"-delta-{row_deltas[0]:g}"
                heading += rf", $\delta$ = {row_deltas[0]:g} h"
            ax.set_gid(f"panel{suffix}")
            ax.set_title(heading, fontsize=9).set_gid(f"title{suffix}")
            if shown.reference is not None:
                ax.axhline(shown.reference, color="grey", linestyle=":", linewidth=0.8)
            for profile in row_profiles:
                for d in row_deltas:
                    by_rho = points.get((profile, d, nu))
                    if not by_rho:
                        continue
                    xs = sorted(by_rho)
                    ys = [sum(by_rho[x]) / len(by_rho[x]) for x in xs]
                    ls, marker = style[d]
                    label = (rf"$\delta$ = {d:g} h" if layout == "profiles"
                             else profile if layout == "deltas"
                             else rf"{profile}, $\delta$ = {d:g} h")
                    (line,) = ax.plot(xs, ys, color=color[(profile, d)], linestyle=ls,
                                      marker=marker, markersize=4, linewidth=1.0,
                                      label=label)
                    line.set_gid(f"line-{profile}-delta-{d:g}-nu-{nu}")
            ax.grid(linewidth=0.3, alpha=0.5)
            xlabel = r"$\rho$ (% of CPU-hours in ARs)" if row_i == len(panel_rows) - 1 else ""
            ylabel = shown.label if col_i == 0 else ""
            _labels(ax, xlabel, ylabel, suffix)
    # One legend for all panels: every label that appears anywhere.
    handles: dict[str, Any] = {}
    for ax_row in axes:
        for ax in ax_row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=7,
               frameon=False).set_gid("legend")
    fig.suptitle(title if title is not None else shown.title,
                 fontsize=10).set_gid("title")
    return fig


def sweep_figure(rows: Iterable[SweepRow | Mapping[str, Any]], path: Path | str, *,
                 metric: str = "completion_ratio", layout: str = "profiles",
                 title: str | None = None, size: tuple[float, float] | None = None,
                 dpi: int = 100) -> None:
    """Write a sweep's figure (see :func:`sweep_figure_of`)."""
    _check_suffix(Path(path))
    _save(sweep_figure_of(rows, metric=metric, layout=layout, title=title, size=size,
                          dpi=dpi), path)


__all__ = ["HATCHES", "KIND_COLORS", "LAYOUTS", "METRICS", "NU_ORDER", "Metric", "SweepRow",
           "gantt", "gantt_figure", "metric_of", "parse_window", "sweep_figure",
           "sweep_figure_of", "time_unit", "utilization_figure", "utilization_plot"]
