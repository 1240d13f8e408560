"""The committed generated gRPC code (scheduler/api) matches what protos/ generates."""

from __future__ import annotations

import importlib.util
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


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    files = _generator().generate(tmp_path)
    assert files, "nothing generated"
    committed = ROOT / "scheduler" / "api"
    fresh = {p.relative_to(tmp_path) for p in files}
    existing = {p.relative_to(committed) for p in (committed / "wsched").rglob("*")
                if p.suffix in (".py", ".pyi")}
    assert existing == fresh, "generated file set differs: run python protos/generate.py"
    stale = [str(rel) for rel in sorted(fresh)
             if (tmp_path / rel).read_bytes() != (committed / rel).read_bytes()]
    assert not stale, f"out of date (run python protos/generate.py): {stale}"
