"""Safety alerts: a car stopped on a running stage (`stopped`), a device gone silent (`no_signal`).

Invariants: at most one open alert per (entry, kind), held by the database (partial unique index,
`INSERT ... ON CONFLICT DO NOTHING RETURNING`), so restarts and other instances never duplicate
one, and only the instance that got the row back announces it on the race feed; `stopped` is
judged on fix times, so arrival order does not matter; late buffered fixes never end a
`no_signal`. The rules: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
import psycopg
from psycopg.types.json import Jsonb

from processor.codecs import io_map
from processor.codecs.race_feed import RaceChange, alert_change, timestamp
from processor.domain.definitions import Definitions
from processor.domain.health import Problem
from processor.domain.rules.instants import to_datetime_or_none
from processor.domain.rules.stops import NO_SIGNAL, STOPPED, AlertRules, StopWindow, stopped_since
from processor.domain.timing_store import Pair, lock, pair_lock
from processor.store import db_errors
from processor.store.standings import alert_object

ALERT_COLUMNS = """a.id::text, a.event_id::text, a.stage_id::text, a.entry_id::text,
       (SELECT en.number FROM entries en WHERE en.id = a.entry_id), a.kind, a.raised_at,
       a.cleared_at, a.latitude, a.longitude, a.details"""

ENTRY_FIXES = """
SELECT p.ts, p.latitude, p.longitude, p.speed, p.attributes
FROM entry_devices ed JOIN devices d ON d.id = ed.device_id
JOIN positions p ON p.device_id = d.imei
WHERE ed.entry_id = %(entry)s::uuid AND NOT p.faulty AND p.speed IS NOT NULL
  AND (%(opens)s::timestamptz IS NULL OR p.ts >= %(opens)s::timestamptz)
  AND (%(closes)s::timestamptz IS NULL OR p.ts < %(closes)s::timestamptz)
"""

STOP_WINDOW = f"""
WITH f AS ({ENTRY_FIXES}),
moving AS (SELECT max(ts) AS t FROM f WHERE speed > %(kmh)s)
SELECT moving.t, s.first_ts, s.last_ts, s.lat, s.lon
FROM moving LEFT JOIN LATERAL (
    SELECT min(f.ts) AS first_ts, max(f.ts) AS last_ts,
           (array_agg(f.latitude ORDER BY f.ts DESC))[1] AS lat,
           (array_agg(f.longitude ORDER BY f.ts DESC))[1] AS lon
    FROM f WHERE f.speed <= %(kmh)s AND (moving.t IS NULL OR f.ts > moving.t)
) s ON true
"""

STATUS = """
SELECT status, finished_at FROM stage_results WHERE stage_id = %s::uuid AND entry_id = %s::uuid
"""

RAISE = f"""
WITH a AS (
    INSERT INTO alerts (id, event_id, stage_id, entry_id, kind, raised_at, latitude, longitude,
                        details)
    VALUES (gen_random_uuid(), %(event)s::uuid, %(stage)s::uuid, %(entry)s::uuid, %(kind)s,
            %(raised)s, %(lat)s, %(lon)s, %(details)s)
    ON CONFLICT (entry_id, kind) WHERE cleared_at IS NULL DO NOTHING
    RETURNING *
)
SELECT {ALERT_COLUMNS} FROM a
"""

CLEAR_STOPPED = f"""
WITH a AS (
    UPDATE alerts SET cleared_at = greatest(raised_at, coalesce(
        (SELECT min(p.ts) FROM entry_devices ed JOIN devices d ON d.id = ed.device_id
         JOIN positions p ON p.device_id = d.imei
         WHERE ed.entry_id = alerts.entry_id AND NOT p.faulty AND p.speed > %(kmh)s
           AND p.ts > (alerts.details->>'since')::timestamptz),
        %(fallback)s::timestamptz, now()))
    WHERE entry_id = %(entry)s::uuid AND stage_id = %(stage)s::uuid AND kind = 'stopped'
      AND cleared_at IS NULL
    RETURNING *
)
SELECT {ALERT_COLUMNS} FROM a
"""


IGNITION = """
SELECT d.model, m.io_id, m.name, m.multiplier, m.unit, p.attributes
FROM entry_devices ed JOIN devices d ON d.id = ed.device_id
JOIN positions p ON p.device_id = d.imei AND p.ts = %(ts)s
JOIN io_mappings m ON m.model = d.model AND m.name = 'ignition'
WHERE ed.entry_id = %(entry)s::uuid
ORDER BY d.imei
LIMIT 1
"""


def ignition_at(conn: psycopg.Connection[Any], entry_id: str, ts: datetime) -> Any:
    """The entry's ignition at its fix `ts` through its device model's IO mapping (None when
    the model maps no `ignition`): a stopped car with the ignition off is a different call for
    race control than one idling at the roadside."""
    row = conn.execute(IGNITION, {"entry": entry_id, "ts": ts}).fetchone()
    if row is None:
        return None
    model, io_id, name, multiplier, unit, attributes = row
    mapping = io_map.build([(model, io_id, name, multiplier, unit)]).get(str(model), {})
    return io_map.value_of(attributes or {}, mapping, "ignition")


@attrs.define
class Judgement:
    """What alert judgements announce, and the problem of a feature that failed (`alerts`,
    or `io` for the ignition lookup) with the error the database gave."""

    feed: list[RaceChange] = attrs.field(factory=list)
    failed: dict[str, Problem] = attrs.field(factory=dict)
    io_used: bool = False  # an ignition was looked up (so the io feature works)


def feature_problem(feature: str, exc: Exception) -> Problem | None:
    """A feature's problem for a database refusal; None for a lost connection (retry)."""
    kind = db_errors.classify(exc)
    if kind is db_errors.Kind.TRANSIENT:
        return None
    sqlstate = getattr(exc, "sqlstate", None) or ""
    reason = (
        "data" if kind is db_errors.Kind.DATA else "schema" if sqlstate[:2] == "42" else "database"
    )
    return Problem(
        subject=f"feature {feature}",
        reason=reason,
        detail=db_errors.describe_cause(exc),
        fix="see docs/racing-domain.md for the table this feature needs",
    )


def judge_stops(
    conn: psycopg.Connection[Any],
    definitions: Definitions,
    pairs: Iterable[Pair],
    rules: AlertRules,
    *,
    io: bool = False,
) -> Judgement:
    """Raise or clear the `stopped` alert of each pair (one transaction each). A database
    refusal ends the judgement and is reported as the `alerts` feature's problem; a failing
    ignition lookup (`io`) is the `io` feature's, and the alert is raised without it."""
    judgement = Judgement()
    for stage_id, entry_id in sorted(set(pairs)):
        definition = definitions.stages.get(stage_id)
        if definition is None or definition.event_id is None:
            continue
        try:
            rows = _judge_stop(
                conn,
                definition=definition,
                entry_id=entry_id,
                rules=rules,
                io=io,
                judgement=judgement,
            )
        except db_errors.DATABASE_ERRORS as exc:
            problem = feature_problem("alerts", exc)
            if problem is None:
                raise
            judgement.failed["alerts"] = problem
            return judgement
        judgement.feed.extend(_announce(rows))
    return judgement


def _judge_stop(
    conn: psycopg.Connection[Any],
    *,
    definition: Any,
    entry_id: str,
    rules: AlertRules,
    io: bool,
    judgement: Judgement,
) -> list[Any]:
    stage = definition.stage
    stage_id = stage.id
    with conn.transaction():
        lock(conn, [pair_lock(stage_id, entry_id)])
        status = conn.execute(STATUS, (stage_id, entry_id)).fetchone()
        since: datetime | None = None
        row: Any = None
        if status is not None and status[0] == "running":
            row = conn.execute(
                STOP_WINDOW,
                {
                    "entry": entry_id,
                    "opens": to_datetime_or_none(stage.opens_at),
                    "closes": to_datetime_or_none(stage.closes_at),
                    "kmh": rules.stopped_kmh,
                },
            ).fetchone()
            if row is not None:
                since = stopped_since(StopWindow(row[0], row[1], row[2]), rules)
        if since is None:
            fallback = status[1] if status is not None else None
            return conn.execute(
                CLEAR_STOPPED,
                {"entry": entry_id, "stage": stage_id, "kmh": rules.stopped_kmh,
                 "fallback": fallback},
            ).fetchall()  # fmt: skip
        details: dict[str, Any] = {"since": timestamp(since), "last_fix_at": timestamp(row[2])}
        if io and "io" not in judgement.failed:
            try:
                with conn.transaction():  # a savepoint: a broken mapping costs the ignition only
                    ignition = ignition_at(conn, entry_id, row[2])
                judgement.io_used = True
            except db_errors.DATABASE_ERRORS as exc:
                problem = feature_problem("io", exc)
                if problem is None:
                    raise
                judgement.failed["io"] = problem
                ignition = None
            if ignition is not None:
                details["ignition"] = ignition
        return conn.execute(
            RAISE,
            {
                "event": definition.event_id,
                "stage": stage_id,
                "entry": entry_id,
                "kind": STOPPED,
                "raised": since + timedelta(seconds=rules.stopped_s),
                "lat": row[3],
                "lon": row[4],
                "details": Jsonb(details),
            },
        ).fetchall()


RAISE_SILENT = f"""
WITH running AS (
    SELECT sr.stage_id, sr.entry_id, s.event_id
    FROM stage_results sr JOIN stages s ON s.id = sr.stage_id
    WHERE sr.status = 'running' AND (s.closes_at IS NULL OR s.closes_at > now())
), latest AS (
    SELECT r.stage_id, r.entry_id, r.event_id, l.ts, l.latitude, l.longitude
    FROM running r CROSS JOIN LATERAL (
        SELECT p.ts, p.latitude, p.longitude
        FROM entry_devices ed JOIN devices d ON d.id = ed.device_id
        JOIN positions p ON p.device_id = d.imei
        WHERE ed.entry_id = r.entry_id AND NOT p.faulty
        ORDER BY p.ts DESC LIMIT 1
    ) l
    WHERE l.ts < now() - make_interval(secs => %(silent_s)s)
), a AS (
    INSERT INTO alerts (id, event_id, stage_id, entry_id, kind, raised_at, latitude, longitude,
                        details)
    SELECT gen_random_uuid(), event_id, stage_id, entry_id, 'no_signal', now(), latitude, longitude,
           jsonb_build_object('last_fix_at',
                              to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    FROM latest
    ON CONFLICT (entry_id, kind) WHERE cleared_at IS NULL DO NOTHING
    RETURNING *
)
SELECT {ALERT_COLUMNS} FROM a
"""

CLEAR_SILENT = f"""
WITH a AS (
    UPDATE alerts SET cleared_at = now()
    WHERE kind = 'no_signal' AND cleared_at IS NULL AND (
        EXISTS (SELECT 1 FROM entry_devices ed JOIN devices d ON d.id = ed.device_id
                JOIN positions p ON p.device_id = d.imei
                WHERE ed.entry_id = alerts.entry_id AND NOT p.faulty
                  AND p.ts >= now() - make_interval(secs => %(silent_s)s))
        OR NOT EXISTS (SELECT 1 FROM stage_results sr JOIN stages s ON s.id = sr.stage_id
                       WHERE sr.stage_id = alerts.stage_id AND sr.entry_id = alerts.entry_id
                         AND sr.status = 'running'
                         AND (s.closes_at IS NULL OR s.closes_at > now())))
    RETURNING *
)
SELECT {ALERT_COLUMNS} FROM a
"""


def judge_silence(conn: psycopg.Connection[Any], rules: AlertRules) -> list[RaceChange]:
    """Clear the `no_signal` alerts whose condition ended, raise the new ones (one
    transaction); the changes to announce."""
    with conn.transaction():
        cleared = conn.execute(CLEAR_SILENT, {"silent_s": rules.no_signal_s}).fetchall()
        raised = conn.execute(RAISE_SILENT, {"silent_s": rules.no_signal_s}).fetchall()
    return _announce([*cleared, *raised])


def _announce(rows: Sequence[Any]) -> list[RaceChange]:
    feed = []
    for row in rows:
        alert = alert_object(row)
        if alert["event_id"] is not None:
            feed.append(alert_change(alert["event_id"], alert))
    return feed


OPEN_COUNTS = "SELECT kind, count(*) FROM alerts WHERE cleared_at IS NULL GROUP BY kind"


def open_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts = {STOPPED: 0, NO_SIGNAL: 0}
    counts.update({kind: int(n) for kind, n in conn.execute(OPEN_COUNTS)})
    return counts
