"""The context model: what one lease's VMs need to know about their deployment.

Owns the user's context request (``ContextSpec``: SSH keys, role groups, user data, a
configuration-management handoff), the site's contextualization settings
(``SiteContext``: the address pool, DNS, domain, broker URL, deadline) and the resolved
per-VM contexts (``VmContext``) that the renderers turn into seeds. Everything here is
a frozen value, validated on construction with errors that name the offending field;
``ContextSpec`` and ``SiteContext`` convert to and from plain JSON-able mappings (the
form the lease request is logged in and site files are written in).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Largest user data accepted (cloud-init's own limit on EC2-like sources is 16 KiB;
#: NoCloud has none, but a seed is not a file transfer).
MAX_USER_DATA = 64 * 1024
MAX_SSH_KEYS = 32
MAX_ROLES = 32
DEFAULT_DEADLINE = 600
DEFAULT_CREDENTIAL_TTL = 86_400
_ROLE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62})")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_SSH_KEY = re.compile(r"(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|"
                      r"sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]+( .*)?")
_BRANCH = re.compile(r"[A-Za-z0-9._/-]{1,200}")


class ContextError(ValueError):
    """An invalid context request or site setting: ``field`` says which."""

    def __init__(self, field_path: str, description: str) -> None:
        super().__init__(f"{field_path}: {description}")
        self.field = field_path
        self.description = description


def instance_id(lease_id: int, index: int) -> str:
    """The instance id of VM ``index`` (0-based) of a lease: ``lease-42-vm-01``."""
    return f"lease-{lease_id}-vm-{index + 1:02d}"


# ============================================================================ handoffs

@dataclass(frozen=True)
class AnsibleHandoff:
    """``ansible-pull`` of ``url`` at ``branch``, running ``playbook``."""

    url: str
    playbook: str = "site.yml"
    branch: str = ""

    def __post_init__(self) -> None:
        _text("handoff.ansible.url", self.url, 2048)
        _text("handoff.ansible.playbook", self.playbook, 256)
        if self.branch and not _BRANCH.fullmatch(self.branch):
            raise ContextError("handoff.ansible.branch", f"must match {_BRANCH.pattern}")


@dataclass(frozen=True)
class PuppetHandoff:
    server: str

    def __post_init__(self) -> None:
        _hostname("handoff.puppet.server", self.server)


@dataclass(frozen=True)
class SaltHandoff:
    master: str

    def __post_init__(self) -> None:
        _hostname("handoff.salt.master", self.master)


@dataclass(frozen=True)
class Bcfg2Handoff:
    """A Bcfg2 client run against ``server`` (a URL) asserting ``profile``."""

    server: str
    profile: str

    def __post_init__(self) -> None:
        _text("handoff.bcfg2.server", self.server, 2048)
        if not _ROLE.fullmatch(self.profile):
            raise ContextError("handoff.bcfg2.profile", f"must match {_ROLE.pattern}")


@dataclass(frozen=True)
class ScriptHandoff:
    """A shell script run once on first boot (sent as its own MIME part)."""

    script: str

    def __post_init__(self) -> None:
        _text("handoff.script.script", self.script, MAX_USER_DATA, single_line=False)


Handoff = AnsibleHandoff | PuppetHandoff | SaltHandoff | Bcfg2Handoff | ScriptHandoff
_HANDOFFS: dict[str, type[Handoff]] = {
    "ansible": AnsibleHandoff, "puppet": PuppetHandoff, "salt": SaltHandoff,
    "bcfg2": Bcfg2Handoff, "script": ScriptHandoff}
_HANDOFF_NAMES = {cls: name for name, cls in _HANDOFFS.items()}


def handoff_kind(h: Handoff) -> str:
    return _HANDOFF_NAMES[type(h)]


# ============================================================================ the request

@dataclass(frozen=True)
class RoleGroup:
    """VMs ``vms`` (0-based indexes) provide and require these roles."""

    vms: tuple[int, ...]
    provides: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContextSpec:
    """What the user asks for; ``validate(vm_count)`` checks it against the lease."""

    ssh_keys: tuple[str, ...] = ()
    groups: tuple[RoleGroup, ...] = ()
    user_data: str = ""
    handoff: Handoff | None = None
    #: Seconds after boot begins by which every VM must have reported (0: site default).
    deadline: int = 0

    def validate(self, vm_count: int) -> None:
        if len(self.ssh_keys) > MAX_SSH_KEYS:
            raise ContextError("context.ssh_keys", f"at most {MAX_SSH_KEYS} keys")
        for i, key in enumerate(self.ssh_keys):
            if len(key) > 16_384 or not _SSH_KEY.fullmatch(key) or "\n" in key:
                raise ContextError(f"context.ssh_keys[{i}]",
                                   "must be one OpenSSH public key line (TYPE BASE64 [COMMENT])")
        seen: dict[int, int] = {}
        provided: set[str] = set()
        for g, group in enumerate(self.groups):
            where = f"context.groups[{g}]"
            if not group.vms:
                raise ContextError(f"{where}.vms", "must list at least one VM index")
            for vm in group.vms:
                if not 0 <= vm < vm_count:
                    raise ContextError(f"{where}.vms",
                                       f"VM index {vm} is not in 0..{vm_count - 1}")
                if vm in seen:
                    raise ContextError(f"{where}.vms",
                                       f"VM index {vm} is already in groups[{seen[vm]}]")
                seen[vm] = g
            for name, roles in (("provides", group.provides), ("requires", group.requires)):
                if len(roles) > MAX_ROLES:
                    raise ContextError(f"{where}.{name}", f"at most {MAX_ROLES} roles")
                for role in roles:
                    if not _ROLE.fullmatch(role):
                        raise ContextError(f"{where}.{name}",
                                           f"role {role[:64]!r} must match {_ROLE.pattern}")
            both = set(group.provides) & set(group.requires)
            if both:
                raise ContextError(f"{where}.requires",
                                   f"provides and requires {sorted(both)[0]!r}")
            provided.update(group.provides)
        for g, group in enumerate(self.groups):
            missing = sorted(set(group.requires) - provided)
            if missing:
                raise ContextError(f"context.groups[{g}].requires",
                                   f"no VM of the lease provides {missing[0]!r}")
        if len(self.user_data.encode()) > MAX_USER_DATA:
            raise ContextError("context.user_data", f"is larger than {MAX_USER_DATA} bytes")
        if "\x00" in self.user_data:
            raise ContextError("context.user_data", "must not contain NUL characters")
        if not 0 <= self.deadline <= 7 * 86_400:
            raise ContextError("context.deadline", "must be between 0 and 604800 seconds")

    def roles(self, index: int) -> RoleGroup:
        """The roles of VM ``index`` (an empty group if it is in none)."""
        for group in self.groups:
            if index in group.vms:
                return group
        return RoleGroup((index,))

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ssh_keys": list(self.ssh_keys),
                               "groups": [{"vms": list(g.vms), "provides": list(g.provides),
                                           "requires": list(g.requires)}
                                          for g in self.groups],
                               "user_data": self.user_data, "deadline": self.deadline}
        if self.handoff is not None:
            out["handoff"] = {"kind": handoff_kind(self.handoff), **vars(self.handoff)}
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ContextSpec:
        handoff: Handoff | None = None
        h = d.get("handoff")
        if h:
            kind = h.get("kind")
            if kind not in _HANDOFFS:
                raise ContextError("context.handoff.kind",
                                   f"must be one of {', '.join(sorted(_HANDOFFS))}")
            handoff = _HANDOFFS[kind](**{k: v for k, v in h.items() if k != "kind"})
        return cls(tuple(d.get("ssh_keys", ())),
                   tuple(RoleGroup(tuple(g["vms"]), tuple(g.get("provides", ())),
                                   tuple(g.get("requires", ()))) for g in d.get("groups", ())),
                   d.get("user_data", ""), handoff, int(d.get("deadline", 0)))


# ============================================================================ the site

@dataclass(frozen=True)
class SiteContext:
    """A site's contextualization settings (the ``[contextualization]`` table of a site
    file): VMs get addresses from ``network`` (minus the gateway, the DNS servers and
    anything outside ``pool_start``..``pool_end``), report to ``broker_url``."""

    network: IPNetwork
    gateway: IPAddress
    dns: tuple[IPAddress, ...] = ()
    domain: str = "wsched.internal"
    broker_url: str = ""
    deadline: int = DEFAULT_DEADLINE
    credential_ttl: int = DEFAULT_CREDENTIAL_TTL
    pool_start: IPAddress | None = None
    pool_end: IPAddress | None = None

    def __post_init__(self) -> None:
        if self.gateway not in self.network:
            raise ContextError("contextualization.gateway",
                               f"{self.gateway} is not in {self.network}")
        for name, value in (("pool-start", self.pool_start), ("pool-end", self.pool_end)):
            if value is not None and value not in self.network:
                raise ContextError(f"contextualization.{name}",
                                   f"{value} is not in {self.network}")
        for label in self.domain.split("."):
            if not _LABEL.fullmatch(label):
                raise ContextError("contextualization.domain",
                                   f"{self.domain!r} is not a DNS domain name")
        if self.broker_url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.broker_url):
            raise ContextError("contextualization.broker-url", "must be an http(s) URL")
        if not 1 <= self.deadline <= 7 * 86_400:
            raise ContextError("contextualization.deadline", "must be 1 to 604800 seconds")
        if self.credential_ttl < self.deadline:
            raise ContextError("contextualization.credential-ttl",
                               "must not be shorter than the deadline")

    def pool(self) -> Iterator[IPAddress]:
        """The assignable addresses, in order."""
        taken = {self.gateway, *self.dns}
        # compared as integers: the bounds are checked to be in the (same-family) network
        low = int(self.pool_start) if self.pool_start is not None else 0
        high = int(self.pool_end) if self.pool_end is not None else int(
            self.network.broadcast_address)
        for a in self.network.hosts():
            if int(a) > high:
                break
            if int(a) >= low and a not in taken:
                yield a

    def interface(self, address: IPAddress) -> IPInterface:
        return ipaddress.ip_interface(f"{address}/{self.network.prefixlen}")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str = "contextualization"
                     ) -> SiteContext:
        known = {"network", "gateway", "dns", "domain", "broker-url", "deadline",
                 "credential-ttl", "pool-start", "pool-end"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ContextError(f"{source}.{unknown[0]}", "unknown setting")
        try:
            network = ipaddress.ip_network(str(d["network"]), strict=True)
        except KeyError:
            raise ContextError(f"{source}.network", "is required (a CIDR)") from None
        except ValueError as e:
            raise ContextError(f"{source}.network", str(e)) from None
        gateway = _address(f"{source}.gateway", d.get("gateway", next(network.hosts(), None)))
        dns = d.get("dns", [])
        if not isinstance(dns, list):
            raise ContextError(f"{source}.dns", "must be a list of addresses")
        ints = {}
        for key, default in (("deadline", DEFAULT_DEADLINE),
                             ("credential-ttl", DEFAULT_CREDENTIAL_TTL)):
            v = d.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ContextError(f"{source}.{key}", "must be an integer (seconds)")
            ints[key] = v
        return cls(network, gateway, tuple(_address(f"{source}.dns", a) for a in dns),
                   str(d.get("domain", "wsched.internal")), str(d.get("broker-url", "")),
                   ints["deadline"], ints["credential-ttl"],
                   _address(f"{source}.pool-start", d["pool-start"]) if "pool-start" in d
                   else None,
                   _address(f"{source}.pool-end", d["pool-end"]) if "pool-end" in d else None)


# ============================================================================ resolved

@dataclass(frozen=True)
class BrokerAccess:
    """Where a VM reports and what it proves itself with (a secret)."""

    url: str
    token: str = field(repr=False)

    @property
    def phone_home_url(self) -> str:
        return f"{self.url.rstrip('/')}/v1/phone-home/{self.token}"

    @property
    def context_url(self) -> str:
        return f"{self.url.rstrip('/')}/v1/context/{self.token}"


@dataclass(frozen=True)
class VmContext:
    """Everything one VM's seed says."""

    lease_id: int
    index: int
    hostname: str
    domain: str
    address: IPInterface
    gateway: IPAddress
    dns: tuple[IPAddress, ...]
    ssh_keys: tuple[str, ...]
    provides: tuple[str, ...]
    requires: tuple[str, ...]
    user_data: str = ""
    handoff: Handoff | None = None
    broker: BrokerAccess | None = None

    @property
    def instance_id(self) -> str:
        return instance_id(self.lease_id, self.index)

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{self.domain}"

    def public(self) -> dict[str, Any]:
        """What the VM may know about itself, without secrets (for files in the guest)."""
        return {"instance_id": self.instance_id, "lease_id": self.lease_id,
                "index": self.index, "hostname": self.hostname, "fqdn": self.fqdn,
                "address": str(self.address), "gateway": str(self.gateway),
                "dns": [str(a) for a in self.dns], "provides": list(self.provides),
                "requires": list(self.requires)}


def vm_contexts(lease_id: int, spec: ContextSpec, site: SiteContext,
                addresses: Sequence[IPAddress], tokens: Sequence[str] = ()
                ) -> tuple[VmContext, ...]:
    """Resolve ``spec`` for each VM of a lease (``addresses[i]`` for VM i; ``tokens[i]``
    its broker credential, if the site has a broker)."""
    out = []
    for i, address in enumerate(addresses):
        roles = spec.roles(i)
        broker = (BrokerAccess(site.broker_url, tokens[i])
                  if site.broker_url and i < len(tokens) else None)
        out.append(VmContext(lease_id, i, instance_id(lease_id, i), site.domain,
                             site.interface(address), site.gateway, site.dns, spec.ssh_keys,
                             roles.provides, roles.requires, spec.user_data, spec.handoff,
                             broker))
    return tuple(out)


# ============================================================================ helpers

def _text(field_path: str, value: str, max_len: int, single_line: bool = True) -> None:
    if not isinstance(value, str) or not value:
        raise ContextError(field_path, "is required")
    if len(value) > max_len:
        raise ContextError(field_path, f"is longer than {max_len} characters")
    if "\x00" in value or (single_line and not value.isprintable()):
        raise ContextError(field_path, "must be printable text on one line")


def _hostname(field_path: str, value: str) -> None:
    _text(field_path, value, 253)
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not all(_LABEL.fullmatch(label) for label in value.lower().split(".")):
        raise ContextError(field_path, f"{value!r} is not a host name or address")


def _address(field_path: str, value: object) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ContextError(field_path, f"{value!r} is not an IP address") from None
