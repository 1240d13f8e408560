"""Build: the scheduling core compiled to C extensions by mypyc.

The modules in ``COMPILED`` are plain, typed Python; mypyc compiles them to C extensions,
which replay traces ~1.3x faster (README: Compiled core). The source stays the
reference: ``WSCHED_COMPILE=0`` at install time builds nothing, and
``scheduler/__init__.py`` runs the source instead whenever a compiled module's source
differs from the one recorded here (an editable install after an edit), or when
``WSCHED_PURE_PYTHON=1`` is set. Everything else (pyproject.toml) is declarative."""

import hashlib
import os
from pathlib import Path

from setuptools import setup

# The modules a queue pass spends its time in.
COMPILED = ["core", "slottable", "images", "overheads", "pickling"]


def extensions() -> list[object]:
    if os.environ.get("WSCHED_COMPILE", "1") == "0":
        # An editable install's earlier build left its extensions in the source tree,
        # where they would still be imported: remove them.
        for built in Path("scheduler").glob("*.so"):
            built.unlink()
        Path("scheduler/_compiled_from.py").unlink(missing_ok=True)
        return []
    from mypyc.build import mypycify

    paths = [f"scheduler/{name}.py" for name in COMPILED]
    # What the extensions are compiled from: scheduler/__init__.py compares the source
    # with it at import.
    lines = [f'    "{name}": "{hashlib.sha256(Path(path).read_bytes()).hexdigest()}",'
             for name, path in zip(COMPILED, paths, strict=True)]
    record = Path("scheduler/_compiled_from.py")
    record.write_text('"""Written by setup.py: the digests of the compiled modules\' source."""\n\n'
                      "SOURCES = {\n" + "\n".join(lines) + "\n}\n")
    return mypycify([*paths, str(record)], group_name="scheduler.native", opt_level="3")


setup(ext_modules=extensions())
