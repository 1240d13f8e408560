"""Trace-replay experiment benchmark: how fast wsched replays the study's workloads.

Prints (``key: value`` lines on stdout):

- ``batch-easy`` on ``swf/30days.swf``: the time to read the trace, then the replay's
  CPU time and jobs/s (scheduling work only, reading excluded);
- ``vm-reuse-skewed`` on the same trace with a rho = 20 % injection
  (``work_20-dur_3h-size_2medium.lwf``): leases/s of the replay;
- with ``--sweep DIR``: the wall time of the whole 72 x 6 sweep (``wsched sweep`` on
  every injection file and the six paper profiles) on ``--jobs`` processes. That is
  10-25 minutes (by the machine), so it is opt-in; ``--sweep-sample N`` instead times N runs
  of each profile and extrapolates.

    .venv/bin/python bench/bench_experiments.py
    .venv/bin/python bench/bench_experiments.py --sweep-sample 2
    .venv/bin/python bench/bench_experiments.py --sweep /tmp/sweep

The shared traces are read from ``../shared/traces`` beside the project root.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from scheduler import experiments
from scheduler.config import load_profile
from scheduler.replay import replay
from scheduler.swf import read_swf

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
SWF30 = TRACES / "swf" / "30days.swf"
RHO20 = TRACES / "ar-injections-30days" / "work_20-dur_3h-size_2medium.lwf"
REPEATS = 7
PAPER = ["novm-nosr", "novm-sr", "vm-predeploy", "vm-mult", "vm-reuse-uniform",
         "vm-reuse-skewed"]


def bench_batch_easy() -> None:
    t0 = time.perf_counter()
    trace = read_swf(SWF30)
    read = time.perf_counter() - t0
    config = load_profile("batch-easy")
    site = config.default_site()
    assert site is not None
    cpus = []
    for _ in range(REPEATS):  # a replay this short is at the mercy of the machine's noise
        c0 = time.process_time()
        replay(site, config, trace.requests)
        cpus.append(time.process_time() - c0)
    cpu = statistics.median(cpus)
    n = len(trace.requests)
    print(f"batch-easy 30days jobs: {n}")
    print(f"batch-easy 30days read s: {read:.3f}")
    print(f"batch-easy 30days replay cpu s: median {cpu:.3f} of {REPEATS}, "
          f"first {cpus[0]:.3f}, best {min(cpus):.3f}")
    print(f"batch-easy 30days jobs/s: {n / cpu:.0f}")


def bench_skewed() -> None:
    config = load_profile("vm-reuse-skewed")
    workload = experiments.load_workload(SWF30, RHO20, config)
    # The compiled kernels load from numba's cache on their first call in a process
    # (about 0.4 s in all): a once-per-process cost, timed apart from the replay.
    c0 = time.process_time()
    replay(workload.site, config, workload.requests[:300])
    print(f"vm-reuse-skewed warm-up cpu s: {time.process_time() - c0:.3f} (a replay of "
          "the first 300 leases: loads the compiled kernels, once per process)")
    c0 = time.process_time()
    replay(workload.site, config, workload.requests)
    cpu = time.process_time() - c0
    n = len(workload.requests)
    print(f"vm-reuse-skewed 30days+rho20 leases: {n}")
    print(f"vm-reuse-skewed 30days+rho20 replay cpu s: {cpu:.3f}")
    print(f"vm-reuse-skewed 30days+rho20 leases/s: {n / cpu:.1f}")


def bench_sweep(out: Path, jobs: int, sample: int | None) -> None:
    injections = sorted((TRACES / "ar-injections-30days").glob("work_*.lwf"))
    specs = experiments.sweep_specs([SWF30], injections, PAPER)
    total = len(specs)
    if sample is not None:
        # The same number of runs of each profile: their costs differ up to 4x, and a
        # sample of the whole grid misjudged their mix (an 8-run sample gave 15 minutes
        # where the whole sweep took 24).
        rng = random.Random(1)
        specs = [s for p in PAPER for s in rng.sample([s for s in specs if s.profile == p],
                                                      sample)]
    t0 = time.perf_counter()
    experiments.sweep(specs, out, jobs=jobs)
    wall = time.perf_counter() - t0
    print(f"sweep runs: {len(specs)} of {total} (72 x 6 plus 6 baselines)")
    print(f"sweep wall s: {wall:.1f} on {jobs} processes")
    if sample is not None:
        print(f"sweep extrapolated wall s: {wall / len(specs) * total:.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-skewed", action="store_true",
                   help="skip the vm-reuse-skewed replay (minutes)")
    p.add_argument("--sweep", type=Path, metavar="DIR", help="run the whole sweep into DIR")
    p.add_argument("--sweep-sample", type=int, metavar="N",
                   help="time N random runs of each profile of the sweep grid (into a "
                        "temporary DIR) and extrapolate")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    bench_batch_easy()
    if not args.skip_skewed:
        bench_skewed()
    if args.sweep is not None or args.sweep_sample is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            bench_sweep(args.sweep or Path(tmp), args.jobs, args.sweep_sample)


if __name__ == "__main__":
    main()
