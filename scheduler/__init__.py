"""wsched: a virtual-workspace scheduler (see README.md).

The scheduling core's busiest modules are compiled by mypyc when wsched is installed
(setup.py). Compiled modules run only while they match their source: after an edit (an
editable install), or with ``WSCHED_PURE_PYTHON=1`` set, the source runs instead, all of
it, since compiled modules reach into each other's objects directly."""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).parent


def _compiled() -> dict[str, str]:
    """The compiled modules and the digests of the source they were compiled from."""
    try:  # (written by setup.py when it compiles)
        sources: dict[str, str] = importlib.import_module(f"{__name__}._compiled_from").SOURCES
    except ImportError:
        return {}
    return sources


def _changed(compiled: dict[str, str]) -> list[str]:
    """The compiled modules whose source differs from what was compiled (an install
    without the source has nothing else to run)."""
    sources = {name: _HERE / f"{name}.py" for name in compiled}
    return [path.name for name, path in sources.items() if path.exists()
            and hashlib.sha256(path.read_bytes()).hexdigest() != compiled[name]]


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' source before the import system finds them."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = {f"{__name__}.{name}" for name in names}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(
            fullname, _HERE / f"{fullname.rpartition('.')[2]}.py")


_COMPILED = _compiled()
_PURE = os.environ.get("WSCHED_PURE_PYTHON") == "1"
_CHANGED = _changed(_COMPILED)
if _CHANGED and not _PURE:
    warnings.warn(f"{', '.join(_CHANGED)} changed since wsched was installed: running the "
                  "core's source (slower); install wsched again to compile it", stacklevel=2)
if _COMPILED and (_PURE or _CHANGED):
    sys.meta_path.insert(0, _SourceFinder(list(_COMPILED)))
#: Whether the core runs compiled (False: from source, see above).
COMPILED = bool(_COMPILED) and not (_PURE or _CHANGED)
