"""Reads for the live history endpoint: fixes in a window, and the fixes that bracket passes.

Both walk the `positions` primary key `(device_id, ts)`: one index range scan per device (a
LATERAL per device id), so a window costs the rows it returns and nothing else, on a
TimescaleDB hypertable too (its chunks carry the same index, and the `ts` bounds exclude the
others). Times come back formatted by PostgreSQL (RFC 3339, microseconds, `Z`; the session
runs in UTC), which is both the wire form and the key to match pass fixes with.

The row cap (`limit`) stops the scan: a window with more fixes than the endpoint will read
costs at most `limit + 1` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from processor.store.standings import tables_exist

_TIME = """to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

WINDOW = f"""
SELECT p.device_id, p.t, p.latitude, p.longitude, p.altitude, p.speed, p.faulty
FROM unnest(%(devices)s::text[]) AS d(device_id)
CROSS JOIN LATERAL (
    SELECT device_id, {_TIME} AS t, latitude, longitude, altitude, speed, faulty
    FROM positions
    WHERE positions.device_id = d.device_id AND ts >= %(start)s AND ts < %(end)s
    ORDER BY ts
) p
LIMIT %(limit)s
"""  # noqa: S608 - constant text; every value is a bound parameter

WINDOW_GOOD = WINDOW.replace("ts < %(end)s", "ts < %(end)s AND NOT faulty")

PASS_FIXES = """
SELECT tr.device_id,
       to_char(tr.fix_before AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       to_char(tr.fix_after AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
FROM timing_records tr
JOIN stages s ON s.id = tr.stage_id
WHERE s.event_id = %(event)s::uuid AND tr.device_id = ANY(%(devices)s::text[])
  AND tr.passed_at >= %(start)s AND tr.passed_at < %(end)s
"""  # noqa: S105 - SQL, not a password (ruff reads "PASS")

Row = tuple[str, str, float, float, float | None, float | None, bool]


def window_rows(
    conn: psycopg.Connection[Any],
    devices: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    include_faulty: bool,
    limit: int,
) -> list[Row]:
    """The devices' fixes in [start, end), grouped by device in `devices` order and in time
    order within a device; at most `limit` rows."""
    query = WINDOW if include_faulty else WINDOW_GOOD
    params = {"devices": list(devices), "start": start, "end": end, "limit": limit}
    rows: list[Row] = conn.execute(query, params).fetchall()
    return rows


def pass_fixes(
    conn: psycopg.Connection[Any],
    event_id: str,
    devices: Sequence[str],
    start: datetime,
    end: datetime,
) -> dict[str, set[str]]:
    """device -> times (as `window_rows` formats them) of the fixes bracketing its control
    passes in the window; empty when the racing tables do not exist."""
    if not tables_exist(conn, "timing_records", "stages"):
        return {}
    pinned: dict[str, set[str]] = {}
    params = {"event": event_id, "devices": list(devices), "start": start, "end": end}
    for device_id, before, after in conn.execute(PASS_FIXES, params):
        times = pinned.setdefault(device_id, set())
        times.update(t for t in (before, after) if t is not None)
    return pinned
