"""Synthetic advance-reservation workloads, after Sotomayor, Keahey & Foster, "Combining
Batch Execution and Leasing Using Virtual Machines" (HPDC 2008), and disk-image
assignment for the study's multi-image configurations.

This module owns the AR generator (:func:`generate_ars`, :func:`write_ar_workload`) and
:func:`assign_images`. Every random draw comes from ``np.random.default_rng(seed)``, so
the same arguments always give the same leases and the same file bytes.

The method, inferred from the 72 shared files ``ar-injections-30days/`` (which it
reproduces statistically; see ``tests/test_generator.py``):

- Starts form a random walk from 0: each gap between consecutive starts is uniform in
  ``m ± 1 h`` (``interval_spread``); the walk stops at the first start ``s`` with
  ``s + delta >= span``. In the files ``(min gap + max gap) / 2`` is within 2 % of ``m``
  and the half-width is 3,081-3,600 s for every file. When ``m < 1 h`` gaps can be
  negative, so starts are not sorted and the first ones may fall before 0; those are
  moved to 0 (the files have 4 such starts, at -2,903..-869 s).
- ``m = delta * mean_nodes * span / (rho * basis)``, so that the expected node-seconds,
  ``span / m * delta * mean_nodes``, is exactly ``rho * basis``. A draw whose
  node-seconds is off by 1 % (``tolerance``) or more is thrown away and drawn again.
- ``basis`` (what rho is a share of) is, in the shared files, the **site's capacity over
  the trace**: 144 nodes x 30 days (2,592,000 s) = 373,248,000 node-seconds. Their AR
  node-seconds are 0.9901-1.0092 x rho x that, and 1.41-1.43 x rho x the 30-day SWF
  trace's node-seconds of real run time (262,702,034) - so "a share of the trace's
  CPU-hours" means the hours the trace's machine offers, not those its jobs used.
  :func:`capacity_node_seconds` gives that basis; :func:`trace_node_seconds` the other.
- Durations (requested = real) are uniform integers in ``delta ± 30 min``, node counts
  uniform integers in the size's range (:data:`NODE_RANGES`), each lease submitted
  ``notice_hours`` before its start but never before 0, one CPU and 1024 MB per VM,
  image ``NONE.img`` of 600 MB - all as in the files.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .leases import DiskImage, LeaseKind, LeaseRequest, Resources, Site
from .lwf import Workload, write_lwf

logger = logging.getLogger(__name__)

DAY = 86_400
HOUR = 3_600
#: The study's site: Blue Horizon as 144 single-CPU nodes.
STUDY_NODES = 144
#: The study's lease sizes (nodes per AR lease, inclusive ranges).
NODE_RANGES: Mapping[str, tuple[int, int]] = {"small": (1, 24), "medium": (25, 48),
                                              "large": (49, 72)}
_RANGE = re.compile(r"(\d+)-(\d+)")


def node_range(text: str) -> tuple[int, int]:
    """A size's node range: a name of :data:`NODE_RANGES` or ``LOW-HIGH`` (``10-20``)."""
    if text in NODE_RANGES:
        return NODE_RANGES[text]
    if (m := _RANGE.fullmatch(text.strip())) is None or not 1 <= int(m[1]) <= int(m[2]):
        raise ValueError(f"nodes per AR {text!r}: expected {', '.join(NODE_RANGES)} or a "
                         "range LOW-HIGH with 1 <= LOW <= HIGH, e.g. 10-20")
    return int(m[1]), int(m[2])


#: The image of the shared injection files (predeployed in the study's base runs).
DEFAULT_IMAGE = DiskImage("NONE.img", 600)
#: Per-VM resources of the shared injection files: one CPU, 1024 MB.
DEFAULT_RESOURCES = Resources(cpu=100, memory=1024)


@dataclass(frozen=True)
class ARParameters:
    """One AR workload configuration: ``rho`` is a share (0.05 for 5 %), ``delta_hours``
    the mean duration, ``nodes`` the inclusive range of nodes per lease."""

    rho: float
    delta_hours: float
    nodes: tuple[int, int]
    notice_hours: float = 24.0
    duration_spread: int = 30 * 60  # each duration uniform in delta ± this (s)
    interval_spread: int = HOUR  # each gap between starts uniform in its mean ± this (s)
    tolerance: float = 0.01  # accepted relative error of the node-seconds
    resources: Resources = DEFAULT_RESOURCES  # per VM
    image: DiskImage = DEFAULT_IMAGE

    def __post_init__(self) -> None:
        low, high = self.nodes
        problems = []
        if not 0 < self.rho <= 1:  # (5 meaning 5 % would ask for 5 times the site)
            problems.append(f"rho must be a share in (0, 1], e.g. 0.05 for 5 % "
                            f"(got {self.rho:g})")
        if not 1 <= low <= high:
            problems.append(f"nodes must be a range 1 <= low <= high (got {self.nodes})")
        if self.duration_spread < 0:
            problems.append(f"duration spread must not be negative "
                            f"(got {self.duration_spread} s)")
        elif not self.duration_spread < self.delta_seconds:
            problems.append(f"delta must be longer than the durations' spread (± "
                            f"{self.duration_spread} s), so that every duration is positive "
                            f"(got delta {self.delta_hours:g} h)")
        if self.interval_spread < 0:
            problems.append(f"interval spread must not be negative (got {self.interval_spread})")
        if self.notice_hours < 0:
            problems.append(f"notice must not be negative (got {self.notice_hours} h)")
        if not self.tolerance > 0:
            problems.append(f"tolerance must be positive (got {self.tolerance})")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def named(cls, rho_percent: float, delta_hours: float, size: str) -> ARParameters:
        """The study's notation: e.g. ``named(5, 1, "small")`` for work_05-dur_1h-size_1small."""
        if size not in NODE_RANGES:
            raise ValueError(f"unknown size {size!r} (known: {', '.join(NODE_RANGES)})")
        return cls(rho=rho_percent / 100, delta_hours=delta_hours, nodes=NODE_RANGES[size])

    @property
    def delta_seconds(self) -> int:
        return round(self.delta_hours * HOUR)

    @property
    def notice_seconds(self) -> int:
        return round(self.notice_hours * HOUR)

    @property
    def mean_nodes(self) -> float:
        return (self.nodes[0] + self.nodes[1]) / 2


def capacity_node_seconds(nodes: int, span: int) -> int:
    """What the site offers over the trace: the basis the shared files' rho refers to
    (144 nodes x 30 days for Blue Horizon)."""
    return nodes * span


def trace_node_seconds(requests: Iterable[LeaseRequest]) -> int:
    """What a trace's leases really use: VMs x real run time, summed."""
    return sum(r.vms * r.effective_real_duration for r in requests)


def trace_span(requests: Iterable[LeaseRequest]) -> int:
    """The trace's duration as whole days covering its last submit time (at least one day):
    30 days (2,592,000 s) for ``30days.swf``, whose last job arrives at 2,590,930 s, which
    is the span the shared files spread their starts over."""
    last = max((r.submit for r in requests), default=0)
    return max(1, math.ceil(last / DAY)) * DAY


def generate_ars(params: ARParameters, *, span: int, basis_node_seconds: int, seed: int,
                 first_id: int = 1, max_attempts: int = 10_000) -> tuple[LeaseRequest, ...]:
    """AR leases whose node-seconds are ``params.rho * basis_node_seconds`` within
    ``params.tolerance``, starting over ``[0, span)``; ids ``first_id``, ``first_id + 1``, …
    in generation order (see the module docstring for the method)."""
    if span <= 0 or basis_node_seconds <= 0:
        raise ValueError(f"span and basis must be positive (got {span} s, "
                         f"{basis_node_seconds} node-seconds)")
    delta = params.delta_seconds
    if delta >= span:
        raise ValueError(f"mean duration {delta} s does not fit in the span {span} s")
    target = params.rho * basis_node_seconds
    mean_interval = delta * params.mean_nodes * span / target
    low, high = params.nodes
    rng = np.random.default_rng(seed)
    for attempt in range(1, max_attempts + 1):
        starts = _starts(rng, span=span, delta=delta, mean=mean_interval,
                         spread=params.interval_spread)
        durations = rng.integers(delta - params.duration_spread,
                                 delta + params.duration_spread, size=len(starts),
                                 endpoint=True)
        nodes = rng.integers(low, high, size=len(starts), endpoint=True)
        total = int((durations * nodes).sum())
        if abs(total / target - 1) < params.tolerance:
            logger.debug("AR workload drawn", extra={"attempts": attempt, "leases": len(starts),
                                                     "node_seconds": total, "target": target})
            break
    else:
        raise ValueError(f"no draw in {max_attempts} came within {params.tolerance:.1%} of "
                         f"{target:.0f} node-seconds (too few leases for that tolerance?)")
    notice = params.notice_seconds
    return tuple(
        LeaseRequest(id=first_id + i, kind=LeaseKind.AR, vms=int(n), resources=params.resources,
                     image=params.image, duration=int(d), submit=max(0, int(s) - notice),
                     start=int(s), real_duration=int(d))
        for i, (s, d, n) in enumerate(zip(starts, durations, nodes, strict=True)))


def _starts(rng: np.random.Generator, *, span: int, delta: int, mean: float,
            spread: int) -> np.ndarray:
    """The random walk of start times (s), from 0 to the first start ``s`` with
    ``s + delta >= span`` (excluded); starts before 0 are moved to 0."""
    chunk = int(span / mean * 1.1) + 16  # usually one chunk; more if the walk lags
    walk: list[np.ndarray] = []
    position = 0.0
    while True:
        gaps = rng.uniform(mean - spread, mean + spread, size=chunk)
        steps = position + np.concatenate(([0.0], np.cumsum(gaps)[:-1]))
        beyond = np.flatnonzero(steps + delta >= span)
        if beyond.size:
            walk.append(steps[:beyond[0]])
            break
        walk.append(steps)
        position = float(steps[-1] + gaps[-1])
    starts: np.ndarray = np.maximum(np.rint(np.concatenate(walk)), 0).astype(np.int64)
    return starts


def ar_workload(requests: Sequence[LeaseRequest], params: ARParameters, *, seed: int,
                span: int, basis_node_seconds: int, site: Site | None = None,
                name: str | None = None) -> Workload:
    """The generated leases as a :class:`Workload`, its description recording how they
    were made (no timestamps, so files stay byte-identical for the same arguments)."""
    low, high = params.nodes
    default = (f"ar-rho{params.rho:g}-delta{params.delta_hours:g}h-nodes{low}-{high}"
               f"-seed{seed}")
    description = "\n".join([
        "Advance reservations generated by wsched (scheduler.generator), after Sotomayor,",
        "Keahey & Foster, HPDC 2008.",
        f"rho {params.rho:g} of {basis_node_seconds} node-seconds over a span of {span} s;",
        f"durations {params.delta_seconds} s ± {params.duration_spread} s; nodes {low}-{high};",
        f"notice {params.notice_seconds} s; start gaps ± {params.interval_spread} s;",
        f"tolerance {params.tolerance:g}; seed {seed}; {len(requests)} leases, "
        f"{sum(r.vms * r.duration for r in requests)} node-seconds."])
    return Workload(name=name or default, description=description, site=site,
                    requests=tuple(requests))


def write_ar_workload(path: str | Path, params: ARParameters, *, span: int,
                      basis_node_seconds: int, seed: int, first_id: int = 1,
                      site: Site | None = None,
                      name: str | None = None) -> tuple[LeaseRequest, ...]:
    """Generate ARs (:func:`generate_ars`) and write them as an LWF file; returns them."""
    requests = generate_ars(params, span=span, basis_node_seconds=basis_node_seconds,
                            seed=seed, first_id=first_id)
    write_lwf(path, ar_workload(requests, params, seed=seed, span=span,
                                basis_node_seconds=basis_node_seconds, site=site, name=name))
    return requests


@dataclass(frozen=True)
class ImageMix:
    """How many distinct images, their size, and how often each is chosen (None: uniform)."""

    images: int
    size_mb: int
    weights: tuple[float, ...] | None = None


#: The study's image configurations: ``vm-mult`` draws one of 37 images of 4 GB
#: uniformly; ``vm-reuse-skewed`` picks 7 images 10 % of the time each and 30 images 1 %
#: each (same 37 images of 4 GB; the size is an assumption, the brief gives only the mix).
IMAGE_MIXES: Mapping[str, ImageMix] = {
    "vm-mult": ImageMix(37, 4096),
    "vm-reuse-skewed": ImageMix(37, 4096, (0.10,) * 7 + (0.01,) * 30),
}


def assign_images(requests: Sequence[LeaseRequest], *, images: int, size_mb: int,
                  weights: Sequence[float] | None = None,
                  seed: int) -> tuple[LeaseRequest, ...]:
    """Give each request one of ``images`` images (ids ``img01``, ``img02``, …, of
    ``size_mb`` MB), drawn independently, uniformly or with ``weights`` (relative, one per
    image, normalized here), reproducibly for a seed. Nothing else changes."""
    if images < 1:
        raise ValueError(f"images must be at least 1 (got {images})")
    if size_mb < 0:
        raise ValueError(f"image size must not be negative (got {size_mb} MB)")
    p = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (images,):
            raise ValueError(f"need one weight per image ({images}), got {len(weights)}")
        if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
            raise ValueError("weights must be finite, non-negative and not all zero")
        p = w / w.sum()
    width = len(str(images))
    pool = [DiskImage(f"img{i + 1:0{max(2, width)}d}", size_mb) for i in range(images)]
    chosen = np.random.default_rng(seed).choice(images, size=len(requests), p=p)
    return tuple(replace(r, image=pool[int(c)]) for r, c in zip(requests, chosen, strict=True))
