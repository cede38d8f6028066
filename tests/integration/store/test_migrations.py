"""Migrations (docs/storage.md): in order, once, under an advisory lock, and the exact `positions`
schema.

Each test runs in a fresh schema of its own (the `database_url` fixture), so "fresh database"
really is fresh. The advisory lock is database-wide, which is what makes concurrent starts of
several instances safe.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from processor.store.migrations import (
    ADVISORY_LOCK_KEY,
    apply_migrations,
    apply_storage_policy,
    default_directory,
    load_migrations,
    timescaledb_schema,
)
from processor.store.postgres import with_search_path
from tests.support.schema import positions_columns
from tests.support.service import spawn_processor

POSITIONS_COLUMNS = [
    # (name, type, nullable, default)
    ("device_id", "text", "NO", None),
    ("ts", "timestamp with time zone", "NO", None),
    ("latitude", "double precision", "NO", None),
    ("longitude", "double precision", "NO", None),
    ("altitude", "double precision", "YES", None),
    ("angle", "double precision", "YES", None),
    ("speed", "double precision", "YES", None),
    ("satellites", "integer", "YES", None),
    ("priority", "smallint", "YES", None),
    ("attributes", "jsonb", "NO", "'{}'::jsonb"),
    ("faulty", "boolean", "NO", "false"),
    ("ingested_at", "timestamp with time zone", "NO", "now()"),
]


def connect(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, autocommit=True)


def recorded(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
    ).fetchall()


def expected_records() -> list[tuple[int, str, str]]:
    directory = default_directory()
    return [
        (int(path.name[:4]), path.stem[5:], hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(directory.glob("*.sql"))
    ]


def test_migration_files_are_numbered_in_order() -> None:
    migrations = load_migrations(default_directory())
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "positions"


def test_applying_twice_is_a_no_op(database_url: str) -> None:
    migrations = load_migrations(default_directory())
    with connect(database_url) as conn:
        first = apply_migrations(conn, migrations)
        assert first == [f"{m.version:04d}_{m.name}" for m in migrations]
        rows_after_first = recorded(conn)
        assert apply_migrations(conn, migrations) == []
        assert recorded(conn) == rows_after_first == expected_records()
        applied_at = conn.execute("SELECT applied_at FROM schema_migrations").fetchall()
        assert len(applied_at) == len(migrations)


def test_positions_table_is_exactly_as_specified(database_url: str) -> None:
    with connect(database_url) as conn:
        apply_migrations(conn, load_migrations(default_directory()))
        # As the processor starts: on a TimescaleDB server (the containers path of the harness,
        # CI's service) the migration's create_hypertable adds a (ts DESC) index that the
        # storage policy drops; on plain PostgreSQL the policy changes nothing.
        apply_storage_policy(conn, chunk_interval="1 day", compress_after_days=0, retention_days=0)
        columns = positions_columns(conn)
        assert columns == POSITIONS_COLUMNS

        indexes = conn.execute(
            """SELECT i.indisprimary, i.indisunique,
                      array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY AS k(n, o)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                            ORDER BY k.o)
               FROM pg_index i WHERE i.indrelid = 'positions'::regclass"""
        ).fetchall()
        # The primary key, and nothing else: every extra index costs ingest speed.
        assert indexes == [(True, True, ["device_id", "ts"])]


def test_hypertable_exactly_where_timescaledb_is_available(database_url: str) -> None:
    """Both storage paths use the same migration; this machine decides which one runs."""
    with connect(database_url) as conn:
        row = conn.execute(
            """SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
                      AND coalesce(current_setting('shared_preload_libraries', true), '')
                          LIKE '%timescaledb%'"""
        ).fetchone()
        available = bool(row and row[0])
        apply_migrations(conn, load_migrations(default_directory()))
        policy = apply_storage_policy(
            conn, chunk_interval="1 day", compress_after_days=7, retention_days=30
        )
        if available:
            assert timescaledb_schema(conn) is not None
            assert policy == "timescaledb"
            hypertables = conn.execute(
                """SELECT count(*) FROM timescaledb_information.hypertables
                   WHERE hypertable_schema = current_schema() AND hypertable_name = 'positions'"""
            ).fetchone()
            assert hypertables == (1,)
        else:
            # Not a hypertable: there is no TimescaleDB in this database to make it one.
            assert timescaledb_schema(conn) is None
            extension = "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
            assert conn.execute(extension).fetchone() == (0,)
            assert policy == "plain"
        conn.execute(
            "INSERT INTO positions (device_id, ts, latitude, longitude)"
            " VALUES ('d', '2026-05-12T10:00:00Z', 1, 2)"
        )
        row = conn.execute("SELECT attributes, faulty, ingested_at IS NOT NULL FROM positions")
        assert row.fetchall() == [({}, False, True)]


def lock_waiters(conn: psycopg.Connection[Any]) -> int:
    """Sessions waiting for the migrations' advisory lock (a bigint key: classid/objid halves)."""
    row = conn.execute(
        """SELECT count(*) FROM pg_locks
           WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND classid::bigint = %s AND objid::bigint = %s""",
        (ADVISORY_LOCK_KEY >> 32, ADVISORY_LOCK_KEY & 0xFFFFFFFF),
    ).fetchone()
    return int(row[0]) if row else 0


def run_migrate_pair(database_url: str, *, hold_lock: bool) -> None:
    """Two `processor migrate` processes on one fresh schema: both succeed, one applies."""
    env = {"DATABASE_URL": database_url, "LOG_LEVEL": "info", "LOG_FORMAT": "json"}
    with connect(database_url) as conn:
        if hold_lock:
            # Both processes queue on the lock, then race for it the moment it is released.
            conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        processes = [spawn_processor(env, "migrate") for _ in range(2)]
        try:
            if hold_lock:
                deadline = time.monotonic() + 30
                while (
                    lock_waiters(conn) < 2
                    and time.monotonic() < deadline
                    and all(p.poll() is None for p in processes)
                ):
                    time.sleep(0.05)
                assert lock_waiters(conn) >= 2, "the migrate processes never reached the lock"
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
            outputs = [p.communicate(timeout=60) for p in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        for process, (_stdout, stderr) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, stderr.decode()[-2000:]
        assert recorded(conn) == expected_records()
        applied_logs = [
            stdout.count(b'"migration applied"') + stderr.count(b'"migration applied"')
            for stdout, stderr in outputs
        ]
        assert sorted(applied_logs) == [0, len(expected_records())]
        assert conn.execute("SELECT count(*) FROM positions").fetchone() == (0,)


@pytest.fixture
def own_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database of its own: advisory locks are per database, so no other test's migration
    can be mistaken for one of ours while we count the sessions waiting for the lock."""
    name = f"processor_migrate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield urlunsplit(urlsplit(postgres_server_url)._replace(path=f"/{name}"))
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_two_concurrent_migrations_both_succeed_on_lock_release(own_database_url: str) -> None:
    """Deterministic: both processes are seen queued on the lock before it is released."""
    run_migrate_pair(own_database_url, hold_lock=True)


def test_two_concurrent_migrations_race_freely(postgres_server_url: str) -> None:
    """Unsynchronised starts, repeated on fresh schemas: whoever comes second applies nothing.

    Start-up jitter makes a true overlap a matter of luck here; the lock-held test above is the
    one that forces it.
    """

    for attempt in range(3):
        schema = f"t_migrate_race_{attempt}_{time.monotonic_ns() % 10**9}"
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        try:
            run_migrate_pair(with_search_path(postgres_server_url, schema), hold_lock=False)
        finally:
            with psycopg.connect(postgres_server_url, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
