"""Pickling the core's objects whether mypyc compiled them or not (see setup.py).

A compiled instance has no ``__dict__``: its class lists its attributes in
``__mypyc_attrs__`` instead. The core's ``__getstate__``/``__setstate__`` methods,
which leave caches and views out of a checkpoint, read and write attributes through
these two functions.

Compiled, a class can be unpickled only if creating an instance does not run its
``__init__`` (pickle sets the attributes afterwards). mypyc does that for a class marked
``@mypyc_attr(allow_interpreted_subclasses=True)``; ``serializable=True``, meant for
this, also left ``__init__`` out of ordinary construction (mypy 2.4.1)."""

from __future__ import annotations


def attributes(obj: object) -> dict[str, object]:
    """``obj``'s attributes by name (a new dict)."""
    names: tuple[str, ...] | None = getattr(type(obj), "__mypyc_attrs__", None)
    if names is None:
        return dict(vars(obj))
    return {name: getattr(obj, name) for name in names if hasattr(obj, name)}


def set_attributes(obj: object, state: dict[str, object]) -> None:
    for name, value in state.items():
        setattr(obj, name, value)
