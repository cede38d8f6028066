"""The two contenders a reader could write themselves, in one plain synchronous process.

Both start from the same stream payloads as the processor and decode them with the same codec
call as the processor and the minimal pipeline (`decode_row`: straight into COPY values), so the
comparison is about the write path, not about who parses JSON:

- `raw`: the idempotent-write limit: COPY into a temporary staging table, then one
  `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, one transaction per batch. No Redis, no Trio,
  no per-record outcomes, no merging of event records.
- `baseline`: the seed version's writer shape: one multi-row
  `INSERT ... VALUES (...), (...) ... ON CONFLICT DO NOTHING RETURNING` per batch, no COPY.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from processor.codecs.position import decode_row

COLUMNS = (
    "device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, "
    "attributes, faulty"
)
STAGING_DDL = (
    "CREATE TEMP TABLE bench_staging (LIKE positions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
COPY = f"COPY bench_staging ({COLUMNS}) FROM STDIN"
INSERT_FROM_STAGING = (
    f"INSERT INTO positions ({COLUMNS}) SELECT {COLUMNS} FROM bench_staging "
    "ON CONFLICT (device_id, ts) DO NOTHING"
)
ROW_PLACEHOLDERS = "(" + ", ".join(["%s"] * 11) + ")"

Writer = Callable[[psycopg.Connection[Any], Sequence[bytes]], None]


def row(payload: bytes) -> tuple[Any, ...]:
    """The 11 column values; faulty by the stateless rules only (no device state here)."""
    values = decode_row(payload)
    faulty = values[7] == 0 or (values[2] == 0.0 and values[3] == 0.0)
    return (*values, faulty)


def write_raw(conn: psycopg.Connection[Any], payloads: Sequence[bytes]) -> None:
    with conn.transaction(), conn.cursor() as cursor:
        with cursor.copy(COPY) as copy:
            for payload in payloads:
                copy.write_row(row(payload))
        cursor.execute(INSERT_FROM_STAGING)


def write_baseline(conn: psycopg.Connection[Any], payloads: Sequence[bytes]) -> None:
    rows = [row(payload) for payload in payloads]
    sql = (
        f"INSERT INTO positions ({COLUMNS}) VALUES "
        + ", ".join([ROW_PLACEHOLDERS] * len(rows))
        + " ON CONFLICT (device_id, ts) DO NOTHING RETURNING device_id, ts"
    )
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(sql.encode(), [value for r in rows for value in r])
        cursor.fetchall()


def timed_write(
    url: str, payloads: Sequence[bytes], writer: Writer, *, batch_size: int
) -> tuple[float, float]:
    """Write every payload in batches with `writer`; returns (seconds, CPU seconds) it took."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(STAGING_DDL)
        started, cpu = time.perf_counter(), time.process_time()
        for offset in range(0, len(payloads), batch_size):
            writer(conn, payloads[offset : offset + batch_size])
        return time.perf_counter() - started, time.process_time() - cpu
