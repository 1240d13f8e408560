"""Standard Workload Format (SWF 2.2): reading batch logs as best-effort leases,
writing them back with the wait times a schedule gave them, and preparing an archive
log as the HPDC 2008 study prepared SDSC Blue Horizon's (:func:`prepare`).

This module owns the mapping between SWF jobs and best-effort :class:`LeaseRequest`
values (one lease per job, its VMs standing for the job's nodes) and the rules for which
jobs are skipped. Every problem in a file is a :class:`~scheduler.lwf.TraceError` naming
the file and the line.

Mapping (fields are 1-based, as in the SWF definition):

- lease id = field 1 (job id), submit = field 2;
- VMs = ceil(field ``nodes_field`` / ``procs_per_node``) (default field 8, requested
  processors, which the shared Blue Horizon traces already hold as nodes);
- duration = field 9 (requested time); when it is unknown (``-1``) or ``0`` the run
  time stands in for it, so the lease asks for exactly what the job used;
- real duration = field 4 (run time), raised to 1 s (a 0 is a run shorter than
  half a second, rounded down by the log) and capped at the duration (the batch system
  kills a job at its requested time);
- preemptible by default: the HPDC 2008 study (Sotomayor, Keahey, Foster) suspends and
  resumes best-effort leases, so ``preemptible=False`` is the non-default option.

Skipped jobs (counted by :class:`SkipReason`, never silently):

- ``cancelled``: status 5, or status 5 with run time ``-1``: the issue's definition of
  a job "cancelled before it started". Some status-5 jobs of the Blue Horizon log have
  a run time (they were cancelled after starting and held their nodes that long);
  ``keep_started_cancelled=True`` keeps those;
- ``unknown-run-time``: run time ``-1`` with another status (nothing to replay);
- ``no-nodes``: the node field is ``-1`` (unknown) or ``0``. Real archive logs use
  ``-1`` for unknown, so this is a skip rather than an error.

Errors: a line without 18 fields, a non-numeric field, a non-integer job id, submit,
run time, requested time, status or node count, a job id below 1 or used twice, a
negative submit time, and a submit time earlier than the previous job's (SWF requires
jobs in submit order; a log out of order has been mangled).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .leases import DiskImage, LeaseKind, LeaseRequest, Resources
from .lwf import TraceError, read_trace_text

#: Fields per SWF line.
FIELDS = 18
#: 1-based field numbers used here.
JOB_ID, SUBMIT, WAIT, RUN_TIME, REQUESTED_PROCS, REQUESTED_TIME, STATUS = 1, 2, 3, 4, 8, 9, 11
QUEUE = 15
#: SWF status of a cancelled job.
CANCELLED = 5

_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_INTEGER = re.compile(r"-?\d+")


class SkipReason(StrEnum):
    CANCELLED = "cancelled"
    UNKNOWN_RUN_TIME = "unknown-run-time"
    NO_NODES = "no-nodes"


@dataclass(frozen=True)
class SwfJob:
    """One SWF line: its 18 fields exactly as written, and where it came from."""

    fields: tuple[str, ...]
    line: int | None = None

    def __post_init__(self) -> None:
        if len(self.fields) != FIELDS:
            raise ValueError(f"an SWF job has {FIELDS} fields (got {len(self.fields)})")

    def int_field(self, number: int) -> int:
        """Field ``number`` (1-based) as an integer; ValueError if it is not one."""
        return int(self.fields[number - 1])

    @property
    def id(self) -> int:
        return self.int_field(JOB_ID)

    @property
    def submit(self) -> int:
        return self.int_field(SUBMIT)


@dataclass(frozen=True)
class SkippedJob:
    job: SwfJob
    reason: SkipReason


@dataclass(frozen=True)
class SwfTrace:
    """A parsed SWF file: ``requests[i]`` is the lease made from ``jobs[i]``."""

    path: str
    header: tuple[str, ...]  # the comment lines, without their leading ';'
    jobs: tuple[SwfJob, ...]
    requests: tuple[LeaseRequest, ...]
    skipped: tuple[SkippedJob, ...]

    @property
    def skip_counts(self) -> dict[SkipReason, int]:
        """How many jobs each reason skipped (reasons that skipped none are absent)."""
        return dict(Counter(s.reason for s in self.skipped))

    @property
    def all_jobs(self) -> list[SwfJob]:
        """Every job of the file, kept or skipped, in file order."""
        return sorted((*self.jobs, *(s.job for s in self.skipped)), key=lambda j: j.line or 0)

    @property
    def max_id(self) -> int:
        """The largest job id in the file (kept or skipped), 0 if there is none; lease ids
        from another source should start above it."""
        return max((j.id for j in (*self.jobs, *(s.job for s in self.skipped))), default=0)


def read_swf(path: str | Path, *, nodes_field: int = REQUESTED_PROCS,
             procs_per_node: int = 1, node: Resources | None = None,
             image: DiskImage | None = None, preemptible: bool = True,
             keep_started_cancelled: bool = False) -> SwfTrace:
    """Read an SWF file as best-effort leases (see the module docstring for the rules).

    ``node`` is each VM's resources (default one CPU, 1024 MB: the study's model of Blue
    Horizon); ``image`` the disk image of every lease (default predeployed: size 0).
    """
    if not 1 <= nodes_field <= FIELDS:
        raise ValueError(f"nodes_field must be a field number 1..{FIELDS} (got {nodes_field})")
    if procs_per_node < 1:
        raise ValueError(f"procs_per_node must be at least 1 (got {procs_per_node})")
    node = node if node is not None else Resources(cpu=100, memory=1024)
    image = image if image is not None else DiskImage("swf", 0)
    name = str(path)
    text = read_trace_text(path)

    header: list[str] = []
    jobs: list[SwfJob] = []
    requests: list[LeaseRequest] = []
    skipped: list[SkippedJob] = []
    seen: dict[int, int] = {}  # job id -> line
    last_submit = 0
    used = (JOB_ID, SUBMIT, RUN_TIME, nodes_field, REQUESTED_TIME, STATUS)
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith(";"):
            header.append(stripped[1:].strip())
            continue
        fields = tuple(stripped.split())
        if len(fields) != FIELDS:
            raise TraceError(name, f"expected {FIELDS} fields, found {len(fields)}", line=number)
        for i, value in enumerate(fields, 1):
            if not _NUMBER.fullmatch(value):
                raise TraceError(name, f"field {i} is not a number: {value!r}", line=number)
        for i in used:
            if not _INTEGER.fullmatch(fields[i - 1]):
                raise TraceError(name, f"field {i} is not an integer: {fields[i - 1]!r}",
                                 line=number)
        job = SwfJob(fields, number)
        job_id, submit = job.id, job.submit
        if job_id < 1:
            raise TraceError(name, f"job id must be at least 1 (got {job_id})", line=number)
        if job_id in seen:
            raise TraceError(name, f"duplicate job id {job_id} (first used on line "
                             f"{seen[job_id]})", line=number, lease=job_id)
        seen[job_id] = number
        if submit < 0:
            raise TraceError(name, f"negative submit time {submit} s", line=number,
                             lease=job_id)
        if submit < last_submit:
            raise TraceError(name, f"submit time {submit} s is earlier than the previous "
                             f"job's ({last_submit} s); SWF jobs are in submit order",
                             line=number, lease=job_id)
        last_submit = submit

        run, requested = job.int_field(RUN_TIME), job.int_field(REQUESTED_TIME)
        status, procs = job.int_field(STATUS), job.int_field(nodes_field)
        reason: SkipReason | None = None
        if status == CANCELLED and (run < 0 or not keep_started_cancelled):
            reason = SkipReason.CANCELLED
        elif run < 0:
            reason = SkipReason.UNKNOWN_RUN_TIME
        elif procs <= 0:
            reason = SkipReason.NO_NODES
        if reason is not None:
            skipped.append(SkippedJob(job, reason))
            continue

        real = max(run, 1)
        duration = requested if requested > 0 else real
        jobs.append(job)
        requests.append(LeaseRequest(
            id=job_id, kind=LeaseKind.BESTEFFORT, vms=math.ceil(procs / procs_per_node),
            resources=node, image=image, duration=duration, submit=submit,
            real_duration=min(real, duration), preemptible=preemptible))
    if not seen:  # (surely not what was meant: a log cut to nothing, the wrong file)
        raise TraceError(name, "no jobs: an SWF file lists one job per line, 18 fields "
                         "(lines starting with ';' are comments)")
    return SwfTrace(name, tuple(header), tuple(jobs), tuple(requests), tuple(skipped))


def prepare(trace: SwfTrace, *, queues: Collection[int] | None = None,
            procs_per_node: int = 1, days: float | None = None,
            first: int | None = None) -> list[SwfJob]:
    """An archive log prepared as the HPDC 2008 study prepared SDSC Blue Horizon's (see
    ``../shared/traces/README.md``), every job of ``trace`` (kept or skipped) in file
    order: only the jobs of ``queues`` (field 15; all if None); submit times made
    relative to the first of them; field 8 divided by ``procs_per_node``, rounded up,
    so it holds nodes (unknown, -1, stays so); then only the jobs submitted in the
    first ``days``, and only the ``first`` of those. Every other field as read."""
    if procs_per_node < 1:
        raise ValueError(f"procs_per_node must be at least 1 (got {procs_per_node})")
    jobs = trace.all_jobs
    if queues is not None:
        wanted = set(queues)
        for job in jobs:
            if not _INTEGER.fullmatch(job.fields[QUEUE - 1]):
                raise TraceError(trace.path, f"field {QUEUE} (queue) is not an integer: "
                                 f"{job.fields[QUEUE - 1]!r}", line=job.line, lease=job.id)
        jobs = [j for j in jobs if j.int_field(QUEUE) in wanted]
    base = jobs[0].submit if jobs else 0
    out: list[SwfJob] = []
    for job in jobs:
        fields = list(job.fields)
        submit = job.submit - base
        if days is not None and submit >= days * 86400:
            break  # (jobs are in submit order)
        if first is not None and len(out) == first:
            break
        fields[SUBMIT - 1] = str(submit)
        procs = job.int_field(REQUESTED_PROCS)
        if procs > 0:
            fields[REQUESTED_PROCS - 1] = str(math.ceil(procs / procs_per_node))
        out.append(SwfJob(tuple(fields), job.line))
    return out


def write_swf(path: str | Path, jobs: Iterable[SwfJob],
              starts: Mapping[int, int | None] | None = None, *,
              notes: Sequence[str] = (), header: Sequence[str] = ()) -> None:
    """Write ``jobs`` as SWF, after the comment lines ``header`` (without their ';')
    and ``notes`` (e.g. the source trace and profile).

    With ``starts``, field 3 (wait time) becomes scheduled start - submit: ``starts``
    maps a job id to the time the schedule started it (the lease's first ``run``); a
    job it lacks, or maps to None, never started and gets ``-1``. Every other field is
    written as read, so :func:`read_swf` gives back the same requests.
    """
    lines = [f"; {line}".rstrip() for line in header]
    if not any(line.startswith("Version:") for line in header):
        lines.insert(0, "; Version: 2.2")
    lines.append("; Note: written by wsched (scheduler.swf.write_swf)")
    if starts is not None:
        lines.append("; Note: field 3 (wait time) = scheduled start - submit time; "
                     "-1 = never started")
    lines += [f"; {note}".rstrip() for n in notes for note in n.splitlines()]
    for job in jobs:
        fields = list(job.fields)
        if starts is not None:
            start = starts.get(job.id)
            if start is not None and start < job.submit:
                raise ValueError(f"job {job.id}: start {start} s is before its submit "
                                 f"time {job.submit} s")
            fields[WAIT - 1] = str(-1 if start is None else start - job.submit)
        lines.append(" ".join(fields))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
