"""Tests of the libvirt enactment driver against libvirt's built-in test hypervisor: the
VM life cycle (each action twice), migration between hypervisors, errors, the domain XML,
and a gRPC server enacting leases on it. States are read back through libvirt itself.

``test:///default`` is one hypervisor shared by every connection of the process;
``test:///PATH.xml`` (a node file) is a private hypervisor per connection, so hosts given
such URIs are distinct hypervisors and only the driver's own connection sees them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt  # type: ignore[import-untyped]
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from scheduler.api.wsched.v1 import lease_service_pb2 as lpb
from scheduler.api.wsched.v1 import lease_service_pb2_grpc as lgrpc
from scheduler.api.wsched.v1 import types_pb2 as tpb
from scheduler.enactment import VM, EnactmentError
from scheduler.engine import Engine, ManualClock, demo_site
from scheduler.leases import Resources
from scheduler.libvirt_driver import LibvirtDriver
from scheduler.service import start_server
from scheduler.store import ImageRecord, Store

POOL = "default-pool"  # the test hypervisor's storage pool
RUNNING, SHUTOFF = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_SHUTOFF
T0 = 1_800_000_000


def node_uri(tmp_path: Path, host: str) -> str:
    """A private test hypervisor for ``host``: a node file with one storage pool."""
    node = ET.Element("node")
    pool = ET.SubElement(node, "pool", type="dir")
    ET.SubElement(pool, "name").text = POOL
    ET.SubElement(pool, "capacity", unit="GiB").text = "100"
    ET.SubElement(pool, "available", unit="GiB").text = "100"
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = "/default-pool"
    path = tmp_path / f"{host}.xml"
    path.write_text(ET.tostring(node, encoding="unicode"))
    return f"test://{path}"


def vm(lease: int, index: int = 0, cpu: int = 150, memory: int = 512,
       seed: Path | None = None) -> VM:
    return VM(lease, index, "tiny", Resources(cpu=cpu, memory=memory), seed)


def domain(conn: Any, name: str) -> Any | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def state(conn: Any, name: str) -> tuple[int, bool] | None:
    """(libvirt state, has a managed save) of a domain, None if it is not defined."""
    dom = domain(conn, name)
    return None if dom is None else (dom.state()[0], bool(dom.hasManagedSaveImage(0)))


def volumes(conn: Any) -> set[str]:
    return set(conn.storagePoolLookupByName(POOL).listVolumes())


@pytest.fixture
def default_conn() -> Iterator[Any]:
    """An independent connection to the shared default test hypervisor."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[LibvirtDriver]:
    d = LibvirtDriver({h: node_uri(tmp_path, h) for h in ("P1", "P2")}, pool=POOL,
                      images={"tiny": ImageRecord("tiny", 64, "repo/tiny.raw", "raw")})
    yield d
    d.close()


# ============================================================================ life cycle

def test_life_cycle_on_the_default_hypervisor(default_conn: Any, tmp_path: Path) -> None:
    d = LibvirtDriver(default_uri="test:///default", pool=POOL)
    v = vm(101, seed=tmp_path / "seed.iso")
    try:
        for _ in range(2):  # every action is idempotent
            d.prepare_image("tiny", "P1")
        assert "tiny" in volumes(default_conn)
        for _ in range(2):
            d.deploy(v, "P1")
        assert state(default_conn, v.name) == (SHUTOFF, False)
        assert f"{v.name}.qcow2" in volumes(default_conn)
        uuid = default_conn.lookupByName(v.name).UUIDString()
        for _ in range(2):
            d.start(v, "P1")
        assert state(default_conn, v.name) == (RUNNING, False)
        for _ in range(2):
            d.suspend(v, "P1")
        assert state(default_conn, v.name) == (SHUTOFF, True)
        for _ in range(2):
            d.resume(v, "P1")
        assert state(default_conn, v.name) == (RUNNING, False)
        d.migrate(v, "P1", "P2")  # both on one hypervisor: nothing moves
        assert state(default_conn, v.name) == (RUNNING, False)
        assert default_conn.lookupByName(v.name).UUIDString() == uuid  # never redefined
        for _ in range(2):
            d.shutdown(v, "P1")
        assert state(default_conn, v.name) == (SHUTOFF, False)
        for _ in range(2):
            d.destroy(v, "P1")
        assert state(default_conn, v.name) is None
        assert f"{v.name}.qcow2" not in volumes(default_conn)
    finally:
        d.destroy(v, "P1")
        d.close()


def test_destroy_removes_a_running_or_suspended_domain(default_conn: Any) -> None:
    d = LibvirtDriver(default_uri="test:///default", pool=POOL)
    running, saved = vm(102, 0), vm(102, 1)
    try:
        for v in (running, saved):
            d.deploy(v, "P1")
            d.start(v, "P1")
        d.suspend(saved, "P1")
        for v in (running, saved):
            d.destroy(v, "P1")
            assert state(default_conn, v.name) is None
    finally:
        d.close()


def test_migrate_between_hypervisors(two_hosts: LibvirtDriver) -> None:
    d, v = two_hosts, vm(1)
    src, dst = d.connection("P1"), d.connection("P2")
    assert d.connection("P1") is src  # opened once, reused
    d.prepare_image("tiny", "P1")
    d.deploy(v, "P1")
    d.start(v, "P1")
    d.suspend(v, "P1")
    assert state(dst, v.name) is None and "tiny" not in volumes(dst)
    for _ in range(2):
        d.migrate(v, "P1", "P2")
    assert state(src, v.name) is None and f"{v.name}.qcow2" not in volumes(src)
    assert state(dst, v.name) == (SHUTOFF, True)  # suspended there, with its state
    assert {"tiny", f"{v.name}.qcow2"} <= volumes(dst)
    d.resume(v, "P2")
    assert state(dst, v.name) == (RUNNING, False)
    d.shutdown(v, "P2")
    d.destroy(v, "P2")
    assert state(dst, v.name) is None


def test_migrate_a_running_domain(two_hosts: LibvirtDriver) -> None:
    d, v = two_hosts, vm(2)
    d.deploy(v, "P1")
    d.start(v, "P1")
    d.migrate(v, "P1", "P2")
    assert state(d.connection("P1"), v.name) is None
    assert state(d.connection("P2"), v.name) == (RUNNING, False)


# ============================================================================ the domain

def test_domain_xml_from_the_vm(two_hosts: LibvirtDriver, tmp_path: Path) -> None:
    seed = tmp_path / "seed-3-0.iso"
    with_seed, without = vm(3, 0, cpu=250, memory=768, seed=seed), vm(3, 1, cpu=100)
    for v in (with_seed, without):
        two_hosts.deploy(v, "P1")
    conn = two_hosts.connection("P1")
    xml = ET.fromstring(conn.lookupByName(with_seed.name).XMLDesc(0))
    assert xml.findtext("name") == with_seed.name
    assert xml.findtext("vcpu") == "3"  # ceil(250 / 100)
    assert conn.lookupByName(with_seed.name).info()[1] == 768 * 1024  # KiB
    disks = {d.get("device"): d.find("source") for d in xml.iter("disk")}
    overlay = conn.storagePoolLookupByName(POOL).storageVolLookupByName(f"{with_seed.name}.qcow2")
    assert disks["disk"] is not None and disks["disk"].get("file") == overlay.path()
    assert disks["cdrom"] is not None and disks["cdrom"].get("file") == str(seed)
    backing = ET.fromstring(overlay.XMLDesc(0)).findtext("backingStore/path")
    assert backing == conn.storagePoolLookupByName(POOL).storageVolLookupByName("tiny").path()
    # the NIC has the MAC the VM's network-config matches (contextualization)
    macs = [m.get("address") for m in xml.iter("mac")]
    assert macs == [with_seed.mac] == ["02:00:00:03:00:00"]
    plain = ET.fromstring(conn.lookupByName(without.name).XMLDesc(0))
    assert plain.findtext("vcpu") == "1"
    assert [d.get("device") for d in plain.iter("disk")] == ["disk"]


# ============================================================================ errors

def test_unknown_host(two_hosts: LibvirtDriver) -> None:
    with pytest.raises(EnactmentError, match="no libvirt URI for host 'P9'"):
        two_hosts.deploy(vm(4), "P9")


def test_unreachable_hypervisor(tmp_path: Path) -> None:
    d = LibvirtDriver({"P1": f"test://{tmp_path}/missing.xml"})
    with pytest.raises(EnactmentError, match=r"cannot connect to host P1 \(test://.*missing"):
        d.prepare_image("tiny", "P1")


def test_domain_that_cannot_be_defined(two_hosts: LibvirtDriver) -> None:
    absurd = vm(5, memory=10**13)  # MB: more than libvirt can represent
    with pytest.raises(EnactmentError) as info:
        two_hosts.deploy(absurd, "P1")
    reason = str(info.value)
    assert "deploy" in reason and absurd.name in reason and "host P1" in reason
    assert "too large" in reason  # libvirt's own message
    assert state(two_hosts.connection("P1"), absurd.name) is None


@pytest.mark.parametrize("action", ["start", "suspend", "resume", "shutdown+start"])
def test_actions_on_a_missing_domain(two_hosts: LibvirtDriver, action: str) -> None:
    v = vm(6)
    for verb in action.split("+"):
        if verb == "shutdown":
            two_hosts.shutdown(v, "P1")  # nothing to shut down: fine
            continue
        with pytest.raises(EnactmentError, match=f"no domain {v.name} on host P1"):
            getattr(two_hosts, verb)(v, "P1")


def test_resume_without_saved_state_and_suspend_when_off(two_hosts: LibvirtDriver) -> None:
    v = vm(7)
    two_hosts.deploy(v, "P1")
    with pytest.raises(EnactmentError, match="no saved state"):
        two_hosts.resume(v, "P1")
    with pytest.raises(EnactmentError, match="not running"):
        two_hosts.suspend(v, "P1")
    with pytest.raises(EnactmentError, match="no domain on host P1 nor on P2"):
        two_hosts.migrate(vm(8), "P1", "P2")


# ============================================================================ end to end

def test_grpc_service_enacts_leases_on_the_test_hypervisor(tmp_path: Path) -> None:
    site = demo_site()
    hosts = [n.name for n in site.nodes]
    for h in hosts:
        node_uri(tmp_path, h)
    driver = LibvirtDriver(default_uri=f"test://{tmp_path}/{{host}}.xml", pool=POOL,
                           images={i.id: i for i in site.images})
    clock = ManualClock(T0)
    store = Store(f"sqlite+pysqlite:///{tmp_path / 'wsched.db'}")
    engine = Engine(store, site, driver, clock)
    engine.poll()
    running = start_server(engine, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = lgrpc.LeaseServiceStub(channel)

    def get(lease_id: int) -> tpb.Lease:
        return stub.GetLease(lpb.GetLeaseRequest(id=lease_id))

    def advance_to(t: int) -> None:
        clock.set(t)
        engine.poll()

    def domains(lease_id: int) -> dict[str, tuple[int, bool]]:
        """{host: (state, saved)} of the lease's domains, as the hypervisors report them."""
        out: dict[str, tuple[int, bool]] = {}
        for h in hosts:
            for dom in driver.connection(h).listAllDomains(0):
                if dom.name().startswith(f"wsched-{lease_id}-"):
                    out[h] = (dom.state()[0], bool(dom.hasManagedSaveImage(0)))
        return out

    try:
        spec = tpb.LeaseSpec(kind=tpb.LEASE_KIND_BESTEFFORT, vm_count=2, preemptible=True,
                             resources=tpb.Resources(cpu=800, memory_mb=1024),
                             image_id="tiny", duration=duration_pb2.Duration(seconds=1200))
        be = stub.CreateLease(lpb.CreateLeaseRequest(spec=spec)).lease
        ar_spec = tpb.LeaseSpec(kind=tpb.LEASE_KIND_AR, vm_count=8,
                                resources=tpb.Resources(cpu=800, memory_mb=1024),
                                image_id="tiny", duration=duration_pb2.Duration(seconds=300),
                                start=timestamp_pb2.Timestamp(seconds=T0 + 600))
        ar = stub.CreateLease(lpb.CreateLeaseRequest(spec=ar_spec)).lease
        assert ar.state != tpb.LEASE_STATE_REJECTED, ar.reason
        expected = {tpb.EVENT_KIND_BOOT: (RUNNING, False), tpb.EVENT_KIND_RUN: (RUNNING, False),
                    tpb.EVENT_KIND_SUSPEND: (SHUTOFF, True),
                    tpb.EVENT_KIND_MIGRATE: (SHUTOFF, True),
                    tpb.EVENT_KIND_RESUME: (RUNNING, False)}
        ar_run = next(e for e in get(ar.id).events if e.kind == tpb.EVENT_KIND_RUN)
        # check points: the start of each of the best-effort lease's events, when its
        # action is enacted (its resumption is planned only once the AR is done), and the
        # AR's run
        checked: list[tuple[int, int, int]] = []
        for _ in range(20):
            points = [(e.start.seconds, be.id, e.kind) for e in get(be.id).events] \
                + [(ar_run.start.seconds, ar.id, tpb.EVENT_KIND_RUN)]
            pending = sorted(p for p in points if p not in checked and p[0] >= clock.time())
            if not pending:
                break
            t, lease_id, kind = pending[0]
            checked.append(pending[0])
            advance_to(t)
            seen = domains(lease_id)
            if kind == tpb.EVENT_KIND_TRANSFER:
                on = {h for h in hosts if "tiny" in volumes(driver.connection(h))}
                assert on == set(get(be.id).hosts) and len(on) == 2 and seen == {}
            elif kind == tpb.EVENT_KIND_SHUTDOWN:
                assert seen == {}
            else:
                vms = 8 if lease_id == ar.id else 2
                assert len(seen) == vms and set(seen.values()) == {expected[kind]}, \
                    (t - T0, lease_id, kind, seen)
                assert set(seen) <= set(get(lease_id).hosts)
        assert [k for _, i, k in checked if i == be.id] == [e.kind for e in get(be.id).events]
        assert {tpb.EVENT_KIND_SUSPEND, tpb.EVENT_KIND_RESUME} <= {k for _, _, k in checked}
        advance_to(max(e.end.seconds for e in get(be.id).events))
        assert get(be.id).state == tpb.LEASE_STATE_DONE and get(ar.id).state == \
            tpb.LEASE_STATE_DONE
        assert domains(ar.id) == {}
    finally:
        channel.close()
        running.stop(grace=None)
        store.close()
        driver.close()


def test_site_file_gives_each_host_its_hypervisor(tmp_path: Path) -> None:
    import argparse

    from scheduler.config import ConfigError
    from scheduler.engine import parse_site
    from scheduler.service_cli import _libvirt_driver

    site = parse_site("""
[[hosts]]
name = "P1"
cpu = 800
libvirt-uri = "qemu+ssh://p1.example.org/system"
[[hosts]]
name = "P2"
cpu = 800
libvirt-uri = "qemu+ssh://p2.example.org/system"
""", "site.toml")
    assert site.libvirt_uris == {"P1": "qemu+ssh://p1.example.org/system",
                                 "P2": "qemu+ssh://p2.example.org/system"}
    args = argparse.Namespace(libvirt_uri=["P2=test:///default"], libvirt_pool=POOL)
    driver = _libvirt_driver(args, [], site.libvirt_uris)
    try:  # the command line overrides the site file, host by host
        assert driver.uri("P1") == "qemu+ssh://p1.example.org/system"  # type: ignore[attr-defined]
        assert driver.uri("P2") == "test:///default"  # type: ignore[attr-defined]
    finally:
        driver.close()
    with pytest.raises(ConfigError, match=r"\[\[hosts\]\] P1: libvirt-uri must be a URI"):
        parse_site('[[hosts]]\nname = "P1"\nlibvirt-uri = "p1"\n', "site.toml")
    with pytest.raises(ConfigError, match=r"\[\[hosts\]\] P1: unknown key\(s\) libvirt_uri"):
        parse_site('[[hosts]]\nname = "P1"\nlibvirt_uri = "qemu:///system"\n', "site.toml")
