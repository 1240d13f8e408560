"""Tests for the LWF reader and writer (scheduler/lwf.py)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import pytest

from scheduler.leases import UNLIMITED, DiskImage, LeaseKind, LeaseRequest, Node, Resources, Site
from scheduler.lwf import TraceError, Workload, read_lwf, write_lwf

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "lwf"
SCENARIOS = {"preemption": 2, "preemption_prematureend": 2, "preemption_prematureend2": 2,
             "reservation": 2, "reservation_prematureend": 2, "migrate": 3, "reuse1": 2,
             "reuse2": 3, "wait": 8}
NODE = Resources(cpu=100, memory=1024, disk=UNLIMITED, net_in=UNLIMITED, net_out=UNLIMITED)
IMG = DiskImage("foobar1.img", 1024)


def by_id(workload: Workload) -> dict[int, LeaseRequest]:
    return {r.id: r for r in workload.requests}


# --- the shared scenarios


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenarios_parse(name: str) -> None:
    w = read_lwf(SHARED / f"{name}.lwf")
    assert w.site == Site.uniform(4, NODE)
    assert len(w.requests) == SCENARIOS[name]
    assert [r.submit for r in w.requests] == sorted(r.submit for r in w.requests)


def test_preemption_values() -> None:
    w = read_lwf(SHARED / "preemption.lwf")
    assert w.name == "preemption"
    assert w.description.startswith("A simple trace where an AR lease preempts a")
    leases = by_id(w)
    assert leases[1] == LeaseRequest(
        id=1, kind=LeaseKind.BESTEFFORT, vms=1, resources=Resources(cpu=100, memory=1024),
        image=IMG, duration=3600, submit=0, preemptible=True)
    assert leases[2] == LeaseRequest(
        id=2, kind=LeaseKind.AR, vms=4, resources=Resources(cpu=100, memory=1024),
        image=DiskImage("foobar2.img", 1024), duration=1800, submit=900, start=1800)


def test_premature_end_values() -> None:
    leases = by_id(read_lwf(SHARED / "preemption_prematureend.lwf"))
    assert leases[1].real_duration == 2700
    assert leases[2].real_duration is None
    assert (leases[2].kind, leases[2].start, leases[2].duration) == (LeaseKind.AR, 1800, 900)
    leases = by_id(read_lwf(SHARED / "preemption_prematureend2.lwf"))
    assert (leases[1].real_duration, leases[2].real_duration) == (2700, 600)
    leases = by_id(read_lwf(SHARED / "reservation_prematureend.lwf"))
    assert leases[1].real_duration == 1800
    assert leases[2].kind is LeaseKind.BESTEFFORT and leases[2].vms == 4


def test_migrate_and_reuse_values() -> None:
    leases = by_id(read_lwf(SHARED / "migrate.lwf"))
    assert [leases[i].kind for i in (1, 2, 3)] == [LeaseKind.AR, LeaseKind.AR,
                                                   LeaseKind.BESTEFFORT]
    assert (leases[1].start, leases[2].start) == (90, 1800)
    assert leases[3].preemptible and leases[3].vms == 2 and leases[3].start is None
    assert leases[3].image == DiskImage("foobar3.img", 1024)
    reuse = by_id(read_lwf(SHARED / "reuse2.lwf"))
    assert reuse[3].image == reuse[2].image != reuse[1].image
    assert reuse[3].submit == 2700


def test_compressed_trace(tmp_path: Path) -> None:
    packed = tmp_path / "preemption.lwf.gz"
    packed.write_bytes(gzip.compress((SHARED / "preemption.lwf").read_bytes()))
    assert read_lwf(packed) == read_lwf(SHARED / "preemption.lwf")


def test_trace_without_site_needs_default() -> None:
    path = SHARED / "withprematureend.lwf"
    with pytest.raises(TraceError, match=r"describes no site.*\[site\].*--config") as info:
        read_lwf(path)
    assert info.value.path == str(path) and info.value.lease is None
    w = read_lwf(path, default_site=Site.uniform(4, Resources(cpu=100, memory=1024)))
    assert len(w.requests) == 139
    assert all(r.real_duration is not None for r in w.requests)
    assert w.requests[0].image.id == "'foobar.img'"  # quotes are part of the id in this trace
    small = r"withprematureend\.lwf:71: lease 5: asks for 3 VMs but only 2 node\(s\)"
    with pytest.raises(TraceError, match=small):
        read_lwf(path, default_site=Site.uniform(2, Resources(cpu=100, memory=1024)))


def test_sample_has_no_requests() -> None:
    w = read_lwf(SHARED / "sample.lwf", default_site=Site.uniform(1, NODE))
    assert w.requests == () and w.name == "sample"


# --- building traces by hand

SITE = """  <site>
    <resource-types names="CPU Memory"/>
    <nodes>
      <node-set numnodes="4">
        <res type="CPU" amount="100"/>
        <res type="Memory" amount="1024"/>
      </node-set>
    </nodes>
  </site>
"""
NODESET = '<node-set numnodes="1"><res type="CPU" amount="100"/>' \
          '<res type="Memory" amount="1024"/></node-set>'


def lease(lease_id: str | None = "1", arrival: str = "00:00:00", start: str = "<start/>",
          duration: str = '<duration time="01:00:00"/>', nodes: str = NODESET,
          preemptible: str = "false", extra: str = "") -> str:
    ident = "" if lease_id is None else f' id="{lease_id}"'
    return (f'    <lease-request arrival="{arrival}">{extra}\n'
            f'      <lease{ident} preemptible="{preemptible}">\n'
            f"        <nodes>{nodes}</nodes>\n"
            f"        {start}\n"
            f"        {duration}\n"
            '        <software><disk-image id="img" size="1024"/></software>\n'
            "      </lease>\n"
            "    </lease-request>\n")


def trace(*leases: str, site: str = SITE) -> str:
    return ('<?xml version="1.0"?>\n<lease-workload name="t">\n' + site
            + "  <lease-requests>\n" + "".join(leases) + "  </lease-requests>\n"
            + "</lease-workload>\n")


def line_of(text: str, needle: str, index: int = 0) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[index]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "case.lwf"
    path.write_text(text)
    return path


def test_times_kinds_and_defaults(tmp_path: Path) -> None:
    text = trace(
        lease(None, arrival="00:00:00.10", start='<start><exact time="90.5"/></start>'),
        lease(None, arrival="1:00:00:00", start="<start><now/></start>", preemptible="TRUE"),
        lease("7", arrival="0", duration='<duration time="00:00:59.001"/>'))
    w = read_lwf(write(tmp_path, text))
    assert [(r.id, r.submit) for r in w.requests] == [(7, 0), (1, 1), (2, 86400)]
    leases = by_id(w)
    assert (leases[1].kind, leases[1].start) == (LeaseKind.AR, 91)
    assert (leases[2].kind, leases[2].start, leases[2].preemptible) == (
        LeaseKind.IMMEDIATE, None, True)
    assert leases[7].duration == 60 and not leases[7].preemptible


def test_site_node_sets_and_unlisted_dimensions(tmp_path: Path) -> None:
    site = """  <site>
    <resource-types names="CPU NetIn"/>
    <nodes>
      <node-set numnodes="1"><res type="cpu" amount="400"/><res type="Net-in" amount="10"/>
      </node-set>
      <node-set numnodes="2"><res type="CPU" amount="100"/><res type="NETIN" amount="10"/>
      </node-set>
    </nodes>
  </site>
"""
    big = '<node-set numnodes="1"><res type="CPU" amount="300"/></node-set>'
    w = read_lwf(write(tmp_path, trace(lease(nodes=big), site=site)))
    assert w.site is not None
    assert [n.name for n in w.site.nodes] == ["P1", "P2", "P3"]
    assert w.site.nodes[0].capacity == Resources(400, UNLIMITED, UNLIMITED, 10, UNLIMITED)
    assert w.site.nodes[2] == Node(2, "P3", Resources(100, UNLIMITED, UNLIMITED, 10, UNLIMITED))
    assert w.requests[0].resources == Resources(cpu=300)
    # two such VMs need two distinct nodes of 300+ CPU: only P1 qualifies
    two = big.replace('numnodes="1"', 'numnodes="2"')
    with pytest.raises(TraceError, match="asks for 2 VMs but only 1 node"):
        read_lwf(write(tmp_path, trace(lease(nodes=two), site=site)))


def test_error_str_omits_missing_parts() -> None:
    assert str(TraceError("a.lwf", "boom")) == "a.lwf: boom"
    assert str(TraceError("a.lwf", "boom", line=3)) == "a.lwf:3: boom"
    err = TraceError("a.lwf", "boom", line=3, lease=2)
    assert str(err) == "a.lwf:3: lease 2: boom"
    assert (err.path, err.line, err.lease, err.message) == ("a.lwf", 3, 2, "boom")
    assert isinstance(err, ValueError)


# --- bad inputs: each names the file, the line, the lease and the reason

BAD_NODES = {
    "unknown-type": NODESET.replace("Memory", "GPU"),
    "too-much-memory": NODESET.replace("1024", "2048"),
    "too-many-vms": NODESET.replace('numnodes="1"', 'numnodes="5"'),
    "heterogeneous": NODESET + NODESET.replace("1024", "512"),
}


@pytest.mark.parametrize(("case", "bad", "needle", "reason"), [
    ("bad time", {"arrival": "yesterday"}, "lease-request arrival",
     "bad time arrival='yesterday'"),
    ("minutes over 59", {"duration": '<duration time="00:75:00"/>'}, "<duration",
     "bad time time='00:75:00' on <duration>"),
    ("negative duration", {"duration": '<duration time="-00:10:00"/>'}, "<lease ",
     "duration must be positive (got -600 s)"),
    ("zero realduration", {"extra": '<realduration time="0"/>'}, "<lease ",
     "real duration must be positive (got 0 s)"),
    ("AR in the past", {"arrival": "01:00:00",
                        "start": '<start><exact time="00:30:00"/></start>'}, "<lease ",
     "advance reservation starts in the past (start 1800 s < submit 3600 s)"),
    ("unknown resource type", {"nodes": BAD_NODES["unknown-type"]}, "<nodes>",
     "unknown resource type 'GPU' (known: CPU, Memory, Disk, Net-in, Net-out)"),
    ("too much memory", {"nodes": BAD_NODES["too-much-memory"]}, "<lease ",
     "asks for memory 2048 MB per VM but the largest node offers memory 1024 MB"),
    ("more VMs than nodes", {"nodes": BAD_NODES["too-many-vms"]}, "<lease ",
     "asks for 5 VMs but only 4 node(s) can host one of its VMs"),
    ("heterogeneous node-sets", {"nodes": BAD_NODES["heterogeneous"]}, "<nodes>",
     "heterogeneous node-sets are not supported"),
    ("bad preemptible", {"preemptible": "yes"}, "<lease ",
     "preemptible must be true or false (got 'yes')"),
    ("missing duration", {"duration": ""}, "<lease ", "<lease> has no <duration> element"),
    ("bad start", {"start": "<start><later/></start>"}, "<start>", "<start> must be empty"),
    ("negative amount", {"nodes": NODESET.replace('"100"', '"-5"')}, "<nodes>",
     "amount='-5' on <res> is not a non-negative integer"),
])
def test_bad_lease(tmp_path: Path, case: str, bad: dict[str, str], needle: str,
                   reason: str) -> None:
    text = trace(lease("1", arrival="00:00:00"), lease("2", arrival="00:00:00"),
                 lease("3", **bad))
    path = write(tmp_path, text)
    with pytest.raises(TraceError) as info:
        read_lwf(path)
    err = info.value
    line = line_of(text, needle, -1)
    assert (err.path, err.line, err.lease) == (str(path), line, 3), case
    assert str(err).startswith(f"{path}:{line}: lease 3: "), case
    assert reason in err.message, case


def test_duplicate_ids(tmp_path: Path) -> None:
    text = trace(lease("1"), lease("2"), lease("1", arrival="00:10:00"))
    with pytest.raises(TraceError) as info:
        read_lwf(write(tmp_path, text))
    assert info.value.line == line_of(text, "<lease ", 2) and info.value.lease == 1
    assert f"duplicate lease id 1 (first used on line {line_of(text, '<lease ')})" in str(
        info.value)


def test_missing_id_collides_with_explicit_id(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="duplicate lease id 2"):
        read_lwf(write(tmp_path, trace(lease("2"), lease(None))))


def test_malformed_xml(tmp_path: Path) -> None:
    text = trace(lease("1")).replace("</lease>", "</leese>")
    path = write(tmp_path, text)
    with pytest.raises(TraceError, match="not well-formed XML") as info:
        read_lwf(path)
    assert info.value.line == line_of(text, "</leese>")
    assert str(info.value).startswith(f"{path}:{info.value.line}: ")


def test_structural_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"case\.lwf:2: <lease-workload> has no <lease-requests>"):
        read_lwf(write(tmp_path, '<?xml version="1.0"?>\n<lease-workload name="x">\n'
                                 + SITE + "</lease-workload>\n"))
    with pytest.raises(TraceError, match="root element is <workload>"):
        read_lwf(write(tmp_path, "<workload/>"))
    with pytest.raises(TraceError, match="the site has no nodes"):
        read_lwf(write(tmp_path, trace(site="  <site><nodes/></site>\n")))
    no_mem = SITE.replace('<res type="Memory" amount="1024"/>', "")
    with pytest.raises(TraceError, match="node-set gives no amount for Memory"):
        read_lwf(write(tmp_path, trace(site=no_mem)))
    with pytest.raises(TraceError, match="cannot read"):
        read_lwf(tmp_path / "absent.lwf")


def test_entities_are_not_expanded(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("00:00:05")
    text = trace(lease("1", arrival="&x;")).replace(
        "<lease-workload", f'<!DOCTYPE w [<!ENTITY x SYSTEM "{secret}">]>\n<lease-workload', 1)
    with pytest.raises(TraceError) as info:
        read_lwf(write(tmp_path, text))
    assert "00:00:05" not in str(info.value)


# --- round trip


@pytest.mark.parametrize("name", SCENARIOS)
def test_round_trip_scenarios(tmp_path: Path, name: str) -> None:
    original = read_lwf(SHARED / f"{name}.lwf")
    write_lwf(tmp_path / "out.lwf", original)
    assert read_lwf(tmp_path / "out.lwf") == original


def test_round_trip_hand_built(tmp_path: Path) -> None:
    site = Site((Node(0, "P1", Resources(200, 2048, 10000, UNLIMITED, 100)),
                 Node(1, "P2", Resources(200, 2048, 10000, UNLIMITED, 100)),
                 Node(2, "P3", Resources(100, 1024, 5000, UNLIMITED, 100))))
    requests = (
        LeaseRequest(id=4, kind=LeaseKind.IMMEDIATE, vms=2, resources=Resources(100, 512),
                     image=DiskImage("a b.img", 0), duration=90000, submit=30,
                     real_duration=45, preemptible=True),
        LeaseRequest(id=2, kind=LeaseKind.AR, vms=3, resources=Resources(50, 256, disk=10),
                     image=DiskImage("c.img", 700), duration=60, submit=30, start=7200),
        LeaseRequest(id=9, kind=LeaseKind.BESTEFFORT, vms=1,
                     resources=Resources(net_out=5), image=DiskImage("d.img", 1),
                     duration=1, submit=100000))
    workload = Workload("hand-built", "two lines\nof description", site, requests)
    path = tmp_path / "hand.lwf"
    write_lwf(path, workload)
    assert read_lwf(path) == workload
    assert 'arrival="27:46:40"' in path.read_text()
    assert "Net-in" not in path.read_text()  # unlimited everywhere: not listed


def test_round_trip_with_default_site(tmp_path: Path) -> None:
    default = Site.uniform(4, Resources(cpu=100, memory=1024))
    original = read_lwf(SHARED / "withprematureend.lwf", default_site=default)
    write_lwf(tmp_path / "out.lwf", original)
    assert read_lwf(tmp_path / "out.lwf") == original  # the site is now in the file


def test_trace_error_survives_pickling() -> None:
    """A sweep's worker sends it back to the parent pickled, with where it happened."""
    e = pickle.loads(pickle.dumps(TraceError("w.lwf", "no duration", line=7, lease=3)))
    assert (e.path, e.message, e.line, e.lease) == ("w.lwf", "no duration", 7, 3)
    assert str(e) == "w.lwf:7: lease 3: no duration"
