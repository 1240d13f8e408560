"""Renderers: one ``VmContext`` to the files of its seeds, with real serializers only.

- cloud-init NoCloud: ``meta-data`` (YAML; world-readable in the guest, so no secrets),
  ``user-data`` (``#cloud-config`` YAML, or multi-part MIME when the user's data or a
  script handoff adds parts), ``network-config`` (network config version 2);
- OpenNebula-style ``context.sh``: ``NAME='value'`` lines, each value ``shlex.quote``d so
  that sourcing it gives every value back literally.

``nocloud_files``/``context_files`` give the files of each seed; ``iso.py`` packs them.
"""

from __future__ import annotations

import json
import shlex
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import yaml

from scheduler.enactment import vm_mac

from .model import (
    AnsibleHandoff,
    Bcfg2Handoff,
    PuppetHandoff,
    SaltHandoff,
    ScriptHandoff,
    VmContext,
    handoff_kind,
)

#: Where the guest finds its own (public) context and, root-only, its broker credential.
CONTEXT_FILE = "/etc/wsched/context.json"
BROKER_FILE = "/etc/wsched/broker.json"
#: What cloud-init's phone_home posts (its keys; "pub_key_dsa" is obsolete).
PHONE_HOME_POST = ("pub_key_rsa", "pub_key_ecdsa", "pub_key_ed25519", "instance_id",
                   "hostname", "fqdn")
CLOUD_CONFIG = "#cloud-config\n"


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=True)


def meta_data(vm: VmContext) -> str:
    """NoCloud meta-data: identity only."""
    return _yaml({"instance-id": vm.instance_id, "local-hostname": vm.hostname})


def network_config(vm: VmContext) -> str:
    """Network config version 2: the first Ethernet interface gets the VM's address."""
    default = "0.0.0.0/0" if vm.address.version == 4 else "::/0"
    # The NIC is named by its MAC (the driver sets it), then called eth0 whatever the
    # guest's naming scheme: every renderer of cloud-init then agrees on the name.
    eth: dict[str, Any] = {"match": {"macaddress": vm_mac(vm.lease_id, vm.index)},
                           "set-name": "eth0",
                           "addresses": [str(vm.address)],
                           "routes": [{"to": default, "via": str(vm.gateway)}]}
    if vm.dns:
        eth["nameservers"] = {"addresses": [str(a) for a in vm.dns], "search": [vm.domain]}
    return _yaml({"version": 2, "ethernets": {"eth0": eth}})


def cloud_config(vm: VmContext) -> dict[str, Any]:
    """The #cloud-config document (as data) of a VM."""
    cc: dict[str, Any] = {"hostname": vm.hostname, "fqdn": vm.fqdn, "manage_etc_hosts": True}
    if vm.ssh_keys:
        cc["ssh_authorized_keys"] = list(vm.ssh_keys)
    files: list[dict[str, Any]] = [
        {"path": CONTEXT_FILE, "permissions": "0644", "owner": "root:root",
         "content": json.dumps(vm.public(), sort_keys=True) + "\n"}]
    if vm.broker is not None:
        files.append({"path": BROKER_FILE, "permissions": "0600", "owner": "root:root",
                      "content": json.dumps({"context_url": vm.broker.context_url,
                                             "phone_home_url": vm.broker.phone_home_url},
                                            sort_keys=True) + "\n"})
        cc["phone_home"] = {"url": vm.broker.phone_home_url, "post": list(PHONE_HOME_POST),
                            "tries": 10}
    h = vm.handoff
    if isinstance(h, AnsibleHandoff):
        pull: dict[str, Any] = {"url": h.url, "playbook_name": h.playbook}
        if h.branch:
            pull["checkout"] = h.branch
        cc["ansible"] = {"install_method": "distro", "package_name": "ansible-core",
                         "pull": pull}
    elif isinstance(h, PuppetHandoff):
        cc["puppet"] = {"install": True,
                        "conf": {"agent": {"server": h.server, "certname": vm.fqdn}}}
    elif isinstance(h, SaltHandoff):
        cc["salt_minion"] = {"conf": {"master": h.master, "id": vm.fqdn}}
    elif isinstance(h, Bcfg2Handoff):
        # no cloud-init module for Bcfg2: install the client, then one run that asserts
        # the profile (argv lists: cloud-init quotes each word itself)
        cc["packages"] = ["bcfg2"]
        cc["runcmd"] = [["bcfg2", "-q", "-S", h.server, "-p", h.profile]]
    cc["write_files"] = files
    return cc


def _part_type(text: str) -> str:
    """The MIME subtype cloud-init's own make-mime would give this user data."""
    for prefix, subtype in (("#cloud-config", "cloud-config"), ("#!", "x-shellscript"),
                            ("#cloud-boothook", "cloud-boothook"),
                            ("#include", "x-include-url"), ("## template: jinja", "jinja2")):
        if text.startswith(prefix):
            return subtype
    return "plain"


def user_data(vm: VmContext) -> str:
    """user-data: plain #cloud-config, or multi-part MIME (the #cloud-config first, then
    the user's own data, then the handoff script) when there is more than that."""
    config = CLOUD_CONFIG + _yaml(cloud_config(vm))
    extra: list[tuple[str, str, str]] = []
    if vm.user_data:
        extra.append(("user-data", _part_type(vm.user_data), vm.user_data))
    if isinstance(vm.handoff, ScriptHandoff):
        extra.append(("handoff.sh", "x-shellscript", vm.handoff.script))
    if not extra:
        return config
    message = MIMEMultipart()
    for filename, subtype, text in (("cloud-config.yaml", "cloud-config", config), *extra):
        # 7-bit text stays readable in the seed; anything else is base64 (utf-8)
        part = MIMEText(text, subtype, "us-ascii" if text.isascii() else "utf-8")
        part.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(part)
    return message.as_string()


def nocloud_files(vm: VmContext) -> dict[str, bytes]:
    """The files of the NoCloud seed (``cidata``)."""
    return {"meta-data": meta_data(vm).encode(), "user-data": user_data(vm).encode(),
            "network-config": network_config(vm).encode()}


def context_variables(vm: VmContext) -> dict[str, str]:
    """OpenNebula context variables (and wsched's own, prefixed WSCHED_)."""
    v: dict[str, str] = {
        "SET_HOSTNAME": vm.hostname, "DNS_HOSTNAME": "NO",
        "ETH0_IP": str(vm.address.ip), "ETH0_MASK": str(vm.address.netmask),
        "ETH0_GATEWAY": str(vm.gateway), "ETH0_DNS": " ".join(str(a) for a in vm.dns),
        "ETH0_SEARCH_DOMAIN": vm.domain,
        "SSH_PUBLIC_KEY": "\n".join(vm.ssh_keys),
        "WSCHED_INSTANCE_ID": vm.instance_id, "WSCHED_LEASE_ID": str(vm.lease_id),
        "WSCHED_FQDN": vm.fqdn,
        "WSCHED_PROVIDES": " ".join(vm.provides), "WSCHED_REQUIRES": " ".join(vm.requires)}
    if vm.user_data:
        v["USER_DATA"] = vm.user_data
    if vm.broker is not None:
        v["WSCHED_CONTEXT_URL"] = vm.broker.context_url
        v["WSCHED_PHONE_HOME_URL"] = vm.broker.phone_home_url
    h = vm.handoff
    if h is not None:
        v["WSCHED_HANDOFF"] = handoff_kind(h)
        if isinstance(h, ScriptHandoff):
            v["START_SCRIPT"] = h.script
        else:
            for name, value in vars(h).items():
                v[f"WSCHED_{handoff_kind(h).upper()}_{name.upper()}"] = value
    return v


def context_sh(vm: VmContext) -> str:
    """``context.sh``: one ``NAME=quoted`` assignment per line; sourcing it restores
    every value exactly (newlines, quotes and ``$(...)`` included)."""
    lines = ["# Context variables generated by wsched"]
    lines += [f"{name}={shlex.quote(value)}" for name, value in context_variables(vm).items()]
    return "\n".join(lines) + "\n"


def context_files(vm: VmContext) -> dict[str, bytes]:
    """The files of the OpenNebula-style seed (``CONTEXT``)."""
    return {"context.sh": context_sh(vm).encode()}
