"""Trace-replay experiments: one run (a trace, optional AR injections, a profile) and
sweeps over a grid of them.

A *run* reads a best-effort trace (SWF, or LWF), adds advance reservations (the plain
text injection format of ``../shared/traces/ar-injections-30days`` or an LWF file),
gives the leases the profile's image mix, replays them and computes the metrics.
A *sweep* runs a grid of traces x injections x profiles on all cores, one process per
run, writing each finished run to its own JSON file (so an interrupted sweep resumes
where it stopped) and all of them to one results table. Each (trace, profile) is also
run without injections: that is the baseline of the completion-time ratio.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import itertools
import json
import logging
import os
import pickle
import re
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .config import Config, apply_settings, profile_label, profile_or_file
from .generator import NODE_RANGES, assign_images
from .injections import read_ar_injections
from .leases import LeaseRequest, Resources, Site
from .lwf import TraceError, read_lwf, read_trace_bytes, trace_stem, trace_suffix
from .metrics import Metrics, compute
from .replay import ReplayResult, replay
from .swf import SwfTrace, read_swf

log = logging.getLogger(__name__)

#: ``work_10-dur_2h-size_2medium``: rho (%), mean duration (h), node range
_INJECTION_NAME = re.compile(r"work_(\d+)-dur_(\d+)h-size_\d*(small|medium|large)")
#: what ``wsched generate-ars`` writes in an LWF file's description (generator.ar_workload)
_GENERATED = re.compile(rb"rho ([0-9.e+-]+) of \d+ node-seconds.*?durations (\d+) s .*?"
                        rb"nodes (\d+)-(\d+);", re.S)
NO_ARS = "none"


@dataclass(frozen=True)
class Workload:
    site: Site
    requests: tuple[LeaseRequest, ...]  # sorted by submit time, then id
    # SWF jobs not replayed, by reason (see scheduler.swf.SkipReason); none for LWF
    skipped: tuple[tuple[str, int], ...] = ()


def read_trace(path: Path, config: Config
               ) -> tuple[Site, tuple[LeaseRequest, ...], tuple[tuple[str, int], ...],
                          frozenset[int]]:
    """The best-effort trace: SWF by its suffix (``.swf``, compressed or not), LWF
    otherwise; with the counts of the SWF jobs skipped, by reason, and the ids of all its
    jobs, skipped ones included (injected leases must not take them: the SWF written
    back with the wait times lists every job by its id). The site is the LWF file's, or
    the configuration's ``[site]``."""
    if trace_suffix(path) == ".swf":
        site = config.default_site()
        if site is None:
            # (Its header may say how big the logged machine was: a hint, not a site,
            # since whether jobs count processors or nodes depends on how it was made.)
            sizes = [h for h in read_swf_trace(path, config).header
                     if h.split(":")[0].strip() in ("MaxNodes", "MaxProcs")]
            hint = f"; its header says {', '.join(sizes)}" if sizes else ""
            raise TraceError(str(path), "an SWF trace describes no site: give the "
                             "configuration a [site] table (every experiment profile has "
                             f"one){hint}")
        try:
            stat = path.stat()
        except OSError:
            read_swf_trace(path, config)  # (which says what is wrong)
            raise
        return site, *_swf_requests(str(path), stat.st_mtime_ns, stat.st_size,
                                    tuple(_swf_options(config).items()))
    workload = read_lwf(path, default_site=config.default_site())
    assert workload.site is not None  # read_lwf raises when there is none
    return workload.site, workload.requests, (), frozenset(r.id for r in workload.requests)


def read_swf_trace(path: Path, config: Config) -> SwfTrace:
    """An SWF trace read with the configuration's ``[swf]`` options."""
    return read_swf(path, **_swf_options(config))


def _swf_options(config: Config) -> dict[str, Any]:
    # By default a job holds its nodes whole: each VM asks for a [site] node's CPU and
    # memory (with no [site] node described, read_swf's 1 CPU and 1024 MB).
    cpu = config.swf_vm_cpu or config.site_node.cpu
    memory = config.swf_vm_memory or config.site_node.memory
    return {"nodes_field": config.swf_nodes_field,
            "procs_per_node": config.swf_procs_per_node,
            "keep_started_cancelled": config.swf_keep_started_cancelled,
            "node": Resources(cpu=cpu, memory=memory) if cpu and memory else None}


@functools.lru_cache(maxsize=4)
def _swf_requests(path: str, mtime_ns: int, size: int, options: tuple[tuple[str, Any], ...]
                  ) -> tuple[tuple[LeaseRequest, ...], tuple[tuple[str, int], ...],
                             frozenset[int]]:
    """An SWF file's leases, skip counts and job ids, read once per process while the
    file (and how it is read) stays as it is: a sweep's worker replays the same trace
    in run after run (the requests are frozen)."""
    trace = read_swf(path, **dict(options))
    return (trace.requests, tuple((str(k), v) for k, v in sorted(trace.skip_counts.items())),
            frozenset(j.id for j in trace.all_jobs))


def read_ars(path: Path, first_id: int, site: Site, taken: frozenset[int] = frozenset(),
             *, warn: bool = True) -> tuple[LeaseRequest, ...]:
    """AR injections: an LWF file (XML; its leases are checked against ``site`` when it
    describes none) or the plain-text injection format, whose leases take the ids
    ``first_id``, ``first_id + 1``, … An LWF file's leases keep their ids unless the
    trace uses one of them (``taken``): Haizea's injection files number their leases
    from 1, as its traces do. Then they are numbered like the plain-text format's, in
    order of arrival, and a warning says so. What is warned of (this, or the plain
    format's starts moved to 0) is logged as information if not ``warn``: a sweep warns
    once, as it checks its inputs, not once per run."""
    if not read_trace_bytes(path).lstrip().startswith(b"<"):  # (its reader reads it again)
        return read_ar_injections(path, first_id=first_id, warn=warn)
    requests = read_lwf(path, default_site=site).requests
    if clash := taken & {r.id for r in requests}:
        renumbered = tuple(replace(r, id=first_id + i) for i, r in enumerate(requests))
        log.log(logging.WARNING if warn else logging.INFO,
                "the trace uses lease ids of the injection file: its leases are renumbered "
                f"{first_id}-{renumbered[-1].id} in order of arrival",
                extra={"path": str(path), "clashing": len(clash)})
        return renumbered
    return requests


def load_workload(trace: Path, ars: Path | None, config: Config, *, warn: bool = True
                  ) -> Workload:
    site, requests, skipped, ids = read_trace(trace, config)
    if not requests and warn:  # (a sweep's check_inputs warned)
        _nothing_to_replay(trace, skipped)
    merged = list(requests)
    if ars is not None:
        merged += read_ars(ars, max(ids, default=0) + 1, site, ids, warn=warn)
    merged.sort(key=lambda r: (r.submit, r.id))
    if warn and _replaces_images(trace, config):  # (a sweep's check_inputs warned)
        _images_replaced(trace)
    if config.workload_images:
        merged = list(assign_images(merged, images=config.workload_images,
                                    size_mb=config.workload_image_size,
                                    weights=config.image_weights(),
                                    seed=config.workload_image_seed))
    return Workload(site, tuple(merged), skipped)


def _replaces_images(trace: Path, config: Config) -> bool:
    """Does the configuration's image mix replace images the trace names? (An SWF trace
    names none: there the mix is what gives its leases one.)"""
    return bool(config.workload_images) and trace_suffix(trace) != ".swf"


def _images_replaced(trace: Path) -> None:
    log.warning("the configuration's [workload] image mix replaces the disk images the "
                "trace gives its leases", extra={"trace": str(trace)})


def _nothing_to_replay(trace: Path, skipped: tuple[tuple[str, int], ...]) -> None:
    log.warning("the trace has no lease to replay: every job is skipped",
                extra={"trace": str(trace), **dict(skipped)})


def injection_parameters(ars: Path | None) -> dict[str, Any]:
    """rho (%), delta (hours) and nu (node range) of an injection file: from its name,
    as the shared files give them (``work_10-dur_2h-size_2medium``), else from what
    ``wsched generate-ars`` recorded in the file it wrote (None where neither says)."""
    if ars is None:
        return {"rho": 0, "delta": None, "nu": None}
    if (m := _INJECTION_NAME.search(trace_stem(ars))) is not None:
        return {"rho": int(m[1]), "delta": int(m[2]), "nu": m[3]}
    if (g := _GENERATED.search(read_trace_bytes(ars)[:4096])) is None:
        return {"rho": None, "delta": None, "nu": None}
    nodes = (int(g[3]), int(g[4]))
    nu = next((size for size, r in NODE_RANGES.items() if r == nodes), f"{nodes[0]}-{nodes[1]}")
    return {"rho": _number(float(g[1]) * 100), "delta": _number(int(g[2]) / 3600), "nu": nu}


def _number(x: float) -> float | int:
    x = round(x, 6)  # (0.07 * 100 is 7.000000000000001)
    return int(x) if x.is_integer() else x


# ------------------------------------------------------------------------ one run

#: One setting a sweep varies: (TOML section, key, value), e.g.
#: ("scheduling", "backfilling", "conservative").
Setting = tuple[str, str, Any]


@dataclass(frozen=True)
class RunSpec:
    trace: Path
    ars: Path | None
    profile: str  # a built-in profile's name or a TOML file's path (profile_or_file)
    settings: tuple[Setting, ...] = ()  # over the profile's (a sweep's --vary)

    @property
    def label(self) -> str:
        """The configuration's name in run names and tables: the profile's, then each
        setting as ``+key=value`` (``vm-mult+backfilling=conservative``)."""
        keys = [key for _, key, _ in self.settings]
        return profile_label(self.profile) + "".join(
            f"+{key if keys.count(key) == 1 else f'{section}.{key}'}={value}"
            for section, key, value in self.settings)

    @property
    def name(self) -> str:
        ars = trace_stem(self.ars) if self.ars else NO_ARS
        return f"{trace_stem(self.trace)}__{ars}__{self.label}"

    def config(self) -> Config:
        return apply_settings(profile_or_file(self.profile), self.settings, "--vary")

    def baseline(self) -> RunSpec:
        return RunSpec(self.trace, None, self.profile, self.settings)


def run_experiment(spec: RunSpec) -> tuple[ReplayResult, Metrics]:
    config = spec.config()
    workload = load_workload(spec.trace, spec.ars, config, warn=False)  # (check_inputs did)
    result = replay(workload.site, config, workload.requests)
    return result, compute(result)


def _row(spec: RunSpec, metrics: Metrics) -> dict[str, Any]:
    row: dict[str, Any] = {"run": spec.name, "trace": spec.trace.name,
                           "ars": spec.ars.name if spec.ars else NO_ARS,
                           "profile": spec.label,
                           **{f"{section}.{key}": value for section, key, value in spec.settings},
                           **injection_parameters(spec.ars)}
    summary = metrics.summary.to_dict()
    for key in ("baseline_completion", "completion_ratio"):  # filled in by the sweep
        summary.pop(key)
    row.update(summary)
    return row


def _run_one(spec: RunSpec, out: Path) -> Path:
    """Run ``spec`` (in a worker process) and write its row; returns the file."""
    inputs = inputs_digest(spec)  # (before the run reads them: what it replays)
    try:
        _, metrics = run_experiment(spec)
    except Exception as e:
        # The error goes back to the parent pickled: one that cannot be would break
        # the pool, and every run still to come with it.
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            raise RuntimeError(f"{type(e).__name__}: {e}") from None
        raise
    path = out / f"{spec.name}.json"
    tmp = path.with_suffix(".json.tmp")
    row = {**_row(spec, metrics), INPUTS_KEY: inputs}
    tmp.write_text(json.dumps(row, indent=1) + "\n")
    tmp.replace(path)  # atomic: a killed sweep never leaves half a result
    return path


# -------------------------------------------------------------------------- sweep

def sweep_specs(traces: Sequence[Path], ars: Sequence[Path | None],
                profiles: Sequence[str],
                vary: Sequence[tuple[str, str, Sequence[Any]]] = ()) -> list[RunSpec]:
    """The grid, plus every (trace, profile) baseline without injections. ``vary``:
    settings (section, key, values) whose every combination is a configuration of each
    profile (Haizea's multi-configuration files), e.g. ``[("scheduling", "backfilling",
    ["aggressive", "conservative"])]``."""
    combinations = list(itertools.product(*(
        [(section, key, value) for value in values] for section, key, values in vary)))
    specs: dict[str, RunSpec] = {}
    for trace in traces:
        for profile, settings in itertools.product(profiles, combinations):
            for a in (None, *ars):
                spec = RunSpec(trace, a, profile, settings)
                other = specs.setdefault(spec.name, spec)
                if other != spec:  # (the same file given twice is one run)
                    first, second = next(pair for pair in (
                        (other.trace, spec.trace), (other.ars, spec.ars),
                        (other.profile, spec.profile), (other.settings, spec.settings))
                        if pair[0] != pair[1])
                    raise ValueError(f"{first} and {second} would write the same run "
                                     f"{spec.name}: a sweep names its runs by the files' "
                                     "names, without their folders")
    return list(specs.values())


def sweep(specs: Iterable[RunSpec], out: Path, *, jobs: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> Path:
    """Run every spec not finished yet in ``out/runs`` on ``jobs`` processes (default:
    all cores) and write ``out/results.csv``; returns its path. Every input file is read
    first (``check_inputs``). A failed run is logged; once the others are done, the
    first error is raised again, as a ``SweepError`` if every failure was bad input
    (finished runs are kept)."""
    specs = list(specs)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for spec in configurations(specs):
        spec.config()  # fail before starting anything
    todo = [s for s in specs if not finished(s, runs)]
    if stale := [s.name for s in todo if (runs / f"{s.name}.json").exists()]:
        log.info("runs out of date: run again", extra={"runs": stale})
    check_inputs(todo)
    done = len(specs) - len(todo)
    log.info("sweep", extra={"runs": len(specs), "to_do": len(todo), "done": done})
    if progress is not None:
        progress(done, len(specs))
    errors: list[tuple[RunSpec, BaseException]] = []
    if todo:
        with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1,
                                 initializer=_ignore_interrupts) as pool, _stop_on_interrupt(pool):
            futures = {pool.submit(_run_one, s, runs): s for s in todo}
            for fut in as_completed(futures):
                spec = futures[fut]
                error = fut.exception()
                if error is not None:
                    log.error("run failed", extra={"run": spec.name, "error": str(error)})
                    errors.append((spec, error))
                else:
                    log.info("run finished", extra={"run": spec.name})
                done += 1
                if progress is not None:
                    progress(done, len(specs))
    if errors:
        spec, error = errors[0]
        message = (f"{len(errors)} of {len(todo)} runs failed (the others are kept), "
                   f"e.g. {spec.name}: {error}")
        if all(isinstance(e, ValueError | OSError) for _, e in errors):
            raise SweepError(message) from error  # bad input
        raise RuntimeError(message) from error
    return write_results(specs, runs, out / "results.csv")


#: A finished run's record of what it replayed (see ``inputs_digest``).
INPUTS_KEY = "inputs_sha256"


def inputs_digest(spec: RunSpec) -> str:
    """What a run's result depends on: wsched's version and code (``code_digest``), the
    profile's configuration and the contents of its trace and injection files. A sweep
    re-runs a finished run whose digest differs (a file, the profile or the code changed
    since), rather than keep a stale result."""
    parts = [_version(), code_digest(), repr(spec.config()),
             _file_digest(spec.trace),
             _file_digest(spec.ars) if spec.ars is not None else NO_ARS]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


#: Modules of the package a run's result does not depend on (the service, the figures,
#: the command line, setup.py's record of what it compiled: compiled or not, a run is the
#: same): every other one is in ``code_digest``, new ones included.
_NOT_REPLAYED = frozenset({"__init__", "cli", "client", "enactment", "engine", "invariants",
                           "libvirt_driver", "plots", "service", "service_cli", "store",
                           "_compiled_from"})


@functools.cache
def code_digest() -> str:
    """The source of the modules a replay runs: a run made by other code (an edited
    checkout, whatever its version says) is out of date."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem not in _NOT_REPLAYED:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _version() -> str:
    try:
        return version("wsched")
    except PackageNotFoundError:  # (run from a source tree that was never installed)
        return "unknown"


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _file_digest_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1024)
def _file_digest_of(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished(spec: RunSpec, runs: Path) -> bool:
    """Has ``spec`` run into ``runs``, on the inputs it has now? (A record that cannot
    be read, or from before runs recorded their inputs, counts as not run.)"""
    try:
        recorded = json.loads((runs / f"{spec.name}.json").read_text()).get(INPUTS_KEY)
    except (OSError, ValueError):
        return False
    return bool(recorded == inputs_digest(spec))


def _ignore_interrupts() -> None:
    # A terminal's Ctrl-C reaches every process of the sweep: the parent stops the
    # workers (below), which would otherwise each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _stop_on_interrupt(pool: ProcessPoolExecutor) -> Iterator[None]:
    """On Ctrl-C, drop the runs not begun and stop those under way at once (the pool's
    own exit would wait for every run still to come). Finished runs are kept, so the
    same sweep resumes."""
    try:
        yield
    except KeyboardInterrupt:
        terminate = getattr(pool, "terminate_workers", None)  # (Python 3.14)
        if terminate is not None:
            terminate()
        else:  # (before shutdown, which forgets the processes)
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise


class SweepError(ValueError):
    """Runs of a sweep failed on bad input (a trace or a configuration)."""


def check_inputs(specs: Sequence[RunSpec]) -> None:
    """Read every trace and injection file of ``specs`` once, so that a bad one stops
    a sweep before any run starts, its error naming the file and line (every run that
    reads it would fail). About 0.7 s for the 72 injection files of the paper's sweep."""
    traces: dict[tuple[Path, Site | None], tuple[Site, int, frozenset[int]]] = {}
    read: set[tuple[Path, Site, int]] = set()
    replaced: set[Path] = set()  # LWF traces whose images a configuration replaces
    for spec in specs:
        config = spec.config()
        if _replaces_images(spec.trace, config) and spec.trace not in replaced:
            _images_replaced(spec.trace)
            replaced.add(spec.trace)
        key = (spec.trace, config.default_site())
        if key not in traces:
            site, requests, skipped, ids = read_trace(spec.trace, config)
            if not requests:
                _nothing_to_replay(spec.trace, skipped)
            traces[key] = site, max(ids, default=0) + 1, ids
        site, first_id, taken = traces[key]
        varied = [f"{section}.{k}" for section, k, _ in spec.settings if section == "site"]
        if varied and site != config.default_site():  # (an LWF trace's own <site>)
            raise SweepError(f"{spec.trace}: the trace describes its own site, so --vary "
                             f"{varied[0]} would change nothing")
        if spec.ars is not None and (spec.ars, site, first_id) not in read:
            read_ars(spec.ars, first_id, site, taken)
            read.add((spec.ars, site, first_id))


def configurations(specs: Iterable[RunSpec]) -> list[RunSpec]:
    """One spec of each configuration (profile and settings) in ``specs``."""
    return list({(s.profile, s.settings): s for s in specs}.values())


def write_results(specs: Sequence[RunSpec], runs: Path, path: Path) -> Path:
    """One row per run, with the completion-time ratio to its baseline run."""
    rows = {s.name: json.loads((runs / f"{s.name}.json").read_text()) for s in specs}
    table: list[dict[str, Any]] = []
    for s in specs:
        row = dict(rows[s.name])
        row.pop(INPUTS_KEY, None)  # (the run's own record, not a figure)
        base = rows.get(s.baseline().name)
        completion, base_completion = row["besteffort_completion"], (
            base["besteffort_completion"] if base else None)
        row["baseline_completion"] = base_completion
        row["completion_ratio"] = (completion / base_completion
                                   if completion is not None and base_completion else None)
        table.append(row)
    # (every column of every row: specs may vary different settings, each its column)
    columns = list(dict.fromkeys(column for row in table for column in row))
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in table)
    tmp.replace(path)
    return path
