"""AR injection files: the plain-text advance-reservation workloads that are replayed on
top of an SWF trace (e.g. ``ar-injections-30days/work_RR-dur_Dh-size_S.lwf``).

This module owns their parsing into AR :class:`LeaseRequest` values. One lease per line,
ten whitespace-separated columns: submit time (s), start time (s), requested duration
(s), real duration (s), number of nodes, CPUs per node, memory per node (MB), disk per
node (MB), image name (optionally quoted), image size (MB). Blank lines and lines
starting with ``#`` are ignored. Every problem is a :class:`~scheduler.lwf.TraceError`
naming the file and the line.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

from .leases import DiskImage, LeaseKind, LeaseRequest, Resources
from .lwf import TraceError, read_trace_text

logger = logging.getLogger(__name__)

COLUMNS = ("submit time", "start time", "requested duration", "real duration",
           "number of nodes", "CPUs per node", "memory per node", "disk per node",
           "image name", "image size")
_INTEGER = re.compile(r"-?\d+")


def read_ar_injections(path: str | Path, *, first_id: int, shift_early_starts: bool = True,
                       warn: bool = True) -> tuple[LeaseRequest, ...]:
    """The ARs of an injection file, in file order, with ids ``first_id``, ``first_id + 1``, …

    Pick ``first_id`` above the best-effort trace's job ids so ids never clash (e.g.
    ``read_swf(...).max_id + 1``). CPU is in percent of one core, so 1 CPU is 100.

    A start before time 0 is moved to 0 (duration kept) when ``shift_early_starts``:
    the generator behind the shared files lets the first starts of its densest workloads
    drift a little before the trace begins (4 leases, in ``work_25-dur_1h-size_1small``
    and ``work_30-dur_1h-size_1small``), and such a lease, submitted at 0, would
    otherwise start before it was requested. Otherwise it is an error. The move is
    logged as a warning, or as information if not ``warn`` (a sweep's runs: the sweep
    warned once, as it checked its inputs).
    """
    name = str(path)
    text = read_trace_text(path)

    requests: list[LeaseRequest] = []
    shifted: list[int] = []  # lines whose start moved to 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lease_id = first_id + len(requests)
        try:
            columns = shlex.split(stripped)
        except ValueError as e:  # an unbalanced quote
            raise TraceError(name, f"cannot split the line: {e}", line=number,
                             lease=lease_id) from e
        if len(columns) != len(COLUMNS):
            raise TraceError(name, f"expected {len(COLUMNS)} columns, found {len(columns)}",
                             line=number, lease=lease_id)
        values: list[int] = []
        for i, value in enumerate(columns):
            if i == COLUMNS.index("image name"):
                continue
            if not _INTEGER.fullmatch(value):
                raise TraceError(name, f"column {i + 1} ({COLUMNS[i]}) is not an integer: "
                                 f"{value!r}", line=number, lease=lease_id)
            values.append(int(value))
        submit, start, duration, real, nodes, cpus, memory, disk, size = values
        if start < 0:
            if not shift_early_starts:
                raise TraceError(name, f"start time {start} s is before the trace begins",
                                 line=number, lease=lease_id)
            start = 0
            shifted.append(number)
        for label, amount in (("CPUs per node", cpus), ("memory per node", memory),
                              ("disk per node", disk)):
            if amount < 0:  # caught here, as the model would name the scaled CPU amount
                raise TraceError(name, f"{label} must not be negative (got {amount})",
                                 line=number, lease=lease_id)
        try:
            requests.append(LeaseRequest(
                id=lease_id, kind=LeaseKind.AR, vms=nodes,
                resources=Resources(cpu=cpus * 100, memory=memory, disk=disk),
                image=DiskImage(columns[COLUMNS.index("image name")], size),
                duration=duration, submit=submit, start=start, real_duration=real))
        except ValueError as e:
            raise TraceError(name, str(e).removeprefix(f"lease {lease_id}: "), line=number,
                             lease=lease_id) from e
    if shifted:
        logger.log(logging.WARNING if warn else logging.INFO,
                   "AR starts before time 0 moved to 0",
                   extra={"path": name, "lines": tuple(shifted)})
    return tuple(requests)
