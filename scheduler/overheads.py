"""How long each virtualization overhead takes, from the configuration.

Every VM command (start, shutdown, suspend, resume) costs the enactment overhead.
A lease's VMs sit on distinct nodes and their commands run in parallel, except
that suspensions/resumptions under *global* exclusion run one VM at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import Config, Exclusion, Migration
from .leases import DiskImage, LeaseRequest, seconds_for, transfer_seconds


@dataclass(frozen=True)
class Overheads:
    config: Config
    # Durations already worked out, by what they depend on: a queue pass asks them for
    # every lease it tries (each is a few float operations, and that adds up).
    _memo: dict[tuple[object, ...], int] = field(default_factory=dict, init=False,
                                                 repr=False, compare=False)

    def __reduce__(self) -> tuple[type[Overheads], tuple[Config]]:
        return Overheads, (self.config,)  # (a checkpoint need not hold the memo)

    @property
    def boot(self) -> int:
        return self.config.boot_time + self.config.enactment_overhead

    @property
    def shutdown(self) -> int:
        return self.config.shutdown_time + self.config.enactment_overhead

    def _serial(self, req: LeaseRequest) -> int:
        return req.vms if self.config.suspendresume_exclusion is Exclusion.GLOBAL else 1

    def suspend(self, req: LeaseRequest) -> int:
        return self._memory_written("suspend", self.config.suspend_rate, req)

    def resume(self, req: LeaseRequest) -> int:
        return self._memory_written("resume", self.config.resume_rate, req)

    def _memory_written(self, kind: str, rate: float, req: LeaseRequest) -> int:
        """Suspending or resuming the lease's VMs: each VM's memory at ``rate`` MB/s."""
        key = (kind, req.resources.memory, req.vms)
        if (known := self._memo.get(key)) is None:
            per_vm = seconds_for(req.resources.memory, rate)
            known = self._memo[key] = self._serial(req) * (
                per_vm + self.config.enactment_overhead)
        return known

    def transfer(self, image: DiskImage) -> int:
        key = ("transfer", image.size_mb)
        if (known := self._memo.get(key)) is None:
            known = self._memo[key] = transfer_seconds(image.size_mb,
                                                       self.config.repository_bandwidth)
        return known

    def migration(self, req: LeaseRequest, with_image: bool) -> int:
        """Moving one VM's memory state (and its disk image) to another node."""
        if self.config.migration is Migration.YES_NOTRANSFER:
            return 0
        mb = req.resources.memory + (req.image.size_mb if with_image else 0)
        key = ("migration", mb)
        if (known := self._memo.get(key)) is None:
            known = self._memo[key] = transfer_seconds(mb, self.config.migration_bandwidth)
        return known

    def run_time(self, seconds: int) -> int:
        """Wall time a VM needs for ``seconds`` of bare-metal work (runtime slowdown)."""
        return math.ceil(seconds * (100 + self.config.runtime_slowdown) / 100 - 1e-9)
