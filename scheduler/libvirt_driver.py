"""The libvirt enactment driver: carries the engine's VM actions out on libvirt hypervisors.

``LibvirtDriver`` implements ``enactment.Driver`` with libvirt-python. Each host name maps
to a connection URI (``qemu+ssh://{host}/system`` in production, ``test:///default`` or a
``test:///PATH.xml`` node file in tests); a URI is opened once and its connection reused,
so hosts sharing a URI share a hypervisor. What each action does:

- ``prepare_image``: the image is a volume named after it in the host's storage pool
  (created with the image's size and format if missing; its contents are expected to be
  put there by the repository transfer, which this driver does not copy);
- ``deploy``: a copy-on-write qcow2 overlay ``<vm>.qcow2`` over the image volume, and a
  domain defined from XML built with ElementTree (vcpus = ceil(cpu / 100), memory in
  MiB, the overlay as its disk, the context seed ISO as a read-only CD-ROM);
- ``start`` = create, ``suspend`` = managed save, ``resume`` = create from the save;
- ``migrate``: see ``LibvirtDriver.migrate``;
- ``shutdown`` = ACPI shutdown, destroyed if still running after ``shutdown_timeout``;
- ``destroy`` = destroy, undefine (with its managed save) and delete the overlay.

Every action is idempotent (the engine may repeat one after a crash), and every libvirt
failure becomes an ``EnactmentError`` naming the operation, VM, host and libvirt's message.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import libvirt  # type: ignore[import-untyped]

from .enactment import VM, EnactmentError
from .store import ImageRecord

log = logging.getLogger(__name__)

#: libvirt's hypervisor type (``virConnect.getType``) -> the domain type to define.
_DOMAIN_TYPES = {"TEST": "test", "QEMU": "kvm"}


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error on stderr, including the expected
    ones of probing (a lookup of an absent domain); ours are raised as EnactmentError."""


class LibvirtDriver:
    """A ``Driver`` on libvirt. ``uris`` maps host names to URIs; ``default_uri`` (with
    ``{host}`` replaced by the host name) serves the others. ``images`` gives the size and
    format of images whose volume must be created; ``network`` (None: no NIC) is the
    libvirt network the VMs join."""

    name = "libvirt"

    def __init__(self, uris: Mapping[str, str] | None = None, *,
                 default_uri: str | None = None, pool: str = "default",
                 images: Mapping[str, ImageRecord] | None = None,
                 network: str | None = "default", shutdown_timeout: float = 60.0) -> None:
        self._uris = dict(uris or {})
        self._default_uri = default_uri
        self._pool = pool
        self._images = dict(images or {})
        self._network = network
        self._shutdown_timeout = shutdown_timeout
        self._conns: dict[str, Any] = {}  # URI -> virConnect
        self._lock = threading.Lock()
        libvirt.registerErrorHandler(_quiet, None)

    # ------------------------------------------------------------ connections and errors
    def uri(self, host: str) -> str:
        if host in self._uris:
            return self._uris[host]
        if self._default_uri is None:
            raise EnactmentError(f"no libvirt URI for host {host!r}")
        return self._default_uri.replace("{host}", host)

    def connection(self, host: str) -> Any:
        """The host's ``virConnect``, opened on first use and kept."""
        uri = self.uri(host)
        with self._lock:
            conn = self._conns.get(uri)
            if conn is None or not conn.isAlive():
                try:
                    conn = libvirt.open(uri)
                except libvirt.libvirtError as e:
                    raise EnactmentError(f"cannot connect to host {host} ({uri}): "
                                         f"{e.get_error_message()}") from e
                self._conns[uri] = conn
            return conn

    @contextmanager
    def _op(self, verb: str, target: str, host: str) -> Iterator[None]:
        log.info("libvirt action", extra={"verb": verb, "target": target, "host": host})
        try:
            yield
        except libvirt.libvirtError as e:
            raise EnactmentError(f"libvirt {verb} of {target} on host {host} "
                                 f"({self.uri(host)}) failed: {e.get_error_message()}") from e

    @staticmethod
    def _find(lookup: Callable[[str], Any], name: str, missing: int) -> Any | None:
        """``lookup(name)``, or None when libvirt answers that it does not exist."""
        try:
            return lookup(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == missing:
                return None
            raise

    def _lookup(self, conn: Any, name: str) -> Any | None:
        return self._find(conn.lookupByName, name, libvirt.VIR_ERR_NO_DOMAIN)

    def _domain(self, vm: VM, host: str) -> Any:
        dom = self._lookup(self.connection(host), vm.name)
        if dom is None:
            raise EnactmentError(f"no domain {vm.name} on host {host} ({self.uri(host)})")
        return dom

    # ------------------------------------------------------------ storage
    def _volume(self, pool: Any, name: str) -> Any | None:
        return self._find(pool.storageVolLookupByName, name, libvirt.VIR_ERR_NO_STORAGE_VOL)

    def _image_volume(self, conn: Any, image_id: str) -> Any:
        pool = conn.storagePoolLookupByName(self._pool)
        vol = self._volume(pool, image_id)
        if vol is None:
            rec = self._images.get(image_id, ImageRecord(image_id, 1))
            vol = pool.createXML(_volume_xml(image_id, max(rec.size_mb, 1),
                                             rec.format or "raw"), 0)
        return vol

    def _overlay(self, conn: Any, vm: VM) -> Any:
        image = self._image_volume(conn, vm.image_id)
        pool = conn.storagePoolLookupByName(self._pool)
        vol = self._volume(pool, f"{vm.name}.qcow2")
        if vol is None:
            rec = self._images.get(vm.image_id, ImageRecord(vm.image_id, 1))
            vol = pool.createXML(_volume_xml(f"{vm.name}.qcow2", max(rec.size_mb, 1), "qcow2",
                                             backing=(image.path(), rec.format or "raw")), 0)
        return vol

    def _delete_overlay(self, conn: Any, vm: VM) -> None:
        vol = self._volume(conn.storagePoolLookupByName(self._pool), f"{vm.name}.qcow2")
        if vol is not None:
            vol.delete(0)

    # ------------------------------------------------------------ the Driver interface
    def prepare_image(self, image_id: str, host: str) -> None:
        with self._op("prepare_image", image_id, host):
            self._image_volume(self.connection(host), image_id)

    def deploy(self, vm: VM, host: str) -> None:
        conn = self.connection(host)
        with self._op("deploy", vm.name, host):
            if self._lookup(conn, vm.name) is None:
                self._define(conn, vm)

    def _define(self, conn: Any, vm: VM) -> Any:
        disk = self._overlay(conn, vm).path()
        dtype = _DOMAIN_TYPES.get(conn.getType(), str(conn.getType()).lower())
        return conn.defineXML(domain_xml(vm, dtype, disk, self._network))

    def start(self, vm: VM, host: str) -> None:
        with self._op("start", vm.name, host):
            dom = self._domain(vm, host)
            if not dom.isActive():
                dom.create()

    def suspend(self, vm: VM, host: str) -> None:
        with self._op("suspend", vm.name, host):
            dom = self._domain(vm, host)
            if dom.isActive():
                dom.managedSave(0)
            elif not dom.hasManagedSaveImage(0):
                raise EnactmentError(f"cannot suspend {vm.name} on host {host}: not running")

    def resume(self, vm: VM, host: str) -> None:
        with self._op("resume", vm.name, host):
            dom = self._domain(vm, host)
            if dom.isActive():
                return
            if not dom.hasManagedSaveImage(0):
                # booting afresh would silently lose the VM's memory
                raise EnactmentError(f"cannot resume {vm.name} on host {host}: no saved state")
            dom.create()

    def migrate(self, vm: VM, source: str, destination: str) -> None:
        """Move the VM (normally suspended: defined, with a managed save) to ``destination``.

        Hosts on the same connection share a hypervisor: nothing moves. On real
        hypervisors a managed save cannot be migrated itself (offline migration moves the
        definition only), so the saved state is restored *paused* (the guest never runs),
        migrated with its overlay disk (``NON_SHARED_INC``: the image is prepared on the
        destination), and saved again there. The test hypervisor cannot migrate between
        connections, so there the domain is defined on the destination, its saved-state
        flag recreated (create + managed save: the test driver keeps no memory), and it is
        undefined on the source with its managed save.
        """
        src, dst = self.connection(source), self.connection(destination)
        if src is dst:
            return
        with self._op("migrate", vm.name, f"{source} -> {destination}"):
            sdom, ddom = self._lookup(src, vm.name), self._lookup(dst, vm.name)
            if sdom is None:
                if ddom is None:
                    raise EnactmentError(f"cannot migrate {vm.name}: no domain on host "
                                         f"{source} nor on {destination}")
                return  # already moved
            saved, running = sdom.hasManagedSaveImage(0), sdom.isActive()
            if "TEST" in (src.getType(), dst.getType()):
                if ddom is None:
                    ddom = self._define(dst, vm)
                if (saved or running) and not ddom.hasManagedSaveImage(0):
                    if not ddom.isActive():
                        ddom.create()
                    if saved:
                        ddom.managedSave(0)
                if running:
                    sdom.destroy()
                sdom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            else:
                self._overlay(dst, vm)
                flags = libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                if saved and not running:
                    sdom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
                    running = True
                if running:
                    flags |= libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_NON_SHARED_INC
                else:
                    flags |= libvirt.VIR_MIGRATE_OFFLINE
                ddom = sdom.migrate3(dst, {}, flags)
                if saved:
                    ddom.managedSave(0)
            self._delete_overlay(src, vm)

    def shutdown(self, vm: VM, host: str) -> None:
        with self._op("shutdown", vm.name, host):
            dom = self._lookup(self.connection(host), vm.name)
            if dom is None or not dom.isActive():
                return
            dom.shutdown()
            deadline = time.monotonic() + self._shutdown_timeout
            while dom.isActive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if dom.isActive():
                log.warning("shutdown timed out: destroying",
                            extra={"vm": vm.name, "host": host})
                dom.destroy()

    def destroy(self, vm: VM, host: str) -> None:
        conn = self.connection(host)
        with self._op("destroy", vm.name, host):
            dom = self._lookup(conn, vm.name)
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            self._delete_overlay(conn, vm)

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            try:
                conn.close()
            except libvirt.libvirtError:
                log.warning("closing a libvirt connection failed", exc_info=True)


# ============================================================================ XML

def domain_xml(vm: VM, domain_type: str, disk: str, network: str | None = "default") -> str:
    """The domain definition of ``vm``: ``disk`` is its disk image's path."""
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = vm.name
    ET.SubElement(dom, "memory", unit="MiB").text = str(vm.resources.memory)
    ET.SubElement(dom, "vcpu").text = str(max(1, math.ceil(vm.resources.cpu / 100)))
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type").text = "hvm"
    ET.SubElement(os_, "boot", dev="hd")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")  # for a graceful shutdown
    devices = ET.SubElement(dom, "devices")
    d = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(d, "driver", name="qemu", type="qcow2")
    ET.SubElement(d, "source", file=disk)
    ET.SubElement(d, "target", dev="vda", bus="virtio")
    if vm.seed is not None:
        cd = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cd, "driver", name="qemu", type="raw")
        ET.SubElement(cd, "source", file=str(vm.seed))
        ET.SubElement(cd, "target", dev="sda", bus="sata")
        ET.SubElement(cd, "readonly")
    if network is not None:
        nic = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(nic, "mac", address=vm.mac)  # what its network-config matches
        ET.SubElement(nic, "source", network=network)
        ET.SubElement(nic, "model", type="virtio")
    return ET.tostring(dom, encoding="unicode")


def _volume_xml(name: str, size_mb: int, fmt: str,
                backing: tuple[str, str] | None = None) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="MiB").text = str(size_mb)
    ET.SubElement(ET.SubElement(vol, "target"), "format", type=fmt)
    if backing is not None:
        b = ET.SubElement(vol, "backingStore")
        ET.SubElement(b, "path").text = backing[0]
        ET.SubElement(b, "format", type=backing[1])
    return ET.tostring(vol, encoding="unicode")
