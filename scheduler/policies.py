"""Pluggable scheduling policies, chosen by name in the configuration.

Each kind of decision (admission, preemption, host selection, backfilling) is a
small class behind a Protocol; ``make_policies`` builds the set a Config names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from . import kernels
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
    # Since when each node is free before the placement's window (the present stands
    # for "already free"), and which of some candidates are booked again soonest after
    # it (computed on demand: it is the costly question). Tight fits leave long idle
    # stretches whole for others.
    free_since: np.ndarray
    booked_soonest: Callable[[np.ndarray, int], np.ndarray]  # (positions, r) -> r of them


class HostSelectionPolicy(Protocol):
    def choose(self, k: int, candidates: HostCandidates) -> tuple[int, ...] | None:
        """``k`` distinct nodes from the candidates, or None if there are too few.
        A node that needs a preemption may be chosen only when fewer than ``k`` others
        are candidates (the core then leaves preemptible nodes out of the offer)."""


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
    suspended state, then nodes with the image cached, then the tightest fit in time
    (free latest before the window, then free shortest after it); lowest index last.

    The time fit keeps idle stretches whole for backfilling: a reservation in the
    future takes the nodes that come free last, a short lease the nodes that are
    booked again soonest. With whole-node jobs this makes aggressive backfilling
    start every job exactly when EASY (which only counts nodes) would."""

    def choose(self, k: int, candidates: HostCandidates) -> tuple[int, ...] | None:
        c = candidates
        if len(c.nodes) < k:
            return None
        if len(c.nodes) == k:
            return tuple(sorted(c.nodes.tolist()))
        # Only among the candidates tied with the k-th on every key does the fit after
        # the window decide.
        sure, tied = kernels.greedy_split(c.free_since, c.has_image, c.holds_state,
                                          c.needs_preemption, k)
        rest = c.booked_soonest(tied, k - len(sure))
        return tuple(sorted(c.nodes[np.concatenate((sure, rest))].tolist()))


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
