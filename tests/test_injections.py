"""Tests for the AR injection reader (scheduler/injections.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scheduler.injections import read_ar_injections
from scheduler.leases import DiskImage, LeaseKind, LeaseRequest, Resources
from scheduler.lwf import TraceError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
INJECTIONS = SHARED / "ar-injections-30days"
FILES = sorted(INJECTIONS.glob("work_*.lwf"))
NAME = re.compile(r"work_(\d\d)-dur_(\d)h-size_\d(small|medium|large)\.lwf")
NODES = {"small": (1, 24), "medium": (25, 48), "large": (49, 72)}


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "inj.lwf"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_all_72_files_are_there() -> None:
    assert len(FILES) == 72
    assert {NAME.fullmatch(f.name) is not None for f in FILES} == {True}


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_shared_file(path: Path) -> None:
    match = NAME.fullmatch(path.name)
    assert match is not None
    delta, (low, high) = int(match[2]) * 3600, NODES[match[3]]
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    leases = read_ar_injections(path, first_id=10_001)
    assert len(leases) == len(lines)
    assert [r.id for r in leases] == list(range(10_001, 10_001 + len(lines)))
    for r, cols in zip(leases, lines, strict=True):
        assert r.kind is LeaseKind.AR and not r.preemptible
        assert (r.submit, r.duration, r.real_duration, r.vms) == (
            int(cols[0]), int(cols[2]), int(cols[3]), int(cols[4]))
        assert r.start == max(0, int(cols[1]))
        assert r.resources == Resources(cpu=100, memory=1024, disk=0)
        assert r.image == DiskImage("NONE.img", 600)
        # the README's workload parameters: delta ± 30 min, nu's node range, 24 h notice
        assert delta - 1800 <= r.duration <= delta + 1800
        assert low <= r.vms <= high
        assert r.start is not None and r.submit == max(0, r.start - 86400)


def test_first_line_values() -> None:
    # first line: "0 0 3948 3948 4 1 1024 0 'NONE.img' 600"
    leases = read_ar_injections(INJECTIONS / "work_05-dur_1h-size_1small.lwf", first_id=1)
    assert leases[0] == LeaseRequest(
        id=1, kind=LeaseKind.AR, vms=4, resources=Resources(cpu=100, memory=1024),
        image=DiskImage("NONE.img", 600), duration=3948, submit=0, start=0,
        real_duration=3948)
    assert len(leases) == 422


def test_early_starts_in_shared_files(caplog: pytest.LogCaptureFixture) -> None:
    # line 2 of work_25-dur_1h-size_1small: "0 -1769 3190 3190 3 ..." (start before 0)
    path = INJECTIONS / "work_25-dur_1h-size_1small.lwf"
    with caplog.at_level("WARNING", logger="scheduler.injections"):
        leases = read_ar_injections(path, first_id=1)
    assert (leases[1].start, leases[1].duration, leases[2].start) == (0, 3190, 0)
    assert [(rec.levelname, rec.__dict__["lines"]) for rec in caplog.records] == [
        ("WARNING", (2, 3))]
    caplog.clear()
    with caplog.at_level("INFO", logger="scheduler.injections"):  # (a sweep's run)
        assert read_ar_injections(path, first_id=1, warn=False) == leases
    assert [(rec.levelname, rec.__dict__["lines"]) for rec in caplog.records] == [
        ("INFO", (2, 3))]
    with pytest.raises(TraceError) as info:
        read_ar_injections(path, first_id=1, shift_early_starts=False)
    assert str(info.value) == f"{path}:2: lease 2: start time -1769 s is before the trace begins"


def test_early_starts_count() -> None:
    shifted = sum(1 for f in FILES for line in f.read_text().splitlines()
                  if line.strip() and int(line.split()[1]) < 0)
    assert shifted == 4


def test_custom_values_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "# submit start dur real nodes cpus mem disk image size", "",
                 "100 200 50 40 3 2 512 4096 \"my image.img\" 1024",
                 "  0 0 10 20 1 1 1 0 plain.img 0  ")
    assert read_ar_injections(path, first_id=7) == (
        LeaseRequest(id=7, kind=LeaseKind.AR, vms=3,
                     resources=Resources(cpu=200, memory=512, disk=4096),
                     image=DiskImage("my image.img", 1024), duration=50, submit=100, start=200,
                     real_duration=40),
        LeaseRequest(id=8, kind=LeaseKind.AR, vms=1, resources=Resources(cpu=100, memory=1),
                     image=DiskImage("plain.img", 0), duration=10, submit=0, start=0,
                     real_duration=20),
    )


def test_empty_file(tmp_path: Path) -> None:
    assert read_ar_injections(write(tmp_path), first_id=1) == ()


GOOD = "0 100 60 60 2 1 1024 0 'NONE.img' 600"


@pytest.mark.parametrize(("line", "message"), [
    ("0 100 60 60 2 1 1024 0 'NONE.img'", "expected 10 columns, found 9"),
    ("0 100 60 60 2 1 1024 0 NONE.img 600 7", "expected 10 columns, found 11"),
    ("0 100 60.5 60 2 1 1024 0 'NONE.img' 600",
     "column 3 (requested duration) is not an integer: '60.5'"),
    ("0 100 60 60 x 1 1024 0 'NONE.img' 600", "column 5 (number of nodes) is not an integer: 'x'"),
    ("0 100 60 60 2 1 1024 0 'NONE.img 600", "cannot split the line: No closing quotation"),
    ("200 100 60 60 2 1 1024 0 'NONE.img' 600",
     "advance reservation starts in the past (start 100 s < submit 200 s)"),
    ("0 100 60 60 0 1 1024 0 'NONE.img' 600", "needs at least one VM (got 0)"),
    ("0 100 0 60 2 1 1024 0 'NONE.img' 600", "duration must be positive (got 0 s)"),
    ("0 100 60 0 2 1 1024 0 'NONE.img' 600", "real duration must be positive (got 0 s)"),
    ("0 100 60 60 2 -1 1024 0 'NONE.img' 600", "CPUs per node must not be negative (got -1)"),
    ("0 100 60 60 2 1 1024 -5 'NONE.img' 600", "disk per node must not be negative (got -5)"),
    ("0 100 60 60 2 1 1024 0 'NONE.img' -600", "image size must not be negative (got -600 MB)"),
    ("-1 100 60 60 2 1 1024 0 'NONE.img' 600", "submit time must not be negative (got -1 s)"),
])
def test_bad_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, GOOD, "# comment", line)
    with pytest.raises(TraceError) as info:
        read_ar_injections(path, first_id=5)
    # the third line is the second lease: id 5 + 1
    assert str(info.value) == f"{path}:3: lease 6: {message}"
    assert (info.value.path, info.value.line, info.value.lease) == (str(path), 3, 6)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none.lwf"
    with pytest.raises(TraceError) as info:
        read_ar_injections(path, first_id=1)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"
