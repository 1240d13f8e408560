"""Enactment: carrying the schedule out on hypervisors, behind one ``Driver`` interface.

The engine calls a driver when a lease's scheduled event begins: image transfer,
deploy and start (boot), suspend, resume, migrate, shutdown and destroy, one call per
VM (or per host for an image). The interface follows libvirt's vocabulary so a
libvirt driver maps one to one: ``deploy`` = define the domain (disk image and
context seed attached), ``start`` = create, ``suspend``/``resume`` = managed save and
restore, ``migrate`` = migrate to another host's hypervisor, ``shutdown`` = shutdown,
``destroy`` = destroy and undefine.

A driver reports a failed action by raising ``EnactmentError`` with a reason; the
engine then marks the lease failed and releases its resources. Actions may be
repeated after a crash (the engine records them only when it commits), so drivers
must make each action idempotent. ``SimulatedDriver`` touches nothing: it records the
actions, and can be told to fail some, for tests.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .leases import Resources

#: Actions ``make_driver("simulated")`` (``wsched serve``'s default) keeps: the latest.
SIMULATED_KEEP = 10_000

log = logging.getLogger(__name__)


class EnactmentError(RuntimeError):
    """An action failed; the message is the reason shown on the lease."""


@dataclass(frozen=True)
class VM:
    """One VM of a lease: VM ``index`` (0-based) of lease ``lease_id``; ``seed`` is its
    context seed ISO, attached as a CD-ROM, if it has one."""

    lease_id: int
    index: int
    image_id: str
    resources: Resources
    seed: Path | None = None

    @property
    def name(self) -> str:
        return f"wsched-{self.lease_id}-{self.index}"

    @property
    def mac(self) -> str:
        return vm_mac(self.lease_id, self.index)


def vm_mac(lease_id: int, index: int) -> str:
    """The MAC address of a VM's first NIC: locally administered (02:), unique for
    lease ids below 2**24 and 65,536 VMs per lease, and known before the VM exists, so
    its network configuration can name the interface by it."""
    octets = [0x02, (lease_id >> 16) & 0xFF, (lease_id >> 8) & 0xFF, lease_id & 0xFF,
              (index >> 8) & 0xFF, index & 0xFF]
    return ":".join(f"{o:02x}" for o in octets)


class Driver(Protocol):
    """What the engine needs from a virtualization back end. Every method is
    idempotent and raises ``EnactmentError`` on failure."""

    name: str

    def prepare_image(self, image_id: str, host: str) -> None:
        """Copy a disk image from the repository to ``host``."""

    def deploy(self, vm: VM, host: str) -> None:
        """Define the VM on ``host`` with its disk image and context seed."""

    def start(self, vm: VM, host: str) -> None: ...

    def suspend(self, vm: VM, host: str) -> None:
        """Save the VM's memory to disk and stop it (libvirt: managed save)."""

    def resume(self, vm: VM, host: str) -> None:
        """Restart a suspended VM from its saved state."""

    def migrate(self, vm: VM, source: str, destination: str) -> None:
        """Move a suspended VM's state (and image) to another host."""

    def shutdown(self, vm: VM, host: str) -> None: ...

    def destroy(self, vm: VM, host: str) -> None:
        """Power off (if needed) and remove the VM's definition."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Action:
    """One driver call, as the simulated driver records it."""

    verb: str
    target: str  # a VM name, or an image id for prepare_image
    host: str
    destination: str | None = None


class SimulatedDriver:
    """Records every action and touches nothing. ``fail`` decides, per action, whether
    it fails (returns the reason) — for tests of the failure path. ``keep``: how many of
    the latest actions to keep (None: all; a service running for months keeps a tail)."""

    name = "simulated"

    def __init__(self, fail: Callable[[Action], str | None] | None = None, *,
                 keep: int | None = None) -> None:
        self._fail = fail
        self._lock = threading.Lock()  # the engine is serial, but tests read concurrently
        self._actions: deque[Action] = deque(maxlen=keep)

    @property
    def actions(self) -> list[Action]:
        with self._lock:
            return list(self._actions)

    def _do(self, action: Action) -> None:
        reason = self._fail(action) if self._fail is not None else None
        with self._lock:
            self._actions.append(action)
        log.debug("simulated action", extra={"verb": action.verb, "target": action.target,
                                             "host": action.host, "failed": reason})
        if reason is not None:
            raise EnactmentError(reason)

    def prepare_image(self, image_id: str, host: str) -> None:
        self._do(Action("prepare_image", image_id, host))

    def deploy(self, vm: VM, host: str) -> None:
        self._do(Action("deploy", vm.name, host))

    def start(self, vm: VM, host: str) -> None:
        self._do(Action("start", vm.name, host))

    def suspend(self, vm: VM, host: str) -> None:
        self._do(Action("suspend", vm.name, host))

    def resume(self, vm: VM, host: str) -> None:
        self._do(Action("resume", vm.name, host))

    def migrate(self, vm: VM, source: str, destination: str) -> None:
        self._do(Action("migrate", vm.name, source, destination))

    def shutdown(self, vm: VM, host: str) -> None:
        self._do(Action("shutdown", vm.name, host))

    def destroy(self, vm: VM, host: str) -> None:
        self._do(Action("destroy", vm.name, host))

    def close(self) -> None:
        pass


def make_driver(name: str) -> Driver:
    """A driver by name: ``simulated``, keeping its latest ``SIMULATED_KEEP`` actions
    (``libvirt_driver.LibvirtDriver`` needs its host URIs: ``service_cli`` builds it)."""
    if name == "simulated":
        return SimulatedDriver(keep=SIMULATED_KEEP)
    raise ValueError(f"unknown enactment driver {name!r} (known: simulated)")
