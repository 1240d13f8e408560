"""Disk images on nodes: copies, per-node LRU caches, and repository transfers.

A copy of an image on a node is *ready* at some instant (when its transfer ends)
and is referenced by the leases that will boot from it. Referenced copies are
never evicted. With a cache (size > 0) an unreferenced copy stays until evicted
(least recently used first); without one it is deleted when its last lease lets go.
Transfers share the repository's link, one at a time (``Timeline``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
from mypy_extensions import mypyc_attr

from .leases import SentImage
from .slottable import Timeline


@dataclass(eq=False)
@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class Transfer:
    image: str
    size_mb: int
    nodes: tuple[int, ...]
    start: int
    end: int
    deadline: int | None  # AR transfers: must end by then (EDF, as late as possible)
    link_id: int
    users: set[int] = field(default_factory=set)  # lease ids depending on it
    cancelled: bool = False  # taken off the link before it began


@dataclass(eq=False)
@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class Copy:
    image: str
    node: int
    size: int
    ready: int
    transfer: Transfer | None
    users: set[int] = field(default_factory=set)
    last_used: int = 0
    cached: bool = True
    # Transfers that bring it too, later (a sooner one took over without taking the
    # node off them: see ImageStore._hand_over): if that one is cancelled, the copy
    # still comes with the soonest of these.
    slower: list[Transfer] = field(default_factory=list)


@dataclass(frozen=True)
class HandOver:
    """A sooner transfer took a node off a slower one (``slower``, cancelled if that
    left it no destination)."""

    users: set[int]  # the leases that now depend on the sooner transfer there
    slower: Transfer


@mypyc_attr(allow_interpreted_subclasses=True)  # (pickled: see pickling.py)
class ImageStore:
    def __init__(self, nodes: int, cache_mb: int, share: bool, *, record: bool = False
                 ) -> None:
        self.cache_mb = cache_mb
        # with ``record``, every transfer the link has carried (a replay reports them:
        # leases list those they depend on, not one begun for a plan they dropped)
        self.sent: list[SentImage] | None = [] if record else None
        self.share = share  # may a lease use a copy another lease brought (piggybacking)?
        self.link = Timeline()
        self.transfers: list[Transfer] = []
        self._copies: list[dict[str, Copy]] = [{} for _ in range(nodes)]
        self._by_image: dict[str, dict[int, Copy]] = {}  # the same copies, by image
        self._nodes = nodes
        # ready_times per image and ``never`` while that image's copies do not change: a
        # queue pass asks it for every waiting lease.
        self._ready_cache: dict[str, dict[int, np.ndarray]] = {}
        self._free_cache: dict[str, dict[int, np.ndarray]] = {}  # the same, copies nobody holds
        # changes whenever some copy's readiness does (and, without sharing, whenever
        # who may use a copy does: see _shareable)
        self.version = 0

    def add_node(self) -> None:
        self._copies.append({})
        self._nodes += 1
        self._ready_cache.clear()
        self._free_cache.clear()
        self.version += 1

    def _changed(self, image: str) -> None:
        self.version += 1
        self._ready_cache.pop(image, None)
        self._free_cache.pop(image, None)

    @property
    def shared(self) -> bool:
        """Is every copy usable by every lease (piggybacking, or a cache)?"""
        return self.share or self.cache_mb > 0

    def usable(self, node: int, image: str, lease: int | None = None) -> Copy | None:
        """A copy ``lease`` may boot from: its own, a cached one, or (piggybacking)
        one brought for other leases."""
        copy = self._copies[node].get(image)
        if copy is None or not self._shareable(copy, lease):
            return None
        return copy

    def usable_on(self, nodes: tuple[int, ...], image: str, lease: int
                  ) -> list[Copy | None]:
        """``usable`` on each of ``nodes`` (a deployment asks it for up to hundreds)."""
        of_image = self._by_image.get(image)
        if not of_image:
            return [None] * len(nodes)
        return [copy if copy is not None and self._shareable(copy, lease) else None
                for copy in map(of_image.get, nodes)]

    def anywhere(self, image: str) -> bool:
        """Is there a copy of ``image`` on some node (or on its way)?"""
        return bool(self._by_image.get(image))

    def _shareable(self, copy: Copy, lease: int | None) -> bool:
        # A lease among the copy's users brought it (or its transfer was merged into
        # this copy, which arrives when the first of them does): it is its own.
        return self.shared or not copy.users or lease in copy.users

    def ready_times(self, image: str, never: int, lease: int | None = None,
                    held: Collection[int] = ()) -> np.ndarray:
        """Per node, when a copy of ``image`` usable by ``lease`` is there (else ``never``);
        ``held``: the nodes where ``lease`` holds a copy (it holds none elsewhere).
        Read-only: the array may be shared with later calls."""
        if self.shared:
            return self._ready(image, never, self._ready_cache, lambda copy: True)
        # Without sharing: the copies nobody holds (anyone's), and the lease's own.
        free = self._ready(image, never, self._free_cache, lambda copy: not copy.users)
        own = [(n, copy.ready) for n in held if (copy := self._copies[n].get(image)) is not None
               and lease in copy.users]
        if not own:
            return free
        ready = free.copy()
        for n, t in own:
            ready[n] = t
        ready.flags.writeable = False
        return ready

    def _ready(self, image: str, never: int, cache: dict[str, dict[int, np.ndarray]],
               usable: Callable[[Copy], bool]) -> np.ndarray:
        of_image = cache.setdefault(image, {})
        if (cached := of_image.get(never)) is not None:
            return cached
        ready = np.full(self._nodes, never, dtype=np.int64)
        for node, copy in self._by_image.get(image, {}).items():
            if usable(copy):
                ready[node] = copy.ready
        ready.flags.writeable = False
        of_image[never] = ready
        return ready

    def _drop(self, node: int, image: str) -> None:
        del self._copies[node][image]
        del self._by_image[image][node]
        self._changed(image)

    def _users_changed(self, image: str) -> None:
        if not self.shared:  # a copy nobody holds is anyone's: usability changed
            self._changed(image)

    def use(self, copies: list[Copy], lease: int, now: int) -> None:
        """``lease`` holds ``copies`` (of one image) from ``now``."""
        for copy in copies:
            copy.users.add(lease)
            copy.last_used = now
            if copy.transfer is not None:
                copy.transfer.users.add(lease)
        if copies:
            self._users_changed(copies[0].image)

    def add_copy(self, node: int, image: str, size: int, ready: int,
                 transfer: Transfer | None, lease: int, now: int
                 ) -> tuple[Copy, HandOver | None]:
        """A new copy for ``lease``, evicting unreferenced cached copies to make room.
        If the node already has (or is getting) the image, that copy is kept, arriving
        at the earlier of the two instants; if ``transfer`` takes the node off a
        slower transfer (see ``_hand_over``), also returns what changed."""
        copies = self._copies[node]
        if (old := copies.get(image)) is not None:
            handed: HandOver | None = None
            if ready < old.ready:
                prev = old.transfer
                if prev is not None and transfer is not None \
                        and self._hand_over(prev, transfer, node, now):
                    handed = HandOver(old.users - {lease}, prev)
                    transfer.users |= handed.users
                elif prev is not None:
                    old.slower.append(prev)
                old.ready, old.transfer = ready, transfer
                self._changed(image)
            old.users.add(lease)
            old.last_used = now
            self._users_changed(image)
            return old, handed
        cached = False
        if self.cache_mb >= size:
            used = sum(c.size for c in copies.values() if c.cached)
            for victim in sorted((c for c in copies.values() if c.cached and not c.users),
                                 key=lambda c: c.last_used):
                if used + size <= self.cache_mb:
                    break
                used -= victim.size
                self._drop(node, victim.image)
            cached = used + size <= self.cache_mb
        copy = Copy(image, node, size, ready, transfer, {lease}, now, cached)
        copies[image] = copy
        self._by_image.setdefault(image, {})[node] = copy
        self._changed(image)
        return copy, None

    def _hand_over(self, slower: Transfer, sooner: Transfer, node: int, now: int) -> bool:
        """Let ``sooner`` alone bring the image to ``node``, taking it off ``slower``'s
        destinations (dropping ``slower`` if it has no other), so the image goes there
        once; whether it did. Only when that is safe: ``slower`` has not begun, and
        ``sooner`` cannot move later than ``slower`` ends now (a best-effort transfer
        stays put; an AR transfer may be re-placed up to its deadline), and leases may
        depend on each other's transfers (without, each sends its own: no reuse)."""
        if not self.shared or slower.start <= now or node not in slower.nodes or (
                sooner.deadline is not None and sooner.deadline > slower.end):
            return False
        slower.nodes = tuple(n for n in slower.nodes if n != node)
        if not slower.nodes:
            self.cancel_transfer(slower)
        return True

    def release(self, lease: int, nodes: tuple[int, ...], image: str, now: int) -> None:
        """``lease`` no longer needs ``image`` on ``nodes``."""
        for n in nodes:
            copy = self._copies[n].get(image)
            if copy is None or lease not in copy.users:
                continue
            copy.users.discard(lease)
            copy.last_used = now
            self._users_changed(image)
            # A slower transfer the lease made is still its own (see add_copy): once
            # nobody needs one that has not begun, it leaves the link.
            for slower in [s for s in copy.slower if lease in s.users]:
                slower.users.discard(lease)
                if not slower.users and slower.start > now:
                    copy.slower.remove(slower)
                    self.cancel_transfer(slower)
            t = copy.transfer
            if t is not None:
                t.users.discard(lease)
                if not t.users and t.start > now:  # nobody needs it and it has not begun
                    self.cancel_transfer(t)
            # A copy on its way stays (its transfer goes on for other leases, or has
            # begun), even without a cache: whoever needs the image next there (often
            # this lease, re-planned) need not send it again; it goes when its transfer
            # ends unused (finish_transfers).
            if not copy.users and not copy.cached and t is None \
                    and self._copies[n].get(image) is copy:
                self._drop(n, image)

    def cancel_transfer(self, t: Transfer) -> None:
        self.link.remove(t.link_id)
        self.transfers.remove(t)
        t.cancelled = True
        for n in t.nodes:
            copy = self._copies[n].get(t.image)
            if copy is None or copy.transfer is not t:
                continue
            slower = [s for s in copy.slower if s in self.transfers]
            if not slower:
                self._drop(n, t.image)
                continue
            # Another transfer still brings it (for the users it was planned for).
            copy.transfer = min(slower, key=lambda s: s.end)
            copy.ready = copy.transfer.end
            copy.slower = [s for s in slower if s is not copy.transfer]
            self._changed(t.image)

    def new_transfer(self, image: str, size_mb: int, nodes: tuple[int, ...], start: int,
                     end: int, deadline: int | None) -> Transfer:
        t = Transfer(image, size_mb, nodes, start, end, deadline, self.link.add(start, end))
        self.transfers.append(t)
        return t

    def finish_transfers(self, now: int) -> None:
        """Forget transfers that are over (their copies stay, ready)."""
        done = [t for t in self.transfers if t.end <= now]
        if self.sent is not None:
            self.sent += [SentImage(t.image, t.size_mb, t.nodes, t.start, t.end) for t in done]
        for t in done:
            self.transfers.remove(t)
            self.link.remove(t.link_id)
            for n in t.nodes:
                copy = self._copies[n].get(t.image)
                if copy is not None and copy.transfer is t:
                    copy.transfer = None
                    if not copy.users and not copy.cached:  # arrived for nobody
                        self._drop(n, t.image)

    def place_ar_transfer(self, image: str, size_mb: int, nodes: tuple[int, ...], length: int,
                          deadline: int, now: int) -> tuple[Transfer, list[Transfer]] | None:
        """Schedule an AR transfer earliest-deadline-first, as late as possible; returns
        it and the pending transfers that moved to make room.

        Pending (not yet begun) AR transfers are re-placed from the latest deadline
        backwards, so each ends as close to its deadline as the others allow. If any
        would have to start in the past, nothing changes and None is returned.
        """
        pending = [t for t in self.transfers if t.deadline is not None and t.start > now]
        for t in pending:
            self.link.remove(t.link_id)
        new = Transfer(image, size_mb, nodes, 0, 0, deadline, 0)
        seq = {id(t): i for i, t in enumerate([*self.transfers, new])}
        # Latest deadline placed first; equal deadlines keep request order in time.
        order = sorted([*pending, new], key=lambda t: (t.deadline or 0, seq[id(t)]),
                       reverse=True)
        placed: list[tuple[Transfer, int, int, int]] = []
        ok = True
        for t in order:
            tlen = length if t is new else t.end - t.start
            assert t.deadline is not None
            s = self.link.latest_gap(t.deadline, tlen)
            if s < now:
                ok = False
                break
            placed.append((t, s, s + tlen, self.link.add(s, s + tlen)))
        if not ok:
            for _, _, _, lid in placed:
                self.link.remove(lid)
            for t in pending:
                t.link_id = self.link.add(t.start, t.end)
            return None
        moved = [t for t, s, _, _ in placed if t is not new and s != t.start]
        for t, s, e, lid in placed:
            t.start, t.end, t.link_id = s, e, lid
            for n in t.nodes:
                copy = self._copies[n].get(t.image)
                if copy is not None and copy.transfer is t:
                    copy.ready = e
                    self._changed(t.image)
        self.transfers.append(new)
        return new, moved
