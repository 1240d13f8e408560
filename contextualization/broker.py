"""The context broker: VMs report their identity and learn who provides their roles.

``ContextBroker`` owns each deployed VM's context state machine::

    pending --report--> reported --all providers of its required roles reported--> ready
       |                    |
       +--deadline--> failed <--deadline, a required role has no reported provider

A VM proves who it is with the credential in its user-data (see ``manager.py``); the
credential is the only identity the broker accepts, so one VM can never read another
VM's or another lease's context. ``BrokerServer`` serves it over HTTP on its own
thread, next to the gRPC service:

- ``POST /v1/phone-home/<token>``: cloud-init's ``phone_home`` module's request as is
  (form-encoded ``instance_id``, ``hostname``, ``fqdn``, ``pub_key_*``; "N/A" for a
  missing key); re-reporting is idempotent;
- ``GET /v1/context/<token>``: the VM's state and the identities of the reported
  providers of each role it requires (JSON); ``state`` is ``ready`` when all of them
  reported, ``failed`` (with a reason) when the deadline passed without them.

Tokens are redacted from every log line. A sweeper thread fails silent VMs at their
deadline even when nobody asks; every state change is reported through ``on_change``
(the engine records it in the lease's watch log).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from scheduler.store import ContextVm, Store

from .manager import Clock, Contextualizer
from .model import ContextSpec, SiteContext

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
_FIELDS = ("instance_id", "hostname", "fqdn", "pub_key_rsa", "pub_key_ecdsa",
           "pub_key_ed25519", "pub_key_dsa")
_TOKEN_PATH = re.compile(r"/v1/(phone-home|context)/([^/?#]*)")
_ANY_TOKEN = re.compile(r"(/v1/(?:phone-home|context)/)[^/?#\s]*")


def redact(text: str) -> str:
    """``text`` with every credential in a broker path replaced."""
    return _ANY_TOKEN.sub(r"\1<redacted>", text)


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: Mapping[str, Any]


_REFUSED = Reply(HTTPStatus.UNAUTHORIZED, {"error": "invalid or expired credential"})


class ContextBroker:
    """Context state transitions (thread-safe: one lock serializes them)."""

    def __init__(self, contextualizer: Contextualizer, clock: Clock,
                 on_change: Callable[[int, str], None] | None = None) -> None:
        self.ctx = contextualizer
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()

    def now(self) -> int:
        return math.floor(self.clock.time())

    def prepare(self, lease_id: int, context: Mapping[str, Any] | None, vm_count: int,
                now: int) -> Sequence[Path]:
        """Seeds at deploy (the engine's ``ContextHook``)."""
        return self.ctx.prepare(lease_id, context, vm_count, now)

    def release(self, lease_id: int) -> None:
        """The lease has ended (the engine's ``ContextHook``): its seeds go."""
        self.ctx.release(lease_id)

    def _spec(self, lease_id: int) -> ContextSpec:
        record = self.ctx.store.lease(lease_id)
        return ContextSpec.from_json((record.spec.get("context") if record else None) or {})

    # ------------------------------------------------------------ requests
    def report(self, token: str, form: Mapping[str, str], source: str = "") -> Reply:
        now = self.now()
        with self._lock:
            vm = self.ctx.verify(token, now)
            if vm is None:
                return _REFUSED
            if form.get("instance_id") != vm.instance_id:
                return Reply(HTTPStatus.BAD_REQUEST,
                             {"error": "instance_id does not match the credential"})
            identity: dict[str, Any] = {"source": source}
            for name in _FIELDS[1:]:
                value = form.get(name, "N/A").strip()
                if value and value != "N/A":
                    if len(value) > 16_384 or not value.isprintable():
                        return Reply(HTTPStatus.BAD_REQUEST, {"error": f"{name} is malformed"})
                    identity[name] = value
            notes: list[tuple[int, str]] = []
            self._settle(vm.lease_id, now, notes)  # a late report finds it failed
            vm = next(v for v in self.ctx.store.context_vms(vm.lease_id)
                      if v.index == vm.index)
            if vm.state == "failed":
                reply = Reply(HTTPStatus.CONFLICT, {"state": "failed", "reason": vm.reason})
            else:
                if vm.identity != identity:
                    first = vm.state == "pending"
                    vm = dataclasses.replace(vm, state="reported" if first else vm.state,
                                             identity=identity,
                                             reported_at=vm.reported_at or now)
                    self.ctx.store.update_context([vm])
                    notes.append((vm.lease_id, f"context: {vm.instance_id} "
                                  f"{'reported' if first else 're-reported a new identity'}"))
                    log.info("vm reported", extra={"vm": vm.instance_id, "source": source})
                self._settle(vm.lease_id, now, notes)
                reply = self._view(vm.lease_id, vm.index, now)
        self._notify(notes)
        return reply

    def query(self, token: str) -> Reply:
        now = self.now()
        with self._lock:
            vm = self.ctx.verify(token, now)
            if vm is None:
                return _REFUSED
            notes: list[tuple[int, str]] = []
            self._settle(vm.lease_id, now, notes)
            reply = self._view(vm.lease_id, vm.index, now)
        self._notify(notes)
        return reply

    def expire(self) -> None:
        """Settle every lease with a VM at or past its deadline (the sweeper's job)."""
        now = self.now()
        notes: list[tuple[int, str]] = []
        with self._lock:
            for lease_id in self.ctx.store.context_due(now):
                self._settle(lease_id, now, notes)
        self._notify(notes)

    def states(self, lease_id: int) -> list[ContextVm]:
        """Current per-VM states (deadlines applied first)."""
        notes: list[tuple[int, str]] = []
        with self._lock:
            self._settle(lease_id, self.now(), notes)
            out = self.ctx.store.context_vms(lease_id)
        self._notify(notes)
        return out

    # ------------------------------------------------------------ internals
    def _notify(self, notes: list[tuple[int, str]]) -> None:
        if self.on_change is None:
            return
        for lease_id, note in notes:
            try:
                self.on_change(lease_id, note)
            except Exception:  # the state is committed; the watch entry is a courtesy
                log.exception("could not record a context change", extra={"lease": lease_id})

    def _settle(self, lease_id: int, now: int, notes: list[tuple[int, str]]) -> None:
        """Apply deadlines and readiness to a lease's VMs; record what changed."""
        vms = {v.index: v for v in self.ctx.store.context_vms(lease_id)}
        if not vms:
            return
        spec = self._spec(lease_id)
        new = dict(vms)
        for i, v in vms.items():
            if v.state == "pending" and now >= v.deadline:
                new[i] = dataclasses.replace(v, state="failed",
                                             reason="did not report by the deadline")
        for i, v in new.items():
            if v.state != "reported":
                continue
            missing = self._missing(spec, i, new)
            if not missing:
                new[i] = dataclasses.replace(v, state="ready", reason=None)
            elif now >= v.deadline:
                new[i] = dataclasses.replace(
                    v, state="failed",
                    reason=f"no provider of {', '.join(missing)} reported by the deadline")
        changed = [v for i, v in new.items() if v != vms[i]]
        if changed:
            self.ctx.store.update_context(changed)
            for v in changed:
                why = f" ({v.reason})" if v.reason else ""
                notes.append((lease_id, f"context: {v.instance_id} {v.state}{why}"))
                log.info("vm context state", extra={"vm": v.instance_id, "state": v.state,
                                                    "reason": v.reason})

    @staticmethod
    def _missing(spec: ContextSpec, index: int, vms: Mapping[int, ContextVm]) -> list[str]:
        """Required roles with a provider still pending, or with none reported."""
        missing = []
        for role in spec.roles(index).requires:
            providers = [v for i, v in vms.items() if role in spec.roles(i).provides]
            if any(p.state == "pending" for p in providers) or \
                    not any(p.state in ("reported", "ready") for p in providers):
                missing.append(role)
        return missing

    def _view(self, lease_id: int, index: int, now: int) -> Reply:
        vms = {v.index: v for v in self.ctx.store.context_vms(lease_id)}
        spec, vm = self._spec(lease_id), vms[index]
        providers: dict[str, list[dict[str, Any]]] = {}
        for role in spec.roles(index).requires:
            providers[role] = [
                {"instance_id": p.instance_id, "address": p.address,
                 **{k: v for k, v in (p.identity or {}).items() if k != "source"}}
                for i, p in sorted(vms.items())
                if role in spec.roles(i).provides and p.state in ("reported", "ready")]
        body: dict[str, Any] = {
            "instance_id": vm.instance_id, "state": vm.state, "deadline": vm.deadline,
            "provides": list(spec.roles(index).provides), "providers": providers,
            "missing": self._missing(spec, index, vms) if vm.state != "ready" else []}
        if vm.reason:
            body["reason"] = vm.reason
        if vm.state in ("pending", "reported"):
            body["retry_after"] = max(1, min(10, vm.deadline - now))
        return Reply(HTTPStatus.OK, body)


# ============================================================================ HTTP

class _Handler(BaseHTTPRequestHandler):
    broker: ContextBroker  # set on the per-server subclass
    server_version = "wsched-context-broker"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("broker request", extra={"client": self.client_address[0],
                                           "detail": redact(format % args)})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info("broker request", extra={"client": self.client_address[0],
                                          "request": redact(self.requestline),
                                          "status": str(code)})

    def _send(self, reply: Reply) -> None:
        body = json.dumps(reply.body, sort_keys=True).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _route(self, kind: str) -> str | None:
        m = _TOKEN_PATH.fullmatch(urllib.parse.urlsplit(self.path).path)
        if m is None or m.group(1) != kind:
            self._send(Reply(HTTPStatus.NOT_FOUND, {"error": "no such resource"}))
            return None
        return urllib.parse.unquote(m.group(2))

    def do_GET(self) -> None:
        token = self._route("context")
        if token is not None:
            self._send(self.broker.query(token))

    def do_POST(self) -> None:
        token = self._route("phone-home")
        if token is None:
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._send(Reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE
                             if length > MAX_BODY else HTTPStatus.LENGTH_REQUIRED,
                             {"error": f"a report is at most {MAX_BODY} bytes"}))
            return
        raw = self.rfile.read(length)
        try:
            fields = urllib.parse.parse_qs(raw.decode(), keep_blank_values=True,
                                           strict_parsing=False, max_num_fields=32)
        except (UnicodeDecodeError, ValueError):
            self._send(Reply(HTTPStatus.BAD_REQUEST, {"error": "not a form-encoded body"}))
            return
        form = {k: v[-1] for k, v in fields.items()}
        self._send(self.broker.report(token, form, self.client_address[0]))


class BrokerServer:
    """The broker's HTTP endpoint and deadline sweeper, each on a daemon thread."""

    def __init__(self, broker: ContextBroker, host: str = "127.0.0.1", port: int = 0,
                 sweep_interval: float = 1.0) -> None:
        handler = type("BrokerHandler", (_Handler,), {"broker": broker})
        self.broker = broker
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.host = host
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self.httpd.serve_forever, name="wsched-broker",
                             daemon=True),
            threading.Thread(target=self._sweep, args=(sweep_interval,),
                             name="wsched-broker-sweeper", daemon=True)]
        for t in self._threads:
            t.start()
        log.info("context broker listening", extra={"host": host, "port": self.port})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _sweep(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.broker.expire()
            except Exception:  # keep sweeping: a database hiccup must not end it
                log.exception("context deadline sweep failed")

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)


def start_context(store: Store, site: Mapping[str, Any], seed_dir: Path, clock: Clock,
                  listen: str = "127.0.0.1:0", sweep_interval: float = 1.0
                  ) -> tuple[ContextBroker, BrokerServer]:
    """A broker for ``site`` (a site file's ``[contextualization]`` table) serving on
    ``listen``; VMs are told to reach it at the site's ``broker-url``, or else at the
    address it listens on. Set ``broker.on_change`` to record context changes."""
    settings = SiteContext.from_mapping(site)
    host, _, port = listen.rpartition(":")
    ctx = Contextualizer(store, settings, seed_dir)
    broker = ContextBroker(ctx, clock)
    server = BrokerServer(broker, host or "127.0.0.1", int(port or 0), sweep_interval)
    if not settings.broker_url:
        ctx.site = dataclasses.replace(settings, broker_url=server.url)
    return broker, server
