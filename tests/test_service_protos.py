"""The committed generated gRPC code (scheduler/api) matches what protos/ generates."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    path = ROOT / "protos" / "generate.py"
    spec = importlib.util.spec_from_file_location("wsched_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What the generators stamp with their own versions: a new release of grpcio-tools (or of
# its protoc) changes them, not the code. Which runtimes they require is checked below.
_STAMPS = [
    (re.compile(r"GRPC_GENERATED_VERSION = '[^']*'"), "GRPC_GENERATED_VERSION = ..."),
    (re.compile(r"# Protobuf Python Version: \S+"), "# Protobuf Python Version: ..."),
    (re.compile(r"(ValidateProtobufRuntimeVersion\(\s*\S+,)\s*\d+,\s*\d+,\s*\d+,"),
     r"\1 ...,"),
]


def _unstamped(path: Path) -> str:
    text = path.read_text()
    for pattern, replacement in _STAMPS:
        text = pattern.sub(replacement, text)
    return text


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    files = _generator().generate(tmp_path)
    assert files, "nothing generated"
    committed = ROOT / "scheduler" / "api"
    fresh = {p.relative_to(tmp_path) for p in files}
    existing = {p.relative_to(committed) for p in (committed / "wsched").rglob("*")
                if p.suffix in (".py", ".pyi")}
    assert existing == fresh, "generated file set differs: run python protos/generate.py"
    stale = [str(rel) for rel in sorted(fresh)
             if _unstamped(tmp_path / rel) != _unstamped(committed / rel)]
    assert not stale, f"out of date (run python protos/generate.py): {stale}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_declared_runtimes_are_those_the_generated_code_needs() -> None:
    """The committed code refuses to import on a grpcio or protobuf older than its
    generators: pyproject.toml must not let one be installed."""
    declared = {m.group(1): _version(m.group(2)) for m in re.finditer(
        r'"(grpcio|protobuf)>=([\d.]+)"', (ROOT / "pyproject.toml").read_text())}
    generated = ROOT / "scheduler" / "api" / "wsched" / "v1"
    for path in generated.glob("*_pb2_grpc.py"):
        stamp = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text())
        assert stamp is not None, path
        assert declared["grpcio"] >= _version(stamp.group(1)), (path.name, stamp.group(1))
    for path in generated.glob("*_pb2.py"):
        stamp = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),"
                          r"\s*(\d+),", path.read_text())
        assert stamp is not None, path
        assert declared["protobuf"] >= tuple(map(int, stamp.groups())), path.name
