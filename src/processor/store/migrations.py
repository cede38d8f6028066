"""Migrations runner: `db/migrations/NNNN_name.sql`, applied in order, once, under a lock.

A PostgreSQL advisory lock serialises concurrent starts of several instances: the second waits,
then sees every file already recorded in `schema_migrations` and applies nothing. Each file runs in
its own transaction together with its bookkeeping row, so a failed file leaves no half-state.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import attrs
import psycopg
import structlog
from psycopg import sql

log = structlog.get_logger("processor.migrations")

# An arbitrary, fixed 64-bit key: "processor migrations".
ADVISORY_LOCK_KEY = 0x70726F635F6D6967
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql\Z")


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def default_directory() -> Path:
    """`db/migrations`, found beside the source tree or inside the installed package."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "db" / "migrations", here.parents[1] / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("db/migrations not found (looked beside src/ and in the package)")


def load_migrations(directory: Path) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name {path.name!r} is not NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}")
    return migrations


def apply_migrations(conn: psycopg.Connection[Any], migrations: list[Migration]) -> list[str]:
    """Apply the pending migrations on `conn` (autocommit); returns the names applied."""
    conn.autocommit = True
    applied_now: list[str] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        done = dict(rows)
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning(
                        "migration changed after it was applied",
                        version=migration.version,
                        name=migration.name,
                    )
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            applied_now.append(f"{migration.version:04d}_{migration.name}")
            log.info("migration applied", version=migration.version, name=migration.name)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied_now


def timescaledb_schema(conn: psycopg.Connection[Any]) -> str | None:
    """The schema holding the timescaledb extension's functions, or None without it."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'timescaledb'"
    ).fetchone()
    return None if row is None else str(row[0])


def apply_storage_policy(
    conn: psycopg.Connection[Any],
    *,
    chunk_interval: str,
    compress_after_days: int,
    retention_days: int,
) -> str:
    """Chunk interval, compression and retention from configuration, where TimescaleDB is present.

    Operator policy rather than schema, so it follows the configuration on every start instead of
    being frozen into a migration. Returns "timescaledb" or "plain" for the log. Extension
    functions are called through the extension's schema, whatever the search_path.
    """
    conn.autocommit = True
    schema = timescaledb_schema(conn)
    if schema is None:
        return "plain"
    # Under the migrations' lock: two instances starting together would otherwise interleave
    # remove/add of a policy, and the second add would fail on the first one's job.
    conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        return _apply_timescaledb_policy(
            conn,
            schema,
            chunk_interval=chunk_interval,
            compress_after_days=compress_after_days,
            retention_days=retention_days,
        )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def _apply_timescaledb_policy(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    chunk_interval: str,
    compress_after_days: int,
    retention_days: int,
) -> str:
    is_hypertable = conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables "
        "WHERE hypertable_name = 'positions' AND hypertable_schema = current_schema()"
    ).fetchone()
    if is_hypertable is None:
        log.warning("timescaledb is installed but positions is a plain table")
        return "plain"

    def call(function: str, arguments: str, params: tuple[Any, ...]) -> None:
        query = sql.SQL("SELECT {}.{}(" + arguments + ")").format(
            sql.Identifier(schema), sql.Identifier(function)
        )
        conn.execute(query, params)

    # create_hypertable (migration 0001) adds a (ts DESC) index by default. The key's index
    # already serves every query the processor makes, and each index costs ingest speed
    # (docs/storage.md), so it is dropped here, where it also repairs databases migrated earlier.
    conn.execute("DROP INDEX IF EXISTS positions_ts_idx")
    call("set_chunk_time_interval", "'positions'::regclass, %s::interval", (chunk_interval,))
    # Each policy is replaced on every start, and removed when its setting is 0 ("off"):
    # chunks already compressed stay compressed, and the compression settings stay on.
    call("remove_compression_policy", "'positions'::regclass, if_exists => true", ())
    if compress_after_days > 0:
        conn.execute(
            "ALTER TABLE positions SET (timescaledb.compress, "
            "timescaledb.compress_segmentby = 'device_id', "
            "timescaledb.compress_orderby = 'ts DESC')"
        )
        call(
            "add_compression_policy",
            "'positions'::regclass, make_interval(days => %s)",
            (compress_after_days,),
        )
    call("remove_retention_policy", "'positions'::regclass, if_exists => true", ())
    if retention_days > 0:
        call(
            "add_retention_policy",
            "'positions'::regclass, make_interval(days => %s)",
            (retention_days,),
        )
    return "timescaledb"
