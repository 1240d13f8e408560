"""Alembic environment of the service database (see scheduler/store.py)."""
