"""End to end on loopback: a lease with a context is created through gRPC, its seeds are
built at deploy and handed to the driver, each VM reports with cloud-init's own
``phone_home`` module code (Debian's cloud-init, run by the system Python it ships for;
the same form-encoded request by hand where it is missing), workers learn the head's
identity from the broker, a silent VM is failed at the deadline, and wrong or expired
credentials are refused. A hand-driven clock: no test waits for real time except for
the deadline sweeper's own thread."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import duration_pb2

from contextualization.broker import BrokerServer, ContextBroker, start_context
from contextualization.iso import read_iso
from scheduler.api.wsched.v1 import lease_service_pb2 as lpb
from scheduler.api.wsched.v1 import lease_service_pb2_grpc as lgrpc
from scheduler.api.wsched.v1 import types_pb2 as tpb
from scheduler.enactment import VM, SimulatedDriver
from scheduler.engine import Engine, ManualClock, demo_site
from scheduler.service import RunningServer, start_server
from scheduler.store import Store

T0 = 1_800_000_000
SYSTEM_PYTHON = "/usr/bin/python3"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1c2VyLWtleS1mb3ItdGVzdHMtb25seQ user@laptop"
SITE = {"network": "10.77.0.0/24", "gateway": "10.77.0.1", "dns": ["10.77.0.2"],
        "domain": "cluster.test", "deadline": 300, "credential-ttl": 900}


class SeedDriver(SimulatedDriver):
    """The simulated driver, remembering the seed each VM was deployed with."""

    def __init__(self) -> None:
        super().__init__()
        self.seeds: dict[str, Path | None] = {}

    def deploy(self, vm: VM, host: str) -> None:
        self.seeds[vm.name] = vm.seed
        super().deploy(vm, host)


@dataclass
class Stack:
    clock: ManualClock
    store: Store
    driver: SeedDriver
    engine: Engine
    broker: ContextBroker
    http: BrokerServer
    grpc_server: RunningServer
    channel: grpc.Channel
    leases: lgrpc.LeaseServiceStub

    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.engine.poll()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    clock = ManualClock(T0)
    store = Store(f"sqlite+pysqlite:///{tmp_path / 'wsched.db'}")
    broker, http = start_context(store, SITE, tmp_path / "seeds", clock,
                                 sweep_interval=0.1)
    driver = SeedDriver()
    engine = Engine(store, demo_site(), driver, clock, context=broker)
    broker.on_change = engine.context_changed
    engine.poll()
    running = start_server(engine, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield Stack(clock, store, driver, engine, broker, http, running, channel,
                lgrpc.LeaseServiceStub(channel))
    channel.close()
    running.stop(grace=None)
    http.stop()
    store.close()


def context_spec() -> tpb.ContextSpec:
    return tpb.ContextSpec(
        ssh_keys=[KEY],
        groups=[tpb.RoleGroup(vms=[0], provides=["nfs-server"]),
                tpb.RoleGroup(vms=[1, 2, 3], requires=["nfs-server"])],
        user_data="#cloud-config\npackages: [nfs-common]\n",
        handoff=tpb.Handoff(ansible=tpb.AnsibleHandoff(url="https://git.example.org/c.git",
                                                       playbook="site.yml", branch="main")))


def create(stack: Stack, ctx: tpb.ContextSpec, vms: int = 4) -> tpb.Lease:
    spec = tpb.LeaseSpec(kind=tpb.LEASE_KIND_BESTEFFORT, vm_count=vms,
                         resources=tpb.Resources(cpu=100, memory_mb=1024), image_id="tiny",
                         duration=duration_pb2.Duration(seconds=3600), context=ctx)
    return stack.leases.CreateLease(lpb.CreateLeaseRequest(spec=spec)).lease


def deploy(stack: Stack, lease_id: int, vms: int) -> list[Path]:
    """Move the clock until the lease's VMs are deployed; their seeds, in VM order."""
    for _ in range(200):
        names = [f"wsched-{lease_id}-{i}" for i in range(vms)]
        if all(n in stack.driver.seeds for n in names):
            seeds = [stack.driver.seeds[n] for n in names]
            assert all(s is not None for s in seeds)
            return [s for s in seeds if s is not None]
        stack.advance(5)
    raise AssertionError("the lease was never deployed")


def user_data(seed: Path) -> dict[str, Any]:
    label, files = read_iso(seed.read_bytes())
    assert label == "cidata"
    text = files["user-data"].decode()
    import email

    message = email.message_from_string(text)
    for part in message.walk():
        if part.get_content_type() == "text/cloud-config" and \
                part.get_filename() == "cloud-config.yaml":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            data = yaml.safe_load(payload)
            assert isinstance(data, dict)
            return data
    raise AssertionError("no cloud-config part")


_PHONE_HOME = """
import inspect, json, logging, sys
from cloudinit import util
from cloudinit.config import cc_phone_home

cfg, instance_id, hostname, fqdn, keys = json.loads(sys.argv[1])

class Name:
    def __init__(self, hostname):
        self.hostname = hostname

class Cloud:
    paths = None
    def get_instance_id(self):
        return instance_id
    def get_hostname(self, fqdn=False, **_):
        return Name(FQDN if fqdn else hostname)

FQDN = fqdn
real_load = util.load_file
def load_file(path, *a, **kw):  # the guest's SSH host keys
    name = path.rsplit("/", 1)[-1]
    if name in keys:
        return keys[name]
    raise FileNotFoundError(path)
cc_phone_home.util.load_file = load_file
cc_phone_home.util.fetch_ssl_details = lambda paths=None: None
args = ["phone_home", cfg, Cloud()]
if "log" in inspect.signature(cc_phone_home.handle).parameters:
    args.append(logging.getLogger("phone_home"))
cc_phone_home.handle(*args, [])
"""


def phone_home(cc: dict[str, Any], instance_id: str, hostname: str, fqdn: str,
               keys: dict[str, str]) -> None:
    """Report as the guest's cloud-init would (its module, or the same request)."""
    if Path(SYSTEM_PYTHON).exists() and shutil.which("cloud-init"):
        cfg = {"phone_home": {**cc["phone_home"], "tries": 1}}
        arg = json.dumps([cfg, instance_id, hostname, fqdn, keys])
        subprocess.run([SYSTEM_PYTHON, "-c", _PHONE_HOME, arg], check=True,
                       capture_output=True, timeout=60)
        return
    names = {"pub_key_rsa": "ssh_host_rsa_key.pub", "pub_key_ecdsa": "ssh_host_ecdsa_key.pub",
             "pub_key_ed25519": "ssh_host_ed25519_key.pub"}
    form = {"instance_id": instance_id, "hostname": hostname, "fqdn": fqdn}
    form.update({k: keys.get(f, "N/A") for k, f in names.items()})
    request = urllib.request.Request(cc["phone_home"]["url"],
                                     data=urllib.parse.urlencode(form).encode())
    urllib.request.urlopen(request, timeout=10).close()


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, form: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(
                url, data=urllib.parse.urlencode(form).encode()), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def host_keys(n: int) -> dict[str, str]:
    return {"ssh_host_ed25519_key.pub": f"ssh-ed25519 AAAAC3NzaHostKey{n} root@vm{n}\n",
            "ssh_host_rsa_key.pub": f"ssh-rsa AAAAB3NzaHostKey{n} root@vm{n}\n"}


def test_head_and_workers_contextualize(stack: Stack, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    caplog.set_level(logging.DEBUG)
    lease = create(stack, context_spec())
    assert lease.spec.context.groups[0].provides == ["nfs-server"]
    assert not lease.contexts  # nothing deployed yet
    seeds = deploy(stack, lease.id, 4)
    # seeds are built when the boot begins (the engine enacts at the event's own time)
    deployed_at = stack.store.context_vms(lease.id)[0].deadline - 300
    assert deployed_at <= stack.clock.time()
    configs = [user_data(s) for s in seeds]
    tokens = [c["phone_home"]["url"].rsplit("/", 1)[1] for c in configs]
    assert len(set(tokens)) == 4
    assert [c["hostname"] for c in configs] == [f"lease-{lease.id}-vm-0{i}" for i in (1, 2, 3, 4)]
    base = stack.http.url

    got = stack.leases.GetLease(lpb.GetLeaseRequest(id=lease.id))
    assert [c.state for c in got.contexts] == [tpb.CONTEXT_STATE_PENDING] * 4
    assert [c.address for c in got.contexts] == [f"10.77.0.{i}" for i in (3, 4, 5, 6)]
    assert got.contexts[0].deadline.seconds == deployed_at + 300

    # a worker reports first: it must wait for the head
    phone_home(configs[1], f"lease-{lease.id}-vm-02", "worker-1", "worker-1.cluster.test",
               host_keys(2))
    status, body = get(f"{base}/v1/context/{tokens[1]}")
    assert status == 200 and body["state"] == "reported"
    assert body["missing"] == ["nfs-server"] and body["providers"] == {"nfs-server": []}

    phone_home(configs[0], f"lease-{lease.id}-vm-01", "head", "head.cluster.test",
               host_keys(1))
    phone_home(configs[2], f"lease-{lease.id}-vm-03", "worker-2", "worker-2.cluster.test",
               host_keys(3))
    for worker in (1, 2):
        status, body = get(f"{base}/v1/context/{tokens[worker]}")
        assert status == 200 and body["state"] == "ready", body
        (head,) = body["providers"]["nfs-server"]
        assert head["instance_id"] == f"lease-{lease.id}-vm-01"
        assert head["hostname"] == "head" and head["fqdn"] == "head.cluster.test"
        assert head["address"] == "10.77.0.3"
        assert head["pub_key_ed25519"] == "ssh-ed25519 AAAAC3NzaHostKey1 root@vm1"
        assert "pub_key_ecdsa" not in head  # "N/A": the guest had none
    status, body = get(f"{base}/v1/context/{tokens[0]}")
    assert body["state"] == "ready" and body["provides"] == ["nfs-server"]

    # re-reporting is idempotent: no new state, no new watch entry
    changes = len(stack.store.changes(0, lease.id))
    phone_home(configs[0], f"lease-{lease.id}-vm-01", "head", "head.cluster.test",
               host_keys(1))
    assert len(stack.store.changes(0, lease.id)) == changes

    # wrong credentials: another VM's index under this VM's signature, another lease,
    # a truncated signature, garbage; and a report claiming another instance id
    lease_id, index, expires, mac = tokens[1].split(".")
    for bad in (f"{lease_id}.3.{expires}.{mac}", f"{int(lease_id) + 1}.{index}.{expires}.{mac}",
                f"{lease_id}.{index}.{int(expires) + 999}.{mac}", tokens[1][:-2], "x", ""):
        assert get(f"{base}/v1/context/{bad}")[0] in (401, 404), bad
        assert post(f"{base}/v1/phone-home/{bad}", {"instance_id": "x"}) in (401, 404)
    assert post(f"{base}/v1/phone-home/{tokens[3]}",
                {"instance_id": f"lease-{lease.id}-vm-01", "hostname": "evil"}) == 400
    assert get(f"{base}/v1/context/{tokens[3]}")[1]["state"] == "pending"

    # the fourth VM never reports: the sweeper fails it at the deadline
    stack.clock.set(deployed_at + 299)
    time.sleep(0.3)
    assert [v.state for v in stack.store.context_vms(lease.id)][3] == "pending"
    stack.clock.set(deployed_at + 300)
    for _ in range(100):
        if stack.store.context_vms(lease.id)[3].state == "failed":
            break
        time.sleep(0.05)
    vms = stack.store.context_vms(lease.id)
    assert [v.state for v in vms] == ["ready", "ready", "ready", "failed"]
    assert vms[3].reason == "did not report by the deadline"
    status, body = get(f"{base}/v1/context/{tokens[3]}")
    assert body["state"] == "failed" and body["reason"] == "did not report by the deadline"
    assert post(f"{base}/v1/phone-home/{tokens[3]}",
                {"instance_id": f"lease-{lease.id}-vm-04"}) == 409  # too late

    got = stack.leases.GetLease(lpb.GetLeaseRequest(id=lease.id))
    assert [c.state for c in got.contexts] == [tpb.CONTEXT_STATE_READY] * 3 + [
        tpb.CONTEXT_STATE_FAILED]
    assert got.contexts[0].hostname == "head" and got.contexts[0].reported.seconds > 0
    reasons = [c.reason for c in stack.store.changes(0, lease.id)]
    assert f"context: lease-{lease.id}-vm-02 reported" in reasons
    assert f"context: lease-{lease.id}-vm-04 failed (did not report by the deadline)" in reasons

    # WatchLeases shows the per-VM context state with each change of the lease
    stream = stack.leases.WatchLeases(lpb.WatchLeasesRequest(lease_id=lease.id), timeout=5)
    first = next(stream)
    stream.cancel()
    assert [c.state for c in first.contexts] == [tpb.CONTEXT_STATE_READY] * 3 + [
        tpb.CONTEXT_STATE_FAILED]
    assert first.contexts[3].reason == "did not report by the deadline"

    # credentials expire (credential-ttl 900 s after deploy)
    stack.clock.set(deployed_at + 900)
    assert get(f"{base}/v1/context/{tokens[1]}")[0] == 401

    # no log line carries a credential
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "/v1/context/<redacted>" in logged
    for token in tokens:
        assert token.rsplit(".", 1)[1] not in logged


def test_a_waiting_worker_is_told_when_its_provider_never_reports(stack: Stack) -> None:
    ctx = tpb.ContextSpec(groups=[tpb.RoleGroup(vms=[0], provides=["db"]),
                                  tpb.RoleGroup(vms=[1], requires=["db"])],
                          deadline=duration_pb2.Duration(seconds=60))
    lease = create(stack, ctx, vms=2)
    seeds = deploy(stack, lease.id, 2)
    deployed_at = stack.store.context_vms(lease.id)[0].deadline - 60
    _, files = read_iso(seeds[1].read_bytes())  # plain #cloud-config: no MIME parts
    cc = yaml.safe_load(files["user-data"])
    token = cc["phone_home"]["url"].rsplit("/", 1)[1]
    phone_home(cc, f"lease-{lease.id}-vm-02", "w", "w.cluster.test", {})
    assert get(f"{stack.http.url}/v1/context/{token}")[1]["state"] == "reported"
    stack.clock.set(deployed_at + 60)
    status, body = get(f"{stack.http.url}/v1/context/{token}")
    assert status == 200 and body["state"] == "failed"
    assert body["reason"] == "no provider of db reported by the deadline"


def test_context_spec_is_validated(stack: Stack) -> None:
    bad = tpb.ContextSpec(ssh_keys=["not a key"],
                          groups=[tpb.RoleGroup(vms=[5], provides=["x"])])
    with pytest.raises(grpc.RpcError) as info:
        create(stack, bad, vms=2)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    bad = tpb.ContextSpec(groups=[tpb.RoleGroup(vms=[0], requires=["nobody"])])
    with pytest.raises(grpc.RpcError) as info:
        create(stack, bad, vms=2)
    assert "no VM of the lease provides 'nobody'" in str(info.value.details())
    bad = tpb.ContextSpec(handoff=tpb.Handoff(puppet=tpb.PuppetHandoff(server="no such!")))
    with pytest.raises(grpc.RpcError) as info:
        create(stack, bad, vms=1)
    assert "spec.context.handoff.puppet.server" in str(info.value.details())


def test_seeds_are_deleted_when_the_lease_ends(stack: Stack) -> None:
    lease = create(stack, context_spec(), vms=4)
    seeds = deploy(stack, lease.id, 4)
    assert all(s.exists() for s in seeds)
    stack.leases.CancelLease(lpb.CancelLeaseRequest(id=lease.id))
    stack.advance(60)  # past its shutdown
    assert stack.leases.GetLease(lpb.GetLeaseRequest(id=lease.id)).state == \
        tpb.LEASE_STATE_CANCELLED
    assert not any(s.parent.exists() for s in seeds)  # credentials gone with them
