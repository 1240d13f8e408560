"""A small Python client of the wsched gRPC service, for portal backends and the CLI.

``WschedClient`` wraps the generated stubs with plain arguments (seconds, datetimes,
dicts), pages through listings, gives every creation a request id (so a retry after
a lost reply is idempotent), retries a create the server could not take at the moment
(UNAVAILABLE, or RESOURCE_EXHAUSTED when too many calls are in progress) after a short
randomized backoff, and turns RPC failures into ``WschedError`` with the server's field
violations and counter-offer already decoded.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # no stubs published
from grpc_status import rpc_status

from .api.wsched.v1 import lease_service_pb2 as lpb
from .api.wsched.v1 import lease_service_pb2_grpc as lgrpc
from .api.wsched.v1 import site_service_pb2 as spb
from .api.wsched.v1 import site_service_pb2_grpc as sgrpc
from .api.wsched.v1 import types_pb2 as tpb

DEFAULT_SERVER = "127.0.0.1:50051"

KINDS = {"ar": tpb.LEASE_KIND_AR, "besteffort": tpb.LEASE_KIND_BESTEFFORT,
         "immediate": tpb.LEASE_KIND_IMMEDIATE}
STATES = {name.removeprefix("LEASE_STATE_").lower(): value
          for name, value in tpb.LeaseState.items() if value}

Time = datetime | int  # an aware datetime, or seconds since the epoch


class WschedError(Exception):
    """A failed call: the status code name, the message, and what the details say:
    field violations (field -> description), the counter-offer of an infeasible AR
    (``earliest_start``) and the rejected lease's id, when there are."""

    def __init__(self, code: str, message: str, violations: Mapping[str, str] | None = None,
                 earliest_start: datetime | None = None, lease_id: int | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.violations = dict(violations or {})
        self.earliest_start = earliest_start
        self.lease_id = lease_id

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}"
        for f, d in self.violations.items():
            text += f"\n  {f}: {d}"
        return text


def _error(e: grpc.RpcError) -> WschedError:
    call: Any = e  # RpcErrors raised by stubs are also grpc.Call objects
    code = call.code().name if call.code() is not None else "UNKNOWN"
    violations: dict[str, str] = {}
    earliest: datetime | None = None
    lease_id: int | None = None
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        status = None
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            violations.update({v.field: v.description for v in br.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if "earliest_start" in info.metadata:
                ts = timestamp_pb2.Timestamp()
                ts.FromJsonString(info.metadata["earliest_start"])
                earliest = ts.ToDatetime(UTC)
            if info.metadata.get("lease_id", "").isdigit():
                lease_id = int(info.metadata["lease_id"])
    return WschedError(code, call.details() or "", violations, earliest, lease_id)


def _timestamp(t: Time) -> timestamp_pb2.Timestamp:
    seconds = int(t.timestamp()) if isinstance(t, datetime) else int(t)
    return timestamp_pb2.Timestamp(seconds=seconds)


def to_dict(message: Any) -> dict[str, Any]:
    """A message as JSON-ready data (proto field names, RFC 3339 times)."""
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


#: Codes after which a create (idempotent: it carries a request id) is tried again.
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
_BACKOFF = 0.05  # seconds before the first retry


class WschedClient:
    """Calls one server. Thread-safe (gRPC channels are); close it when done."""

    def __init__(self, target: str = DEFAULT_SERVER, *, timeout: float = 10.0,
                 channel: grpc.Channel | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self._own = channel is None
        self.channel = channel or grpc.insecure_channel(target)
        self.leases = lgrpc.LeaseServiceStub(self.channel)
        self.site = sgrpc.SiteServiceStub(self.channel)

    def close(self) -> None:
        if self._own:
            self.channel.close()

    def __enter__(self) -> WschedClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _call(self, method: Any, request: Any, retries: int = 0) -> Any:
        for attempt in range(retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                call: Any = e
                if attempt < retries and call.code() in _RETRIED:
                    # doubling, and jittered so that clients refused together spread out
                    time.sleep(_BACKOFF * 2**attempt * random.uniform(0.5, 1.0))
                    continue
                raise _error(e) from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ leases
    def create_lease(self, *, kind: str = "besteffort", vms: int = 1, cpu: int = 100,
                     memory_mb: int = 1024, disk_mb: int = 0, image_id: str,
                     duration: int, start: Time | None = None,
                     start_latest: Time | None = None, preemptible: bool = False,
                     labels: Mapping[str, str] | None = None,
                     request_id: str | None = None) -> tpb.Lease:
        """Create a lease (``duration`` in seconds). Retries when the server is
        unavailable, with the same request id, so it is never created twice."""
        if kind not in KINDS:
            raise ValueError(f"unknown lease kind {kind!r} (known: {', '.join(KINDS)})")
        spec = tpb.LeaseSpec(kind=KINDS[kind], vm_count=vms,
                             resources=tpb.Resources(cpu=cpu, memory_mb=memory_mb,
                                                     disk_mb=disk_mb),
                             image_id=image_id, duration=duration_pb2.Duration(seconds=duration),
                             preemptible=preemptible, labels=dict(labels or {}))
        if start is not None:
            spec.start.CopyFrom(_timestamp(start))
        if start_latest is not None:
            spec.start_latest.CopyFrom(_timestamp(start_latest))
        req = lpb.CreateLeaseRequest(spec=spec, request_id=request_id or str(uuid.uuid4()))
        lease: tpb.Lease = self._call(self.leases.CreateLease, req, retries=3).lease
        return lease

    def get_lease(self, lease_id: int) -> tpb.Lease:
        lease: tpb.Lease = self._call(self.leases.GetLease, lpb.GetLeaseRequest(id=lease_id))
        return lease

    def list_leases(self, *, states: Sequence[str] = (), kinds: Sequence[str] = (),
                    labels: Mapping[str, str] | None = None,
                    page_size: int = 500) -> Iterator[tpb.Lease]:
        """Every matching lease, in id order, fetching pages as needed."""
        bad = [s for s in states if s not in STATES] + [k for k in kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown state or kind: {', '.join(bad)}")
        token = ""
        while True:
            req = lpb.ListLeasesRequest(states=[STATES[s] for s in states],
                                        kinds=[KINDS[k] for k in kinds],
                                        labels=dict(labels or {}), page_size=page_size,
                                        page_token=token)
            page: lpb.ListLeasesResponse = self._call(self.leases.ListLeases, req)
            yield from page.leases
            token = page.next_page_token
            if not token:
                return

    def cancel_lease(self, lease_id: int) -> tpb.Lease:
        lease: tpb.Lease = self._call(self.leases.CancelLease,
                                      lpb.CancelLeaseRequest(id=lease_id))
        return lease

    def extend_lease(self, lease_id: int, seconds: int) -> tpb.Lease:
        req = lpb.ExtendLeaseRequest(id=lease_id, extra=duration_pb2.Duration(seconds=seconds))
        lease: tpb.Lease = self._call(self.leases.ExtendLease, req)
        return lease

    def watch(self, *, after_revision: int = 0, lease_id: int = 0,
              timeout: float | None = None) -> Iterator[lpb.LeaseChange]:
        """Changes after ``after_revision``, then live ones, until the server ends the
        stream or ``timeout`` passes. Pass the last revision seen to resume."""
        stream = self.leases.WatchLeases(
            lpb.WatchLeasesRequest(after_revision=after_revision, lease_id=lease_id),
            timeout=timeout)
        try:
            yield from stream
        except grpc.RpcError as e:
            call: Any = e
            if call.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                return
            raise _error(e) from None
        finally:
            stream.cancel()

    # ------------------------------------------------------------ site
    def add_host(self, name: str, *, cpu: int = 0, memory_mb: int = 0, disk_mb: int = 0,
                 net_in_mbps: int = 0, net_out_mbps: int = 0) -> spb.Host:
        capacity = tpb.Resources(cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb,
                                 net_in_mbps=net_in_mbps, net_out_mbps=net_out_mbps)
        host: spb.Host = self._call(self.site.AddHost,
                                    spb.AddHostRequest(name=name, capacity=capacity))
        return host

    def list_hosts(self) -> list[spb.Host]:
        resp: spb.ListHostsResponse = self._call(self.site.ListHosts, spb.ListHostsRequest())
        return list(resp.hosts)

    def drain_host(self, name: str) -> spb.Host:
        host: spb.Host = self._call(self.site.DrainHost, spb.DrainHostRequest(name=name))
        return host

    def remove_host(self, name: str) -> spb.Host:
        host: spb.Host = self._call(self.site.RemoveHost, spb.RemoveHostRequest(name=name))
        return host

    def register_image(self, image_id: str, size_mb: int, *, location: str = "",
                       format: str = "") -> spb.Image:
        req = spb.RegisterImageRequest(image=spb.Image(id=image_id, size_mb=size_mb,
                                                       location=location, format=format))
        image: spb.Image = self._call(self.site.RegisterImage, req)
        return image

    def list_images(self) -> list[spb.Image]:
        resp: spb.ListImagesResponse = self._call(self.site.ListImages, spb.ListImagesRequest())
        return list(resp.images)

    def utilization(self) -> spb.Utilization:
        u: spb.Utilization = self._call(self.site.GetUtilization, spb.GetUtilizationRequest())
        return u
