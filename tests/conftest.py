"""Shared fixtures of the service tests: a database URL per backend (SQLite, PostgreSQL);
and a font cache of the tests' own for matplotlib."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

# matplotlib's font cache (~/.cache/matplotlib) is shared by every environment of the
# user: one rebuilt while another's fonts were missing lists none of matplotlib's own,
# and plotting then warns on stderr, which tests of the CLI check is empty. Before
# matplotlib is imported, the tests get a cache of their own (unless one is set).
if "MPLCONFIGDIR" not in os.environ:
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="wsched-tests-mpl-")
    atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], ignore_errors=True)

#: The machine's PostgreSQL (trust auth); other runs share it, so each test gets a schema.
PG_URL = os.environ.get("WSCHED_TEST_PG_URL", "postgresql+psycopg://127.0.0.1/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite+pysqlite:///{tmp_path / 'wsched.db'}"
        return
    engine = create_engine(PG_URL)
    try:
        conn = engine.connect()
    except OperationalError as e:
        engine.dispose()
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {str(e).splitlines()[0]}")
    schema = f"wsched_test_{uuid.uuid4().hex[:12]}"
    conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    conn.commit()
    try:
        # search_path puts every table (and Alembic's) in the fresh schema
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        conn.commit()
        conn.close()
        engine.dispose()
