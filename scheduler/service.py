"""The gRPC service: LeaseService and SiteService (wsched.v1) over an ``Engine``.

This module owns the wire: it validates every request completely before the engine
sees it (field violations as google.rpc.BadRequest), converts between protobuf
messages and the engine's records (core seconds <-> Timestamps through the persisted
origin), maps engine errors to status codes, and builds the server with standard
health checking and reflection.

The server is gRPC's asyncio server, on an event loop (uvloop's) in a thread of its own.
CreateLease, the hot call, runs on the loop and awaits its commit; every other call may
block (the engine's lock, the database) and runs in a thread pool. (The thread-per-call
server cost ~10 % more CPU per create in Python's gRPC machinery, and a create is bound
by the one interpreter lock the engine needs too.)

No request may produce UNKNOWN or INTERNAL: undecodable bytes are caught by a
deserializer that never raises, and every handler maps every exception; only a bug in
the scheduler itself can still produce INTERNAL, and it is logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import hashlib
import inspect
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Mapping,
    Sequence,
)
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import (  # type: ignore[import-untyped]  # no stubs published
    code_pb2,
    error_details_pb2,
    status_pb2,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from contextualization.model import (
    AnsibleHandoff,
    Bcfg2Handoff,
    ContextError,
    ContextSpec,
    Handoff,
    PuppetHandoff,
    RoleGroup,
    SaltHandoff,
    ScriptHandoff,
)

from .api.wsched.v1 import lease_service_pb2 as lpb
from .api.wsched.v1 import site_service_pb2 as spb
from .api.wsched.v1 import types_pb2 as tpb
from .engine import (
    MAX_RESOURCE,
    MAX_SECONDS,
    Conflict,
    Engine,
    EngineError,
    Infeasible,
    InvalidField,
    LeaseSpec,
    NotFound,
    Unavailable,
)
from .leases import DIMENSIONS, LeaseKind, LeaseState, Resources
from .store import Change, ContextVm, HostRecord, ImageRecord, LeaseRecord

log = logging.getLogger(__name__)

LEASE_SERVICE = "wsched.v1.LeaseService"
SITE_SERVICE = "wsched.v1.SiteService"
MAX_VMS = 10_000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_LABELS = 64
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_PROTO_RESOURCE = ("cpu", "memory_mb", "disk_mb", "net_in_mbps", "net_out_mbps")

_KINDS = {tpb.LEASE_KIND_AR: LeaseKind.AR, tpb.LEASE_KIND_BESTEFFORT: LeaseKind.BESTEFFORT,
          tpb.LEASE_KIND_IMMEDIATE: LeaseKind.IMMEDIATE}
_KIND_PB = {v: k for k, v in _KINDS.items()}
_STATES = {getattr(tpb, f"LEASE_STATE_{s.name}"): s for s in LeaseState}
_STATE_PB = {str(v): k for k, v in _STATES.items()}


# ============================================================================ conversions

def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def resources_to_proto(r: Resources | Mapping[str, int]) -> tpb.Resources:
    get = r.get if isinstance(r, Mapping) else (lambda k, _d=0: getattr(r, k))
    return tpb.Resources(**{p: get(d, 0) for p, d in zip(_PROTO_RESOURCE, DIMENSIONS,
                                                          strict=True)})


_CONTEXT_STATE_PB = {"pending": tpb.CONTEXT_STATE_PENDING,
                     "reported": tpb.CONTEXT_STATE_REPORTED,
                     "ready": tpb.CONTEXT_STATE_READY, "failed": tpb.CONTEXT_STATE_FAILED}


def context_spec_to_proto(d: Mapping[str, Any]) -> tpb.ContextSpec:
    spec = ContextSpec.from_json(d)
    out = tpb.ContextSpec(ssh_keys=list(spec.ssh_keys), user_data=spec.user_data,
                          groups=[tpb.RoleGroup(vms=list(g.vms), provides=list(g.provides),
                                                requires=list(g.requires))
                                  for g in spec.groups])
    if spec.deadline:
        out.deadline.CopyFrom(duration_pb2.Duration(seconds=spec.deadline))
    h = spec.handoff
    if isinstance(h, AnsibleHandoff):
        out.handoff.ansible.CopyFrom(tpb.AnsibleHandoff(url=h.url, playbook=h.playbook,
                                                        branch=h.branch))
    elif isinstance(h, PuppetHandoff):
        out.handoff.puppet.server = h.server
    elif isinstance(h, SaltHandoff):
        out.handoff.salt.master = h.master
    elif isinstance(h, Bcfg2Handoff):
        out.handoff.bcfg2.CopyFrom(tpb.Bcfg2Handoff(server=h.server, profile=h.profile))
    elif isinstance(h, ScriptHandoff):
        out.handoff.script.script = h.script
    return out


def vm_context_to_proto(v: ContextVm) -> tpb.VmContext:
    out = tpb.VmContext(index=v.index, instance_id=v.instance_id, address=v.address,
                        state=_CONTEXT_STATE_PB.get(v.state, tpb.CONTEXT_STATE_UNSPECIFIED),
                        reason=v.reason or "", deadline=_ts(v.deadline),
                        hostname=str((v.identity or {}).get("hostname", "")))
    if v.reported_at is not None:
        out.reported.CopyFrom(_ts(v.reported_at))
    return out


_EVENT_KIND_PB = {name.removeprefix("EVENT_KIND_").lower(): value
                  for name, value in tpb.EventKind.items()}
_KIND_NAME_PB = {str(k): v for k, v in _KIND_PB.items()}


def lease_to_proto(r: LeaseRecord, origin: int,
                   contexts: Sequence[ContextVm] = (), out: tpb.Lease | None = None
                   ) -> tpb.Lease:
    """The lease as a message: a new one, or written into ``out`` (an empty message, e.g.
    a response's field: passing it to the response's constructor would copy it)."""
    # Fields are set in place, not passed to constructors: every create answers with
    # one, and building sub-messages to copy them in cost ~0.15 ms a lease.
    if out is None:
        out = tpb.Lease()
    out.SetInParent()
    out.id = r.id
    out.state = _STATE_PB[r.state]
    out.reason = r.reason or ""
    out.revision = r.revision
    out.request_id = r.request_id or ""
    s = r.spec
    spec = out.spec
    spec.kind = _KIND_NAME_PB[s["kind"]]
    spec.vm_count = s["vms"]
    res, values = spec.resources, s["resources"]
    res.SetInParent()
    for p, d in zip(_PROTO_RESOURCE, DIMENSIONS, strict=True):
        setattr(res, p, values.get(d, 0))
    spec.image_id = s["image_id"]
    spec.duration.SetInParent()
    spec.duration.seconds = s["duration"]
    spec.preemptible = s["preemptible"]
    spec.labels.update(r.labels)
    if s.get("start") is not None:
        spec.start.seconds = origin + s["start"]
        spec.start.SetInParent()
    if s.get("start_latest") is not None:
        spec.start_latest.seconds = origin + s["start_latest"]
        spec.start_latest.SetInParent()
    if s.get("context") is not None:
        spec.context.CopyFrom(context_spec_to_proto(s["context"]))
    out.submitted.SetInParent()
    out.submitted.seconds = origin + r.submit
    hosts: list[str] = []
    for e in r.events:
        ev = out.events.add(kind=_EVENT_KIND_PB[e["kind"]], hosts=e["nodes"])
        ev.start.SetInParent()
        ev.start.seconds = origin + e["start"]
        ev.end.SetInParent()
        ev.end.seconds = origin + e["end"]
        if e["kind"] == "run":
            hosts += [h for h in e["nodes"] if h not in hosts]
    out.hosts.extend(hosts)
    out.contexts.extend(vm_context_to_proto(v) for v in contexts)
    if r.start is not None:
        out.start.SetInParent()
        out.start.seconds = origin + r.start
    if r.end is not None:
        out.end.SetInParent()
        out.end.seconds = origin + r.end
    return out


def change_to_proto(c: Change, origin: int,
                    contexts: Sequence[ContextVm] = ()) -> lpb.LeaseChange:
    out = lpb.LeaseChange(revision=c.revision, lease_id=c.lease_id, state=_STATE_PB[c.state],
                          time=_ts(origin + c.at), reason=c.reason or "")
    out.contexts.extend(vm_context_to_proto(v) for v in contexts)
    return out


def host_to_proto(h: HostRecord) -> spb.Host:
    return spb.Host(name=h.name, capacity=resources_to_proto(
        {d: getattr(h, d) for d in DIMENSIONS}),
        state=getattr(spb, f"HOST_STATE_{h.state.upper()}"))


def image_to_proto(i: ImageRecord) -> spb.Image:
    return spb.Image(id=i.id, size_mb=i.size_mb, location=i.location, format=i.format)


# ============================================================================ validation

class BadRequest(Exception):
    """One or more invalid fields: (field path, description)."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = list(violations)


class _Checker:
    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append((field, description))

    def done(self) -> None:
        if self.violations:
            raise BadRequest(self.violations)

    def text(self, field: str, value: str, pattern: re.Pattern[str] | None = None,
             max_len: int = 128, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "is required")
            return
        if len(value) > max_len:
            self.add(field, f"is longer than {max_len} characters")
        elif pattern is not None and not pattern.fullmatch(value):
            self.add(field, f"must match {pattern.pattern}")
        elif not value.isprintable():
            self.add(field, "must be printable text")

    def int_range(self, field: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            self.add(field, f"must be between {low} and {high} (got {value})")

    def resources(self, field: str, r: tpb.Resources) -> Resources:
        for name in _PROTO_RESOURCE:
            self.int_range(f"{field}.{name}", getattr(r, name), 0, MAX_RESOURCE)
        return Resources(*(max(0, min(getattr(r, n), MAX_RESOURCE)) for n in _PROTO_RESOURCE))

    def whole_duration(self, field: str, d: duration_pb2.Duration, low: int) -> int:
        if d.nanos:
            self.add(field, "must be whole seconds")
        self.int_range(field + ".seconds", d.seconds, low, MAX_SECONDS)
        return d.seconds

    def labels(self, field: str, labels: Mapping[str, str]) -> None:
        if len(labels) > MAX_LABELS:
            self.add(field, f"at most {MAX_LABELS} labels")
            return
        for k, v in labels.items():
            self.text(f"{field}[{k[:64]!r}]", k, _LABEL_KEY, 63)
            self.text(f"{field}[{k[:64]!r}].value", v, None, 256, required=False)


def _spec_from_proto(req: lpb.CreateLeaseRequest, engine: Engine) -> LeaseSpec:
    c = _Checker()
    c.text("request_id", req.request_id, None, 128, required=False)
    if not req.HasField("spec"):
        c.add("spec", "is required")
        c.done()
    s = req.spec
    kind = _KINDS.get(s.kind)
    if kind is None:
        c.add("spec.kind", "must be LEASE_KIND_AR, LEASE_KIND_BESTEFFORT or "
              "LEASE_KIND_IMMEDIATE")
    c.int_range("spec.vm_count", s.vm_count, 1, MAX_VMS)
    resources = c.resources("spec.resources", s.resources)
    c.text("spec.image_id", s.image_id, _IMAGE_ID, 128)
    duration = 0
    if not s.HasField("duration"):
        c.add("spec.duration", "is required")
    else:
        duration = c.whole_duration("spec.duration", s.duration, 1)
    c.labels("spec.labels", s.labels)
    now = engine.now()
    start = start_latest = None
    if kind is LeaseKind.AR:
        if not s.HasField("start"):
            c.add("spec.start", "an advance reservation needs a start")
        else:
            start = _core_time(c, "spec.start", s.start, engine, now)
        if s.HasField("start_latest"):
            start_latest = _core_time(c, "spec.start_latest", s.start_latest, engine, now)
            if start is not None and start_latest is not None and start_latest < start:
                c.add("spec.start_latest", "must not be before spec.start")
    else:
        for name in ("start", "start_latest"):
            if s.HasField(name):
                c.add(f"spec.{name}", "only advance reservations have a start")
    context = _context_from_proto(c, s.context, s.vm_count) if s.HasField("context") else None
    c.done()
    assert kind is not None
    return LeaseSpec(kind, s.vm_count, resources, s.image_id, duration, start, start_latest,
                     s.preemptible, tuple(sorted(s.labels.items())), context)


def _context_from_proto(c: _Checker, ctx: tpb.ContextSpec, vm_count: int
                        ) -> dict[str, Any] | None:
    """The validated context request in its JSON form (None after a violation)."""
    handoff: Handoff | None = None
    h = ctx.handoff
    try:
        match h.WhichOneof("kind") if ctx.HasField("handoff") else None:
            case "ansible":
                handoff = AnsibleHandoff(h.ansible.url, h.ansible.playbook or "site.yml",
                                         h.ansible.branch)
            case "puppet":
                handoff = PuppetHandoff(h.puppet.server)
            case "salt":
                handoff = SaltHandoff(h.salt.master)
            case "bcfg2":
                handoff = Bcfg2Handoff(h.bcfg2.server, h.bcfg2.profile)
            case "script":
                handoff = ScriptHandoff(h.script.script)
            case None if ctx.HasField("handoff"):
                c.add("spec.context.handoff", "must set one of ansible, puppet, salt, bcfg2, "
                      "script")
    except ContextError as e:
        c.add(f"spec.context.{e.field}", e.description)
        return None
    deadline = 0
    if ctx.HasField("deadline"):
        deadline = c.whole_duration("spec.context.deadline", ctx.deadline, 1)
    spec = ContextSpec(tuple(ctx.ssh_keys),
                       tuple(RoleGroup(tuple(g.vms), tuple(g.provides), tuple(g.requires))
                             for g in ctx.groups), ctx.user_data, handoff, deadline)
    try:
        spec.validate(max(vm_count, 0))
    except ContextError as e:
        c.add(f"spec.{e.field}", e.description)
        return None
    return spec.as_json()


def _core_time(c: _Checker, field: str, ts: timestamp_pb2.Timestamp, engine: Engine,
               now: int) -> int | None:
    if ts.nanos:
        c.add(field, "must be whole seconds")
        return None
    t = engine.to_core(ts.seconds)
    if t < now:
        c.add(field, f"is in the past (now is {engine.to_wall(now)} s since the epoch)")
        return None
    if t > now + MAX_SECONDS:
        c.add(field, f"is more than {MAX_SECONDS} s in the future")
        return None
    return t


def _lease_id(c: _Checker, value: int, field: str = "id") -> int:
    if value <= 0:
        c.add(field, f"must be a positive lease id (got {value})")
    return value


def _page_token(filters: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def _encode_token(after: int, filters: Mapping[str, Any]) -> str:
    raw = json.dumps({"a": after, "f": _page_token(filters)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(c: _Checker, token: str, filters: Mapping[str, Any]) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        after, digest = data["a"], data["f"]
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ValueError(after)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        c.add("page_token", "is not a token this service issued")
        return 0
    if digest != _page_token(filters):
        c.add("page_token", "was issued for other filters")
    return after


# ============================================================================ errors

class _Malformed:
    """Stands for a request whose bytes did not decode."""

    def __init__(self, error: str) -> None:
        self.error = error


_Req = TypeVar("_Req", bound=Message)


def _safe_deserializer(cls: type[_Req]) -> Callable[[bytes], _Req | _Malformed]:
    def deserialize(data: bytes) -> _Req | _Malformed:
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            return _Malformed(str(e) or "undecodable message")
    return deserialize


def _status(code: grpc.StatusCode, message: str, *details: Message) -> grpc.Status:
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    value = getattr(code_pb2, code.name)
    return rpc_status.to_status(status_pb2.Status(code=value, message=message, details=packed))


def _error_status(e: Exception, engine: Engine) -> grpc.Status:
    if isinstance(e, TooManyWatchers):
        return _status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
    if isinstance(e, BadRequest):
        br = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in e.violations])
        return _status(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {e}", br)
    if isinstance(e, InvalidField):
        br = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=e.field,
                                                        description=e.description)])
        return _status(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {e}", br)
    if isinstance(e, NotFound):
        return _status(grpc.StatusCode.NOT_FOUND, str(e))
    if isinstance(e, Conflict):
        return _status(grpc.StatusCode.ALREADY_EXISTS, str(e))
    if isinstance(e, Unavailable):
        return _status(grpc.StatusCode.UNAVAILABLE, str(e))
    if isinstance(e, Infeasible):
        return _infeasible_status(e.reason, e.subject, e.lease_id, None, engine)
    if isinstance(e, EngineError):
        return _status(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    log.exception("unexpected error in a handler", exc_info=e)
    return _status(grpc.StatusCode.INTERNAL, "internal error (logged by the server)")


def _infeasible_status(reason: str, subject: str, lease_id: int | None,
                       earliest: int | None, engine: Engine) -> grpc.Status:
    pf = error_details_pb2.PreconditionFailure(violations=[
        error_details_pb2.PreconditionFailure.Violation(type="CAPACITY", subject=subject,
                                                        description=reason)])
    metadata = {}
    message = reason
    if lease_id is not None:
        metadata["lease_id"] = str(lease_id)
    if earliest is not None:
        wall = engine.to_wall(earliest)
        metadata["earliest_start"] = _ts(wall).ToJsonString()
        message += f" (counter-offer: earliest start {metadata['earliest_start']})"
    info = error_details_pb2.ErrorInfo(reason="INFEASIBLE", domain="wsched",
                                       metadata=metadata)
    return _status(grpc.StatusCode.FAILED_PRECONDITION, message, pf, info)


def _rejection(record: LeaseRecord, engine: Engine) -> grpc.Status:
    earliest = engine.counter_offer(record.id)
    return _infeasible_status(f"lease {record.id} rejected: {record.reason or 'no reason'}",
                              f"lease/{record.id}", record.id, earliest, engine)


# ============================================================================ servicers

class TooManyWatchers(Exception):
    """Every watch slot is taken (each stream holds a server thread)."""


class _Liveness(Protocol):
    """What a watch stream needs of its call: whether the client is still there."""

    def is_active(self) -> bool: ...


class LeaseServicer:
    """Coroutine methods run on the server's event loop, the others in its thread pool."""

    def __init__(self, engine: Engine, pool: Executor, max_watchers: int = 16) -> None:
        self.engine = engine
        self.pool = pool
        self.max_watchers = max_watchers
        # Each open stream holds a worker thread: bounded, so watchers can never take
        # every thread and starve the other calls.
        self._watch_slots = threading.BoundedSemaphore(max_watchers)

    async def CreateLease(self, req: lpb.CreateLeaseRequest,
                          _ctx: object) -> lpb.CreateLeaseResponse | grpc.Status:
        spec = _spec_from_proto(req, self.engine)
        result = await self.engine.create_lease_async(spec, req.request_id or None)
        if result.lease.state == str(LeaseState.REJECTED):  # the counter-offer locks
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, _rejection, result.lease, self.engine)
        response = lpb.CreateLeaseResponse(replayed=result.replayed)
        lease_to_proto(result.lease, self.engine.origin, out=response.lease)
        return response

    def GetLease(self, req: lpb.GetLeaseRequest, _ctx: grpc.ServicerContext) -> tpb.Lease:
        c = _Checker()
        _lease_id(c, req.id)
        c.done()
        return lease_to_proto(self.engine.get_lease(req.id), self.engine.origin,
                              self.engine.context_states(req.id))

    def ListLeases(self, req: lpb.ListLeasesRequest,
                   _ctx: grpc.ServicerContext) -> lpb.ListLeasesResponse:
        c = _Checker()
        states = []
        for i, s in enumerate(req.states):
            if s not in _STATES:
                c.add(f"states[{i}]", f"unknown lease state {s}")
            else:
                states.append(str(_STATES[s]))
        kinds = []
        for i, k in enumerate(req.kinds):
            if k not in _KINDS:
                c.add(f"kinds[{i}]", f"unknown lease kind {k}")
            else:
                kinds.append(str(_KINDS[k]))
        c.labels("labels", req.labels)
        c.int_range("page_size", req.page_size, 0, MAX_PAGE)
        filters = {"s": sorted(states), "k": sorted(kinds), "l": dict(req.labels)}
        after = _decode_token(c, req.page_token, filters)
        c.done()
        size = req.page_size or DEFAULT_PAGE
        rows = self.engine.list_leases(states=tuple(states), kinds=tuple(kinds),
                                       labels=dict(req.labels), after_id=after,
                                       limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        out = lpb.ListLeasesResponse(
            leases=[lease_to_proto(r, self.engine.origin) for r in rows])
        if more:
            out.next_page_token = _encode_token(rows[-1].id, filters)
        return out

    def CancelLease(self, req: lpb.CancelLeaseRequest, _ctx: grpc.ServicerContext) -> tpb.Lease:
        c = _Checker()
        _lease_id(c, req.id)
        c.done()
        return lease_to_proto(self.engine.cancel_lease(req.id), self.engine.origin,
                              self.engine.context_states(req.id))

    def ExtendLease(self, req: lpb.ExtendLeaseRequest, _ctx: grpc.ServicerContext) -> tpb.Lease:
        c = _Checker()
        _lease_id(c, req.id)
        extra = 0
        if not req.HasField("extra"):
            c.add("extra", "is required")
        else:
            extra = c.whole_duration("extra", req.extra, 1)
        c.done()
        return lease_to_proto(self.engine.extend_lease(req.id, extra), self.engine.origin,
                              self.engine.context_states(req.id))

    def WatchLeases(self, req: lpb.WatchLeasesRequest,
                    ctx: _Liveness) -> Generator[lpb.LeaseChange]:
        c = _Checker()
        if req.after_revision < 0:
            c.add("after_revision", "must not be negative")
        if req.lease_id < 0:
            c.add("lease_id", "must not be negative")
        c.done()
        if not self._watch_slots.acquire(blocking=False):
            raise TooManyWatchers(f"all {self.max_watchers} watch streams are open; retry "
                                  "later (or close one)")
        try:
            yield from self._watch(req, ctx)
        finally:
            self._watch_slots.release()

    def _watch(self, req: lpb.WatchLeasesRequest,
               ctx: _Liveness) -> Generator[lpb.LeaseChange]:
        engine, last = self.engine, req.after_revision
        while ctx.is_active() and not engine.stopped:
            sub, upto = engine.subscribe(req.lease_id)
            try:
                while last < upto:  # history, from the watch log
                    rows = [r for r in engine.store.changes(last, req.lease_id)
                            if r.revision <= upto]
                    if not rows:
                        break
                    for r in rows:
                        yield change_to_proto(r, engine.origin,
                                              engine.context_states(r.lease_id))
                        last = r.revision
                last = max(last, upto)
                while ctx.is_active():  # then live
                    try:
                        change = sub.queue.get(timeout=0.5)
                    except queue.Empty:
                        if sub.overflowed:
                            break  # too slow: catch up from the log again
                        continue
                    if change is None:
                        return  # the engine stopped
                    if change.revision > last:
                        yield change_to_proto(change, engine.origin,
                                              engine.context_states(change.lease_id))
                        last = change.revision
            finally:
                engine.unsubscribe(sub)


class SiteServicer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def AddHost(self, req: spb.AddHostRequest, _ctx: grpc.ServicerContext) -> spb.Host:
        c = _Checker()
        c.text("name", req.name, _HOST_NAME, 63)
        capacity = c.resources("capacity", req.capacity)
        c.done()
        return host_to_proto(self.engine.add_host(req.name, capacity))

    def ListHosts(self, _req: spb.ListHostsRequest,
                  _ctx: grpc.ServicerContext) -> spb.ListHostsResponse:
        return spb.ListHostsResponse(hosts=[host_to_proto(h) for h in self.engine.hosts()])

    def _name(self, name: str) -> None:
        c = _Checker()
        c.text("name", name, _HOST_NAME, 63)
        c.done()

    def DrainHost(self, req: spb.DrainHostRequest, _ctx: grpc.ServicerContext) -> spb.Host:
        self._name(req.name)
        return host_to_proto(self.engine.drain_host(req.name))

    def RemoveHost(self, req: spb.RemoveHostRequest, _ctx: grpc.ServicerContext) -> spb.Host:
        self._name(req.name)
        return host_to_proto(self.engine.remove_host(req.name))

    def RegisterImage(self, req: spb.RegisterImageRequest,
                      _ctx: grpc.ServicerContext) -> spb.Image:
        c = _Checker()
        if not req.HasField("image"):
            c.add("image", "is required")
            c.done()
        i = req.image
        c.text("image.id", i.id, _IMAGE_ID, 128)
        c.int_range("image.size_mb", i.size_mb, 0, MAX_RESOURCE)
        c.text("image.location", i.location, None, 4096, required=False)
        c.text("image.format", i.format, None, 32, required=False)
        c.done()
        image = ImageRecord(i.id, i.size_mb, i.location, i.format)
        return image_to_proto(self.engine.register_image(image))

    def ListImages(self, _req: spb.ListImagesRequest,
                   _ctx: grpc.ServicerContext) -> spb.ListImagesResponse:
        return spb.ListImagesResponse(images=[image_to_proto(i) for i in self.engine.images()])

    def GetUtilization(self, _req: spb.GetUtilizationRequest,
                       _ctx: grpc.ServicerContext) -> spb.Utilization:
        u = self.engine.utilization()
        return spb.Utilization(
            time=_ts(self.engine.to_wall(u.at)), hosts=u.hosts, hosts_in_use=u.hosts_in_use,
            capacity=resources_to_proto(u.capacity), allocated=resources_to_proto(u.allocated),
            cpu_fraction=u.allocated.cpu / u.capacity.cpu if u.capacity.cpu else 0.0,
            memory_fraction=(u.allocated.memory / u.capacity.memory
                             if u.capacity.memory else 0.0),
            leases_by_state=dict(u.leases_by_state))


# ============================================================================ handlers

def _unary(engine: Engine, method: Callable[..., Any], req_cls: type[Message],
           resp_cls: type[Message], pool: Executor) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary call: ``method`` on the loop if it is a coroutine function, in ``pool``
    otherwise."""
    on_loop = inspect.iscoroutinefunction(method)

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            status = _status(grpc.StatusCode.INVALID_ARGUMENT,
                             f"request does not decode: {request.error}")
        else:
            try:
                if on_loop:
                    result = await method(request, context)
                else:
                    result = await asyncio.get_running_loop().run_in_executor(
                        pool, method, request, context)
                if not isinstance(result, grpc.Status):
                    return result
                status = result
            except Exception as e:
                status = _error_status(e, engine)
        await context.abort_with_status(status)
    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=_safe_deserializer(req_cls),
        response_serializer=resp_cls.SerializeToString)


class _Live:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


_END = object()


async def _in_pool(pool: Executor, method: Callable[[Any, _Liveness], Generator[Any]],
                   request: Any) -> AsyncGenerator[Any]:
    """The items of the blocking generator ``method(request, liveness)``, each taken in
    ``pool``. When the stream ends early (the client went away, the server stops) the
    generator sees ``is_active()`` turn false and is closed in the pool, after the item
    it may still be waiting for: its ``finally`` clauses run there."""
    live = _Live()
    items = method(request, live)
    turn = threading.Lock()  # one thread in the generator at a time

    def take() -> Any:
        with turn:
            return next(items, _END)

    def close() -> None:
        with turn:
            items.close()

    loop = asyncio.get_running_loop()
    try:
        while (item := await loop.run_in_executor(pool, take)) is not _END:
            yield item
    finally:
        live.active = False
        with contextlib.suppress(RuntimeError):  # the pool is shut down: nothing to close
            pool.submit(close)


def _stream(engine: Engine, method: Callable[..., Generator[Any]], req_cls: type[Message],
            resp_cls: type[Message], pool: Executor) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(request: Any,
                     context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(request, _Malformed):
            status = _status(grpc.StatusCode.INVALID_ARGUMENT,
                             f"request does not decode: {request.error}")
        else:
            try:
                async with contextlib.aclosing(_in_pool(pool, method, request)) as items:
                    async for item in items:
                        yield item
                return
            except Exception as e:
                status = _error_status(e, engine)
        await context.abort_with_status(status)
    return grpc.unary_stream_rpc_method_handler(
        handle, request_deserializer=_safe_deserializer(req_cls),
        response_serializer=resp_cls.SerializeToString)


def generic_handlers(engine: Engine, pool: Executor, max_watchers: int = 16
                     ) -> tuple[grpc.GenericRpcHandler, ...]:
    leases, site = LeaseServicer(engine, pool, max_watchers), SiteServicer(engine)
    return (
        grpc.method_handlers_generic_handler(LEASE_SERVICE, {
            "CreateLease": _unary(engine, leases.CreateLease, lpb.CreateLeaseRequest,
                                  lpb.CreateLeaseResponse, pool),
            "GetLease": _unary(engine, leases.GetLease, lpb.GetLeaseRequest, tpb.Lease, pool),
            "ListLeases": _unary(engine, leases.ListLeases, lpb.ListLeasesRequest,
                                 lpb.ListLeasesResponse, pool),
            "CancelLease": _unary(engine, leases.CancelLease, lpb.CancelLeaseRequest,
                                  tpb.Lease, pool),
            "ExtendLease": _unary(engine, leases.ExtendLease, lpb.ExtendLeaseRequest,
                                  tpb.Lease, pool),
            "WatchLeases": _stream(engine, leases.WatchLeases, lpb.WatchLeasesRequest,
                                   lpb.LeaseChange, pool),
        }),
        grpc.method_handlers_generic_handler(SITE_SERVICE, {
            "AddHost": _unary(engine, site.AddHost, spb.AddHostRequest, spb.Host, pool),
            "ListHosts": _unary(engine, site.ListHosts, spb.ListHostsRequest,
                                spb.ListHostsResponse, pool),
            "DrainHost": _unary(engine, site.DrainHost, spb.DrainHostRequest, spb.Host, pool),
            "RemoveHost": _unary(engine, site.RemoveHost, spb.RemoveHostRequest, spb.Host, pool),
            "RegisterImage": _unary(engine, site.RegisterImage, spb.RegisterImageRequest,
                                    spb.Image, pool),
            "ListImages": _unary(engine, site.ListImages, spb.ListImagesRequest,
                                 spb.ListImagesResponse, pool),
            "GetUtilization": _unary(engine, site.GetUtilization, spb.GetUtilizationRequest,
                                     spb.Utilization, pool),
        }),
    )


# ============================================================================ server

@dataclass(frozen=True)
class RunningServer:
    """A started server: ``port`` is the bound port (useful with port 0)."""

    server: grpc.aio.Server
    port: int
    engine: Engine
    health: health.aio.HealthServicer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    pool: ThreadPoolExecutor

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop serving (watch streams end), then stop the engine's timer. Again: nothing."""
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.health.enter_graceful_shutdown(),
                                         self.loop).result()
        self.engine.stop()
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result()
        _close_loop(self.loop, self.thread, self.pool)


def _close_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                pool: ThreadPoolExecutor) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    pool.shutdown(wait=True, cancel_futures=True)


def pin_to_one_cpu(cpu: int | None = None) -> int | None:
    """Keep this process on one CPU: ``cpu``, or the lowest it may use. Returns that CPU,
    or None where the platform cannot (then ``cpu`` must be None).

    The server's threads (the gRPC loop, the engine, the commit) take turns holding the
    one interpreter lock thousands of times a second, so together they use one core at
    most; on different CPUs each turn is a wake-up across CPUs, which a virtual machine
    makes costly. On one CPU they also run as batch threads (SCHED_BATCH): a thread the
    lock holder wakes (the commit thread, after a step) does not preempt it only to wait
    for the lock. On this project's 2-vCPU machine, ``bench/bench_grpc.py``'s server
    acknowledged 1,090-1,230 creates/s so, against 810-850 on any CPU (0.79-0.89 ms of
    server CPU a create instead of 1.20-1.29; pinned without SCHED_BATCH: 1,000-1,130)."""
    if not hasattr(os, "sched_setaffinity"):
        if cpu is not None:
            raise OSError("this platform cannot keep a process on one CPU")
        return None
    allowed = os.sched_getaffinity(0)
    if cpu is None:
        cpu = min(allowed)
    elif cpu not in allowed:
        raise ValueError(f"CPU {cpu} is not one this process may use (it may use "
                         f"{', '.join(map(str, sorted(allowed)))})")
    # Every thread of the process (a thread started before has its own settings); the
    # ones started later inherit them.
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.sched_setaffinity(int(tid), {cpu})
            os.sched_setscheduler(int(tid), os.SCHED_BATCH, os.sched_param(0))
    return cpu


def freeze_heap_every(seconds: float, stop: threading.Event) -> threading.Thread:
    """Keep garbage-collection pauses short in a server process: a full collection
    scans every tracked object, and with tens of thousands of leases in the core that
    is a pause of 0.3-0.5 s in the middle of some request. Collect, then freeze what
    survives (``gc.freeze``: later collections skip it), now and every ``seconds``
    until ``stop`` is set; each collection then only scans what is newer.

    Meanwhile full collections are this thread's alone (the automatic ones are put off
    for good, and back as they were once it stops): they scanned the same young objects
    at any moment inside a request, and bench_grpc's p99 went from 45-49 ms to 40-41."""

    def run() -> None:
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], 2**31 - 1)
        try:
            while True:
                started = time.perf_counter()
                gc.collect()
                gc.freeze()
                log.debug("heap frozen", extra={
                    "objects": gc.get_freeze_count(),
                    "seconds": round(time.perf_counter() - started, 3)})
                if stop.wait(seconds):
                    return
        finally:
            gc.set_threshold(*thresholds)

    thread = threading.Thread(target=run, daemon=True, name="wsched-gc")
    thread.start()
    return thread


class _ClientGone(logging.Filter):
    """gRPC's asyncio server logs an ERROR with a traceback when it cannot send an answer
    because the call ended first (the client's deadline passed, or it cancelled):
    routine for a service whose clients time out and retry (a retry with the same
    request id gets the lease the first attempt created). Logged at DEBUG instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("ExecuteBatchError raised in core"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "%s (the call ended before its answer was sent)", (message,)
        record.exc_info = record.exc_text = None
        # As if logged at DEBUG: only where that level is enabled.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _quiet_client_gone() -> None:
    cygrpc = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _ClientGone) for f in cygrpc.filters):
        cygrpc.addFilter(_ClientGone())


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (written in C: ~4 % less CPU per
    create than asyncio's), asyncio's otherwise (uvloop has no Windows build)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


#: Calls in progress at once, beyond which new ones get RESOURCE_EXHAUSTED at once: an
#: asyncio server takes every call it is sent, and a flood of creates would otherwise
#: queue without bound (memory, and latency for everyone) instead of pushing back.
MAX_CONCURRENT_RPCS = 1024


def start_server(engine: Engine, address: str = "127.0.0.1:50051",
                 max_workers: int = 32,
                 max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS) -> RunningServer:
    """Serve ``engine`` on ``address`` (``host:0`` picks a free port), from an event loop
    on a thread of its own. ``max_workers`` threads run the calls that may block; each
    open WatchLeases stream holds one, hence the generous pool, of which half at most
    go to watchers. Beyond ``max_concurrent_rpcs`` calls in progress, new calls are
    refused with RESOURCE_EXHAUSTED (clients retry)."""
    _quiet_client_gone()
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="wsched-grpc")
    loop = _new_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="wsched-grpc-loop")
    thread.start()
    health_servicer = health.aio.HealthServicer()
    names = (LEASE_SERVICE, SITE_SERVICE)

    async def serve() -> tuple[grpc.aio.Server, int]:
        # (created on the loop: it binds to the running one)
        server = grpc.aio.server(maximum_concurrent_rpcs=max_concurrent_rpcs)
        server.add_generic_rpc_handlers(generic_handlers(engine, pool, max(1, max_workers // 2)))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return server, port

    try:
        server, port = asyncio.run_coroutine_threadsafe(serve(), loop).result()
    except BaseException:
        _close_loop(loop, thread, pool)
        raise
    log.info("serving", extra={"address": address, "port": port})
    return RunningServer(server, port, engine, health_servicer, loop, thread, pool)
