"""Tests of the Python client (scheduler/client.py) and the service CLI commands
(scheduler/service_cli.py) against a real in-process server."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scheduler import service_cli
from scheduler.client import WschedClient, WschedError
from scheduler.enactment import SimulatedDriver
from scheduler.engine import Engine, ManualClock, demo_site
from scheduler.service import RunningServer, start_server
from scheduler.store import Store

T0 = 1_800_000_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    store = Store(f"sqlite+pysqlite:///{tmp_path / 'c.db'}")
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    running = start_server(engine, "127.0.0.1:0")
    yield running
    running.stop(grace=None)
    store.close()


@pytest.fixture
def client(server: RunningServer) -> Iterator[WschedClient]:
    with WschedClient(f"127.0.0.1:{server.port}") as c:
        yield c


def test_client_round_trip(client: WschedClient) -> None:
    lease = client.create_lease(image_id="tiny", vms=2, duration=600, labels={"p": "x"},
                                request_id="r1")
    assert client.create_lease(image_id="tiny", vms=2, duration=600, labels={"p": "x"},
                               request_id="r1").id == lease.id
    assert client.get_lease(lease.id) == lease
    ar = client.create_lease(kind="ar", image_id="tiny", duration=60, start=T0 + 3600)
    assert [x.id for x in client.list_leases(page_size=1)] == [lease.id, ar.id]
    assert [x.id for x in client.list_leases(kinds=["ar"])] == [ar.id]
    assert [x.id for x in client.list_leases(labels={"p": "x"})] == [lease.id]
    assert client.cancel_lease(ar.id).id == ar.id
    changes = list(client.watch(timeout=2))  # history, then the deadline ends it
    assert [c.revision for c in changes][:3] == [1, 2, 3]
    assert len(client.list_hosts()) == 8
    assert client.register_image("x", 10).id == "x"
    assert "x" in {i.id for i in client.list_images()}
    assert client.utilization().hosts == 8
    with pytest.raises(ValueError):
        client.create_lease(kind="nope", image_id="tiny", duration=1)


def test_a_create_refused_for_load_is_retried(tmp_path: Path) -> None:
    """The server takes one call at a time; while one create is held up in the engine, a
    client's create is refused (RESOURCE_EXHAUSTED), retried after a backoff, and
    succeeds once the first is done."""
    store = Store(f"sqlite+pysqlite:///{tmp_path / 'r.db'}")
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    engine.poll()
    running = start_server(engine, "127.0.0.1:0", max_concurrent_rpcs=1)
    results: dict[str, int] = {}
    try:
        with WschedClient(f"127.0.0.1:{running.port}") as first, \
                WschedClient(f"127.0.0.1:{running.port}") as second:

            def create(name: str, client: WschedClient) -> None:
                lease = client.create_lease(image_id="tiny", duration=600)
                results[name] = lease.id

            for c in (first, second):
                grpc.channel_ready_future(c.channel).result(timeout=10)
            with engine._lock:  # the engine waits: the first create stays in progress
                held = threading.Thread(target=create, args=("first", first))
                held.start()
                time.sleep(0.3)
                retried = threading.Thread(target=create, args=("second", second))
                retried.start()
                time.sleep(0.05)  # refused, and backing off
            held.join(10)
            retried.join(10)
    finally:
        running.stop(grace=None)
        store.close()
    assert results == {"first": 1, "second": 2}


def test_client_errors(client: WschedClient) -> None:
    with pytest.raises(WschedError) as e:
        client.create_lease(image_id="tiny", vms=0, duration=0)
    assert e.value.code == "INVALID_ARGUMENT"
    assert {"spec.vm_count", "spec.duration.seconds"} <= set(e.value.violations)
    with pytest.raises(WschedError) as e:
        client.get_lease(99)
    assert e.value.code == "NOT_FOUND"
    client.create_lease(kind="ar", image_id="tiny", vms=8, cpu=800, duration=600,
                        start=T0 + 3600)
    with pytest.raises(WschedError) as e:
        client.create_lease(kind="ar", image_id="tiny", vms=8, cpu=800, duration=600,
                            start=T0 + 3600)
    assert e.value.code == "FAILED_PRECONDITION" and e.value.lease_id == 2


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="wsched")
    handlers = service_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = handlers[args.command](args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_commands(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    srv = ["--server", f"127.0.0.1:{server.port}"]
    code, out, _ = _run(["lease", "create", "--image", "tiny", "--vms", "2", "--duration",
                         "10m", "--label", "team=a", *srv], capsys)
    assert code == 0 and "besteffort" in out and "transfer" in out
    code, out, _ = _run(["lease", "get", "1", "--output", "json", *srv], capsys)
    assert code == 0 and json.loads(out)["spec"]["labels"] == {"team": "a"}
    code, out, _ = _run(["lease", "list", "--label", "team=a", "--output", "json", *srv],
                        capsys)
    assert [x["id"] for x in json.loads(out)] == ["1"]  # int64 is a string in proto JSON
    code, out, _ = _run(["lease", "list", *srv], capsys)
    assert out.splitlines()[0].split()[:3] == ["ID", "KIND", "STATE"]
    code, out, _ = _run(["lease", "watch", "--count", "1", *srv], capsys)
    assert code == 0 and "lease 1" in out
    code, out, _ = _run(["lease", "cancel", "1", *srv], capsys)
    assert code == 0
    code, _, err = _run(["lease", "cancel", "1", *srv], capsys)
    assert code == 0 or "FAILED_PRECONDITION" in err
    code, _, err = _run(["lease", "get", "7", *srv], capsys)
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = _run(["lease", "create", "--image", "tiny", "--vms", "0", "--duration", "1",
                         *srv], capsys)
    assert code == 1 and "spec.vm_count" in err
    code, out, _ = _run(["host", "list", "--output", "json", *srv], capsys)
    assert len(json.loads(out)) == 8
    code, out, _ = _run(["image", "add", "img-a", "--size", "100", *srv], capsys)
    assert code == 0 and "img-a" in out
    code, out, _ = _run(["image", "list", *srv], capsys)
    assert "img-a" in out and "debian-12" in out
    code, out, _ = _run(["host", "drain", "P1", *srv], capsys)
    assert code == 0 and "draining" in out


def test_cli_parsers() -> None:
    assert service_cli.duration("90") == 90
    assert service_cli.duration("2h") == 7200
    assert service_cli.instant("1893456000") == 1893456000
    assert service_cli.instant("2030-01-01T00:00:00Z") == 1893456000
    for bad in ("x", "-5", "1w"):
        with pytest.raises(argparse.ArgumentTypeError):
            service_cli.duration(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        service_cli.label("novalue")
