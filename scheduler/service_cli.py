"""Command-line commands of the service: ``wsched serve``, ``lease``, ``host``, ``image``.

``add_commands(subparsers)`` adds them to ``wsched``'s argument parser and returns the
handler of each top-level command; a handler takes the parsed arguments and returns
the exit status (0 success, 1 the server refused or failed, 2 bad local input).
Results go to stdout as a table or as JSON (``--output json``), errors to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import DEFAULT_SERVER, KINDS, STATES, WschedClient, WschedError, to_dict

if TYPE_CHECKING:
    from .enactment import Driver
    from .store import ImageRecord

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_REFUSED = 1
EXIT_USAGE = 2
_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h`` or ``1d`` -> seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 600, 10m, 2h, 1d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def retention(text: str) -> int:
    """A request id retention: a duration no shorter than the engine's sweep period."""
    from .engine import REQUEST_ID_SWEEP

    seconds = duration(text)
    if seconds < REQUEST_ID_SWEEP:
        raise argparse.ArgumentTypeError(f"too short: {text!r} (at least {REQUEST_ID_SWEEP} s)")
    return seconds


def _positive(text: str) -> int:
    """A whole number, 1 or more."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive count: {text!r}")
    return value


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (a whole number, 0 or more)")
    return value


def _cpu(text: str) -> int | str:
    """A CPU number, or ``any``."""
    if text == "any":
        return text
    try:
        return _count(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a CPU: {text!r} (a CPU number, or any)") from None


def instant(text: str) -> int:
    """``+10m`` (from now), seconds since the epoch, or ISO 8601 -> epoch seconds."""
    text = text.strip()
    if text.startswith("+"):
        return int(datetime.now(UTC).timestamp()) + duration(text[1:])
    if text.isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (e.g. +10m, 2030-01-01T12:00:00Z, 1893456000)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp())


def label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a label is KEY=VALUE (got {text!r})")
    return key, value


# ============================================================================ parsers

def _common(p: argparse.ArgumentParser, client: bool = True) -> None:
    if client:
        p.add_argument("--server", default=os.environ.get("WSCHED_SERVER", DEFAULT_SERVER),
                       metavar="HOST:PORT",
                       help=f"the service (default: $WSCHED_SERVER or {DEFAULT_SERVER})")
        p.add_argument("--output", choices=("table", "json"), default="table",
                       help="table (default) or json")
        p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="per-call deadline (default 10)")
    # the same logging options as every wsched command: main() reads them
    p.add_argument("--log-level", default="WARNING", type=str.upper, choices=LEVELS,
                   metavar="LEVEL", help=f"one of {', '.join(LEVELS)} (default: WARNING)")
    p.add_argument("--log-json", action="store_true",
                   help="log one JSON object per line on stderr")


def add_commands(subparsers: Any) -> dict[str, Handler]:
    """Add ``serve``, ``lease``, ``host`` and ``image`` to ``subparsers`` (from
    ``ArgumentParser.add_subparsers``); return {command name: handler}."""
    sp = subparsers.add_parser(
        "serve", help="run the gRPC service",
        description="Run the lease service: state in a database (SQLite file or "
        "PostgreSQL URL), the site from a TOML file, simulated or libvirt enactment.")
    sp.add_argument("--db", default="wsched.db", metavar="PATH|URL",
                    help="SQLite file, or an SQLAlchemy URL such as "
                    "postgresql+psycopg://host/db (default: wsched.db)")
    sp.add_argument("--site", type=Path, metavar="FILE.toml",
                    help="site file: hosts, images, scheduler settings (default: the "
                    "bundled 8-host demo site)")
    sp.add_argument("--listen", default=DEFAULT_SERVER, metavar="HOST:PORT",
                    help=f"address to listen on (default {DEFAULT_SERVER})")
    sp.add_argument("--driver", default="simulated", choices=("simulated", "libvirt"),
                    help="enactment driver (default simulated)")
    sp.add_argument("--libvirt-uri", action="append", default=[], metavar="[HOST=]URI",
                    help="libvirt driver: the URI of HOST, or of every other host ({host} "
                    "is replaced by the host name); repeatable (default qemu:///system)")
    sp.add_argument("--libvirt-pool", default="default", metavar="NAME",
                    help="libvirt driver: storage pool of images and VM disks (default: "
                    "default)")
    sp.add_argument("--context-listen", default="127.0.0.1:8775", metavar="HOST:PORT",
                    help="context broker's HTTP address, when the site file has a "
                    "[contextualization] table (default 127.0.0.1:8775)")
    sp.add_argument("--request-id-ttl", type=retention, default="1d", metavar="DURATION",
                    help="how long a CreateLease request id is remembered after its lease "
                    "was created: a retry within it gets the original lease (at least "
                    "1m; default 1d)")
    sp.add_argument("--checkpoint-every", type=_count, default=None, metavar="N",
                    help="write a checkpoint of the scheduler every N logged commands, so "
                    "a restart re-applies only the commands after it (0: never; default "
                    "50000)")
    sp.add_argument("--max-concurrent-rpcs", type=_positive, default=None, metavar="N",
                    help="calls in progress at once; more are refused with "
                    "RESOURCE_EXHAUSTED, and clients retry (default 1024)")
    sp.add_argument("--cpu", type=_cpu, default=None, metavar="N|any",
                    help="keep the service on CPU N, as batch threads: they share one "
                    "interpreter lock, so the service uses one core at most, and handing "
                    "the lock across CPUs costs (default: the lowest CPU it may use; any: "
                    "let the system place its threads)")
    sp.add_argument("--seed-dir", type=Path, default=Path("wsched-seeds"), metavar="DIR",
                    help="where VMs' context seeds are written (default wsched-seeds)")
    _common(sp, client=False)

    xp = subparsers.add_parser("context", help="inspect VMs' contextualization")
    xsub = xp.add_subparsers(dest="context_command", required=True, metavar="ACTION")
    xr = xsub.add_parser("render", help="write a deployed lease's seeds to a directory",
                         description="Write each VM's NoCloud seed (cidata.iso and its "
                         "files) and context.sh (context.iso) to OUT/<instance id>/, from "
                         "the service's database, for inspection.")
    xr.add_argument("id", type=int, metavar="LEASE_ID")
    xr.add_argument("--out", type=Path, required=True, metavar="DIR")
    xr.add_argument("--db", default="wsched.db", metavar="PATH|URL",
                    help="the service's database (default: wsched.db)")
    xr.add_argument("--site", type=Path, metavar="FILE.toml",
                    help="the site file the service runs with (its [contextualization])")
    xr.add_argument("--broker-url", default="http://127.0.0.1:8775", metavar="URL",
                    help="broker URL if the site file does not set broker-url (default "
                    "http://127.0.0.1:8775)")
    _common(xr, client=False)

    lp = subparsers.add_parser("lease", help="create, inspect, cancel, extend, watch leases")
    lsub = lp.add_subparsers(dest="lease_command", required=True, metavar="ACTION")
    c = lsub.add_parser("create", help="request a lease")
    c.add_argument("--kind", choices=sorted(KINDS), default="besteffort")
    c.add_argument("--vms", type=int, default=1)
    c.add_argument("--cpu", type=int, default=100, help="per VM, percent of a CPU")
    c.add_argument("--memory", type=int, default=1024, help="per VM, MB")
    c.add_argument("--disk", type=int, default=0, help="per VM, MB")
    c.add_argument("--image", required=True, help="a registered image id")
    c.add_argument("--duration", type=duration, required=True, help="e.g. 3600, 30m, 2h")
    c.add_argument("--start", type=instant, help="AR start: +10m, ISO 8601 or epoch seconds")
    c.add_argument("--start-latest", type=instant, help="AR: latest start of a window")
    c.add_argument("--preemptible", action="store_true")
    c.add_argument("--label", type=label, action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")
    g = lsub.add_parser("get", help="show one lease and its schedule")
    g.add_argument("id", type=int)
    li = lsub.add_parser("list", help="list leases")
    li.add_argument("--state", action="append", default=[], choices=sorted(STATES))
    li.add_argument("--kind", action="append", default=[], choices=sorted(KINDS))
    li.add_argument("--label", type=label, action="append", default=[], metavar="KEY=VALUE")
    li.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    ca = lsub.add_parser("cancel", help="cancel a lease")
    ca.add_argument("id", type=int)
    ex = lsub.add_parser("extend", help="ask for more run time")
    ex.add_argument("id", type=int)
    ex.add_argument("--by", type=duration, required=True, help="extra time, e.g. 30m")
    w = lsub.add_parser("watch", help="stream lease state changes")
    w.add_argument("--after", type=int, default=0, metavar="REVISION",
                   help="changes after this revision (default 0: all)")
    w.add_argument("--lease", type=int, default=0, metavar="ID", help="only this lease")
    w.add_argument("--count", type=int, default=0, help="stop after this many changes")
    w.add_argument("--for", type=float, default=None, dest="watch_for", metavar="SECONDS",
                   help="stop after this long")
    for p in (c, g, li, ca, ex, w):
        _common(p)

    hp = subparsers.add_parser("host", help="manage the site's hosts")
    hsub = hp.add_subparsers(dest="host_command", required=True, metavar="ACTION")
    ha = hsub.add_parser("add", help="add a host")
    ha.add_argument("name")
    ha.add_argument("--cpu", type=int, default=0)
    ha.add_argument("--memory", type=int, default=0, help="MB")
    ha.add_argument("--disk", type=int, default=0, help="MB")
    ha.add_argument("--net-in", type=int, default=0, help="Mbit/s")
    ha.add_argument("--net-out", type=int, default=0, help="Mbit/s")
    hl = hsub.add_parser("list", help="list hosts")
    hd = hsub.add_parser("drain", help="no new placements on a host")
    hd.add_argument("name")
    hr = hsub.add_parser("remove", help="remove a host")
    hr.add_argument("name")
    for p in (ha, hl, hd, hr):
        _common(p)

    ip = subparsers.add_parser("image", help="manage disk images")
    isub = ip.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    ia = isub.add_parser("add", help="register an image")
    ia.add_argument("id")
    ia.add_argument("--size", type=int, required=True, help="MB")
    ia.add_argument("--location", default="")
    ia.add_argument("--format", default="")
    il = isub.add_parser("list", help="list images")
    for p in (ia, il):
        _common(p)
    return {"serve": cmd_serve, "lease": cmd_lease, "host": cmd_host, "image": cmd_image,
            "context": cmd_context}


# ============================================================================ output

def _time(ts: Any) -> str:
    if not ts.seconds:
        return "-"
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _name(enum_value: int, enum: Any, prefix: str) -> str:
    return str(enum.Name(enum_value)).removeprefix(prefix).lower()


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


def _json(data: Any) -> None:
    print(json.dumps(data, indent=1))


def _lease_rows(leases: Sequence[Any]) -> list[list[str]]:
    from .api.wsched.v1 import types_pb2 as tpb

    return [[str(x.id), _name(x.spec.kind, tpb.LeaseKind, "LEASE_KIND_"),
             _name(x.state, tpb.LeaseState, "LEASE_STATE_"), str(x.spec.vm_count),
             _time(x.start), _time(x.end), ",".join(x.hosts) or "-",
             ",".join(f"{k}={v}" for k, v in sorted(x.spec.labels.items())) or "-"]
            for x in leases]


_LEASE_HEADER = ["ID", "KIND", "STATE", "VMS", "START", "END", "HOSTS", "LABELS"]


def _show_lease(lease: Any, output: str) -> None:
    from .api.wsched.v1 import types_pb2 as tpb

    if output == "json":
        _json(to_dict(lease))
        return
    _table(_lease_rows([lease]), _LEASE_HEADER)
    if lease.reason:
        print(f"reason: {lease.reason}")
    if lease.events:
        print()
        _table([[_name(e.kind, tpb.EventKind, "EVENT_KIND_"), _time(e.start), _time(e.end),
                 ",".join(e.hosts)] for e in lease.events], ["EVENT", "START", "END", "HOSTS"])


def _fail(e: WschedError) -> int:
    print(f"wsched: error: {e}", file=sys.stderr)
    if e.earliest_start is not None:
        print(f"wsched: counter-offer: the earliest start that fits is "
              f"{e.earliest_start.isoformat()} (resubmit with --start "
              f"{int(e.earliest_start.timestamp())})", file=sys.stderr)
    return EXIT_REFUSED


# ============================================================================ handlers

def _libvirt_driver(args: argparse.Namespace, images: Iterable[ImageRecord],
                    site_uris: Mapping[str, str] | None = None) -> Driver:
    """The libvirt driver: each host's URI from the site file, overridden by
    ``--libvirt-uri HOST=URI``; ``--libvirt-uri URI`` for every other host."""
    from .libvirt_driver import LibvirtDriver

    uris, default = dict(site_uris or {}), None
    for value in args.libvirt_uri:
        host, sep, uri = value.partition("=")
        if sep and host and not set(":/?") & set(host):  # HOST=URI, not a URI with a query
            uris[host] = uri
        else:
            default = value
    if default is None and not uris:
        default = "qemu:///system"
    return LibvirtDriver(uris, default_uri=default, pool=args.libvirt_pool,
                         images={i.id: i for i in images})


def cmd_serve(args: argparse.Namespace) -> int:
    from .enactment import make_driver
    from .engine import Engine, SystemClock, demo_site, load_site
    from .service import MAX_CONCURRENT_RPCS, freeze_heap_every, pin_to_one_cpu, start_server
    from .store import Store, StoreError, sqlite_url

    if args.cpu != "any":  # first: the threads started below inherit it
        try:
            pin_to_one_cpu(args.cpu)  # (None: the lowest it may use)
        except (OSError, ValueError) as e:
            if args.cpu is not None:
                print(f"wsched: error: --cpu: {e}", file=sys.stderr)
                return EXIT_USAGE
            # by default only an optimisation: a system that forbids it still serves
            log.warning("not kept on one CPU", extra={"error": str(e)})
    url = args.db if "://" in args.db else sqlite_url(str(Path(args.db).resolve()))
    site = load_site(args.site) if args.site is not None else demo_site()
    try:
        store = Store(url)
    except StoreError as e:
        print(f"wsched: error: {args.db}: {e}", file=sys.stderr)
        return EXIT_USAGE
    driver = _libvirt_driver(args, site.images, site.libvirt_uris) \
        if args.driver == "libvirt" \
        else make_driver(args.driver)
    clock = SystemClock()
    durability: dict[str, Any] = {"request_id_ttl": args.request_id_ttl}
    if args.checkpoint_every is not None:
        durability["checkpoint_every"] = args.checkpoint_every
    broker_server = None
    if site.context is not None:
        from contextualization.broker import start_context

        broker, broker_server = start_context(store, site.context, args.seed_dir.resolve(),
                                              clock, args.context_listen)
        engine = Engine(store, site, driver, clock, context=broker, **durability)
        broker.on_change = engine.context_changed
    else:
        engine = Engine(store, site, driver, clock, **durability)
    engine.start()
    try:
        running = start_server(engine, args.listen,
                               max_concurrent_rpcs=args.max_concurrent_rpcs or MAX_CONCURRENT_RPCS)
    except (OSError, RuntimeError):
        engine.stop()
        if broker_server is not None:
            broker_server.stop()
        store.close()
        raise OSError(f"cannot listen on {args.listen}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    freeze_heap_every(5.0, stop)
    print(f"wsched: serving on {args.listen.rsplit(':', 1)[0]}:{running.port} "
          f"({len(engine.hosts())} hosts, database {args.db}); Ctrl-C stops", flush=True)
    if broker_server is not None:
        print(f"wsched: context broker on {broker_server.url}, seeds in {args.seed_dir}",
              flush=True)
    stop.wait()
    running.stop(grace=2.0)
    if broker_server is not None:
        broker_server.stop()
    store.close()
    driver.close()
    return 0


def _client(args: argparse.Namespace) -> WschedClient:
    return WschedClient(args.server, timeout=args.timeout)


def cmd_lease(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            return _lease(args, client)
        except WschedError as e:
            return _fail(e)


def _lease(args: argparse.Namespace, client: WschedClient) -> int:
    action = args.lease_command
    if action == "create":
        lease = client.create_lease(
            kind=args.kind, vms=args.vms, cpu=args.cpu, memory_mb=args.memory,
            disk_mb=args.disk, image_id=args.image, duration=args.duration, start=args.start,
            start_latest=args.start_latest, preemptible=args.preemptible,
            labels=dict(args.label), request_id=args.request_id)
        _show_lease(lease, args.output)
    elif action == "get":
        _show_lease(client.get_lease(args.id), args.output)
    elif action == "list":
        leases = []
        for lease in client.list_leases(states=args.state, kinds=args.kind,
                                        labels=dict(args.label)):
            leases.append(lease)
            if args.limit and len(leases) >= args.limit:
                break
        if args.output == "json":
            _json([to_dict(x) for x in leases])
        else:
            _table(_lease_rows(leases), _LEASE_HEADER)
    elif action == "cancel":
        _show_lease(client.cancel_lease(args.id), args.output)
    elif action == "extend":
        _show_lease(client.extend_lease(args.id, args.by), args.output)
    elif action == "watch":
        from .api.wsched.v1 import types_pb2 as tpb

        for n, change in enumerate(client.watch(after_revision=args.after, lease_id=args.lease,
                                   timeout=args.watch_for), 1):
            if args.output == "json":
                print(json.dumps(to_dict(change)), flush=True)
            else:
                reason = f"  {change.reason}" if change.reason else ""
                print(f"{change.revision:>6}  {_time(change.time)}  lease {change.lease_id:<6} "
                      f"{_name(change.state, tpb.LeaseState, 'LEASE_STATE_')}{reason}",
                      flush=True)
            if args.count and n >= args.count:
                break
    return 0


def cmd_host(args: argparse.Namespace) -> int:
    from .api.wsched.v1 import site_service_pb2 as spb

    with _client(args) as client:
        try:
            action = args.host_command
            if action == "add":
                hosts = [client.add_host(args.name, cpu=args.cpu, memory_mb=args.memory,
                                         disk_mb=args.disk, net_in_mbps=args.net_in,
                                         net_out_mbps=args.net_out)]
            elif action == "drain":
                hosts = [client.drain_host(args.name)]
            elif action == "remove":
                hosts = [client.remove_host(args.name)]
            else:
                hosts = client.list_hosts()
        except WschedError as e:
            return _fail(e)
    if args.output == "json":
        _json([to_dict(h) for h in hosts])
    else:
        _table([[h.name, _name(h.state, spb.HostState, "HOST_STATE_"), str(h.capacity.cpu),
                 str(h.capacity.memory_mb), str(h.capacity.disk_mb)] for h in hosts],
               ["NAME", "STATE", "CPU", "MEMORY_MB", "DISK_MB"])
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            if args.image_command == "add":
                images = [client.register_image(args.id, args.size, location=args.location,
                                                format=args.format)]
            else:
                images = client.list_images()
        except WschedError as e:
            return _fail(e)
    if args.output == "json":
        _json([to_dict(i) for i in images])
    else:
        _table([[i.id, str(i.size_mb), i.format or "-", i.location or "-"] for i in images],
               ["ID", "SIZE_MB", "FORMAT", "LOCATION"])
    return 0


def cmd_context(args: argparse.Namespace) -> int:
    """``wsched context render``: a deployed lease's seeds, rebuilt from the database."""
    import dataclasses

    from contextualization.iso import CONTEXT_LABEL, NOCLOUD_LABEL, write_iso
    from contextualization.manager import CONTEXT_SEED, NOCLOUD_SEED, Contextualizer
    from contextualization.model import ContextError, SiteContext
    from contextualization.render import context_files, nocloud_files

    from .engine import demo_site, load_site
    from .store import Store, StoreError, sqlite_url

    site = load_site(args.site) if args.site is not None else demo_site()
    if site.context is None:
        print("wsched: error: the site has no [contextualization] table", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = SiteContext.from_mapping(site.context)
    except ContextError as e:
        print(f"wsched: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not settings.broker_url:
        settings = dataclasses.replace(settings, broker_url=args.broker_url)
    url = args.db if "://" in args.db else sqlite_url(str(Path(args.db).resolve()))
    try:
        store = Store(url)
    except StoreError as e:
        print(f"wsched: error: {args.db}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        lease = store.lease(args.id)
        rows = store.context_vms(args.id)
        if lease is None or not rows:
            print(f"wsched: error: lease {args.id} "
                  f"{'does not exist' if lease is None else 'has not been deployed yet'}",
                  file=sys.stderr)
            return EXIT_REFUSED
        ctx = Contextualizer(store, settings, args.out)
        # the rows exist, so this only reads them: nothing is allocated or changed
        vms = ctx.contexts(args.id, lease.spec.get("context"), len(rows), rows[0].deadline)
    finally:
        store.close()
    for vm in vms:
        directory = args.out / vm.instance_id
        directory.mkdir(parents=True, exist_ok=True)
        files = nocloud_files(vm)
        for name, data in {**files, **context_files(vm)}.items():
            (directory / name).write_bytes(data)
        write_iso(directory / NOCLOUD_SEED, NOCLOUD_LABEL, files)
        write_iso(directory / CONTEXT_SEED, CONTEXT_LABEL, context_files(vm))
        print(f"{directory}: {vm.hostname} {vm.address}", flush=True)
    return 0
