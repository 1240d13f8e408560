"""gRPC load generator for the lease service: throughput and latency of CreateLease.

Starts the service in a subprocess (its own interpreter, so clients and server do not
share a GIL), on a fresh SQLite database (or ``--db URL``) and a uniform site,
preloads ``--preload`` leases (ARs spread over the next days and best-effort leases),
then runs ``--clients`` concurrent clients creating best-effort and AR leases for
``--seconds`` and prints acknowledged creates per second and p50/p99 latency.

    .venv/bin/python bench/bench_grpc.py                    # 16 clients, 10,000 preloaded
    .venv/bin/python bench/bench_grpc.py --clients 4 --preload 1000 --seconds 5
    .venv/bin/python bench/bench_grpc.py --server-cpu any   # not kept on one CPU
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def serve(db: str, nodes: int, cpu: str) -> int:
    """The server process: print the bound port and the CPU it is kept on, serve until
    stdin closes."""
    from scheduler.config import load_profile
    from scheduler.enactment import SimulatedDriver
    from scheduler.engine import Engine, SiteDefinition, SystemClock
    from scheduler.leases import Resources, Site
    from scheduler.service import freeze_heap_every, pin_to_one_cpu, start_server
    from scheduler.store import ImageRecord, Store

    site = SiteDefinition(load_profile("test-notransfer"),
                          Site.uniform(nodes, Resources(cpu=6400, memory=262144)).nodes,
                          (ImageRecord("tiny", 64),))
    # as `wsched serve --cpu` does (first: the threads started below inherit it)
    pinned = None if cpu == "any" else pin_to_one_cpu(None if cpu == "lowest" else int(cpu))
    store = Store(db)
    engine = Engine(store, site, SimulatedDriver(), SystemClock())
    engine.start()
    running = start_server(engine, "127.0.0.1:0", max_workers=32)
    freeze_heap_every(5.0, threading.Event())  # as `wsched serve` does
    sys.stdout.write(f"{running.port} {'any' if pinned is None else pinned}\n")
    sys.stdout.flush()
    sys.stdin.read()
    running.stop(grace=1.0)
    store.close()
    return 0


def _server_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) the server process has used so far (Linux /proc;
    None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _create(client: object, rng: random.Random, now: float) -> None:
    from scheduler.client import WschedClient

    assert isinstance(client, WschedClient)
    if rng.random() < 0.5:
        client.create_lease(kind="besteffort", vms=rng.randint(1, 4), cpu=100,
                            memory_mb=1024, image_id="tiny", duration=rng.randint(600, 7200),
                            preemptible=rng.random() < 0.5)
    else:
        start = int(now) + rng.randint(600, 30 * 86400)
        client.create_lease(kind="ar", vms=rng.randint(1, 4), cpu=100, memory_mb=1024,
                            image_id="tiny", duration=rng.randint(600, 7200), start=start)


def _run(target: str, clients: int, stop_at: float | None, total: int | None,
         seed: int) -> tuple[list[float], int]:
    from scheduler.client import WschedClient, WschedError

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [total if total is not None else 0]

    def worker(i: int) -> None:
        nonlocal errors
        rng = random.Random(seed * 1000 + i)
        own: list[float] = []
        bad = 0
        with WschedClient(target, timeout=30) as client:
            while True:
                if stop_at is not None and time.monotonic() >= stop_at:
                    break
                if total is not None:
                    with lock:
                        if remaining[0] <= 0:
                            break
                        remaining[0] -= 1
                t0 = time.perf_counter()
                try:
                    _create(client, rng, time.time())
                except WschedError:
                    bad += 1
                    continue
                own.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(own)
            errors += bad

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--preload", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    p.add_argument("--server-cpu", default="lowest", metavar="N|any",
                   help="the CPU the server is kept on, as `wsched serve --cpu` (default: "
                   "the lowest it may use, as wsched serve's default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.db, args.nodes, args.server_cpu)

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite+pysqlite:///{Path(tmp) / 'bench.db'}"
        proc = subprocess.Popen([sys.executable, __file__, "--serve", "--db", db,
                                 "--nodes", str(args.nodes), "--server-cpu", args.server_cpu],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            port, cpu = proc.stdout.readline().split()
            target = f"127.0.0.1:{port}"
            print(f"server on CPU {cpu}")
            t0 = time.monotonic()
            pre, pre_err = _run(target, args.clients, None, args.preload, args.seed + 1)
            print(f"preloaded {len(pre)} leases ({pre_err} refused) in "
                  f"{time.monotonic() - t0:.1f} s")
            cpu0 = _server_cpu(proc.pid)
            own0 = time.process_time()
            lat, err = _run(target, args.clients, time.monotonic() + args.seconds, None,
                            args.seed)
            cpu1 = _server_cpu(proc.pid)
            own = time.process_time() - own0
            lat.sort()
            n = len(lat)
            if n:
                q = statistics.quantiles(lat, n=100, method="inclusive")
                print(f"{args.clients} clients, {args.seconds:.0f} s: {n} creates acknowledged "
                      f"({err} refused), {n / args.seconds:.0f} creates/s, "
                      f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms")
                if cpu0 is not None and cpu1 is not None:
                    # per create: what the service costs, apart from the clients' share
                    print(f"server cpu {(cpu1 - cpu0) * 1000 / n:.2f} ms per create "
                          f"({(cpu1 - cpu0) / args.seconds:.0%} of one core)")
                print(f"client cpu {own * 1000 / n:.2f} ms per create "
                      f"({own / args.seconds:.0%} of one core)")
            else:
                print("no create was acknowledged")
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
