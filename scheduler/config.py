"""Scheduler configuration: overhead parameters and policy names, read from TOML.

A configuration is built from a built-in profile (``scheduler/profiles/*.toml``)
and/or a user TOML file that overrides it key by key. Unknown keys and bad values
are errors that name the file and the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from .leases import Resources, Site


class ConfigError(ValueError):
    pass


class TransferMode(StrEnum):
    UNICAST = "unicast"
    MULTICAST = "multicast"


class Exclusion(StrEnum):
    LOCAL = "local"
    GLOBAL = "global"


class Migration(StrEnum):
    NO = "no"
    YES = "yes"
    YES_NOTRANSFER = "yes-notransfer"


class ImageMix(StrEnum):
    UNIFORM = "uniform"  # every image equally likely
    SKEWED = "skewed"  # 7 popular images at 10% each, the rest share 30% (HPDC 2008)


class Backfilling(StrEnum):
    OFF = "off"
    AGGRESSIVE = "aggressive"
    CONSERVATIVE = "conservative"
    INTERMEDIATE = "intermediate"


@dataclass(frozen=True)
class Config:
    # --- image deployment
    image_transfer: bool = False  # False: images are predeployed on every node
    repository_bandwidth: float = 100.0  # Mbit/s
    transfer_mode: TransferMode = TransferMode.MULTICAST
    piggybacking: bool = True
    image_cache_mb: int = 0  # per node; 0 = no cache (an image lives as long as its leases)
    # --- VM enactment
    enactment_overhead: int = 0  # seconds per VM command (start, shutdown, suspend, resume)
    boot_time: int = 0  # guest boot after the start command
    shutdown_time: int = 0
    runtime_slowdown: float = 0.0  # percent: a VM runs this much longer than bare metal
    # --- suspend/resume and migration
    suspension: bool = True  # may best-effort leases be suspended at all
    suspend_rate: float = 32.0  # MB/s of memory written
    resume_rate: float = 32.0  # MB/s of memory read
    suspendresume_exclusion: Exclusion = Exclusion.LOCAL
    migration: Migration = Migration.YES
    migration_bandwidth: float = 100.0  # Mbit/s
    # --- policies, by name
    admission: str = "accept-all"
    preemption: str = "ar-preempts-besteffort"
    host_selection: str = "greedy"
    backfilling: Backfilling = Backfilling.AGGRESSIVE
    backfilling_reservations: int = 1  # for intermediate
    # --- site, for traces that do not describe one
    site_nodes: int = 0
    site_node: Resources = field(default_factory=Resources)
    # --- workload: replace the trace's images with a seeded random mix (0 = keep them)
    workload_images: int = 0
    workload_image_size: int = 0  # MB
    workload_image_mix: ImageMix = ImageMix.UNIFORM
    workload_image_seed: int = 1
    # --- SWF traces: which field counts a job's processors, how many make a VM, whether
    # jobs cancelled after they started are kept (see scheduler.swf), and each VM's CPU
    # and memory (0: a whole [site] node's)
    swf_nodes_field: int = 8
    swf_procs_per_node: int = 1
    swf_keep_started_cancelled: bool = False
    swf_vm_cpu: int = 0
    swf_vm_memory: int = 0

    def image_weights(self) -> tuple[float, ...] | None:
        """Relative frequency of each workload image (None: uniform)."""
        if self.workload_image_mix is ImageMix.UNIFORM:
            return None
        hot = min(7, self.workload_images)
        cold = self.workload_images - hot
        if cold == 0:
            return None
        return (0.10,) * hot + ((1 - 0.10 * hot) / cold,) * cold

    @property
    def max_future_reservations(self) -> int | None:
        """How many best-effort leases may hold a reservation in the future."""
        match self.backfilling:
            case Backfilling.OFF:
                return 0
            case Backfilling.AGGRESSIVE:
                return 1
            case Backfilling.CONSERVATIVE:
                return None
            case Backfilling.INTERMEDIATE:
                return self.backfilling_reservations

    def default_site(self) -> Site | None:
        if self.site_nodes <= 0:
            return None
        return Site.uniform(self.site_nodes, self.site_node)


# TOML layout: section -> key (dashes) -> Config field
_LAYOUT: dict[str, dict[str, str]] = {
    "images": {
        "transfer": "image_transfer",
        "repository-bandwidth": "repository_bandwidth",
        "transfer-mode": "transfer_mode",
        "piggybacking": "piggybacking",
        "cache-mb": "image_cache_mb",
    },
    "enactment": {
        "overhead": "enactment_overhead",
        "boot-time": "boot_time",
        "shutdown-time": "shutdown_time",
        "runtime-slowdown": "runtime_slowdown",
    },
    "suspension": {
        "enabled": "suspension",
        "suspend-rate": "suspend_rate",
        "resume-rate": "resume_rate",
        "exclusion": "suspendresume_exclusion",
        "migration": "migration",
        "migration-bandwidth": "migration_bandwidth",
    },
    "workload": {
        "images": "workload_images",
        "image-size": "workload_image_size",
        "image-mix": "workload_image_mix",
        "image-seed": "workload_image_seed",
    },
    "swf": {
        "nodes-field": "swf_nodes_field",
        "procs-per-node": "swf_procs_per_node",
        "keep-started-cancelled": "swf_keep_started_cancelled",
        "vm-cpu": "swf_vm_cpu",
        "vm-memory": "swf_vm_memory",
    },
    "scheduling": {
        "admission": "admission",
        "preemption": "preemption",
        "host-selection": "host_selection",
        "backfilling": "backfilling",
        "backfilling-reservations": "backfilling_reservations",
    },
}
_SITE_KEYS = {"nodes", "cpu", "memory", "disk", "net-in", "net-out"}
#: Integer settings with a narrower range than "non-negative": field -> (low, high)
_RANGES = {"swf_nodes_field": (1, 18), "swf_procs_per_node": (1, None)}


def _coerce(name: str, value: Any, where: str) -> Any:
    target = {f.name: f for f in fields(Config)}[name]
    default = getattr(Config(), name)
    try:
        if isinstance(default, StrEnum):
            return type(default)(value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TypeError("expected a non-negative integer")
            return value
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise TypeError("expected a non-negative number")
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
    except (TypeError, ValueError) as e:
        allowed = ""
        if isinstance(default, StrEnum):
            allowed = " (one of: " + ", ".join(m.value for m in type(default)) + ")"
        raise ConfigError(f"{where}: bad value {value!r} for {target.name}: {e}{allowed}") from e
    raise AssertionError(name)


def apply_toml(base: Config, data: dict[str, Any], source: str) -> Config:
    """Return ``base`` with the settings in ``data`` (parsed TOML) applied."""
    changes: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        if section == "site":
            unknown = set(body) - _SITE_KEYS
            if unknown:
                raise ConfigError(f"{source}: unknown key(s) in [site]: "
                                  f"{', '.join(sorted(unknown))} "
                                  f"(known: {', '.join(sorted(_SITE_KEYS))})")
            for k, v in body.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ConfigError(f"{source}: [site] {k} must be a non-negative integer")
            node = base.site_node
            changes["site_node"] = Resources(
                cpu=body.get("cpu", node.cpu), memory=body.get("memory", node.memory),
                disk=body.get("disk", node.disk), net_in=body.get("net-in", node.net_in),
                net_out=body.get("net-out", node.net_out))
            if "nodes" in body:
                changes["site_nodes"] = body["nodes"]
            continue
        if section not in _LAYOUT:
            raise ConfigError(f"{source}: unknown section [{section}] "
                              f"(known: {', '.join([*_LAYOUT, 'site'])})")
        for key, value in body.items():
            if key not in _LAYOUT[section]:
                raise ConfigError(f"{source}: unknown key {key!r} in [{section}] "
                                  f"(known: {', '.join(_LAYOUT[section])})")
            name = _LAYOUT[section][key]
            changes[name] = _coerce(name, value, f"{source}: [{section}] {key}")
            if name in _RANGES:
                low, high = _RANGES[name]
                if value < low or (high is not None and value > high):
                    bound = f"at least {low}" if high is None else f"{low} to {high}"
                    raise ConfigError(f"{source}: [{section}] {key} must be {bound} "
                                      f"(got {value})")
    return replace(base, **changes)


def apply_settings(base: Config, settings: Iterable[tuple[str, str, Any]],
                   source: str) -> Config:
    """``base`` with single settings (TOML section, key, value) applied, as a TOML file
    holding them would apply them (``apply_toml``)."""
    table: dict[str, dict[str, Any]] = {}
    for section, key, value in settings:
        table.setdefault(section, {})[key] = value
    return apply_toml(base, table, source)


def profile_names() -> list[str]:
    root = resources.files("scheduler") / "profiles"
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir()
                  if p.name.endswith(".toml"))


def profile_text(name: str) -> str:
    """A built-in profile's TOML, comments included."""
    path = resources.files("scheduler") / "profiles" / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r} (known: {', '.join(profile_names())})")
    return path.read_text()


def profile_description(name: str) -> str:
    """What a built-in profile models: the comment its file opens with, as one line."""
    lines = []
    for line in profile_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def load_profile(name: str) -> Config:
    source = f"profile {name}"
    return apply_toml(Config(), parse_toml(profile_text(name), source), source)


def load_config(path: Path, base: Config | None = None) -> Config:
    """A TOML configuration file's settings over ``base``, or over the built-in profile
    it names with a top-level ``profile = "NAME"`` (as a site file does), else over the
    defaults. Naming a profile there and passing ``base`` too is an error (which one?),
    unless ``base`` is that profile."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    data = parse_toml(text, str(path))
    start = starting_config(data, str(path), base)
    return apply_toml(start, {k: v for k, v in data.items() if k != "profile"}, str(path))


def starting_config(data: dict[str, Any], source: str, base: Config | None = None
                    ) -> Config:
    """What a TOML configuration (``data``, parsed) starts from: the built-in profile its
    top-level ``profile = "NAME"`` names, else ``base``, else the defaults. Naming a
    profile there and passing another ``base`` is an error (which one?)."""
    name = data.get("profile")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{source}: profile must be a string (a built-in profile's name)")
    if not name:  # (none, or empty: the defaults, as site files always had it)
        return base or Config()
    try:
        named = load_profile(name)
    except ConfigError as e:
        raise ConfigError(f"{source}: profile: {e}") from None
    if base is not None and base != named:
        raise ConfigError(f"{source}: it starts from profile {name!r}, but another profile "
                          "was given too: name one")
    return named


def profile_or_file(ref: str) -> Config:
    """``ref``: a built-in profile's name, or the path of a TOML configuration file
    (``load_config``; by its ``.toml`` suffix)."""
    return load_config(Path(ref)) if ref.endswith(".toml") else load_profile(ref)


def profile_label(ref: str) -> str:
    """How results name the configuration ``ref`` (``profile_or_file``): a profile's
    name, a file's name without ``.toml``."""
    return Path(ref).stem if ref.endswith(".toml") else ref


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
