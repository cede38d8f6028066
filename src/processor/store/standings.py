"""Race-control reads shared by the live server and the domain: standings and open alerts.

Worker-thread functions on one connection. The racing tables are Directus-owned and may not
exist (the racing domain is optional): every read first checks with `to_regclass` and answers
empty when its table is absent, so a live server without racing tables still answers
`subscribed` (with empty `results` and `alerts`).

Standings order (docs/websocket.md): finished entries by position (then number), then running
entries by controls passed (most first), then number. Numbers sort as numbers when they are
("9" before "10"), else as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from processor.codecs.race_feed import timestamp

RESULTS = """
SELECT sr.stage_id::text, sr.entry_id::text, en.number, en.class, sr.status, sr.started_at,
       sr.finished_at, sr.elapsed_ms, sr.penalty_ms, sr.total_ms, sr.controls_passed,
       sr.controls_missed, sr.position, sr.class_position, sr.gap_ms
FROM stage_results sr LEFT JOIN entries en ON en.id = sr.entry_id
WHERE sr.stage_id = ANY(%s::uuid[])
ORDER BY sr.stage_id,
         (sr.status <> 'finished'), sr.position NULLS LAST,
         sr.controls_passed DESC NULLS LAST,
         CASE WHEN en.number ~ '^[0-9]{1,9}$' THEN en.number::int END NULLS LAST,
         en.number, sr.entry_id
"""

EVENT_STAGES = "SELECT id::text FROM stages WHERE event_id = %s::uuid ORDER BY ordinal, id"

OPEN_ALERTS = """
SELECT a.id::text, a.event_id::text, a.stage_id::text, a.entry_id::text, en.number, a.kind,
       a.raised_at, a.cleared_at, a.latitude, a.longitude, a.details
FROM alerts a LEFT JOIN entries en ON en.id = a.entry_id
WHERE a.event_id = %s::uuid AND a.cleared_at IS NULL
ORDER BY a.raised_at, a.id
"""


def tables_exist(conn: psycopg.Connection[Any], *tables: str) -> bool:
    row = conn.execute(
        "SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest(%s::text[]) t", (list(tables),)
    ).fetchone()
    return bool(row and row[0])


def stage_results(
    conn: psycopg.Connection[Any], stage_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """stage -> its `<result>` objects in standings order (every asked stage present)."""
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in stage_ids}
    if not stage_ids or not tables_exist(conn, "stage_results", "entries"):
        return out
    for row in conn.execute(RESULTS, (list(stage_ids),)):
        stage_id, entry_id, number, klass, status, started, finished, *rest = row
        elapsed, penalty, total, passed, missed, position, class_position, gap = rest
        out.setdefault(stage_id, []).append(
            {
                "entry_id": entry_id,
                "number": number,
                "class": klass,
                "status": status,
                "started_at": timestamp(started),
                "finished_at": timestamp(finished),
                "elapsed_ms": elapsed,
                "penalty_ms": penalty,
                "total_ms": total,
                "controls_passed": passed,
                "controls_missed": missed,
                "position": position,
                "class_position": class_position,
                "gap_ms": gap,
            }
        )
    return out


def event_results(conn: psycopg.Connection[Any], event_id: str) -> list[dict[str, Any]]:
    """`[{"stage_id", "results"}]` for every stage of the event (stage order)."""
    if not tables_exist(conn, "stages", "stage_results", "entries"):
        return []
    stages = [s for (s,) in conn.execute(EVENT_STAGES, (event_id,))]
    tables = stage_results(conn, stages)
    return [{"stage_id": s, "results": tables[s]} for s in stages]


def alert_object(row: Sequence[Any]) -> dict[str, Any]:
    """An `<alert>` from a row in OPEN_ALERTS' column order."""
    alert_id, event_id, stage_id, entry_id, number, kind, raised, cleared, lat, lon, details = row
    return {
        "id": alert_id,
        "event_id": event_id,
        "stage_id": stage_id,
        "entry_id": entry_id,
        "number": number,
        "kind": kind,
        "raised_at": timestamp(raised),
        "cleared_at": timestamp(cleared),
        "latitude": lat,
        "longitude": lon,
        "details": details or {},
    }


def open_alerts(conn: psycopg.Connection[Any], event_id: str) -> list[dict[str, Any]]:
    if not tables_exist(conn, "alerts", "entries"):
        return []
    return [alert_object(row) for row in conn.execute(OPEN_ALERTS, (event_id,))]
