"""Preparing a test schema before the processor starts."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from processor.store.migrations import apply_migrations, default_directory, load_migrations


def migrate_and_forbid(database_url: str, device_id: str) -> None:
    """Migrate, then make PostgreSQL refuse rows of `device_id` (CHECK constraint `no_poison`).

    The codec accepts such a record; only the database refuses it, with SQLSTATE 23514, which
    is how tests produce a "poison" record that reaches the writer.
    """
    with psycopg.connect(database_url) as conn:
        apply_migrations(conn, load_migrations(default_directory()))
        conn.execute(
            sql.SQL(
                "ALTER TABLE positions ADD CONSTRAINT no_poison CHECK (device_id <> {})"
            ).format(sql.Literal(device_id))
        )


def positions_columns(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(name, type, nullable, default) of `positions` in the connection's schema, in order:
    what the migration tests compare, on plain PostgreSQL and on TimescaleDB alike."""
    return conn.execute(
        """SELECT column_name, data_type, is_nullable, column_default
           FROM information_schema.columns
           WHERE table_schema = current_schema() AND table_name = 'positions'
           ORDER BY ordinal_position"""
    ).fetchall()
