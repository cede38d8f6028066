"""The `positions` table: idempotent batch writes and the reads the pipeline needs.

A batch is one transaction: COPY into a per-connection temporary staging table, then `INSERT ...
SELECT ... ON CONFLICT (device_id, ts)`, a key repeated within the batch going to a later round,
so each record's outcome (inserted, merged, duplicate) comes straight from the database. Rows
are inserted in key order, so concurrent writers never deadlock on each other. The outcomes:
docs/pipeline.md, Internals.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import attrs
import psycopg

from processor.codecs.position import Position, StoredRow, attributes_json

STAGING = "processor_staging"

CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING} (
    round      integer          NOT NULL,
    device_id  text             NOT NULL,
    ts         timestamptz      NOT NULL,
    latitude   double precision NOT NULL,
    longitude  double precision NOT NULL,
    altitude   double precision,
    angle      double precision,
    speed      double precision,
    satellites integer,
    priority   smallint,
    attributes text             NOT NULL,
    faulty     boolean          NOT NULL
) ON COMMIT DELETE ROWS
"""

# Binary COPY: the client packs numbers and timestamps in C instead of formatting text, and the
# server copies them instead of parsing text (the cheapest COPY for both processes). The JSON of
# `attributes` travels as text (binary jsonb would need psycopg's JSON dumper to re-serialise it)
# and is cast to jsonb by the INSERT, which parses it exactly once, as a jsonb column would.
COPY_STAGING = (
    f"COPY {STAGING} (round, device_id, ts, latitude, longitude, altitude, angle, speed, "
    "satellites, priority, attributes, faulty) FROM STDIN (FORMAT BINARY)"
)
STAGING_TYPES = (
    "int4", "text", "timestamptz", "float8", "float8", "float8", "float8", "float8",
    "int4", "int2", "text", "bool",
)  # fmt: skip

_MERGE_ROUND = f"""
INSERT INTO positions AS p
    (device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority,
     attributes, faulty)
SELECT device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority,
       attributes::jsonb, faulty
FROM {STAGING} WHERE round = %s
ORDER BY device_id, ts
ON CONFLICT (device_id, ts) DO UPDATE
    SET attributes = EXCLUDED.attributes || p.attributes
    WHERE (EXCLUDED.attributes || p.attributes) <> p.attributes
RETURNING p.device_id, p.ts, (p.xmax = 0) AS inserted, p.faulty
"""
INSERT_ROUND = f"WITH written AS ({_MERGE_ROUND}) SELECT device_id, ts, inserted FROM written"
# The batch writer's form: outcomes counted by the server, one result row per round instead of
# one per record; only the keys of inserted faulty rows come back (they are counted by reason).
INSERT_ROUND_COUNTED = f"""
WITH written AS ({_MERGE_ROUND})
SELECT count(*) FILTER (WHERE inserted),
       count(*) FILTER (WHERE NOT inserted),
       coalesce(array_agg(device_id) FILTER (WHERE inserted AND faulty), '{{}}'),
       coalesce(array_agg(ts) FILTER (WHERE inserted AND faulty), '{{}}')
FROM written
"""

LATEST_GOOD = """
SELECT d.device_id, p.ts, p.latitude, p.longitude, p.altitude, p.angle, p.speed, p.satellites,
       p.priority{attributes}
FROM unnest(%s::text[]) AS d(device_id)
CROSS JOIN LATERAL (
    SELECT ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes
    FROM positions
    WHERE positions.device_id = d.device_id AND NOT faulty
    ORDER BY ts DESC
    LIMIT 1
) AS p
"""

# The live snapshot's form: the latest good fix not dated after %(bound)s (the processor's clock
# plus a small skew), so one fix dated ahead of the clock does not stand in for the device's
# newer, correctly dated ones; a device with only such fixes still shows its latest one.
LATEST_SHOWN = """
SELECT d.device_id, p.ts, p.latitude, p.longitude, p.altitude, p.angle, p.speed, p.satellites,
       p.priority, p.attributes
FROM unnest(%(devices)s::text[]) AS d(device_id)
CROSS JOIN LATERAL (
    (SELECT ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes
     FROM positions
     WHERE positions.device_id = d.device_id AND NOT faulty AND ts <= %(bound)s
     ORDER BY ts DESC
     LIMIT 1)
    UNION ALL
    (SELECT ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes
     FROM positions
     WHERE positions.device_id = d.device_id AND NOT faulty AND ts > %(bound)s
     ORDER BY ts DESC
     LIMIT 1)
    LIMIT 1
) AS p
"""

INSERTED, MERGED, DUPLICATE = "inserted", "merged", "duplicate"

# A row as COPY writes it into the staging table: (round, *StoredRow, faulty).
StagedRow: TypeAlias = tuple[Any, ...]


@attrs.frozen(slots=True)
class Row:
    """One record to store: its position and the quality verdict."""

    position: Position
    faulty: bool


def prepare_connection(conn: psycopg.Connection[Any]) -> None:
    """Pool `configure` hook: each connection gets its staging table once, not per batch."""
    conn.execute(CREATE_STAGING)
    conn.commit()


def write_rows(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> list[str]:
    """Write `rows` in one transaction; returns each row's outcome, in order.

    The per-record form (tests and tools); the pipeline uses `write_batch`. Raises psycopg
    errors unchanged: the caller tells transient failures from data refusals.
    """
    values = [
        (*_stored_values(row.position), attributes_json(row.position.attributes)) for row in rows
    ]
    staged = staged_rows(values, [row.faulty for row in rows])
    rounds = [row[0] for row in staged]
    outcomes = [DUPLICATE] * len(rows)
    # binary results too: the returned keys are unpacked, not parsed from text
    with conn.transaction(), conn.cursor(binary=True) as cursor:
        _copy(cursor, staged)
        for round_number in range(max(rounds, default=-1) + 1):
            cursor.execute(INSERT_ROUND, (round_number,))
            # fetchall builds the rows in C (iterating the cursor costs a Python call per row)
            changed = {(device_id, ts): inserted for device_id, ts, inserted in cursor.fetchall()}
            for index, row in enumerate(rows):
                if rounds[index] != round_number:
                    continue
                verdict = changed.get((row.position.device_id, row.position.ts))
                if verdict is not None:
                    outcomes[index] = INSERTED if verdict else MERGED
    return outcomes


@attrs.frozen
class BatchOutcome:
    """What `write_batch` did: records per outcome, and which faulty records were inserted."""

    counts: dict[str, int]  # inserted / merged / duplicate -> records
    faulty_inserted: list[int]  # indexes of the faulty records stored as new rows


def write_batch(conn: psycopg.Connection[Any], staged: Sequence[StagedRow]) -> BatchOutcome:
    """Write `staged` (`staged_rows`: the staging table's COPY values) in one transaction.

    The same statements as `write_rows`, but the server counts the outcomes: no result row per
    record travels back or is unpacked. Raises psycopg errors unchanged.
    """
    with conn.transaction():
        copy_staged(conn, staged)
        return merge_staged(conn, staged)


def copy_staged(conn: psycopg.Connection[Any], staged: Sequence[StagedRow]) -> None:
    """The first half of `write_batch`: COPY `staged` into the staging table, inside the
    connection's transaction (opened by this COPY when none is), which stays open for
    `merge_staged`. The writer's lane copies one batch while the previous one merges."""
    with conn.cursor(binary=True) as cursor:
        _copy(cursor, staged)


def merge_staged(conn: psycopg.Connection[Any], staged: Sequence[StagedRow]) -> BatchOutcome:
    """The second half of `write_batch`: merge the staged rows of `copy_staged` into
    `positions`, in the same transaction (not committed here)."""
    inserted = merged = 0
    faulty_keys: set[tuple[int, str, datetime]] = set()
    with conn.cursor(binary=True) as cursor:
        for round_number in range(max((row[0] for row in staged), default=-1) + 1):
            cursor.execute(INSERT_ROUND_COUNTED, (round_number,))
            found = cursor.fetchone()
            assert found is not None  # an aggregate always returns its row
            inserted += found[0]
            merged += found[1]
            faulty_keys.update((round_number, *key) for key in zip(found[2], found[3], strict=True))
    counts = {INSERTED: inserted, MERGED: merged, DUPLICATE: len(staged) - inserted - merged}
    return BatchOutcome(
        counts,
        [index for index, row in enumerate(staged) if row[-1] and _STAGED_KEY(row) in faulty_keys]
        if faulty_keys
        else [],
    )


_KEY = operator.itemgetter(0, 1)  # (device_id, ts) of a StoredRow
_STAGED_KEY = operator.itemgetter(0, 1, 2)  # (round, device_id, ts) of a StagedRow


def staged_rows(rows: Sequence[StoredRow], faulty: Sequence[bool]) -> list[StagedRow]:
    """Each row as the staging table takes it: `(round, *row, faulty)`.

    A key seen earlier in the batch goes to a later round (a later INSERT from the same table):
    one `ON CONFLICT DO UPDATE` cannot touch a row twice. The writer builds these on the Trio
    thread, not in the thread that writes: Python work per row in the writing thread waits for
    the interpreter lock while the Trio thread decodes, and the database waits with it.
    """
    keys = list(map(_KEY, rows))
    if len(set(keys)) == len(keys):  # the common case: no key twice in the batch
        return [(0, *row, is_faulty) for row, is_faulty in zip(rows, faulty, strict=True)]
    seen: dict[tuple[str, datetime], int] = {}
    staged: list[StagedRow] = []
    for key, row, is_faulty in zip(keys, rows, faulty, strict=True):
        seen[key] = occurrence = seen.get(key, -1) + 1
        staged.append((occurrence, *row, is_faulty))
    return staged


def _copy(cursor: psycopg.Cursor[Any], staged: Sequence[StagedRow]) -> None:
    """COPY `staged` into the staging table (binary)."""
    with cursor.copy(COPY_STAGING) as copy:
        copy.set_types(STAGING_TYPES)
        write = copy.write_row
        for row in staged:
            write(row)


_stored_values = operator.attrgetter(
    "device_id", "ts", "latitude", "longitude", "altitude", "angle", "speed", "satellites",
    "priority",
)  # fmt: skip


def latest_good_positions(
    conn: psycopg.Connection[Any], device_ids: Sequence[str], *, attributes: bool = False
) -> dict[str, Position]:
    """Each device's latest stored non-faulty fix (devices with none are absent); with
    `attributes`, its raw IO too (live snapshots derive named IO values from it; the writer's
    rehydration does not need it)."""
    if not device_ids:
        return {}
    query = LATEST_GOOD.format(attributes=", p.attributes" if attributes else "")
    found: dict[str, Position] = {}
    with conn.transaction():
        for row in conn.execute(query, (list(device_ids),)):
            device_id, ts, lat, lon, alt, angle, speed, sats, priority = row[:9]
            raw_io = row[9] if attributes else {}
            found[device_id] = Position(
                device_id, ts, lat, lon, alt, angle, speed, sats, priority, raw_io
            )
    return found


def latest_shown_positions(
    conn: psycopg.Connection[Any], device_ids: Sequence[str], bound: datetime
) -> dict[str, Position]:
    """Each device's latest stored non-faulty fix dated at most `bound`, else (a device whose
    every good fix is later) its latest one; raw IO included (the live snapshot's read)."""
    if not device_ids:
        return {}
    found: dict[str, Position] = {}
    with conn.transaction():
        for row in conn.execute(LATEST_SHOWN, {"devices": list(device_ids), "bound": bound}):
            found[row[0]] = Position(*row)
    return found
