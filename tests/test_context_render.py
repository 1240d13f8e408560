"""Context model and seed renderers, checked with the real tools: cloud-init's schema
validator, its network-config converter and its own NoCloud seed loader and user-data
processor (Debian's ``cloud-init``, run with the system Python it ships for), pycdlib and
``xorriso`` reading every ISO back, and bash sourcing ``context.sh``."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from contextualization.iso import CONTEXT_LABEL, NOCLOUD_LABEL, build_iso, read_iso
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
    SiteContext,
    VmContext,
    vm_contexts,
)
from contextualization.render import (
    context_files,
    context_sh,
    meta_data,
    network_config,
    nocloud_files,
    user_data,
)
from scheduler.enactment import vm_mac

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1c2VyLWtleS1mb3ItdGVzdHMtb25seQ user@laptop"
SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter Debian's cloud-init is installed for
EVIL = "a'b\"c $(touch /tmp/pwned) `id` ${HOME} \\ \n second line; rm -rf / #\t end"

needs_cloud_init = pytest.mark.skipif(shutil.which("cloud-init") is None,
                                      reason="Debian's cloud-init is not installed "
                                      "(.ci/run installs it)")
needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None,
                                   reason="xorriso is not installed (.ci/run installs it)")


def site(**kw: object) -> SiteContext:
    data: dict[str, object] = {"network": "10.20.0.0/24", "gateway": "10.20.0.1",
                               "dns": ["10.20.0.2"], "domain": "cluster.test",
                               "broker-url": "http://10.20.0.1:8775"}
    data.update(kw)
    return SiteContext.from_mapping(data)


def cluster(handoff: Handoff | None = None, user: str = "", lease_id: int = 42
            ) -> tuple[VmContext, ...]:
    spec = ContextSpec((KEY,), (RoleGroup((0,), ("nfs-server",)),
                                RoleGroup((1, 2), (), ("nfs-server",))), user, handoff)
    spec.validate(3)
    s = site()
    addresses = list(s.pool())[:3]
    return vm_contexts(lease_id, spec, s, addresses, [f"secret-token-{i}" for i in range(3)])


HANDOFFS: list[Handoff | None] = [
    None,
    AnsibleHandoff("https://git.example.org/cluster.git", "site.yml", "main"),
    PuppetHandoff("puppet.cluster.test"),
    SaltHandoff("10.20.0.3"),
    Bcfg2Handoff("https://bcfg2.cluster.test:6789", "compute-node"),
    ScriptHandoff("#!/bin/sh\necho \"configured $(hostname)\" > /tmp/done\n"),
]
USER_DATA = ["", "#cloud-config\npackages: [htop]\n", "#!/bin/bash\necho 'user $(data)'\n"]
VARIANTS = [(h, u) for h in HANDOFFS for u in USER_DATA]


def _cloud_configs(text: str) -> list[str]:
    """The #cloud-config documents of a user-data (itself, or its MIME parts)."""
    if text.startswith("#cloud-config"):
        return [text]
    message = email.message_from_string(text)
    assert message.is_multipart()
    docs = []
    for part in message.walk():
        if part.get_content_type() == "text/cloud-config":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            docs.append(payload.decode())
    return docs


def _id(v: tuple[Handoff | None, str]) -> str:
    return f"{type(v[0]).__name__ if v[0] else 'none'}-{len(v[1])}"


# ============================================================================ model

def test_instance_ids_hostnames_and_addresses() -> None:
    vms = cluster()
    assert [v.instance_id for v in vms] == ["lease-42-vm-01", "lease-42-vm-02",
                                           "lease-42-vm-03"]
    assert vms[1].fqdn == "lease-42-vm-02.cluster.test"
    # the gateway (.1) and the DNS server (.2) are never handed out
    assert [str(v.address) for v in vms] == ["10.20.0.3/24", "10.20.0.4/24", "10.20.0.5/24"]
    assert vms[0].provides == ("nfs-server",) and vms[2].requires == ("nfs-server",)
    assert "secret-token" not in repr(vms[0])  # credentials never show in reprs (logs)


def test_site_pool_bounds() -> None:
    s = site(**{"pool-start": "10.20.0.100", "pool-end": "10.20.0.102"})
    assert [str(a) for a in s.pool()] == ["10.20.0.100", "10.20.0.101", "10.20.0.102"]


@pytest.mark.parametrize(("spec", "field"), [
    (ContextSpec(("not a key",)), "context.ssh_keys[0]"),
    (ContextSpec(groups=(RoleGroup((3,), ("x",)),)), "context.groups[0].vms"),
    (ContextSpec(groups=(RoleGroup((0,), ("x",)), RoleGroup((0,), ()))),
     "context.groups[1].vms"),
    (ContextSpec(groups=(RoleGroup((0,), (), ("db",)),)), "context.groups[0].requires"),
    (ContextSpec(groups=(RoleGroup((0,), ("Bad Role",)),)), "context.groups[0].provides"),
    (ContextSpec(user_data="x" * 70_000), "context.user_data"),
])
def test_spec_validation(spec: ContextSpec, field: str) -> None:
    with pytest.raises(ContextError) as info:
        spec.validate(3)
    assert info.value.field == field


@pytest.mark.parametrize(("kw", "field"), [
    ({"gateway": "10.99.0.1"}, "contextualization.gateway"),
    ({"network": "10.20.0.1/24"}, "contextualization.network"),
    ({"domain": "bad_domain"}, "contextualization.domain"),
    ({"deadline": 0}, "contextualization.deadline"),
    ({"colour": "red"}, "contextualization.colour"),
])
def test_site_validation(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ContextError) as info:
        site(**kw)
    assert info.value.field == field


def test_handoff_validation() -> None:
    with pytest.raises(ContextError, match=r"handoff.puppet.server"):
        PuppetHandoff("not a host!")
    with pytest.raises(ContextError, match=r"handoff.ansible.branch"):
        AnsibleHandoff("https://x", "site.yml", "main; rm -rf /")


def test_spec_json_round_trip() -> None:
    for handoff in HANDOFFS:
        spec = ContextSpec((KEY,), (RoleGroup((0, 1), ("a",), ()),), "x", handoff, 30)
        assert ContextSpec.from_json(json.loads(json.dumps(spec.as_json()))) == spec


# ============================================================================ renderers

def test_meta_data_has_identity_and_no_secret() -> None:
    vm = cluster(ScriptHandoff("#!/bin/sh\n"))[1]
    assert yaml.safe_load(meta_data(vm)) == {"instance-id": "lease-42-vm-02",
                                             "local-hostname": "lease-42-vm-02"}
    assert "secret" not in meta_data(vm) and "secret" not in network_config(vm)


def test_user_data_content() -> None:
    vm = cluster(AnsibleHandoff("https://git.example.org/c.git", "site.yml", "main"))[2]
    text = user_data(vm)
    assert text.startswith("#cloud-config\n")
    cc = yaml.safe_load(text)
    assert cc["hostname"] == "lease-42-vm-03" and cc["ssh_authorized_keys"] == [KEY]
    assert cc["phone_home"]["url"] == "http://10.20.0.1:8775/v1/phone-home/secret-token-2"
    assert cc["ansible"]["pull"] == {"url": "https://git.example.org/c.git",
                                     "playbook_name": "site.yml", "checkout": "main"}
    public = json.loads(cc["write_files"][0]["content"])
    assert public["requires"] == ["nfs-server"] and public["address"] == "10.20.0.5/24"
    broker = cc["write_files"][1]
    assert broker["permissions"] == "0600" and "secret-token-2" in broker["content"]


def test_multipart_when_a_script_is_added() -> None:
    vm = cluster(ScriptHandoff("#!/bin/sh\necho hi\n"), "#cloud-config\npackages: [htop]\n")[0]
    message = email.message_from_string(user_data(vm))
    parts = [(p.get_content_type(), p.get_filename()) for p in message.walk()
             if not p.is_multipart()]
    assert parts == [("text/cloud-config", "cloud-config.yaml"),
                     ("text/cloud-config", "user-data"), ("text/x-shellscript", "handoff.sh")]


@needs_cloud_init
@pytest.mark.parametrize("variant", VARIANTS, ids=[_id(v) for v in VARIANTS])
def test_user_data_passes_cloud_init_schema(variant: tuple[Handoff | None, str],
                                            tmp_path: Path) -> None:
    handoff, user = variant
    for vm in cluster(handoff, user):
        docs = _cloud_configs(user_data(vm))
        assert docs
        for i, doc in enumerate(docs):
            path = tmp_path / f"{vm.instance_id}-{i}.yaml"
            path.write_text(doc)
            # cloud-init 22.4: "schema -c FILE" (--config-file); exit 0 only when valid
            r = subprocess.run(["cloud-init", "schema", "-c", str(path)],
                               capture_output=True, text=True, check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "Valid cloud-config" in r.stdout


def test_invalid_cloud_config_is_caught_by_the_validator(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a wrong type fails."""
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed")
    path = tmp_path / "bad.yaml"
    path.write_text("#cloud-config\nphone_home: {url: 5, tries: many}\n")
    r = subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True,
                       text=True, check=False)
    assert r.returncode != 0


@needs_cloud_init
@pytest.mark.parametrize("output", ["netplan", "eni", "networkd"])
def test_network_config_converts_with_cloud_init(output: str, tmp_path: Path) -> None:
    vm = cluster()[1]
    src = tmp_path / "network-config"
    src.write_text(network_config(vm))
    out = tmp_path / "out"
    r = subprocess.run(["cloud-init", "devel", "net-convert", "-p", str(src), "-k", "yaml",
                        "-d", str(out), "-D", "debian", "-O", output],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    rendered = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert "10.20.0.4" in rendered and "10.20.0.1" in rendered and "10.20.0.2" in rendered
    # the NIC is matched by the MAC the libvirt driver gives it, and named eth0
    assert vm_mac(42, 1) == "02:00:00:2a:00:01"
    assert "02:00:00:2a:00:01" in rendered.lower() and "eth0" in rendered


def test_context_sh_round_trips_malicious_values(tmp_path: Path) -> None:
    vm = cluster(ScriptHandoff(f"#!/bin/sh\necho {EVIL}\n"), EVIL)[0]
    path = tmp_path / "context.sh"
    path.write_text(context_sh(vm))
    canary = Path("/tmp/pwned")
    canary.unlink(missing_ok=True)
    for name, expected in (("USER_DATA", EVIL), ("START_SCRIPT", f"#!/bin/sh\necho {EVIL}\n"),
                           ("SSH_PUBLIC_KEY", KEY), ("SET_HOSTNAME", "lease-42-vm-01"),
                           ("ETH0_IP", "10.20.0.3"), ("WSCHED_PROVIDES", "nfs-server")):
        r = subprocess.run(["bash", "-c", f'source {path}; printf %s "${name}"'],
                           capture_output=True, text=True, check=True)
        assert r.stdout == expected, name
    assert not canary.exists(), "sourcing context.sh ran a command substitution"


def _xorriso_files(iso: Path, dest: Path, joliet: bool = False) -> dict[str, bytes]:
    # -rockridge off makes xorriso read the Joliet tree instead of Rock Ridge
    args = ["xorriso", *(["-rockridge", "off"] if joliet else []), "-osirrox", "on",
            "-indev", str(iso), "-extract", "/", str(dest)]
    subprocess.run(args, capture_output=True, check=True)
    return {p.name: p.read_bytes() for p in dest.iterdir()}


def _xorriso_label(iso: Path) -> str:
    r = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True,
                       text=True, check=True)
    line = next(x for x in r.stdout.splitlines() if x.startswith("Volume Id"))
    return line.split(":", 1)[1].strip()


@pytest.mark.parametrize("handoff", HANDOFFS, ids=lambda h: type(h).__name__)
def test_iso_seeds_read_back(handoff: Handoff | None, tmp_path: Path) -> None:
    vm = cluster(handoff, USER_DATA[2])[1]
    for label, files in ((NOCLOUD_LABEL, nocloud_files(vm)), (CONTEXT_LABEL, context_files(vm))):
        data = build_iso(label, files)
        assert read_iso(data) == (label, files)  # pycdlib, by Rock Ridge names
        if shutil.which("xorriso") is None:
            continue
        iso = tmp_path / f"{label}.iso"
        iso.write_bytes(data)
        assert _xorriso_label(iso) == label
        assert _xorriso_files(iso, tmp_path / f"{label}-rr") == files
        assert _xorriso_files(iso, tmp_path / f"{label}-joliet", joliet=True) == files


_NOCLOUD_LOADER = """
import json, sys, tempfile
from cloudinit import helpers, user_data, util
from cloudinit.sources import DataSourceNoCloud as nc
seeded = util.pathprefix2dict(sys.argv[1], required=["user-data", "meta-data"],
                              optional=["vendor-data", "network-config"])
data = nc._merge_new_seed({"meta-data": {}, "user-data": "", "vendor-data": "",
                           "network-config": None}, seeded)
d = tempfile.mkdtemp()
msg = user_data.UserDataProcessor(helpers.Paths({"cloud_dir": d, "run_dir": d})).process(
    data["user-data"])
parts = [p.get_content_type() for p in msg.walk() if not p.is_multipart()]
print(json.dumps({"meta": data["meta-data"], "network": data["network-config"],
                  "parts": parts}))
"""


@needs_cloud_init
@needs_xorriso
def test_cloud_init_loads_the_seed(tmp_path: Path) -> None:
    """cloud-init's own NoCloud loader and user-data processor read the ISO's files."""
    vm = cluster(ScriptHandoff("#!/bin/sh\necho hi\n"), USER_DATA[1])[2]
    iso = tmp_path / "seed.iso"
    iso.write_bytes(build_iso(NOCLOUD_LABEL, nocloud_files(vm)))
    _xorriso_files(iso, tmp_path / "seed")
    r = subprocess.run([SYSTEM_PYTHON, "-c", _NOCLOUD_LOADER, str(tmp_path / "seed")],
                       capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)
    assert out["meta"] == {"instance-id": "lease-42-vm-03", "local-hostname": "lease-42-vm-03"}
    assert out["network"]["ethernets"]["eth0"]["addresses"] == ["10.20.0.5/24"]
    assert out["parts"] == ["text/cloud-config", "text/cloud-config", "text/x-shellscript"]
