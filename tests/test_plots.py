"""Figures: SVGs parsed back to count the bars, lines and panels drawn and read their
texts (matplotlib writes each text as a comment before its glyphs); PNG size and format."""

from __future__ import annotations

import csv
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lxml import etree
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from scheduler.config import Config, load_profile
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
from scheduler.plots import (
    SweepRow,
    gantt,
    gantt_figure,
    parse_window,
    sweep_figure,
    sweep_figure_of,
    time_unit,
    utilization_figure,
    utilization_plot,
)
from scheduler.replay import ReplayResult, replay

LWF = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "lwf"
SVG = "{http://www.w3.org/2000/svg}"


def migrate_result() -> ReplayResult:
    workload = read_lwf(LWF / "migrate.lwf")
    assert workload.site is not None
    return replay(workload.site, load_profile("test-transfer"), workload.requests)


def svg_ids(path: Path) -> dict[str, etree._Element]:
    out: dict[str, etree._Element] = {}
    for el in etree.parse(str(path)).iter():
        gid = el.get("id") if isinstance(el.tag, str) else None
        if gid:
            out[str(gid)] = el
    return out


def text_of(el: etree._Element) -> str:
    """The text a group draws: matplotlib puts it in a comment before the glyphs."""
    return " ".join((c.text or "").strip() for c in el.iter(etree.Comment))


def all_texts(path: Path) -> set[str]:
    return {(c.text or "").strip() for c in etree.parse(str(path)).iter(etree.Comment)}


def prefixed(ids: dict[str, etree._Element], prefix: str) -> list[str]:
    return sorted(i for i in ids if i.startswith(prefix))


def fills(el: etree._Element) -> list[str]:
    return [p.get("style", "") for p in el.iter(f"{SVG}path")]


def test_gantt_migrate_bars(tmp_path: Path) -> None:
    path = tmp_path / "gantt.svg"
    gantt(migrate_result(), path)
    ids = svg_ids(path)
    # ARs 1 and 2: transfer, boot, run, shutdown, each on 2 nodes = 8 bars each; lease 3:
    # transfer, boot, run, suspend (2 nodes each), migrate (4), resume, run, shutdown (2)
    assert len(prefixed(ids, "event-1-")) == 8
    assert len(prefixed(ids, "event-2-")) == 8
    assert len(prefixed(ids, "event-3-")) == 18
    assert prefixed(ids, "event-3-migrate-") == [f"event-3-migrate-0-P{i}" for i in (1, 2, 3, 4)]
    assert prefixed(ids, "event-3-run-") == ["event-3-run-0-P3", "event-3-run-0-P4",
                                             "event-3-run-1-P1", "event-3-run-1-P2"]
    # colours: runs solid in their kind's colour, overheads lighter and hatched
    run = " ".join(fills(ids["event-3-run-0-P3"]))
    assert "fill: #1f77b4" in run and "url(#" not in run
    assert "fill: #d62728" in " ".join(fills(ids["event-1-run-0-P1"]))
    susp = " ".join(fills(ids["event-3-suspend-0-P3"]))
    assert "url(#" in susp and "fill: #1f77b4" not in susp
    # every run bar is long enough for its label (at least 1592 s of 5734 on 10 in)
    labels = prefixed(ids, "label-")
    assert len(labels) == 8
    assert text_of(ids["label-3-1-P1"]) == "3"
    assert text_of(ids["xlabel"]) == "time (min)"  # 5,734 s
    assert text_of(ids["ylabel"]) == "node"
    assert text_of(ids["title"]) == "Schedule"
    texts = all_texts(path)
    assert {"P1", "P2", "P3", "P4"} <= texts  # the node axis
    # the legend names the lease kinds and the overheads
    assert {"advance reservation", "best-effort", "immediate", "transfer", "boot", "shutdown",
            "suspend", "resume", "migrate"} <= texts


def test_gantt_collections_past_max_patches(tmp_path: Path) -> None:
    path = tmp_path / "gantt.svg"
    gantt(migrate_result(), path, max_patches=33)  # 34 bars: one collection per style
    ids = svg_ids(path)
    assert prefixed(ids, "event-") == []
    # ARs: transfer, boot, run, shutdown; best-effort: the 7 kinds. Boots and shutdowns
    # (2 s of 5734 s on ~800 px: 0.3 px) are too thin for a hatch.
    assert prefixed(ids, "events-ar-") == [
        "events-ar-boot-thin", "events-ar-run", "events-ar-shutdown-thin", "events-ar-transfer"]
    assert len(prefixed(ids, "events-besteffort-")) == 7
    assert "events-besteffort-suspend" in ids  # 34 s: 4.7 px, hatched
    assert "url(#" in " ".join(fills(ids["events-besteffort-suspend"]))
    assert "url(#" not in " ".join(fills(ids["events-besteffort-boot-thin"]))
    # one closed 4-corner path per bar: 2 runs x 2 nodes
    runs = [p.get("d") or "" for p in ids["events-besteffort-run"].iter(f"{SVG}path")]
    assert [(d.count("M"), d.count("L"), d.count("z")) for d in runs] == [(1, 3, 1)] * 4
    assert len(prefixed(ids, "label-")) == 8  # labels do not depend on it


SITE = Site.uniform(3, Resources(cpu=100, memory=1024))


def outcome(id: int, kind: LeaseKind, *events: Event, state: LeaseState = LeaseState.DONE
            ) -> LeaseOutcome:
    req = LeaseRequest(id=id, kind=kind, vms=1, resources=Resources(cpu=100, memory=1024),
                       image=DiskImage("img", 1024), duration=1000, submit=0,
                       start=0 if kind is LeaseKind.AR else None)
    return LeaseOutcome(req, state, events)


HAND = ReplayResult(SITE, Config(), (
    outcome(1, LeaseKind.AR, Event(EventKind.BOOT, 0, 10, (0, 1)),
            Event(EventKind.RUN, 10, 1000, (0, 1)), Event(EventKind.SHUTDOWN, 1000, 1010, (0, 1))),
    outcome(2, LeaseKind.IMMEDIATE, Event(EventKind.RUN, 0, 5, (2,))),  # too short for a label
    outcome(3, LeaseKind.IMMEDIATE, Event(EventKind.RUN, 100, 900, (2,))),
    outcome(4, LeaseKind.BESTEFFORT, state=LeaseState.REJECTED),  # nothing to draw
))


def test_gantt_hand_built(tmp_path: Path) -> None:
    path = tmp_path / "g.svg"
    gantt(HAND, path, title="hand-built")
    ids = svg_ids(path)
    assert prefixed(ids, "event-") == sorted([
        "event-1-boot-0-P1", "event-1-boot-0-P2", "event-1-run-0-P1", "event-1-run-0-P2",
        "event-1-shutdown-0-P1", "event-1-shutdown-0-P2", "event-2-run-0-P3",
        "event-3-run-0-P3"])
    # 5 s of 1010 s on 8 in of axes is ~4 px: no room for "2"; 800 s is
    assert prefixed(ids, "label-") == ["label-1-0-P1", "label-1-0-P2", "label-3-0-P3"]
    assert "fill: #2ca02c" in " ".join(fills(ids["event-3-run-0-P3"]))  # immediate: green
    assert text_of(ids["title"]) == "hand-built"


def by_gid(fig: Any) -> dict[str, Any]:
    return {a.get_gid(): a for a in fig.findobj() if a.get_gid()}


def test_gantt_window() -> None:
    """A window draws the events that overlap it (ids as without it), the axis spans it
    exactly, in the unit its span calls for, and a run's label sits in the middle of
    what is shown of it."""
    fig = gantt_figure(HAND.outcomes, SITE, window=(100, 500))
    arts = by_gid(fig)
    assert sorted(g for g in arts if g.startswith("event-")) == [
        "event-1-run-0-P1", "event-1-run-0-P2", "event-3-run-0-P3"]
    ax = fig.axes[0]
    assert ax.get_xlim() == (100 / 60, 500 / 60)
    assert ax.get_xlabel() == "time (min)"
    bar = arts["event-1-run-0-P1"]
    assert (bar.get_x(), bar.get_width()) == (10 / 60, 990 / 60)  # clipped by the axes
    assert arts["label-1-0-P1"].get_position() == (300 / 60, 0)
    assert arts["label-3-0-P3"].get_position() == (300 / 60, 2)
    # whole: the span of every event and submit, padded by 1 %, in minutes
    ax = gantt_figure(HAND.outcomes, SITE).axes[0]
    assert ax.get_xlim() == pytest.approx((-10.1 / 60, 1020.1 / 60))


def test_utilization_window() -> None:
    result = migrate_result()
    ax = utilization_figure(result.outcomes, result.site, window=(0, 3600)).axes[0]
    assert ax.get_xlim() == (0, 60) and ax.get_xlabel() == "time (min)"
    line = by_gid(ax.figure)["utilization"]
    assert np.asarray(line.get_xdata()).tolist() == pytest.approx(
        [t / 60 for t in (0, 90, 172, 1764, 1800, 3690, 3726, 5400, 5734)])


@pytest.mark.parametrize(("span", "unit"), [
    (1, (1, "s")), (119, (1, "s")), (120, (60, "min")), (7199, (60, "min")),
    (7200, (3600, "h")), (172799, (3600, "h")), (172800, (86400, "days"))])
def test_time_unit(span: int, unit: tuple[int, str]) -> None:
    assert time_unit(span) == unit


def test_parse_window() -> None:
    assert parse_window("2d:3d") == (172800, 259200)
    assert parse_window("36h:40h") == (129600, 144000)
    assert parse_window("0:5400") == (0, 5400)
    assert parse_window("90m:2.5h") == (5400, 9000)
    assert parse_window(" 1min : 90s ") == (60, 90)
    for bad, why in (("2d", "expected FROM:TO, e.g. 2d:3d"),
                     ("1:2:3", "expected FROM:TO"),
                     ("2x:3d", "'2x' is not a time (seconds, or a number with s, m, h or d)"),
                     ("-1:5", "'-1' is not a time"),
                     ("3d:2d", "its end must come after its start"),
                     ("5:5", "its end must come after its start")):
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_window(bad)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_png_size(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    gantt(HAND, path, size=(6, 3), dpi=80)
    assert png_size(path) == (480, 240)  # 6 in * 80 dpi, 3 in * 80 dpi
    assert imread(str(path)).shape[:2] == (240, 480)
    upath = tmp_path / "u.png"
    utilization_plot(HAND, upath, size=(5, 2), dpi=120)
    assert png_size(upath) == (600, 240)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown figure format"):
        gantt(HAND, tmp_path / "g.jpeg")
    assert not (tmp_path / "g.jpeg").exists()


def test_utilization_plot(tmp_path: Path) -> None:
    path = tmp_path / "u.svg"
    utilization_plot(migrate_result(), path)
    ids = svg_ids(path)
    assert "capacity" in ids
    # 9 steps (0, 90, 172, 1764, 1800, 3690, 3726, 5400, 5734) drawn "post": 17 vertices
    d = ids["utilization"].find(f"{SVG}path")
    assert d is not None
    assert (d.get("d") or "").count("L") + 1 == 17
    assert text_of(ids["title"]) == "Utilization 94.2%"  # 21600 / (4 * 5734)
    assert text_of(ids["xlabel"]) == "time (min)"
    assert text_of(ids["ylabel"]) == "busy nodes (user time)"


def sweep_rows(tmp_path: Path) -> list[dict[str, str]]:
    """A sweep's table as a CSV gives it back: strings, nu as in the trace names."""
    path = tmp_path / "sweep.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["profile", "rho", "delta", "nu", "completion_ratio", "other"])
        for profile in ("notransfer", "transfer"):
            for delta in (1, 2):
                for nu in ("3large", "1small", "2medium"):  # out of order on purpose
                    for rho in (10, 5, 20):
                        w.writerow([profile, rho, delta, nu, 1 + rho / 100 * delta, "x"])
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_completion_ratio_rows_per_profile(tmp_path: Path) -> None:
    """The default, the paper's figures: a row per profile, a column per nu, a line per
    delta."""
    path = tmp_path / "c.svg"
    sweep_figure(sweep_rows(tmp_path), path)
    ids = svg_ids(path)
    assert prefixed(ids, "panel-") == [f"panel-nu-{nu}-profile-{p}"
                                       for nu in ("large", "medium", "small")
                                       for p in ("notransfer", "transfer")]
    lines = prefixed(ids, "line-")
    assert len(lines) == 12  # 2 deltas in each of 6 panels
    assert "line-transfer-delta-2-nu-medium" in lines
    assert text_of(ids["title-nu-small-profile-transfer"]) == r"transfer, $\nu$ = small"
    assert "xlabel-nu-small-profile-notransfer" not in ids  # only the bottom row
    assert text_of(ids["xlabel-nu-small-profile-transfer"]) == r"$\rho$ (% of CPU-hours in ARs)"
    assert text_of(ids["ylabel-nu-small-profile-notransfer"]) == "completion time ratio"
    texts = all_texts(path)
    assert r"$\delta$ = 2 h" in texts  # legend entries: the deltas only
    assert r"transfer, $\delta$ = 2 h" not in texts

    fig = sweep_figure_of(sweep_rows(tmp_path))
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        rf"notransfer, $\nu$ = {nu}" for nu in ("small", "medium", "large")]
    # Each row has its own y range: the transfer row's ratios are its own.
    top, bottom = fig.axes[0], fig.axes[3]
    assert top.get_shared_y_axes().joined(top, fig.axes[2])
    assert not top.get_shared_y_axes().joined(top, bottom)
    (line,) = [ln for ln in fig.axes[0].get_lines()
               if ln.get_gid() == "line-notransfer-delta-2-nu-small"]
    assert np.asarray(line.get_xdata()).tolist() == [5, 10, 20]  # sorted by rho
    assert np.asarray(line.get_ydata()).tolist() == pytest.approx([1.1, 1.2, 1.4])
    # one colour per delta, the same in every panel
    colours = {ln.get_gid(): ln.get_color() for ax in fig.axes for ln in ax.get_lines()
               if ln.get_gid()}
    one = colours["line-notransfer-delta-1-nu-small"]
    assert one == colours["line-transfer-delta-1-nu-large"]
    assert one != colours["line-notransfer-delta-2-nu-small"]
    # rows in the order the table first names the profiles
    flipped = sweep_figure_of(sweep_rows(tmp_path)[::-1])
    assert flipped.axes[0].get_title() == r"transfer, $\nu$ = small"


def test_completion_ratio_one_row(tmp_path: Path) -> None:
    path = tmp_path / "c.svg"
    sweep_figure(sweep_rows(tmp_path), path, layout="combined")
    ids = svg_ids(path)
    assert prefixed(ids, "panel-") == ["panel-nu-large", "panel-nu-medium", "panel-nu-small"]
    # one line per (profile, delta) in each panel: 2 * 2 * 3 panels
    lines = prefixed(ids, "line-")
    assert len(lines) == 12
    assert "line-transfer-delta-2-nu-medium" in lines
    assert text_of(ids["title-nu-small"]) == r"$\nu$ = small"
    assert text_of(ids["xlabel-nu-large"]) == r"$\rho$ (% of CPU-hours in ARs)"
    assert text_of(ids["ylabel-nu-small"]) == "completion time ratio"
    assert "ylabel-nu-medium" not in ids  # shared y axis: left panel only (empty: not drawn)
    assert r"transfer, $\delta$ = 2 h" in all_texts(path)  # legend entry

    fig = sweep_figure_of(sweep_rows(tmp_path), layout="combined")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [r"$\nu$ = small", r"$\nu$ = medium", r"$\nu$ = large"]  # left to right
    (line,) = [ln for ln in fig.axes[0].get_lines()
               if ln.get_gid() == "line-notransfer-delta-2-nu-small"]
    assert np.asarray(line.get_xdata()).tolist() == [5, 10, 20]  # sorted by rho
    # 1 + rho / 100 * delta
    assert np.asarray(line.get_ydata()).tolist() == pytest.approx([1.1, 1.2, 1.4])


def test_completion_ratio_delta_panels(tmp_path: Path) -> None:
    path = tmp_path / "c.svg"
    sweep_figure(sweep_rows(tmp_path), path, layout="deltas", title="sweep")
    ids = svg_ids(path)
    panels = prefixed(ids, "panel-")
    assert len(panels) == 6  # 2 deltas x 3 nu
    assert "panel-nu-small-delta-2" in panels
    assert len(prefixed(ids, "line-")) == 12  # one per profile in each panel
    assert text_of(ids["title-nu-small-delta-2"]) == r"$\nu$ = small, $\delta$ = 2 h"
    assert text_of(ids["title"]) == "sweep"
    assert "xlabel-nu-small-delta-1" not in ids  # only the bottom row
    assert text_of(ids["xlabel-nu-small-delta-2"]) == r"$\rho$ (% of CPU-hours in ARs)"


def test_completion_ratio_averages_repeats() -> None:
    rows: list[SweepRow | Mapping[str, Any]] = [
        SweepRow("p", 5, 1, "small", 1.2), SweepRow("p", 5, 1, "small", 1.4),
        {"profile": "p", "rho": "10", "delta": "1", "nu": "1small",
         "completion_ratio": "1.5"}]
    assert SweepRow.of({"profile": "p", "rho": "5", "delta": "1", "nu": "10-20",
                             "completion_ratio": "1"}).nu == "10-20"  # a range stays whole
    fig = sweep_figure_of(rows)
    assert len(fig.axes) == 1
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "line-p-delta-1-nu-small"]
    # (1.2 + 1.4) / 2 at rho 5; 1.5 at rho 10
    assert np.asarray(line.get_ydata()).tolist() == pytest.approx([1.3, 1.5])
    with pytest.raises(ValueError, match="no rows"):
        sweep_figure_of([])
    with pytest.raises(ValueError, match="unknown layout 'grid'"):
        sweep_figure_of(rows, layout="grid")


@pytest.mark.parametrize("layout", ["profiles", "deltas", "combined"])
def test_completion_ratio_legend_fits(layout: str) -> None:
    """The paper's whole grid (6 profiles, 4 deltas, 3 nu): every legend entry is inside
    the figure, whatever the layout (24 entries in one row of panels)."""
    rows = [SweepRow(f"profile-{p}", rho, delta, nu, 1 + rho / 1000)
            for p in range(6) for delta in (1, 2, 3, 4) for nu in ("small", "medium", "large")
            for rho in (5, 10, 15, 20, 25, 30)]
    fig = sweep_figure_of(rows, layout=layout)
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # lays the figure out (constrained layout) as a save would
    (legend,) = fig.legends
    assert len(legend.get_texts()) == {"profiles": 4, "deltas": 6, "combined": 24}[layout]
    inside = fig.bbox
    for text in legend.get_texts():
        box = text.get_window_extent()
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, text.get_text()
        assert inside.y0 <= box.y0 and box.y1 <= inside.y1, text.get_text()


def test_docs_sweep_figure(tmp_path: Path) -> None:
    """The README's figure comes from the committed table of the paper's whole sweep:
    6 profiles x 3 nu panels, a line per delta in each (4 x 6 rho values)."""
    table = Path(__file__).resolve().parents[1] / "docs" / "sweep-30days.csv"
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 72 * 6 + 6
    assert {float(r["completion_ratio"]) for r in rows if r["ars"] == "none"} == {1.0}
    fig = sweep_figure_of([r for r in rows if r["ars"] != "none"])
    assert [ax.get_title() for ax in fig.axes[::3]] == [
        rf"{p}, $\nu$ = small" for p in ("novm-nosr", "novm-sr", "vm-predeploy", "vm-mult",
                                         "vm-reuse-uniform", "vm-reuse-skewed")]
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()]
    assert len(lines) == 72 and all(np.asarray(ln.get_xdata()).size == 6 for ln in lines)


def test_sweep_figure_of_another_metric(tmp_path: Path) -> None:
    """Any column of the table against rho: waits in hours under their own label and
    title, with no ratio-1 line; a column the figures do not know, as it is."""
    table = Path(__file__).resolve().parents[1] / "docs" / "sweep-30days.csv"
    with table.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["ars"] != "none"]
    column = "besteffort_wait_mean_skip5pct"
    fig = sweep_figure_of(rows, metric=column)
    ax = fig.axes[0]  # novm-nosr, small
    assert ax.get_ylabel() == "mean wait (h), first 5 % skipped"
    assert fig.get_suptitle() == "Best-effort wait with ARs"
    assert [ln.get_gid() for ln in ax.get_lines()] == [
        f"line-novm-nosr-delta-{d}-nu-small" for d in (1, 2, 3, 4)]  # no reference line
    line = ax.get_lines()[0]
    expected = {float(r["rho"]): float(r[column]) / 3600 for r in rows
                if (r["profile"], r["delta"], r["nu"]) == ("novm-nosr", "1", "small")}
    assert np.asarray(line.get_xdata()).tolist() == sorted(expected)
    assert np.asarray(line.get_ydata()).tolist() == [expected[x] for x in sorted(expected)]

    fig = sweep_figure_of(rows, metric="transfers")
    assert fig.axes[0].get_ylabel() == "transfers"
    assert fig.get_suptitle() == "transfers with ARs"
    assert len(fig.axes[0].get_lines()) == 4  # the deltas' lines only
    assert len(sweep_figure_of(rows).axes[0].get_lines()) == 5  # and the ratio-1 line


def test_panels_in_size_order() -> None:
    """The study's sizes first, in their order, then ranges by their numbers."""
    rows = [SweepRow("p", 5, 1, nu, 1.1) for nu in ("10-20", "large", "2-3", "small", "2-10")]
    fig = sweep_figure_of(rows)
    assert [ax.get_title() for ax in fig.axes] == [
        rf"p, $\nu$ = {nu}" for nu in ("small", "large", "2-3", "2-10", "10-20")]
