"""Preparing a test schema before the processor starts."""

from __future__ import annotations

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
