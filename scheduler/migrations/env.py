"""Alembic environment: migrates the connection scheduler.store hands over.

Run programmatically by ``scheduler.store.upgrade`` (the connection is passed in
``config.attributes["connection"]``); with the ``alembic`` command line, pass the URL
as ``-x url=...``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from scheduler.store import VERSION_TABLE, Base, make_engine


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      version_table=VERSION_TABLE, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise RuntimeError("pass the database URL: alembic -x url=... upgrade head")
    engine = make_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
