"""Lease Workload Format (LWF): reading and writing XML lease traces.

This module owns the mapping between LWF files and the lease model: parsing a
trace into a :class:`Workload` (site and lease requests), checking each lease
against the site, and writing a workload back out. Every problem in a file is
reported as a :class:`TraceError` naming the file, the line and the lease.

It also reads any trace file's bytes (:func:`read_trace_bytes`), for every reader:
a file compressed with gzip, bzip2 or xz (as the Parallel Workloads Archive ships its
logs, ``*.swf.gz``) is decompressed, recognised by its first bytes, not its name.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree

from .leases import (
    DIMENSIONS,
    UNLIMITED,
    DiskImage,
    LeaseKind,
    LeaseRequest,
    Node,
    Resources,
    Site,
)

_TYPES = {"cpu": "cpu", "memory": "memory", "disk": "disk", "net-in": "net_in",
          "netin": "net_in", "net-out": "net_out", "netout": "net_out"}
_NAMES = {"cpu": "CPU", "memory": "Memory", "disk": "Disk", "net_in": "Net-in",
          "net_out": "Net-out"}
_UNITS = {"cpu": "", "memory": " MB", "disk": " MB", "net_in": " Mbit/s", "net_out": " Mbit/s"}
_CLOCK = re.compile(r"(-?)(?:(\d+):)?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)")
_PLAIN = re.compile(r"(-?)(\d+(?:\.\d+)?)")
_COUNT = re.compile(r"\d+")


class TraceError(ValueError):
    """A problem in a trace file, located as precisely as possible."""

    def __init__(self, path: str, message: str, *, line: int | None = None,
                 lease: int | None = None) -> None:
        self.path, self.line, self.lease, self.message = path, line, lease, message
        where = path if line is None else f"{path}:{line}"
        who = "" if lease is None else f"lease {lease}: "
        super().__init__(f"{where}: {who}{message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # (a sweep's worker process sends it back to the parent, pickled)
        return _trace_error, (self.path, self.message, self.line, self.lease)


def _trace_error(path: str, message: str, line: int | None, lease: int | None) -> TraceError:
    return TraceError(path, message, line=line, lease=lease)


@dataclass(frozen=True)
class Workload:
    """A parsed trace; ``description`` has each line's surrounding whitespace trimmed."""

    name: str
    description: str
    site: Site | None
    requests: tuple[LeaseRequest, ...]


#: Compressed formats: magic bytes, name, the suffix such a file usually has, and how
#: to decompress it.
_COMPRESSED: tuple[tuple[bytes, str, str, Callable[[bytes], bytes]], ...] = (
    (b"\x1f\x8b", "gzip", ".gz", gzip.decompress),
    (b"BZh", "bzip2", ".bz2", bz2.decompress),
    (b"\xfd7zXZ\x00", "xz", ".xz", lzma.decompress))
_SUFFIXES = {suffix for _, _, suffix, _ in _COMPRESSED}


def _uncompressed_name(path: str | Path) -> Path:
    """``path``'s name without a compression suffix: ``log.swf`` for ``log.swf.gz``."""
    name = Path(Path(path).name)
    return name.with_suffix("") if name.suffix.lower() in _SUFFIXES else name


def trace_suffix(path: str | Path) -> str:
    """The suffix that tells a trace's format (lower case), a compression suffix
    skipped: ``.swf`` for ``log.swf.gz``."""
    return _uncompressed_name(path).suffix.lower()


def trace_stem(path: str | Path) -> str:
    """A trace's name without its format and compression suffixes: ``log`` for
    ``log.swf.gz``."""
    return _uncompressed_name(path).stem


def read_trace_bytes(path: str | Path) -> bytes:
    """A trace file's contents, decompressed if gzip, bzip2 or xz made it; a file that
    cannot be read, or whose compressed data is damaged, is a TraceError."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TraceError(name, f"cannot read: {e.strerror}") from e
    for magic, kind, _, decompress in _COMPRESSED:
        if data.startswith(magic):
            try:
                return decompress(data)
            except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as e:
                raise TraceError(name, f"damaged {kind} data: {e}") from e
    return data


def read_trace_text(path: str | Path) -> str:
    """A text trace's contents (UTF-8, decompressed as :func:`read_trace_bytes` does);
    a file that cannot be read is a TraceError."""
    try:
        return read_trace_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(str(path), f"not UTF-8 text: {e.reason}") from e


def read_lwf(path: str | Path, default_site: Site | None = None, *,
             need_site: bool = True) -> Workload:
    """Parse an LWF trace; ``default_site`` is used when the file has no ``<site>``.
    Without either, it is an error, unless ``need_site`` is false: then the workload has
    no site, and its leases are not checked against one."""
    return _Reader(str(path)).read(default_site, need_site)


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lease: int | None = None  # the lease being parsed, for error messages

    def error(self, message: str, el: etree._Element | None = None) -> TraceError:
        return TraceError(self.path, message, line=_line(el), lease=self.lease)

    def read(self, default_site: Site | None, need_site: bool = True) -> Workload:
        data = read_trace_bytes(self.path)
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        try:
            root = etree.fromstring(data, parser)
        except etree.XMLSyntaxError as e:
            raise TraceError(self.path, f"not well-formed XML: {e.msg}", line=e.lineno) from e
        if root.tag != "lease-workload":
            raise self.error(f"root element is <{root.tag}>, expected <lease-workload>", root)
        desc = root.find("description")
        text = (desc.text or "") if desc is not None else ""
        description = "\n".join(line.strip() for line in text.strip().splitlines())
        site_el = root.find("site")
        site = self.site(site_el) if site_el is not None else default_site

        parsed: list[tuple[LeaseRequest, etree._Element]] = []
        first_line: dict[int, int | None] = {}
        requests_el = self.child(root, "lease-requests")
        for position, req_el in enumerate(requests_el.iterchildren("lease-request"), 1):
            request, lease_el = self.request(position, req_el)
            if request.id in first_line:
                raise self.error(f"duplicate lease id {request.id} "
                                 f"(first used on line {first_line[request.id]})", lease_el)
            first_line[request.id] = _line(lease_el)
            parsed.append((request, lease_el))
        self.lease = None

        if site is None and need_site:
            raise self.error("the trace describes no site; give one with a [site] table "
                             "(nodes, cpu, memory, ...) in a --config TOML file")
        if site is not None:
            capacities = site.capacity_matrix()
            for request, lease_el in parsed:
                self.lease = request.id
                self.check_fits(request, capacities, lease_el)
        return Workload(name=root.get("name") or trace_stem(self.path),
                        description=description, site=site,
                        requests=tuple(sorted((r for r, _ in parsed), key=lambda r: r.submit)))

    # --- elements and attributes

    def child(self, el: etree._Element, tag: str) -> etree._Element:
        found = el.find(tag)
        if found is None:
            raise self.error(f"<{el.tag}> has no <{tag}> element", el)
        return found

    def attr(self, el: etree._Element, name: str) -> str:
        value = el.get(name)
        if value is None:
            raise self.error(f"<{el.tag}> has no {name} attribute", el)
        return value

    def count(self, el: etree._Element, name: str) -> int:
        value = self.attr(el, name)
        if not _COUNT.fullmatch(value.strip()):
            raise self.error(f"{name}={value!r} on <{el.tag}> is not a non-negative integer", el)
        return int(value)

    def seconds(self, el: etree._Element, name: str) -> int:
        """A time or duration in whole seconds, fractions rounded up. A minus sign is
        accepted here so that the lease model can say what is wrong with the value."""
        value = self.attr(el, name)
        sign, total = "", Fraction(-1)
        if clock := _CLOCK.fullmatch(value.strip()):
            sign, days, hours, minutes, secs = clock.groups()
            if int(minutes) < 60 and Fraction(secs) < 60 and (days is None or int(hours) < 24):
                total = (int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60
                         + Fraction(secs))
        elif plain := _PLAIN.fullmatch(value.strip()):
            sign, total = plain[1], Fraction(plain[2])
        if total < 0:
            raise self.error(f"bad time {name}={value!r} on <{el.tag}> "
                             "(expected [D:]HH:MM:SS[.ff] or a number of seconds)", el)
        return -math.ceil(total) if sign else math.ceil(total)

    def dimension(self, el: etree._Element, type_name: str) -> str:
        dim = _TYPES.get(type_name.lower())
        if dim is None:
            raise self.error(f"unknown resource type {type_name!r} "
                             f"(known: {', '.join(_NAMES.values())})", el)
        return dim

    def node_set(self, ns: etree._Element) -> tuple[int, dict[str, int]]:
        amounts: dict[str, int] = {}
        for res in ns.iterchildren("res"):
            dim = self.dimension(res, self.attr(res, "type"))
            if dim in amounts:
                raise self.error(f"resource type {_NAMES[dim]} given twice in a node-set", res)
            amounts[dim] = self.count(res, "amount")
        return self.count(ns, "numnodes"), amounts

    # --- site and leases

    def site(self, site_el: etree._Element) -> Site:
        listed: set[str] = set()
        types_el = site_el.find("resource-types")
        if types_el is not None:
            listed = {self.dimension(types_el, t) for t in self.attr(types_el, "names").split()}
        node_sets = [(ns, *self.node_set(ns))
                     for ns in self.child(site_el, "nodes").iterchildren("node-set")]
        listed.update(d for _, _, amounts in node_sets for d in amounts)
        nodes: list[Node] = []
        for ns, count, amounts in node_sets:
            missing = [_NAMES[d] for d in DIMENSIONS if d in listed and d not in amounts]
            if missing:
                raise self.error(f"node-set gives no amount for {', '.join(missing)} "
                                 "(a resource type the site lists)", ns)
            capacity = Resources(**{d: amounts.get(d, UNLIMITED) for d in DIMENSIONS})
            nodes += [Node(i, f"P{i + 1}", capacity) for i in range(len(nodes), len(nodes) + count)]
        if not nodes:
            raise self.error("the site has no nodes", site_el)
        return Site(tuple(nodes))

    def request(self, position: int, req_el: etree._Element
                ) -> tuple[LeaseRequest, etree._Element]:
        self.lease = None
        lease_el = self.child(req_el, "lease")
        lease_id = self.count(lease_el, "id") if lease_el.get("id") is not None else position
        self.lease = lease_id
        submit = self.seconds(req_el, "arrival")
        real_el = req_el.find("realduration")
        real_duration = self.seconds(real_el, "time") if real_el is not None else None

        preemptible = lease_el.get("preemptible", "false")
        if preemptible.lower() not in ("true", "false"):
            raise self.error(f"preemptible must be true or false (got {preemptible!r})", lease_el)

        vms, resources = 0, None
        for ns in self.child(lease_el, "nodes").iterchildren("node-set"):
            count, amounts = self.node_set(ns)
            vector = Resources(**amounts)
            if resources is not None and vector != resources:
                raise self.error("heterogeneous node-sets are not supported "
                                 "(all node-sets of a lease must ask for the same resources)", ns)
            vms, resources = vms + count, vector

        start_el = self.child(lease_el, "start")
        kids = [k for k in start_el if isinstance(k.tag, str)]  # skip comments
        start = None
        if not kids:
            kind = LeaseKind.BESTEFFORT
        elif len(kids) == 1 and kids[0].tag == "exact":
            kind, start = LeaseKind.AR, self.seconds(kids[0], "time")
        elif len(kids) == 1 and kids[0].tag == "now":
            kind = LeaseKind.IMMEDIATE
        else:
            raise self.error("<start> must be empty (best-effort), hold <exact time=.../> "
                             "(advance reservation) or <now/> (immediate)", start_el)

        image_el = self.child(self.child(lease_el, "software"), "disk-image")
        image = DiskImage(self.attr(image_el, "id"), self.count(image_el, "size"))
        duration = self.seconds(self.child(lease_el, "duration"), "time")
        try:
            request = LeaseRequest(
                id=lease_id, kind=kind, vms=vms, resources=resources or Resources(),
                image=image, duration=duration, submit=submit, start=start,
                real_duration=real_duration, preemptible=preemptible.lower() == "true")
        except ValueError as e:
            raise self.error(str(e).removeprefix(f"lease {lease_id}: "), lease_el) from e
        return request, lease_el

    def check_fits(self, request: LeaseRequest, capacities: np.ndarray,
                   lease_el: etree._Element) -> None:
        need = request.resources.as_array()
        capable = int(np.all(capacities >= need, axis=1).sum())
        if capable == 0:
            largest = capacities.max(axis=0)
            over = [i for i, d in enumerate(DIMENSIONS) if need[i] > largest[i]]
            if not over:
                raise self.error("no single node offers all the resources one VM asks for "
                                 f"({_describe(need, range(len(DIMENSIONS)))})", lease_el)
            raise self.error(f"asks for {_describe(need, over)} per VM but the largest node "
                             f"offers {_describe(largest, over)}", lease_el)
        if request.vms > capable:
            raise self.error(f"asks for {request.vms} VMs but only {capable} node(s) can host "
                             "one of its VMs (the VMs of a lease run on distinct nodes)", lease_el)


def _line(el: etree._Element | None) -> int | None:
    line: object = None if el is None else el.sourceline  # the lxml stubs leave it untyped
    return line if isinstance(line, int) else None


def _describe(vector: np.ndarray, indices: Iterable[int]) -> str:
    return ", ".join(f"{DIMENSIONS[i]} {int(vector[i])}{_UNITS[DIMENSIONS[i]]}" for i in indices)


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def write_lwf(path: str | Path, workload: Workload) -> None:
    """Write ``workload`` as an LWF file that :func:`read_lwf` reads back unchanged."""
    root = etree.Element("lease-workload", name=workload.name)
    etree.SubElement(root, "description").text = workload.description
    if workload.site is not None:
        site_el = etree.SubElement(root, "site")
        nodes = workload.site.nodes
        dims = [d for d in DIMENSIONS if any(getattr(n.capacity, d) != UNLIMITED for n in nodes)]
        etree.SubElement(site_el, "resource-types", names=" ".join(_NAMES[d] for d in dims))
        nodes_el = etree.SubElement(site_el, "nodes")
        for capacity, group in groupby(nodes, key=lambda n: n.capacity):
            ns = etree.SubElement(nodes_el, "node-set", numnodes=str(len(list(group))))
            for d in dims:
                etree.SubElement(ns, "res", type=_NAMES[d], amount=str(getattr(capacity, d)))
    requests_el = etree.SubElement(root, "lease-requests")
    for r in workload.requests:
        req_el = etree.SubElement(requests_el, "lease-request", arrival=_clock(r.submit))
        if r.real_duration is not None:
            etree.SubElement(req_el, "realduration", time=_clock(r.real_duration))
        lease_el = etree.SubElement(req_el, "lease", id=str(r.id),
                                    preemptible=str(r.preemptible).lower())
        ns = etree.SubElement(etree.SubElement(lease_el, "nodes"), "node-set",
                              numnodes=str(r.vms))
        for d in DIMENSIONS:
            if getattr(r.resources, d) or d in ("cpu", "memory"):
                etree.SubElement(ns, "res", type=_NAMES[d], amount=str(getattr(r.resources, d)))
        start_el = etree.SubElement(lease_el, "start")
        if r.kind is LeaseKind.AR:
            assert r.start is not None
            etree.SubElement(start_el, "exact", time=_clock(r.start))
        elif r.kind is LeaseKind.IMMEDIATE:
            etree.SubElement(start_el, "now")
        etree.SubElement(lease_el, "duration", time=_clock(r.duration))
        etree.SubElement(etree.SubElement(lease_el, "software"), "disk-image",
                         id=r.image.id, size=str(r.image.size_mb))
    etree.ElementTree(root).write(str(path), xml_declaration=True, encoding="utf-8",
                                  pretty_print=True)
