"""Scheduling-throughput benchmark for the core (``scheduler.replay.replay``).

Builds a seeded synthetic workload (mixed best-effort / AR / immediate leases on a
uniform site, Poisson arrivals at ~85-90 % offered load), replays it once in
simulated time, and prints wall time, leases scheduled per second, peak memory
and the replay summary. The workload is generated before timing starts.

    .venv/bin/python bench/bench_core.py                      # 20,000 leases, 500 nodes
    .venv/bin/python bench/bench_core.py --profile test-transfer-reuse --leases 3000 --nodes 200
    .venv/bin/python bench/bench_core.py --leases 2000 --nodes 50 --check
    .venv/bin/python bench/bench_core.py --profile-out /tmp/core.prof

See bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import pstats
import resource
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.config import Backfilling, Config, load_profile
from scheduler.leases import (
    UNLIMITED,
    DiskImage,
    LeaseKind,
    LeaseRequest,
    Resources,
    Site,
)
from scheduler.replay import ReplayResult, replay

NODE_CPU = 800  # 8 cores
NODE_MEMORY = 16384  # MB
WARM_UP = 300  # leases replayed before the timed replay
TARGET_LOAD = 0.875  # offered load aimed at (fraction of the binding dimension)

# VMs per lease: mostly 1-4, a tail up to 32.
_VM_CHOICES = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32])
_VM_WEIGHTS = np.array([40, 22, 10, 14, 5, 4, 2, 1.5, 1, 0.5])
_MIN_DURATION, _MAX_DURATION = 5 * 60, 6 * 3600
_IMAGES = 40


def build_site(nodes: int) -> Site:
    cap = Resources(cpu=NODE_CPU, memory=NODE_MEMORY, disk=UNLIMITED, net_in=UNLIMITED,
                    net_out=UNLIMITED)
    return Site.uniform(nodes, cap)


def build_workload(leases: int, nodes: int, seed: int,
                   load: float = TARGET_LOAD) -> tuple[list[LeaseRequest], dict[str, float]]:
    """``leases`` requests sorted by submit time, plus workload statistics."""
    rng = np.random.default_rng(seed)
    n = leases
    # --- lease kinds: ~85 % best-effort, ~10 % AR, ~5 % immediate
    kind_draw = rng.random(n)
    kinds = np.where(kind_draw < 0.85, 0, np.where(kind_draw < 0.95, 1, 2))
    vms = rng.choice(_VM_CHOICES, size=n, p=_VM_WEIGHTS / _VM_WEIGHTS.sum())
    vms = np.minimum(vms, nodes)
    cpu = rng.integers(1, 5, size=n) * 100  # 100..400
    memory = rng.integers(1, 5, size=n) * 1024  # 1024..4096
    # --- durations: log-uniform in [5 min, 6 h]; ~half end early
    duration = np.exp(rng.uniform(math.log(_MIN_DURATION), math.log(_MAX_DURATION), size=n))
    duration = np.round(duration).astype(np.int64)
    early = rng.random(n) < 0.5
    real = np.maximum(1, (duration * rng.uniform(0.1, 0.95, size=n)).astype(np.int64))
    effective = np.where(early, real, duration)
    # --- images: 40 ids of 1-4 GB, Zipf-like popularity
    img_sizes = rng.integers(1, 5, size=_IMAGES) * 1024
    pop = 1.0 / np.arange(1, _IMAGES + 1) ** 1.1
    img_idx = rng.choice(_IMAGES, size=n, p=pop / pop.sum())
    images = [DiskImage(f"img{i:02d}.img", int(img_sizes[i])) for i in range(_IMAGES)]
    preemptible = rng.random(n) < 0.8
    # --- arrivals: Poisson, rate chosen for the offered load (binding dimension)
    site_cpu, site_mem = nodes * NODE_CPU, nodes * NODE_MEMORY
    per_cpu = float(np.mean(vms * cpu * effective))  # cpu-seconds per lease (mean)
    per_mem = float(np.mean(vms * memory * effective))
    rate = load / max(per_cpu / site_cpu, per_mem / site_mem)  # leases per second
    gaps = rng.exponential(1.0 / rate, size=n)
    submit = np.floor(np.cumsum(gaps)).astype(np.int64)
    ar_offset = rng.integers(30 * 60, 6 * 3600 + 1, size=n)

    requests: list[LeaseRequest] = []
    for i in range(n):
        kind = (LeaseKind.BESTEFFORT, LeaseKind.AR, LeaseKind.IMMEDIATE)[int(kinds[i])]
        sub = int(submit[i])
        requests.append(LeaseRequest(
            id=i + 1, kind=kind, vms=int(vms[i]),
            resources=Resources(cpu=int(cpu[i]), memory=int(memory[i])),
            image=images[int(img_idx[i])], duration=int(duration[i]), submit=sub,
            start=sub + int(ar_offset[i]) if kind is LeaseKind.AR else None,
            real_duration=int(real[i]) if early[i] else None,
            preemptible=bool(preemptible[i]) and kind is LeaseKind.BESTEFFORT))
    horizon = max(1, int(submit[-1]))
    stats = {
        "rate_per_hour": rate * 3600,
        "horizon_s": horizon,
        "offered_load_cpu": per_cpu * n / horizon / site_cpu,
        "offered_load_memory": per_mem * n / horizon / site_mem,
        "mean_vms": float(vms.mean()),
    }
    return requests, stats


def cpu_utilization(result: ReplayResult) -> float:
    """Fraction of the site's CPU busy with users' runs between 0 and the makespan."""
    busy = sum((e.end - e.start) * len(e.nodes) * o.request.resources.cpu
               for o in result.outcomes for e in o.runs)
    makespan = max((o.end for o in result.outcomes if o.end is not None), default=0)
    total = sum(n.capacity.cpu for n in result.site.nodes) * makespan
    return busy / total if total else 0.0


def run_replay(site: Site, config: Config, requests: list[LeaseRequest], *, trace: bool,
               profiler: cProfile.Profile | None
               ) -> tuple[ReplayResult | None, Exception | None, float, float, int]:
    """One replay: (result or None, the exception if it failed, wall seconds, CPU seconds
    of this process, tracemalloc peak in bytes above what was allocated before it, 0 if
    not traced)."""
    gc.collect()
    base = 0
    if trace:
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
    result: ReplayResult | None = None
    failure: Exception | None = None
    t0, c0 = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    try:
        result = replay(site, config, requests)
    except Exception as e:  # a scheduler bug: still report the time (and the profile)
        failure = e
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = 0
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, failure, wall, cpu, max(0, peak - base)


def _fmt_states(states: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in states.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--leases", type=int, default=20_000)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", default="test-notransfer",
                    help="built-in configuration profile (default: %(default)s)")
    ap.add_argument("--backfilling", choices=[b.value for b in Backfilling],
                    help="override the profile's backfilling policy")
    ap.add_argument("--load", type=float, default=TARGET_LOAD,
                    help="offered load to aim at (default: %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="run the invariant checker on the result (not timed)")
    ap.add_argument("--profile-out", type=Path, metavar="FILE",
                    help="run the replay under cProfile and write the stats to FILE")
    ap.add_argument("--json-out", type=Path, metavar="FILE",
                    help="write the replay's JSON (as `replay` would) to FILE (not timed)")
    ap.add_argument("--memory", choices=["separate", "inline", "off"], default="separate",
                    help="how to get the tracemalloc peak: a second, untimed replay under "
                         "tracemalloc (default; tracemalloc slows the core ~5x), during "
                         "the timed replay (distorts the throughput), or not at all")
    args = ap.parse_args(argv)

    config: Config = load_profile(args.profile)
    if args.backfilling:
        config = replace(config, backfilling=Backfilling(args.backfilling))
    site = build_site(args.nodes)
    requests, stats = build_workload(args.leases, args.nodes, args.seed, args.load)
    kinds = Counter(str(r.kind) for r in requests)

    print(f"leases: {len(requests)}")
    print(f"nodes: {args.nodes}")
    print(f"profile: {args.profile} (backfilling {config.backfilling}, "
          f"image transfer {config.image_transfer}, cache {config.image_cache_mb} MB)")
    print(f"seed: {args.seed}")
    print("workload: " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
          + f" preemptible={sum(r.preemptible for r in requests)}"
          f" mean_vms={stats['mean_vms']:.2f}")
    print(f"arrivals: {stats['rate_per_hour']:.1f}/h over {stats['horizon_s'] / 3600:.1f} h; "
          f"offered load cpu {stats['offered_load_cpu']:.3f}, "
          f"memory {stats['offered_load_memory']:.3f}")
    sys.stdout.flush()

    # The compiled kernels load from numba's cache on their first call in a process
    # (about 0.4 s in all): a once-per-process cost, timed apart from the replay.
    t0 = time.perf_counter()
    replay(site, config, requests[:WARM_UP])
    print(f"warm-up: {time.perf_counter() - t0:.3f} s (a replay of the first {WARM_UP} "
          f"leases: loads the compiled kernels, once per process; not in the figures below)")

    profiler = cProfile.Profile() if args.profile_out else None
    inline = args.memory == "inline" and profiler is None
    result, failure, wall, cpu, peak = run_replay(site, config, requests, trace=inline,
                                             profiler=profiler)
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    print(f"replay wall: {wall:.3f} s" + (" (under cProfile)" if profiler else "")
          + (" (under tracemalloc)" if inline else ""))
    print(f"replay cpu: {cpu:.3f} s (process time; on a busy machine it is the steadier "
          f"figure)")
    print(f"throughput: {len(requests) / wall:.1f} leases/s")
    print(f"peak memory (ru_maxrss, process): {maxrss_kb / 1024:.1f} MiB")
    sys.stdout.flush()
    if args.memory == "separate" and profiler is None and result is not None:
        _, _, traced_wall, _, peak = run_replay(site, config, requests, trace=True, profiler=None)
        print(f"peak memory (tracemalloc, replay): {peak / 2**20:.1f} MiB "
              f"(separate traced replay, {traced_wall:.1f} s)")
    elif inline:
        print(f"peak memory (tracemalloc, replay): {peak / 2**20:.1f} MiB")
    if profiler is not None:
        profiler.dump_stats(str(args.profile_out))
        print(f"profile written to {args.profile_out}", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    if result is None:
        print(f"REPLAY FAILED: {type(failure).__name__}: {failure}")
        return 1
    summary: dict[str, Any] = result.summary()
    print(f"states: {_fmt_states(summary['states'])}")
    print(f"makespan: {summary['makespan']} s ({summary['makespan'] / 3600:.1f} h)")
    print(f"utilization: {summary['utilization']:.4f} (replay summary: VM-seconds per "
          f"node-second)")
    print(f"cpu utilization: {cpu_utilization(result):.4f} (run cpu-seconds / site cpu "
          f"over the makespan)")
    print(f"transfers: {summary['transfers']}")
    print(f"suspensions: {summary['suspensions']}")
    print(f"migrations: {summary['migrations']}")

    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    if args.check:
        from scheduler.invariants import check_schedule

        violations = check_schedule(site, config, result.outcomes, sent=result.sent)
        print(f"invariant violations: {len(violations)}")
        for v in violations[:10]:
            print(f"  - {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
