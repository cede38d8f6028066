"""The hypertable path against a real TimescaleDB (docs/storage.md; issue 10, item 8).

The same migrations as on plain PostgreSQL (tests/integration/store/test_migrations.py), here
on a database whose server preloads TimescaleDB (tests/support/timescale.py): `positions`
becomes a hypertable on `ts`, the storage policy (chunk interval, compression, retention)
follows the configuration on every start, and the pipeline stores, merges and deduplicates
into it, also into a compressed chunk (devices send buffered fixes late).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import redis
import trio

from processor.store.migrations import (
    apply_migrations,
    apply_storage_policy,
    default_directory,
    load_migrations,
    timescaledb_schema,
)
from tests.integration.store.test_migrations import (
    POSITIONS_COLUMNS,
    expected_records,
    recorded,
    run_migrate_pair,
)
from tests.support.fixes import fix, pending_count, publish, row_count
from tests.support.metrics import value
from tests.support.schema import positions_columns
from tests.support.service import running_service, wait_until


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def migrate(conn: psycopg.Connection[Any], **policy: Any) -> str:
    apply_migrations(conn, load_migrations(default_directory()))
    settings = {"chunk_interval": "1 day", "compress_after_days": 0, "retention_days": 0}
    return apply_storage_policy(conn, **(settings | policy))


def jobs(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT proc_name, config FROM timescaledb_information.jobs "
        "WHERE hypertable_name = 'positions'"
    ).fetchall()
    return dict(rows)


def test_migrations_make_positions_a_hypertable_with_the_specified_schema(
    timescaledb_url: str,
) -> None:
    with connect(timescaledb_url) as conn:
        assert migrate(conn) == "timescaledb"
        assert timescaledb_schema(conn) is not None
        dimensions = conn.execute(
            "SELECT column_name FROM timescaledb_information.dimensions "
            "WHERE hypertable_name = 'positions'"
        ).fetchall()
        assert dimensions == [("ts",)]
        columns = positions_columns(conn)
        assert columns == POSITIONS_COLUMNS
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'positions' ORDER BY 1"
        ).fetchall()
        # The key's index only: TimescaleDB's default (ts DESC) index would cost ingest speed
        # and serve no query the key does not (docs/storage.md).
        assert indexes == [("positions_pkey",)]
        # Applying again changes nothing.
        assert apply_migrations(conn, load_migrations(default_directory())) == []
        assert recorded(conn) == expected_records()


def test_concurrent_migrations_on_timescaledb(timescaledb_url: str) -> None:
    """Both `processor migrate` processes queue on the advisory lock; one creates the
    extension and the hypertable, the other applies nothing."""
    run_migrate_pair(timescaledb_url, hold_lock=True)


def test_storage_policy_follows_the_configuration(timescaledb_url: str) -> None:
    with connect(timescaledb_url) as conn:
        migrate(conn, chunk_interval="6 hours", compress_after_days=7, retention_days=30)
        interval = conn.execute(
            "SELECT time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_name = 'positions'"
        ).fetchone()
        assert interval == (timedelta(hours=6),)
        compression = conn.execute(
            "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc "
            "FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'positions' ORDER BY attname"
        ).fetchall()
        assert compression == [("device_id", 1, None, None), ("ts", None, 1, False)]
        policies = jobs(conn)
        assert policies["policy_compression"]["compress_after"] == "7 days"
        assert policies["policy_retention"]["drop_after"] == "30 days"

        # A restart with other values replaces the policies (one job each, new values).
        migrate(conn, chunk_interval="1 day", compress_after_days=3, retention_days=90)
        policies = jobs(conn)
        assert sorted(policies) == ["policy_compression", "policy_retention"]
        assert policies["policy_compression"]["compress_after"] == "3 days"
        assert policies["policy_retention"]["drop_after"] == "90 days"

        # 0 means off: the policies go away (chunks already compressed stay compressed).
        migrate(conn, compress_after_days=0, retention_days=0)
        assert jobs(conn) == {}


async def test_the_pipeline_stores_into_the_hypertable_and_a_compressed_chunk(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, timescaledb_url: str
) -> None:
    """Inserted, merged and duplicate outcomes on a hypertable, including a late fix that
    lands in a chunk compressed meanwhile."""
    tsdb_env = env | {"DATABASE_URL": timescaledb_url, "POSITIONS_CHUNK_INTERVAL": "1 hour"}
    first = [fix(f"dev{i % 5}", i * 60) for i in range(300)]  # 5 hours: several chunks
    with trio.fail_after(90):
        async with running_service(tsdb_env) as service:
            publish(redis_client, stream_key, first)
            await wait_until(lambda: row_count(timescaledb_url) == len(first))
            await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            with connect(timescaledb_url) as conn:
                schema = timescaledb_schema(conn)
                conn.execute(
                    "ALTER TABLE positions SET (timescaledb.compress, "
                    "timescaledb.compress_segmentby = 'device_id', "
                    "timescaledb.compress_orderby = 'ts DESC')"
                )
                compressed = conn.execute(
                    f"SELECT {schema}.compress_chunk(c) FROM {schema}.show_chunks('positions') c"
                ).fetchall()
                assert len(compressed) >= 5
            late = [
                fix("dev0", 0),  # a true redelivery: duplicate
                fix("dev1", 60, attributes={"240": 1}),  # same key, new IO: merged
                fix("dev9", 30),  # a new key in a compressed chunk: inserted
            ]
            publish(redis_client, stream_key, late)
            await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            await wait_until(lambda: row_count(timescaledb_url) == len(first) + 1)
    writes = service.metrics.position_writes
    assert value(writes.labels("inserted")) == len(first) + 1
    assert value(writes.labels("merged")) == 1
    assert value(writes.labels("duplicate")) == 1
    assert redis_client.xlen(f"{stream_key}:dead") == 0
    with connect(timescaledb_url) as conn:
        merged = conn.execute(
            "SELECT attributes FROM positions WHERE device_id = 'dev1' "
            "AND ts = '2026-05-12T10:01:00Z'"
        ).fetchone()
        assert merged == ({"240": 1},)
