"""Speed-zone violations of evaluated entries: read the zone's fixes, compare, write, announce.

Runs inside a stage's evaluation transaction, after the entries' passes and before their
results (a violation's penalty is part of the result). Each zone's fixes are read for its whole
window in force, whatever the pass evaluation resumed from, so violations never depend on
arrival order or batching. Only rows that differ after normalisation are written, rows no
longer produced are deleted, each written row is announced as a `violation` frame after the
commit. Details: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs
import psycopg

from processor.codecs.race_feed import RaceChange, timestamp, violation_change
from processor.domain.definitions import StageDef
from processor.domain.rules.instants import to_datetime
from processor.domain.rules.model import EntryResult, Fix
from processor.domain.rules.zones import Violation, violations

STORED = """
SELECT v.entry_id::text, v.zone_id::text, v.started_at, v.ended_at,
       v.max_speed_kmh, v.excess_kmh, v.distance_m, v.penalty_s
FROM speed_violations v
WHERE v.stage_id = %s::uuid AND v.entry_id = ANY(%s::uuid[])
"""

ZONE_FIXES = """
SELECT DISTINCT ON (q.i, p.ts) q.i, (extract(epoch FROM p.ts) * 1000000)::int8,
       p.latitude, p.longitude, p.speed
FROM unnest(%s::int[], %s::uuid[], %s::timestamptz[], %s::timestamptz[])
     AS q(i, entry_id, from_ts, to_ts)
JOIN entry_devices ed ON ed.entry_id = q.entry_id
JOIN devices d ON d.id = ed.device_id
JOIN positions p ON p.device_id = d.imei
WHERE NOT p.faulty AND p.ts >= q.from_ts AND (q.to_ts IS NULL OR p.ts <= q.to_ts)
ORDER BY q.i, p.ts, p.device_id
"""

UPSERT = """
INSERT INTO speed_violations AS v (id, stage_id, entry_id, zone_id, started_at, ended_at,
                                   max_speed_kmh, excess_kmh, distance_m, penalty_s)
SELECT gen_random_uuid(), %s::uuid, * FROM unnest(%s::uuid[], %s::uuid[], %s::timestamptz[],
                     %s::timestamptz[], %s::float8[], %s::float8[], %s::float8[], %s::int4[])
ON CONFLICT (stage_id, entry_id, zone_id, started_at) DO UPDATE SET
    ended_at = EXCLUDED.ended_at, max_speed_kmh = EXCLUDED.max_speed_kmh,
    excess_kmh = EXCLUDED.excess_kmh, distance_m = EXCLUDED.distance_m,
    penalty_s = EXCLUDED.penalty_s, updated_at = now()
WHERE (v.ended_at, v.max_speed_kmh, v.excess_kmh, v.distance_m, v.penalty_s)
      IS DISTINCT FROM (EXCLUDED.ended_at, EXCLUDED.max_speed_kmh, EXCLUDED.excess_kmh,
                        EXCLUDED.distance_m, EXCLUDED.penalty_s)
"""

DELETE = """
DELETE FROM speed_violations v
USING unnest(%s::uuid[], %s::uuid[], %s::timestamptz[]) AS q(entry_id, zone_id, started_at)
WHERE v.stage_id = %s::uuid AND v.entry_id = q.entry_id AND v.zone_id = q.zone_id
  AND v.started_at = q.started_at
"""

NUMBERS = "SELECT id::text, number FROM entries WHERE id = ANY(%s::uuid[])"


@attrs.frozen
class Row:
    """A speed_violations row's values (normalised), keyed by (pair, zone, started_at)."""

    ended_at: datetime
    max_speed_kmh: float
    excess_kmh: float
    distance_m: float
    penalty_s: int


ViolationKey = tuple[str, str, datetime]  # entry, zone, started_at


def row_of(found: Violation) -> Row:
    return Row(
        ended_at=to_datetime(found.ended_at),
        max_speed_kmh=round(found.max_speed_kmh, 2),
        excess_kmh=round(found.excess_kmh, 2),
        distance_m=round(found.distance_m, 3),
        penalty_s=found.penalty_s,
    )


def zone_windows(
    definition: StageDef, evaluated: EntryResult
) -> list[tuple[Any, float, float | None]]:
    """(zone, entered, left) of each zone the entry entered: from its pass of the start
    control to its pass of the end control; while the end is not passed, to the finish pass if
    the entry finished (nothing after the finish counts), else to the stage's close (None:
    open-ended, up to the newest fix)."""
    passed = {p.control_id: p.passed_at for p in evaluated.passes}
    windows: list[tuple[Any, float, float | None]] = []
    for zone in definition.zones:
        entered = passed.get(zone.start_control_id)
        if entered is None:
            continue
        left = passed.get(zone.end_control_id)
        if left is None:
            left = evaluated.finished_at
        if left is None:
            left = definition.stage.closes_at
        windows.append((zone, entered, left))
    return windows


def judge_zones(
    conn: psycopg.Connection[Any],
    definition: StageDef,
    evaluations: Mapping[str, EntryResult],
    feed: list[RaceChange],
) -> dict[str, int]:
    """Write the entries' violations on the stage; their zone penalties (ms) by entry."""
    stage_id = definition.stage.id
    entries = sorted(evaluations)
    stored: dict[ViolationKey, Row] = {}
    for entry_id, zone_id, started, *values in conn.execute(STORED, (stage_id, entries)):
        stored[(entry_id, zone_id, started)] = Row(*values)
    windows = [
        (entry_id, zone, entered, left)
        for entry_id in entries
        for zone, entered, left in zone_windows(definition, evaluations[entry_id])
    ]
    tracks: list[list[Fix]] = [[] for _ in windows]
    if windows:
        rows = conn.cursor(binary=True).execute(
            ZONE_FIXES,
            (
                list(range(len(windows))),
                [w[0] for w in windows],
                [to_datetime(w[2]) for w in windows],
                [None if w[3] is None else to_datetime(w[3]) for w in windows],
            ),
        )
        for index, us, latitude, longitude, speed in rows:
            tracks[index].append(Fix(us / 1_000_000, latitude, longitude, speed))
    new: dict[ViolationKey, Row] = {}
    penalty_ms: dict[str, int] = {}
    for (entry_id, zone, entered, left), track in zip(windows, tracks, strict=True):
        for found in violations(zone, track, entered, math.inf if left is None else left):
            new[(entry_id, zone.id, to_datetime(found.started_at))] = row_of(found)
            penalty_ms[entry_id] = penalty_ms.get(entry_id, 0) + found.penalty_s * 1000
    upserts = [(k, r) for k, r in new.items() if stored.get(k) != r]
    deletes = [k for k in stored if k not in new]
    if upserts:
        conn.execute(
            UPSERT,
            (
                stage_id,
                [k[0] for k, _ in upserts],
                [k[1] for k, _ in upserts],
                [k[2] for k, _ in upserts],
                [r.ended_at for _, r in upserts],
                [r.max_speed_kmh for _, r in upserts],
                [r.excess_kmh for _, r in upserts],
                [r.distance_m for _, r in upserts],
                [r.penalty_s for _, r in upserts],
            ),
        )
        numbers = dict(conn.execute(NUMBERS, (sorted({k[0] for k, _ in upserts}),)).fetchall())
        if definition.event_id is not None:
            feed.extend(
                violation_change(definition.event_id, violation_object(stage_id, key, row, numbers))
                for key, row in upserts
            )
    if deletes:
        conn.execute(
            DELETE,
            ([k[0] for k in deletes], [k[1] for k in deletes], [k[2] for k in deletes], stage_id),
        )
    return penalty_ms


def violation_object(
    stage_id: str, key: ViolationKey, row: Row, numbers: Mapping[str, str | None]
) -> dict[str, Any]:
    entry_id, zone_id, started = key
    return {
        "stage_id": stage_id,
        "entry_id": entry_id,
        "number": numbers.get(entry_id),
        "zone_id": zone_id,
        "started_at": timestamp(started),
        "ended_at": timestamp(row.ended_at),
        "max_speed_kmh": row.max_speed_kmh,
        "excess_kmh": row.excess_kmh,
        "distance_m": row.distance_m,
        "penalty_s": row.penalty_s,
    }
