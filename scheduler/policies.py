"""Pluggable scheduling policies, chosen by name in the configuration.

Each kind of decision (admission, preemption, host selection, backfilling) is a
small class behind a Protocol; ``make_policies`` builds the set a Config names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from .config import Config, ConfigError
from .leases import LeaseKind, LeaseRequest

T = TypeVar("T")


class AdmissionPolicy(Protocol):
    def refuse(self, request: LeaseRequest) -> str | None:
        """A reason to reject ``request`` outright, or None to consider it."""


class PreemptionPolicy(Protocol):
    def may_preempt(self, preemptor: LeaseRequest, victim: LeaseRequest) -> bool: ...


@dataclass(frozen=True)
class HostCandidates:
    """Nodes able to host one VM of a lease, with what the choice would cost."""

    nodes: np.ndarray  # node indices
    needs_preemption: np.ndarray  # bool per candidate
    has_image: np.ndarray  # image already there (or on its way): no new transfer
    holds_state: np.ndarray  # the lease's suspended state is there: no migration


class HostSelectionPolicy(Protocol):
    def choose(self, k: int, candidates: HostCandidates) -> tuple[int, ...] | None:
        """``k`` distinct nodes from the candidates, or None if there are too few."""


@dataclass(frozen=True)
class BackfillPolicy:
    """How many best-effort leases may hold reservations in the future (None = all)."""

    max_future: int | None


class AcceptAll:
    def refuse(self, request: LeaseRequest) -> str | None:
        return None


class NoARs:
    def refuse(self, request: LeaseRequest) -> str | None:
        if request.kind is LeaseKind.AR:
            return "advance reservations are not accepted here (admission policy no-ars)"
        return None


class NoPreemption:
    def may_preempt(self, preemptor: LeaseRequest, victim: LeaseRequest) -> bool:
        return False


class ARPreemptsBestEffort:
    def may_preempt(self, preemptor: LeaseRequest, victim: LeaseRequest) -> bool:
        return (preemptor.kind is LeaseKind.AR and victim.kind is LeaseKind.BESTEFFORT
                and victim.preemptible)


class Greedy:
    """Prefer nodes needing no preemption, then nodes already holding the lease's
    suspended state, then nodes with the image cached; lowest index last."""

    def choose(self, k: int, candidates: HostCandidates) -> tuple[int, ...] | None:
        if len(candidates.nodes) < k:
            return None
        order = np.lexsort((candidates.nodes, ~candidates.has_image,
                            ~candidates.holds_state, candidates.needs_preemption))
        return tuple(sorted(int(n) for n in candidates.nodes[order[:k]]))


@dataclass(frozen=True)
class Policies:
    admission: AdmissionPolicy
    preemption: PreemptionPolicy
    host_selection: HostSelectionPolicy
    backfilling: BackfillPolicy


ADMISSION: dict[str, type[AdmissionPolicy]] = {"accept-all": AcceptAll, "no-ars": NoARs}
PREEMPTION: dict[str, type[PreemptionPolicy]] = {
    "none": NoPreemption, "ar-preempts-besteffort": ARPreemptsBestEffort}
HOST_SELECTION: dict[str, type[HostSelectionPolicy]] = {"greedy": Greedy}


def _pick(table: dict[str, type[T]], name: str, what: str) -> T:
    if name not in table:
        raise ConfigError(f"unknown {what} policy {name!r} (known: {', '.join(table)})")
    return table[name]()


def make_policies(config: Config) -> Policies:
    return Policies(
        admission=_pick(ADMISSION, config.admission, "admission"),
        preemption=_pick(PREEMPTION, config.preemption, "preemption"),
        host_selection=_pick(HOST_SELECTION, config.host_selection, "host-selection"),
        backfilling=BackfillPolicy(config.max_future_reservations),
    )
