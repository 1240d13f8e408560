"""Seed images: ISO 9660 with Joliet and Rock Ridge names, built in-process (pycdlib).

A seed is a flat directory of small files. Each file gets an ISO 9660 level-3 name
(upper case, ``;1``) for strict readers and its real name through both Joliet (Windows,
OpenNebula's scripts) and Rock Ridge (Linux, which cloud-init mounts with). Nothing here
needs root or an external tool. ``NOCLOUD_LABEL`` is the volume label cloud-init's
NoCloud datasource looks for, ``CONTEXT_LABEL`` OpenNebula's.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

import pycdlib

NOCLOUD_LABEL = "cidata"
CONTEXT_LABEL = "CONTEXT"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _iso9660_name(name: str, taken: set[str]) -> str:
    stem, _, ext = name.upper().rpartition(".") if "." in name else (name.upper(), "", "")
    stem = re.sub(r"[^A-Z0-9_]", "_", stem)[:8] or "F"
    ext = re.sub(r"[^A-Z0-9_]", "_", ext)[:3]
    candidate, n = stem, 0
    while f"{candidate}.{ext}" in taken:  # e.g. two long names with the same prefix
        n += 1
        candidate = f"{stem[:8 - len(str(n))]}{n}"
    taken.add(f"{candidate}.{ext}")
    return f"/{candidate}.{ext};1"


def build_iso(label: str, files: Mapping[str, bytes]) -> bytes:
    """An ISO image labelled ``label`` holding ``files`` (flat names) at its root."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=label, sys_ident="LINUX", joliet=3,
            rock_ridge="1.09", app_ident_str="wsched")
    taken: set[str] = set()
    try:
        for name, data in sorted(files.items()):
            if not _NAME.fullmatch(name):
                raise ValueError(f"seed file name {name!r} must match {_NAME.pattern}")
            iso.add_fp(io.BytesIO(data), len(data), _iso9660_name(name, taken),
                       rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()


def write_iso(path: Path, label: str, files: Mapping[str, bytes]) -> Path:
    """Write the image atomically (a driver may be reading the previous one)."""
    data = build_iso(label, files)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def read_iso(data: bytes) -> tuple[str, dict[str, bytes]]:
    """The volume label and the root files (by their Rock Ridge names) of an image."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        label = iso.pvd.volume_identifier.decode().rstrip()
        files: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child is None or child.is_dot() or child.is_dotdot() or child.is_dir():
                continue
            name = iso.full_path_from_dirrecord(child, rockridge=True).lstrip("/")
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            files[name] = buf.getvalue()
        return label, files
    finally:
        iso.close()
