"""Seeds at deploy time and the VMs' credentials.

``Contextualizer`` is what the engine calls when a lease's VMs are deployed: it gives
each VM an address from the site's pool and a row in the store (once: a repeated
deploy gets the same), resolves the lease's ``ContextSpec`` into ``VmContext``s, and
writes each VM's seeds (``<seed_dir>/lease-<id>-vm-<NN>/cidata.iso`` and
``context.iso``). It also issues and checks the VMs' broker credentials: a token
``<lease>.<index>.<expires>.<HMAC-SHA256>`` signed with a key kept in the store, so
it names exactly one VM of one lease and cannot be altered to name another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from scheduler.store import ContextVm, Store

from .iso import CONTEXT_LABEL, NOCLOUD_LABEL, write_iso
from .model import ContextSpec, SiteContext, VmContext, instance_id, vm_contexts
from .render import context_files, nocloud_files

log = logging.getLogger(__name__)

#: Lease states whose VMs no longer hold their addresses.
TERMINAL_STATES = ("rejected", "done", "cancelled", "failed")
NOCLOUD_SEED = "cidata.iso"
CONTEXT_SEED = "context.iso"
_KEY_NAME = "broker-hmac"


class Clock(Protocol):
    def time(self) -> float: ...


class Contextualizer:
    """Builds seeds and credentials for one site; thread-safe (the store is)."""

    def __init__(self, store: Store, site: SiteContext, seed_dir: Path) -> None:
        self.store = store
        self.site = site
        self.seed_dir = seed_dir
        self._key = bytes.fromhex(store.context_key(_KEY_NAME))

    # ------------------------------------------------------------ credentials
    def _mac(self, lease_id: int, index: int, expires: int) -> str:
        digest = hmac.new(self._key, f"wsched-context:{lease_id}:{index}:{expires}".encode(),
                          hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def token(self, vm: ContextVm) -> str:
        mac = self._mac(vm.lease_id, vm.index, vm.expires)
        return f"{vm.lease_id}.{vm.index}.{vm.expires}.{mac}"

    def verify(self, token: str, now: int) -> ContextVm | None:
        """The VM the token was issued to, if it is genuine and not expired."""
        parts = token.split(".")
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]) or len(token) > 200:
            return None
        lease_id, index, expires = (int(p) for p in parts[:3])
        if not hmac.compare_digest(parts[3], self._mac(lease_id, index, expires)):
            return None
        if now >= expires:
            return None
        for vm in self.store.context_vms(lease_id):
            if vm.index == index and vm.expires == expires:
                return vm
        return None

    # ------------------------------------------------------------ deploy
    def allocate(self, lease_id: int, vm_count: int, now: int, deadline: int = 0
                 ) -> list[ContextVm]:
        """The lease's VM rows (created, with addresses, on the first call)."""
        wait = deadline or self.site.deadline

        def make(index: int, address: str) -> ContextVm:
            return ContextVm(lease_id, index, instance_id(lease_id, index), address,
                             "pending", now + wait, now + max(self.site.credential_ttl, wait))

        return self.store.allocate_context(lease_id, vm_count,
                                           (str(a) for a in self.site.pool()), make,
                                           TERMINAL_STATES)

    def contexts(self, lease_id: int, context: Mapping[str, Any] | None, vm_count: int,
                 now: int) -> tuple[VmContext, ...]:
        spec = ContextSpec.from_json(context or {})
        rows = self.allocate(lease_id, vm_count, now, spec.deadline)
        return vm_contexts(lease_id, spec, self.site,
                           [ipaddress.ip_address(r.address) for r in rows],
                           [self.token(r) for r in rows])

    def prepare(self, lease_id: int, context: Mapping[str, Any] | None, vm_count: int,
                now: int) -> Sequence[Path]:
        """Write every VM's seeds (once) and return each VM's NoCloud seed path."""
        paths = []
        for vm in self.contexts(lease_id, context, vm_count, now):
            directory = self.seed_dir / vm.instance_id
            nocloud = directory / NOCLOUD_SEED
            if not nocloud.exists():
                directory.mkdir(parents=True, exist_ok=True)
                directory.chmod(0o700)  # the user-data holds the VM's credential
                write_iso(directory / CONTEXT_SEED, CONTEXT_LABEL, context_files(vm))
                write_iso(nocloud, NOCLOUD_LABEL, nocloud_files(vm))
                log.info("seed written", extra={"lease": lease_id, "vm": vm.instance_id,
                                                "address": str(vm.address)})
            paths.append(nocloud)
        return paths

    def states(self, lease_id: int) -> list[ContextVm]:
        return self.store.context_vms(lease_id)

    def release(self, lease_id: int) -> None:
        """The lease has ended: delete its VMs' seeds (they hold credentials)."""
        for vm in self.store.context_vms(lease_id):
            directory = self.seed_dir / vm.instance_id
            if directory.exists():
                shutil.rmtree(directory, ignore_errors=True)
                log.info("seed removed", extra={"lease": lease_id, "vm": vm.instance_id})
