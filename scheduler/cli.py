"""Command-line interface: ``wsched replay``, ``sweep``, ``plot``, ``generate-ars``
and ``profiles``.

This is the only module that configures logging or writes to the terminal: the
replay summary and the profile list go to stdout; logs, the progress bar and
error messages go to stderr. Bad input (trace, configuration, files) ends with a
one-line ``wsched: error: ...`` and exit status 2, like argparse's usage errors;
Ctrl-C with ``wsched: interrupted`` and status 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import experiments, generator, metrics, plots, service_cli
from .config import (
    Config,
    ConfigError,
    apply_settings,
    load_config,
    load_profile,
    profile_description,
    profile_names,
    profile_text,
)
from .lwf import TraceError, read_lwf, trace_stem, trace_suffix
from .replay import ReplayResult, replay, write_json
from .swf import prepare, read_swf, write_swf

#: Traces with more requests than this get a progress bar (on a terminal).
PROGRESS_THRESHOLD = 1000
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # (128 + SIGINT, as a shell reports it)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

log = logging.getLogger("scheduler.cli")  # not __main__ under python -m

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{record.levelname} {record.name}: {record.getMessage()}"]
        for key, value in _extras(record).items():
            text = str(value)
            if not text or any(c.isspace() or c in "\"'=" for c in text):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_handler: logging.Handler | None = None


def configure_logging(level: str, as_json: bool) -> None:
    """Send the root logger's records at ``level`` and above to stderr."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:  # main() called again in the same process
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root.addHandler(_handler)
    root.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsched", description="Virtual-workspace lease scheduler.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rp = sub.add_parser(
        "replay", help="replay an LWF or SWF trace in simulated time",
        description="Replay a trace (LWF, or SWF by its .swf suffix, each job a "
        "best-effort lease; either may be compressed with gzip, bzip2 or xz, e.g. "
        "log.swf.gz), optionally with advance reservations injected, and write "
        "every lease's schedule as JSON. The configuration starts from the built-in "
        "defaults, or from --profile (or the profile the --config file names with "
        "profile = \"NAME\"), and --config overrides it key by key. The site "
        "comes from the trace's <site>, or else from the [site] table of the "
        "configuration; its [swf] table says how SWF jobs are read.")
    rp.add_argument("trace", type=Path, metavar="TRACE", help="the lease trace (.lwf or .swf, "
                    "optionally .gz, .bz2 or .xz)")
    rp.add_argument("--ars", type=Path, metavar="FILE",
                    help="advance reservations to inject: an LWF file or the plain-text "
                    "injection format (one AR per line)")
    rp.add_argument("--profile", metavar="NAME",
                    help="built-in profile to start from (one of: "
                    f"{', '.join(profile_names())}; default: built-in defaults)")
    rp.add_argument("--config", type=Path, metavar="FILE.toml",
                    help="TOML file whose settings override the profile's (it may name "
                    "the profile it starts from: profile = \"NAME\")")
    rp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    dest="settings", help="one setting over the profile and --config "
                    "(repeatable), e.g. scheduling.backfilling=conservative")
    rp.add_argument("--json", type=Path, required=True, metavar="OUT.json", dest="json_out",
                    help="where to write the schedule")
    rp.add_argument("--metrics", type=Path, metavar="OUT.json",
                    help="write the workload metrics (summary, per lease, utilization)")
    rp.add_argument("--leases-csv", type=Path, metavar="OUT.csv",
                    help="write per-lease metrics (wait, response, bounded slowdown, ...)")
    rp.add_argument("--swf-out", type=Path, metavar="OUT.swf",
                    help="SWF traces only: write the trace back, every job, with the wait "
                    "field filled in (-1: never started, as a skipped job)")
    rp.add_argument("--gantt", type=Path, metavar="OUT.png|svg",
                    help="draw a Gantt chart of the schedule")
    rp.add_argument("--utilization-plot", type=Path, metavar="OUT.png|svg",
                    help="draw utilization over time")
    rp.add_argument("--plot-window", metavar="FROM:TO",
                    help="draw only this stretch of time in --gantt and --utilization-plot "
                    "(times since the trace's start, in seconds or with a unit s, m, h or "
                    "d: e.g. 2d:3d, 36h:40h)")
    rp.add_argument("--quiet", action="store_true",
                    help="print no summary and no progress bar")
    _logging_options(rp)

    sw = sub.add_parser(
        "sweep", help="run a grid of traces x injections x profiles in parallel",
        description="Replay every combination of the traces, AR injection files and "
        "profiles on all cores, plus each trace and profile without injections (the "
        "baseline of the completion-time ratio). Each finished run is kept in "
        "OUT/runs/; running the same command again skips them (resumable). The table "
        "of all runs is written to OUT/results.csv.")
    sw.add_argument("--trace", type=Path, action="append", required=True, dest="traces",
                    metavar="TRACE", help="a best-effort trace (repeatable)")
    sw.add_argument("--ars", type=Path, nargs="*", default=[], metavar="FILE",
                    help="AR injection files (each one run per trace and profile)")
    sw.add_argument("--profiles", required=True, metavar="P1,P2,...",
                    help="comma-separated built-in profile names or TOML configuration "
                    "files (FILE.toml: see replay --config; its runs and results are "
                    "named by the file's name without .toml)")
    sw.add_argument("--vary", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                    help="run each profile with each of these values of a setting "
                    "(repeatable: every combination), e.g. scheduling.backfilling="
                    "aggressive,conservative; runs are named PROFILE+KEY=VALUE")
    sw.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="directory for the runs and results.csv")
    sw.add_argument("--jobs", type=int, default=None, metavar="N",
                    help="parallel processes (default: all cores)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument("--dry-run", action="store_true",
                    help="run nothing: read every input file, then list each run as done, "
                    "to run or out of date (its record is of other inputs or code)")
    _logging_options(sw)

    pl = sub.add_parser(
        "plot", help="a sweep's figure: a metric against rho (the completion-time ratio)",
        description="Draw a column of a sweep's results.csv against rho (by default the "
        "completion-time ratio of the best-effort leases, as in the paper): a column of "
        "panels per node range (nu) and, as in the paper, a row per profile with a line "
        "per delta.")
    pl.add_argument("results", type=Path, metavar="RESULTS.csv")
    pl.add_argument("--out", type=Path, required=True, metavar="OUT.png|svg")
    pl.add_argument("--layout", choices=plots.LAYOUTS, default="profiles",
                    help="the rows of panels: one per profile, a line per delta "
                    "(default); one per delta, a line per profile; or a single row, a "
                    "line per profile and delta")
    pl.add_argument("--trace", metavar="NAME",
                    help="the trace whose runs to draw (its file name, with or without "
                    "suffixes), when the table holds several")
    pl.add_argument("--metric", default="completion_ratio", metavar="COLUMN",
                    help="the column drawn (default completion_ratio; e.g. "
                    "besteffort_wait_mean_skip5pct, drawn in hours, or "
                    "besteffort_bsld_mean_skip5pct)")
    pl.add_argument("--average", metavar="SECTION.KEY",
                    help="a setting the sweep varied (--vary) to average over rather than "
                    "draw apart, e.g. workload.image-seed")
    _logging_options(pl)

    ga = sub.add_parser(
        "generate-ars", help="generate an AR workload for a trace (HPDC 2008 method)",
        description="Generate advance reservations whose node-seconds are rho times the "
        "site's capacity over the trace (the accounting of the shared injection files), "
        "durations delta +- 30 min, node counts in the nu range, each requested "
        "--notice hours before it starts. The same seed gives the same file.")
    ga.add_argument("trace", type=Path, metavar="TRACE",
                    help="the best-effort trace the ARs are for (.swf or .lwf, optionally "
                    "compressed)")
    ga.add_argument("--rho", type=float, required=True, help="AR share, e.g. 0.1 for 10%%")
    ga.add_argument("--delta", type=float, required=True, metavar="HOURS",
                    help="mean AR duration in hours")
    ga.add_argument("--nu", required=True, metavar="{small,medium,large,LOW-HIGH}",
                    help="nodes per AR: small 1-24, medium 25-48, large 49-72, or a range "
                    "such as 10-20")
    ga.add_argument("--notice", type=float, default=24, metavar="HOURS",
                    help="advance notice (default 24)")
    ga.add_argument("--nodes", type=int, help="site nodes (default: an LWF trace's site; "
                    "for SWF 144, the study's)")
    ga.add_argument("--seed", type=int, default=1)
    ga.add_argument("--out", type=Path, required=True, metavar="OUT.lwf")
    _logging_options(ga)

    ps = sub.add_parser(
        "prepare-swf", help="prepare an archive log as the HPDC 2008 study did",
        description="Write an SWF log prepared as the study prepared SDSC Blue Horizon's "
        "(../shared/traces/README.md): only the jobs of --queues, submit times relative "
        "to the first of them, field 8 (requested processors) divided by "
        "--procs-per-node so it holds nodes, then only the jobs submitted in the first "
        "--days, and only the --first of those. Every other field is kept, with the "
        "log's header and a note of what was done.")
    ps.add_argument("log", type=Path, metavar="LOG.swf",
                    help="the archive log (.swf, optionally .gz, .bz2 or .xz)")
    ps.add_argument("--queues", metavar="Q1,Q2,...", help="queues to keep (default: all)")
    ps.add_argument("--procs-per-node", type=int, default=1, metavar="N",
                    help="processors per node (default 1: field 8 unchanged)")
    ps.add_argument("--days", type=float, metavar="D", help="keep the first D days")
    ps.add_argument("--first", type=int, metavar="N", help="keep the first N jobs")
    ps.add_argument("--out", type=Path, required=True, metavar="OUT.swf")
    _logging_options(ps)

    pp = sub.add_parser(
        "profiles", help="list the built-in configuration profiles",
        description="List the built-in profiles, each with what it models, or print one "
        "of them whole (a start for a configuration file of your own: see replay "
        "--config).")
    pp.add_argument("--show", metavar="NAME", help="print this profile's TOML")
    pp.add_argument("--names", action="store_true", help="the names alone, one per line")
    _logging_options(pp)
    parser.set_defaults(service_handlers=service_cli.add_commands(sub))
    return parser


def _logging_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="WARNING", type=str.upper, choices=LEVELS,
                   metavar="LEVEL", help=f"one of {', '.join(LEVELS)} (default: WARNING)")
    p.add_argument("--log-json", action="store_true",
                   help="log one JSON object per line on stderr")


def resolve_config(profile: str | None, config_file: Path | None) -> Config:
    base = load_profile(profile) if profile is not None else None
    if config_file is not None:
        return load_config(config_file, base=base)
    return base or Config()


def _writable(*paths: Path | None) -> None:
    for out in paths:
        if out is not None and not out.parent.is_dir():  # fail before a long replay
            raise OSError(f"{out}: cannot write: no directory {str(out.parent)!r}")


def cmd_replay(args: argparse.Namespace) -> int:
    config = resolve_config(args.profile, args.config)
    settings = []
    for text in args.settings:
        section, key, values = _variation(text, option="--set")
        if len(values) != 1:
            raise ValueError(f"--set {text!r}: one value (a sweep's --vary takes several)")
        settings.append((section, key, values[0]))
    config = apply_settings(config, settings, "--set")
    out: Path = args.json_out
    _writable(out, args.metrics, args.leases_csv, args.swf_out, args.gantt,
              args.utilization_plot)
    window = None
    if args.plot_window is not None:
        if args.gantt is None and args.utilization_plot is None:
            raise ValueError("--plot-window needs --gantt or --utilization-plot")
        window = plots.parse_window(args.plot_window)
    for plot in (args.gantt, args.utilization_plot):
        if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ValueError(f"{plot}: a plot is written as .png, .svg or .pdf")
    if args.swf_out is not None and trace_suffix(args.trace) != ".swf":
        raise ValueError("--swf-out needs an SWF trace")
    workload = experiments.load_workload(args.trace, args.ars, config)
    n = len(workload.requests)
    log.info("trace loaded", extra={"trace": str(args.trace), "requests": n,
                                    "nodes": len(workload.site.nodes),
                                    "skipped": dict(workload.skipped)})

    show = not args.quiet and n > PROGRESS_THRESHOLD and sys.stderr.isatty()
    with tqdm(total=n, desc="replay", unit="lease", file=sys.stderr, disable=not show) as bar, \
            (logging_redirect_tqdm() if show else nullcontext()):
        def progress(i: int) -> None:
            bar.update(i - bar.n)

        result = replay(workload.site, config, workload.requests,
                        progress=progress if show else None)

    write_json(result, out)
    log.info("schedule written", extra={"path": str(out)})
    figures = metrics.compute(result)
    if args.metrics is not None:
        metrics.write_metrics_json(args.metrics, figures)
    if args.leases_csv is not None:
        metrics.write_leases_csv(args.leases_csv, figures.leases)
    if args.swf_out is not None:
        # every job, so the log stays whole: one never scheduled (skipped) waits -1
        jobs = experiments.read_swf_trace(args.trace, config).all_jobs
        write_swf(args.swf_out, jobs, {o.request.id: o.start for o in result.outcomes},
                  notes=(f"replayed by wsched with profile {args.profile or 'default'}",))
    if window is not None:
        events = [e for o in result.outcomes for e in o.events]
        if not any(e.end >= window[0] and e.start <= window[1] for e in events):
            log.warning("the plot window holds nothing of the schedule", extra={
                "window": args.plot_window,
                "schedule_s": f"{min(e.start for e in events)}-{max(e.end for e in events)}"
                if events else "empty"})
    if args.gantt is not None:
        plots.gantt(result, args.gantt, window=window)
    if args.utilization_plot is not None:
        plots.utilization_plot(result, args.utilization_plot, window=window)
    if not args.quiet:
        print_summary(trace_stem(args.trace), result, out)
        s = figures.summary
        if s.besteffort_wait_mean_all is not None:
            print(f"  best-effort  mean wait {s.besteffort_wait_mean_all:.0f} s, mean bounded "
                  f"slowdown {s.besteffort_bsld_mean_all:.2f} (all {s.besteffort_leases})")
        if s.ar_accepted or s.ar_rejected:
            print(f"  ARs          {s.ar_accepted} accepted, {s.ar_rejected} rejected")
        if workload.skipped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in workload.skipped)
            print(f"  not replayed {sum(c for _, c in workload.skipped)} SWF jobs ({reasons})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if not profiles:
        raise ValueError(f"--profiles names no profile (got {args.profiles!r})")
    profiles = [str(Path(p).resolve()) if p.endswith(".toml") else p for p in profiles]
    vary = [_variation(v) for v in args.vary]
    if len({(section, key) for section, key, _ in vary}) < len(vary):
        raise ValueError("--vary names a setting twice: give all its values in one "
                         "(SECTION.KEY=V1,V2,...)")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1 (got {args.jobs})")
    for path in [*args.traces, *args.ars]:
        if not path.is_file():
            raise OSError(f"{path}: no such file")
    specs = experiments.sweep_specs(args.traces, args.ars, profiles, vary)
    for spec in experiments.configurations(specs):
        spec.config()  # (a bad profile or --vary value: fail before anything starts)
    if args.dry_run:
        return _sweep_plan(specs, args.out / "runs")
    show = not args.quiet and sys.stderr.isatty()
    with tqdm(total=len(specs), desc="sweep", unit="run", file=sys.stderr,
              disable=not show) as bar, (logging_redirect_tqdm() if show else nullcontext()):
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        try:
            table = experiments.sweep(specs, args.out, jobs=args.jobs, progress=progress)
        except KeyboardInterrupt:
            finished = sum(experiments.finished(s, args.out / "runs") for s in specs)
            print(f"wsched: interrupted: {finished} of {len(specs)} runs finished (in "
                  f"{args.out / 'runs'}); the same command resumes the sweep", file=sys.stderr)
            return EXIT_INTERRUPTED
    if not args.quiet:
        print(f"{len(specs)} runs; results in {table}")
    return 0


def _variation(text: str, option: str = "--vary") -> tuple[str, str, list[Any]]:
    """``SECTION.KEY=V1,V2,...``; each value as in a TOML file, unquoted strings too."""
    setting, sep, values = text.partition("=")
    section, dot, key = setting.strip().partition(".")
    if not (sep and dot and section and key and values.strip()):
        form, example = (("V1,V2,...", "aggressive,conservative") if option == "--vary"
                         else ("VALUE", "conservative"))
        raise ValueError(f"{option} {text!r}: expected SECTION.KEY={form} (e.g. "
                         f"scheduling.backfilling={example})")
    parsed = []
    for value in values.split(","):
        try:
            parsed.append(tomllib.loads(f"v = {value.strip()}")["v"])
        except tomllib.TOMLDecodeError:
            parsed.append(value.strip())  # a bare word: a string
    return section, key, parsed


def _sweep_plan(specs: list[experiments.RunSpec], runs: Path) -> int:
    experiments.check_inputs(specs)
    counts: dict[str, int] = {"done": 0, "to run": 0, "out of date": 0}
    for spec in specs:
        status = ("done" if experiments.finished(spec, runs)
                  else "out of date" if (runs / f"{spec.name}.json").exists() else "to run")
        counts[status] += 1
        print(f"{status:<11}  {spec.name}")
    print(f"{len(specs)} runs: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    _writable(args.out)
    rows = sweep_rows(args.results, args.metric, args.trace, args.average)
    title = None if args.average is None \
        else f"{plots.metric_of(args.metric).title}, averaged over {args.average}"
    plots.sweep_figure(rows, args.out, metric=args.metric, layout=args.layout, title=title)
    return 0


def sweep_rows(results: Path, metric: str = "completion_ratio", trace: str | None = None,
               average: str | None = None) -> list[plots.SweepRow]:
    """The runs with AR injections of a sweep's table, as the figure draws them: one
    trace's (``trace``: its file name, with or without suffixes; needed when the table
    holds several, since a figure averages the runs of each point). ``average``: a
    setting the sweep varied (its column, ``SECTION.KEY``) taken out of the runs'
    profile names, so that the figure averages over its values."""
    import csv

    traces: dict[str, list[plots.SweepRow]] = {}  # the rows of each trace
    with results.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or ()
        needed = ("profile", "rho", "delta", "nu", metric)
        if missing := [c for c in needed if c not in columns]:
            raise ValueError(f"{results}: no column {', '.join(missing)} (a sweep's "
                             "results.csv has them)")
        if average and average not in columns:
            raise ValueError(f"{results}: no column {average} to average over (a sweep "
                             "has one for each setting it varies with --vary)")
        for line, r in enumerate(reader, start=2):  # (line 1: the header)
            if r.get("ars") == experiments.NO_ARS or not r[metric] or not r["nu"]:
                continue  # a baseline, a run without a ratio (its baseline failed) or nu
            if average:  # its "+key=value" (or "+section.key=value") out of the name
                named = {f"{average.partition('.')[2]}={r[average]}", f"{average}={r[average]}"}
                r["profile"] = "+".join(part for part in r["profile"].split("+")
                                        if part not in named)
            try:
                traces.setdefault(r.get("trace") or "", []).append(
                    plots.SweepRow.of(r, metric))
            except ValueError as e:
                raise ValueError(f"{results}, line {line}: {e} (rho, delta and "
                                 f"{metric} must be numbers)") from e
    if trace is not None:
        chosen = [t for t in traces if trace in (t, trace_stem(Path(t)))]
        if not chosen:
            raise ValueError(f"{results}: no runs of trace {trace!r} to draw "
                             f"(it has: {', '.join(sorted(traces)) or 'none'})")
        traces = {t: traces[t] for t in chosen}
    if len(traces) > 1:
        raise ValueError(f"{results}: runs of {len(traces)} traces "
                         f"({', '.join(sorted(traces))}): draw one with --trace NAME (a "
                         "figure averages the runs of each point, which would mix them)")
    rows = [row for of_trace in traces.values() for row in of_trace]
    if not rows:
        raise ValueError(f"{results}: no runs with AR injections, their rho, delta and "
                         f"nu, and a value of {metric} (rho, delta and nu come from "
                         "injection files named as work_10-dur_2h-size_2medium.lwf, or "
                         "written by wsched generate-ars)")
    return rows


def cmd_generate_ars(args: argparse.Namespace) -> int:
    _writable(args.out)
    nodes = generator.node_range(args.nu)
    if trace_suffix(args.trace) == ".swf":
        swf = read_swf(args.trace)
        requests, first_id, site_nodes = swf.requests, swf.max_id + 1, generator.STUDY_NODES
    else:  # (its site matters only for its node count)
        lwf = read_lwf(args.trace, need_site=False)
        if lwf.site is None and args.nodes is None:
            raise ValueError(f"{args.trace}: the trace describes no site: give --nodes, "
                             "the node count whose capacity rho is a share of")
        requests, site_nodes = lwf.requests, len(lwf.site.nodes) if lwf.site else 0
        first_id = max((r.id for r in requests), default=0) + 1
    site_nodes = args.nodes if args.nodes is not None else site_nodes
    if site_nodes < 1:
        raise ValueError(f"--nodes must be at least 1 (got {site_nodes})")
    if nodes[1] > site_nodes:
        raise ValueError(f"--nu {args.nu}: ARs of up to {nodes[1]} nodes on a site of "
                         f"{site_nodes} would be rejected")
    span = generator.trace_span(requests)
    params = generator.ARParameters(rho=args.rho, delta_hours=args.delta, nodes=nodes,
                                    notice_hours=args.notice)
    generator.write_ar_workload(
        args.out, params, span=span, seed=args.seed, first_id=first_id,
        basis_node_seconds=generator.capacity_node_seconds(site_nodes, span))
    return 0


def cmd_prepare_swf(args: argparse.Namespace) -> int:
    _writable(args.out)
    queues = None
    if args.queues is not None:
        try:
            queues = [int(q) for q in args.queues.split(",")]
        except ValueError:
            raise ValueError(f"--queues: expected queue numbers separated by commas "
                             f"(got {args.queues!r})") from None
    if args.procs_per_node < 1:
        raise ValueError(f"--procs-per-node must be at least 1 (got {args.procs_per_node})")
    if args.days is not None and args.days <= 0:
        raise ValueError(f"--days must be positive (got {args.days:g})")
    if args.first is not None and args.first < 1:
        raise ValueError(f"--first must be at least 1 (got {args.first})")
    log_ = read_swf(args.log)
    jobs = prepare(log_, queues=queues, procs_per_node=args.procs_per_node,
                   days=args.days, first=args.first)
    if not jobs:
        raise ValueError(f"{args.log}: no job left to write (queues are field 15 of a job)")
    done = [f"Note: prepared by wsched prepare-swf from {args.log.name}"]
    if queues is not None:
        done.append(f"Note: only queues {', '.join(map(str, queues))}")
    done.append("Note: submit times relative to the first job kept")
    if args.procs_per_node > 1:
        done.append(f"Note: field 8 (requested processors) divided by "
                    f"{args.procs_per_node}, rounded up: requested nodes")
    if args.days is not None:
        done.append(f"Note: jobs submitted in the first {args.days:g} days")
    if args.first is not None:
        done.append(f"Note: the first {args.first} jobs")
    write_swf(args.out, jobs, header=[*log_.header, *done])
    log.info("log prepared", extra={"jobs": len(jobs), "path": str(args.out)})
    return 0


def print_summary(name: str, result: ReplayResult, out: Path) -> None:
    s = result.summary()
    states = ", ".join(f"{state} {count}" for state, count in s["states"].items())
    print(f"{name}: {s['leases']} leases ({states or 'none'})")
    print(f"  makespan     {s['makespan']} s")
    print(f"  utilization  {s['utilization']:.1%}")
    print(f"  transfers    {s['transfers']}")
    print(f"  suspensions  {s['suspensions']}")
    print(f"  migrations   {s['migrations']}")
    print(f"schedule written to {out}")


def cmd_profiles(args: argparse.Namespace) -> int:
    if args.show is not None:
        print(profile_text(args.show), end="")
        return 0
    names = profile_names()
    width = max(map(len, names))
    for name in names:
        print(name if args.names else f"{name:<{width}}  {profile_description(name)}")
    return 0


def _message(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        msg = f"{where}{e.strerror}"
    else:
        msg = str(e)
    return " ".join(msg.split())  # one line, whatever the source


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "replay": cmd_replay, "profiles": cmd_profiles, "sweep": cmd_sweep, "plot": cmd_plot,
        "generate-ars": cmd_generate_ars, "prepare-swf": cmd_prepare_swf,
        **args.service_handlers}
    try:
        return commands[args.command](args)
    except (TraceError, ConfigError, OSError, ValueError) as e:
        print(f"wsched: error: {_message(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # (Ctrl-C: a line, not a traceback)
        print("wsched: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
