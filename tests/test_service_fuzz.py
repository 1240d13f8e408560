"""Hostile requests (hypothesis over the request messages) never get UNKNOWN or INTERNAL
and never bring the server down."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.api.wsched.v1 import lease_service_pb2 as lpb
from scheduler.api.wsched.v1 import lease_service_pb2_grpc as lgrpc
from scheduler.api.wsched.v1 import site_service_pb2 as spb
from scheduler.api.wsched.v1 import site_service_pb2_grpc as sgrpc
from scheduler.api.wsched.v1 import types_pb2 as tpb
from scheduler.enactment import SimulatedDriver
from scheduler.engine import Engine, ManualClock, demo_site
from scheduler.service import start_server
from scheduler.store import Store

T0 = 1_800_000_000
INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 5),
                  st.sampled_from([0, 1, 2**31, 2**40, 2**62]))
INT32 = st.integers(-(2**31), 2**31 - 1)
ENUM = st.integers(-3, 20)
TEXT = st.one_of(st.text(st.characters(blacklist_categories=["Cs"]), max_size=40),
                 st.sampled_from(["", "tiny", "debian-12", "x" * 100_000, "a b", "P1", "é/ü"]))
NANOS = st.integers(-999_999_999, 999_999_999)
BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
PROFILE = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, grpc.Channel]]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "f.db"
    store = Store(f"sqlite+pysqlite:///{path}")
    engine = Engine(store, demo_site(), SimulatedDriver(), ManualClock(T0))
    running = start_server(engine, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield lgrpc.LeaseServiceStub(channel), sgrpc.SiteServiceStub(channel), channel
    channel.close()
    running.stop(grace=None)
    store.close()


def call(method: Callable[..., Any], request: Any, timeout: float = 10) -> None:
    try:
        result = method(request, timeout=timeout)
        if hasattr(result, "__next__"):  # a stream: take what comes before the deadline
            for _ in result:
                pass
    except grpc.RpcError as e:
        rpc: Any = e
        assert rpc.code() not in BAD, (rpc.code(), rpc.details(), request)


@st.composite
def lease_specs(draw: st.DrawFn) -> tpb.LeaseSpec:
    spec = tpb.LeaseSpec(kind=tpb.LeaseKind.ValueType(draw(ENUM)), vm_count=draw(INT64),
                         image_id=draw(TEXT),
                         preemptible=draw(st.booleans()),
                         labels=draw(st.dictionaries(TEXT, TEXT, max_size=4)))
    if draw(st.booleans()):
        spec.resources.CopyFrom(tpb.Resources(cpu=draw(INT64), memory_mb=draw(INT64),
                                              disk_mb=draw(INT64), net_in_mbps=draw(INT64),
                                              net_out_mbps=draw(INT64)))
    if draw(st.booleans()):
        spec.duration.CopyFrom(duration_pb2.Duration(seconds=draw(INT64), nanos=draw(NANOS)))
    for name in ("start", "start_latest"):
        if draw(st.booleans()):
            seconds = draw(st.one_of(INT64, st.integers(T0 - 100, T0 + 100_000)))
            getattr(spec, name).CopyFrom(timestamp_pb2.Timestamp(seconds=seconds,
                                                                 nanos=draw(NANOS)))
    return spec


@PROFILE
@given(spec=st.one_of(st.none(), lease_specs()), request_id=TEXT)
def test_create_lease(stubs: tuple[Any, Any, grpc.Channel], spec: tpb.LeaseSpec | None,
                      request_id: str) -> None:
    req = lpb.CreateLeaseRequest(request_id=request_id)
    if spec is not None:
        req.spec.CopyFrom(spec)
    call(stubs[0].CreateLease, req)


@PROFILE
@given(lease_id=INT64, extra=INT64, nanos=NANOS, states=st.lists(ENUM, max_size=3),
       kinds=st.lists(ENUM, max_size=3), labels=st.dictionaries(TEXT, TEXT, max_size=3),
       page_size=INT32, token=TEXT, revision=INT64)
def test_lease_queries(stubs: tuple[Any, Any, grpc.Channel], lease_id: int, extra: int, nanos: int,
                       states: list[int], kinds: list[int], labels: dict[str, str],
                       page_size: int, token: str, revision: int) -> None:
    leases = stubs[0]
    call(leases.GetLease, lpb.GetLeaseRequest(id=lease_id))
    call(leases.CancelLease, lpb.CancelLeaseRequest(id=lease_id))
    call(leases.ExtendLease, lpb.ExtendLeaseRequest(
        id=lease_id, extra=duration_pb2.Duration(seconds=extra, nanos=nanos)))
    call(leases.ListLeases, lpb.ListLeasesRequest(
        states=[tpb.LeaseState.ValueType(x) for x in states],
        kinds=[tpb.LeaseKind.ValueType(x) for x in kinds], labels=labels,
                                                  page_size=page_size, page_token=token))
    call(leases.WatchLeases, lpb.WatchLeasesRequest(after_revision=revision,
                                                    lease_id=lease_id), timeout=0.2)


@PROFILE
@given(name=TEXT, size=INT64, location=TEXT, fmt=TEXT, cpu=INT64, memory=INT64)
def test_site_requests(stubs: tuple[Any, Any, grpc.Channel], name: str, size: int, location: str,
                       fmt: str, cpu: int, memory: int) -> None:
    site = stubs[1]
    call(site.AddHost, spb.AddHostRequest(name=name, capacity=tpb.Resources(cpu=cpu,
                                                                           memory_mb=memory)))
    call(site.DrainHost, spb.DrainHostRequest(name=name))
    call(site.RemoveHost, spb.RemoveHostRequest(name=name))
    call(site.RegisterImage, spb.RegisterImageRequest(
        image=spb.Image(id=name, size_mb=size, location=location, format=fmt)))
    call(site.ListHosts, spb.ListHostsRequest())
    call(site.ListImages, spb.ListImagesRequest())
    call(site.GetUtilization, spb.GetUtilizationRequest())


@PROFILE
@given(data=st.binary(max_size=200))
def test_undecodable_bytes(stubs: tuple[Any, Any, grpc.Channel], data: bytes) -> None:
    channel = stubs[2]
    for method in ("/wsched.v1.LeaseService/CreateLease", "/wsched.v1.LeaseService/ListLeases",
                   "/wsched.v1.SiteService/RegisterImage"):
        raw = channel.unary_unary(method, request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        call(raw, data)


def test_server_still_serves(stubs: tuple[Any, Any, grpc.Channel]) -> None:
    # the fuzzed site calls may have added, drained or removed hosts; the 8 demo hosts
    # are still listed, in order, whatever their state
    hosts = stubs[1].ListHosts(spb.ListHostsRequest(), timeout=10).hosts
    assert [h.name for h in hosts[:8]] == [f"P{i}" for i in range(1, 9)]
