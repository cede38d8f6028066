"""The "minimal pipeline" contender: the naive design a reader could write in an afternoon.

    python -m benchmarks.minimal      (REDIS_URL, DATABASE_URL, REDIS_STREAM from the environment)

Stream -> decode -> COPY into a temporary table -> `INSERT ... ON CONFLICT DO UPDATE` with the
processor's merge rule -> XACK after commit. Nothing else: no fix quality, no device state, no
metrics, no dead letters, no reclaim, no retries, no drain (SIGTERM just kills it). Trio with
redis-py and psycopg in worker threads, one read and one write in flight, like the processor.

It decodes with the processor's codec (`decode_row`, the same call the `raw` contender makes), so
`processor / minimal` is the price of the processor's features, not of who parses JSON. It logs
one JSON line `{"event": "ready", ...}` on stderr once connected, as `processor run` does, so the
benchmark times both alike (ready -> nothing pending).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis
import trio

from processor.codecs.position import CodecError, decode_row

READ_COUNT = int(os.environ.get("READ_COUNT", "2000"))
GROUP = os.environ.get("REDIS_GROUP", "processor")
CONSUMER = "minimal"

STAGING = """
CREATE TEMP TABLE minimal_staging (
    round integer, device_id text, ts timestamptz, latitude float8, longitude float8,
    altitude float8, angle float8, speed float8, satellites int4, priority int2,
    attributes text, faulty bool
) ON COMMIT DELETE ROWS
"""
COLUMNS = (
    "device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, "
    "attributes, faulty"
)
COPY = f"COPY minimal_staging (round, {COLUMNS}) FROM STDIN (FORMAT BINARY)"
TYPES = (
    "int4", "text", "timestamptz", "float8", "float8", "float8", "float8", "float8",
    "int4", "int2", "text", "bool",
)  # fmt: skip
# The processor's merge rule: a key already stored takes only the IO keys it lacks.
MERGE = f"""
INSERT INTO positions AS p ({COLUMNS})
SELECT device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority,
       attributes::jsonb, faulty
FROM minimal_staging WHERE round = %s ORDER BY device_id, ts
ON CONFLICT (device_id, ts) DO UPDATE SET attributes = EXCLUDED.attributes || p.attributes
    WHERE (EXCLUDED.attributes || p.attributes) <> p.attributes
"""

Batch = tuple[list[bytes], list[tuple[Any, ...]]]


def decode(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> Batch:
    """Entry ids and COPY rows; a key repeated inside the read goes to a later round (one
    `ON CONFLICT DO UPDATE` cannot touch a row twice). Undecodable entries are just acked."""
    ids: list[bytes] = []
    rows: list[tuple[Any, ...]] = []
    seen: dict[tuple[Any, Any], int] = {}
    for entry_id, fields in entries:
        ids.append(entry_id)
        try:
            row = decode_row(fields.get(b"payload"))
        except CodecError:
            continue
        key = (row[0], row[1])
        seen[key] = occurrence = seen.get(key, -1) + 1
        rows.append((occurrence, *row, False))  # no fix quality: never faulty
    return ids, rows


def store(conn: psycopg.Connection[Any], client: redis.Redis, stream: str, batch: Batch) -> None:
    ids, rows = batch
    with conn.transaction(), conn.cursor() as cursor:
        with cursor.copy(COPY) as copy:
            copy.set_types(TYPES)
            for row in rows:
                copy.write_row(row)
        for round_number in range(max((row[0] for row in rows), default=-1) + 1):
            cursor.execute(MERGE, (round_number,))
    client.xack(stream, GROUP, *ids)


async def consume(client: redis.Redis, stream: str, send: trio.MemorySendChannel[Batch]) -> None:
    async with send:
        while True:
            reply: Any = await trio.to_thread.run_sync(
                lambda: client.xreadgroup(GROUP, CONSUMER, {stream: ">"}, READ_COUNT, 1000)
            )
            if reply:
                await send.send(decode(reply[0][1]))


async def write(
    conn: psycopg.Connection[Any],
    client: redis.Redis,
    stream: str,
    receive: trio.MemoryReceiveChannel[Batch],
) -> None:
    async with receive:
        async for batch in receive:
            await trio.to_thread.run_sync(store, conn, client, stream, batch)


async def main() -> None:
    stream = os.environ["REDIS_STREAM"]
    reader = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=30)
    acker = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=30)
    try:
        reader.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    conn = psycopg.connect(os.environ["DATABASE_URL"])
    conn.execute(STAGING)
    conn.commit()
    event = {"event": "ready", "timestamp": datetime.now(UTC).isoformat()}
    sys.stderr.buffer.write(orjson.dumps(event) + b"\n")
    sys.stderr.flush()
    send, receive = trio.open_memory_channel[Batch](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, reader, stream, send)
        nursery.start_soon(write, conn, acker, stream, receive)


if __name__ == "__main__":
    trio.run(main)
