"""The SQL of stage evaluation: locks, stage versions, timing records, stage results, fixes.

Worker-thread functions on one connection; the caller holds the transaction (`evaluation`).
Rows travel as `Record` and `Result`, their values normalised (times on the stored microsecond,
speeds to 0.01 km/h, distances to 1 mm) so that comparing a computed row with a stored one says
whether anything really changed.

Every id the processor inserts it supplies itself (`gen_random_uuid()` in the statement): the
tables belong to Directus, whose generated UUIDs are not database defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs
import psycopg

from processor.domain.rules.model import Fix, Pass

F = TypeVar("F")
Pair = tuple[str, str]  # (stage_id, entry_id)

# Keys are hashed in the server together with the schema: advisory locks are per database, and
# two schemas of one database (tests, benchmarks, staging next to production) may hold the same
# ids. Taken in the order given (a FunctionScan keeps array order).
LOCK = """
SELECT count(pg_advisory_xact_lock(hashtextextended(current_schema() || ':' || k, 0)))
FROM unnest(%s::text[]) AS k
"""

STAGE_VERSION = "SELECT fingerprint, version FROM domain_stages WHERE stage_id = %s"
STAGE_VERSIONS = "SELECT stage_id, fingerprint, version FROM domain_stages"
HAS_VERSIONS = "SELECT to_regclass('domain_stages') IS NOT NULL"
STORE_STAGE_VERSION = """
INSERT INTO domain_stages AS s (stage_id, fingerprint) VALUES (%s, %s)
ON CONFLICT (stage_id) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, version = s.version + 1, rebuilt_at = now()
"""
FORGET_STAGE_VERSION = "DELETE FROM domain_stages WHERE stage_id = %s"
FORGET_GONE_STAGES = "DELETE FROM domain_stages WHERE NOT (stage_id = ANY(%s::text[]))"

STORED_RECORDS = """
SELECT tr.entry_id::text, tr.control_id::text, tr.device_id, tr.passed_at,
       tr.speed_kmh, tr.distance_m, tr.fix_before, tr.fix_after
FROM timing_records tr
WHERE tr.stage_id = %s::uuid AND tr.entry_id = ANY(%s::uuid[])
"""

STORED_RESULTS = """
SELECT sr.entry_id::text, sr.status, sr.started_at, sr.finished_at,
       sr.elapsed_ms, sr.penalty_ms, sr.total_ms, sr.controls_passed, sr.controls_missed
FROM stage_results sr
WHERE sr.stage_id = %s::uuid AND sr.entry_id = ANY(%s::uuid[])
"""

STORED_STAGE_ENTRIES = """
SELECT entry_id::text FROM stage_results WHERE stage_id = %(stage)s::uuid
UNION
SELECT entry_id::text FROM timing_records WHERE stage_id = %(stage)s::uuid
"""

# One query for every entry of an evaluation. Two devices of one entry reporting the same
# instant are one fix (the lowest device id wins, deterministically).
# An entry that had no pass at all before (nothing stored: not started) and gets new fixes from
# `before_ts` on needs the track only from the last fix before `before_ts` (per device: a
# longer suffix is as good): every earlier segment was evaluated already and crossed no start
# line forward (else a pass would be stored). Without this, a car waiting at the start would
# re-read its whole wait every batch. Bounds are plain ranges on (device_id, ts), so every
# read is a range scan of the positions key.
FIXES = """
WITH q AS (
    SELECT * FROM unnest(%s::int[], %s::uuid[], %s::timestamptz[], %s::timestamptz[])
        AS q(i, entry_id, from_ts, before_ts)
), dev AS (
    SELECT q.i, d.imei, q.before_ts,
           coalesce(greatest(q.from_ts, %s::timestamptz), '-infinity'::timestamptz) AS lo,
           coalesce(%s::timestamptz, 'infinity'::timestamptz) AS hi
    FROM q
    JOIN entry_devices ed ON ed.entry_id = q.entry_id
    JOIN devices d ON d.id = ed.device_id
    WHERE d.imei IS NOT NULL
), floors AS (
    SELECT dev.i, dev.imei, coalesce(last.ts, dev.lo) AS lo, dev.hi
    FROM dev
    LEFT JOIN LATERAL (
        SELECT p0.ts FROM positions p0
        WHERE dev.before_ts IS NOT NULL AND p0.device_id = dev.imei AND NOT p0.faulty
          AND p0.ts < dev.before_ts AND p0.ts >= dev.lo
        ORDER BY p0.ts DESC LIMIT 1
    ) AS last ON true
)
SELECT DISTINCT ON (f.i, p.ts) f.i, (extract(epoch FROM p.ts) * 1000000)::int8,
       p.latitude, p.longitude, p.speed, p.device_id
FROM floors f
JOIN positions p ON p.device_id = f.imei AND p.ts >= f.lo AND p.ts < f.hi
WHERE NOT p.faulty
ORDER BY f.i, p.ts, p.device_id
"""

UPSERT_RECORDS = """
INSERT INTO timing_records AS tr (id, stage_id, entry_id, control_id, device_id, passed_at,
                                  speed_kmh, distance_m, fix_before, fix_after)
SELECT gen_random_uuid(), %s::uuid, * FROM unnest(%s::uuid[], %s::uuid[], %s::text[],
                     %s::timestamptz[], %s::float8[], %s::float8[], %s::timestamptz[],
                     %s::timestamptz[])
ON CONFLICT (stage_id, entry_id, control_id) DO UPDATE SET
    device_id = EXCLUDED.device_id, passed_at = EXCLUDED.passed_at,
    speed_kmh = EXCLUDED.speed_kmh, distance_m = EXCLUDED.distance_m,
    fix_before = EXCLUDED.fix_before, fix_after = EXCLUDED.fix_after, updated_at = now()
WHERE (tr.device_id, tr.passed_at, tr.speed_kmh, tr.distance_m, tr.fix_before, tr.fix_after)
      IS DISTINCT FROM (EXCLUDED.device_id, EXCLUDED.passed_at, EXCLUDED.speed_kmh,
                        EXCLUDED.distance_m, EXCLUDED.fix_before, EXCLUDED.fix_after)
"""

DELETE_RECORDS = """
DELETE FROM timing_records tr
USING unnest(%s::uuid[], %s::uuid[]) AS q(entry_id, control_id)
WHERE tr.stage_id = %s::uuid AND tr.entry_id = q.entry_id AND tr.control_id = q.control_id
"""

UPSERT_RESULTS = """
INSERT INTO stage_results AS sr (id, stage_id, entry_id, status, started_at, finished_at,
                                 elapsed_ms, penalty_ms, total_ms, controls_passed,
                                 controls_missed)
SELECT gen_random_uuid(), %s::uuid, * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[],
                     %s::timestamptz[], %s::int8[], %s::int8[], %s::int8[], %s::int4[],
                     %s::int4[])
ON CONFLICT (stage_id, entry_id) DO UPDATE SET
    status = EXCLUDED.status, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, elapsed_ms = EXCLUDED.elapsed_ms,
    penalty_ms = EXCLUDED.penalty_ms, total_ms = EXCLUDED.total_ms,
    controls_passed = EXCLUDED.controls_passed, controls_missed = EXCLUDED.controls_missed,
    updated_at = now()
WHERE (sr.status, sr.started_at, sr.finished_at, sr.elapsed_ms, sr.penalty_ms, sr.total_ms,
       sr.controls_passed, sr.controls_missed)
      IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.started_at, EXCLUDED.finished_at,
                        EXCLUDED.elapsed_ms, EXCLUDED.penalty_ms, EXCLUDED.total_ms,
                        EXCLUDED.controls_passed, EXCLUDED.controls_missed)
"""

DELETE_RESULTS = """
DELETE FROM stage_results WHERE stage_id = %s::uuid AND entry_id = ANY(%s::uuid[])
"""

STAGE_STANDINGS = """
SELECT sr.entry_id::text, sr.status, sr.started_at, sr.finished_at, sr.elapsed_ms,
       sr.penalty_ms, sr.total_ms, sr.controls_passed, sr.controls_missed, en.class,
       sr.position, sr.class_position, sr.gap_ms
FROM stage_results sr LEFT JOIN entries en ON en.id = sr.entry_id
WHERE sr.stage_id = %s::uuid
"""

UPDATE_RANKING = """
UPDATE stage_results sr SET position = q.position, class_position = q.class_position,
       gap_ms = q.gap_ms, updated_at = now()
FROM unnest(%s::uuid[], %s::int4[], %s::int4[], %s::int8[])
     AS q(entry_id, position, class_position, gap_ms)
WHERE sr.stage_id = %s::uuid AND sr.entry_id = q.entry_id
  AND (sr.position, sr.class_position, sr.gap_ms)
      IS DISTINCT FROM (q.position, q.class_position, q.gap_ms)
"""


def lock_key(*parts: str) -> str:
    """The text of an advisory-lock key (see `lock`)."""
    return ":".join(("processor.domain", *parts))


def pair_lock(stage_id: str, entry_id: str) -> str:
    return lock_key(stage_id, entry_id)


def stage_lock(stage_id: str) -> str:
    return lock_key("stage", stage_id)


def lock(conn: psycopg.Connection[Any], keys: Iterable[str]) -> None:
    """Take transaction-scoped advisory locks on `keys`, sorted: every transaction takes its
    keys in that one global order, so no two wait on each other in a cycle."""
    conn.execute(LOCK, (sorted(keys),))


@attrs.frozen
class StageVersion:
    """What `domain_stages` says a stage's stored rows were last rebuilt from."""

    fingerprint: str
    version: int


def stage_version(conn: psycopg.Connection[Any], stage_id: str) -> StageVersion | None:
    row = conn.execute(STAGE_VERSION, (stage_id,)).fetchone()
    return None if row is None else StageVersion(row[0], int(row[1]))


def stage_versions(conn: psycopg.Connection[Any]) -> dict[str, StageVersion]:
    """Every stage's version ({} before the processor's migrations ran: nothing rebuilt)."""
    if conn.execute(HAS_VERSIONS).fetchone() != (True,):
        return {}
    return {s: StageVersion(f, int(v)) for s, f, v in conn.execute(STAGE_VERSIONS)}


def store_stage_version(conn: psycopg.Connection[Any], stage_id: str, fingerprint: str) -> None:
    conn.execute(STORE_STAGE_VERSION, (stage_id, fingerprint))


def forget_stage_version(conn: psycopg.Connection[Any], stage_id: str) -> None:
    """The stage's stored rows are no longer known to match any definition: evaluations skip
    it until a rebuild succeeds."""
    conn.execute(FORGET_STAGE_VERSION, (stage_id,))


def forget_gone_stages(conn: psycopg.Connection[Any], stage_ids: Sequence[str]) -> None:
    conn.execute(FORGET_GONE_STAGES, (list(stage_ids),))


@attrs.frozen
class Record:
    """One timing_records row's values (normalised), keyed elsewhere by (entry, control)."""

    device_id: str | None
    passed_at: datetime
    speed_kmh: float | None
    distance_m: float | None
    fix_before: datetime | None
    fix_after: datetime | None

    def as_pass(self, control_id: str) -> Pass:
        return Pass(
            control_id=control_id,
            passed_at=self.passed_at.timestamp(),
            speed_kmh=self.speed_kmh,
            distance_m=self.distance_m or 0.0,
            fix_before=(self.fix_before or self.passed_at).timestamp(),
            fix_after=None if self.fix_after is None else self.fix_after.timestamp(),
        )


@attrs.frozen
class Result:
    """One stage_results row's evaluated values (ranking aside)."""

    status: str
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_ms: int | None
    penalty_ms: int
    total_ms: int | None
    controls_passed: int
    controls_missed: int


def stored_records(
    conn: psycopg.Connection[Any], stage_id: str, entry_ids: Sequence[str]
) -> dict[str, dict[str, Record]]:
    """entry -> control -> its stored record, for every entry asked (empty when none)."""
    stored: dict[str, dict[str, Record]] = {e: {} for e in entry_ids}
    for entry_id, control_id, device, *values in conn.execute(
        STORED_RECORDS, (stage_id, list(entry_ids))
    ):
        stored[entry_id][control_id] = Record(device, *values)
    return stored


def stored_results(
    conn: psycopg.Connection[Any], stage_id: str, entry_ids: Sequence[str]
) -> dict[str, Result]:
    return {
        row[0]: Result(*row[1:])
        for row in conn.execute(STORED_RESULTS, (stage_id, list(entry_ids)))
    }


def stored_stage_entries(conn: psycopg.Connection[Any], stage_id: str) -> list[str]:
    """Entries with rows on the stage (including entries no longer linked to its event)."""
    return [e for (e,) in conn.execute(STORED_STAGE_ENTRIES, {"stage": stage_id})]


@attrs.frozen
class FixRequest:
    """Which fixes of one entry an evaluation needs: from `from_ts` on (None: the window's
    start), or for an entry with nothing stored, from its last fix before `before_ts`."""

    entry_id: str
    from_ts: datetime | None
    before_ts: datetime | None


def load_fixes(
    conn: psycopg.Connection[Any],
    requests: Sequence[FixRequest],
    opens_at: datetime | None,
    closes_at: datetime | None,
    make_fix: Callable[[float, float, float, float | None], F],
) -> tuple[list[list[F]], list[dict[float, str]]]:
    """Per request (in order): its fixes inside [opens_at, closes_at) in time order, and which
    device sent each one (fix time -> IMEI). One query for all of them; binary rows and integer
    microseconds (t = us / 1e6 is exactly what `datetime.timestamp()` gives for the instant)."""
    fixes: list[list[F]] = [[] for _ in requests]
    devices: list[dict[float, str]] = [{} for _ in requests]
    if not requests:
        return fixes, devices
    rows = (
        conn.cursor(binary=True)
        .execute(
            FIXES,
            (
                list(range(len(requests))),
                [r.entry_id for r in requests],
                [r.from_ts for r in requests],
                [r.before_ts for r in requests],
                opens_at,
                closes_at,
            ),
        )
        .fetchall()
    )
    for index, us, latitude, longitude, speed, device_id in rows:
        t = us / 1_000_000
        fixes[index].append(make_fix(t, latitude, longitude, speed))
        devices[index][t] = device_id
    return fixes, devices


def fix_of(t: float, latitude: float, longitude: float, speed: float | None) -> Fix:
    return Fix(t=t, latitude=latitude, longitude=longitude, speed_kmh=speed)


def write_records(
    conn: psycopg.Connection[Any],
    stage_id: str,
    upserts: Sequence[tuple[str, str, Record]],
    deletes: Sequence[tuple[str, str]],
) -> None:
    """Upsert `(entry, control, record)` rows and delete `(entry, control)` rows of a stage."""
    if upserts:
        conn.execute(
            UPSERT_RECORDS,
            (
                stage_id,
                [e for e, _, _ in upserts],
                [c for _, c, _ in upserts],
                [r.device_id for _, _, r in upserts],
                [r.passed_at for _, _, r in upserts],
                [r.speed_kmh for _, _, r in upserts],
                [r.distance_m for _, _, r in upserts],
                [r.fix_before for _, _, r in upserts],
                [r.fix_after for _, _, r in upserts],
            ),
        )
    if deletes:
        conn.execute(DELETE_RECORDS, ([e for e, _ in deletes], [c for _, c in deletes], stage_id))


def write_results(
    conn: psycopg.Connection[Any],
    stage_id: str,
    upserts: Sequence[tuple[str, Result]],
    deletes: Sequence[str],
) -> None:
    if upserts:
        conn.execute(
            UPSERT_RESULTS,
            (
                stage_id,
                [e for e, _ in upserts],
                [r.status for _, r in upserts],
                [r.started_at for _, r in upserts],
                [r.finished_at for _, r in upserts],
                [r.elapsed_ms for _, r in upserts],
                [r.penalty_ms for _, r in upserts],
                [r.total_ms for _, r in upserts],
                [r.controls_passed for _, r in upserts],
                [r.controls_missed for _, r in upserts],
            ),
        )
    if deletes:
        conn.execute(DELETE_RESULTS, (stage_id, list(deletes)))


@attrs.frozen
class Standing:
    """A stored result with its entry's class and its stored ranking."""

    result: Result
    klass: str | None
    ranking: tuple[int | None, int | None, int | None]  # position, class_position, gap_ms


def standings(conn: psycopg.Connection[Any], stage_id: str) -> dict[str, Standing]:
    found: dict[str, Standing] = {}
    for entry_id, *values, klass, position, class_position, gap in conn.execute(
        STAGE_STANDINGS, (stage_id,)
    ):
        found[entry_id] = Standing(Result(*values), klass, (position, class_position, gap))
    return found


def write_ranking(
    conn: psycopg.Connection[Any],
    stage_id: str,
    changed: Mapping[str, tuple[int | None, int | None, int | None]],
) -> None:
    if not changed:
        return
    entries = sorted(changed)
    conn.execute(
        UPDATE_RANKING,
        (
            entries,
            [changed[e][0] for e in entries],
            [changed[e][1] for e in entries],
            [changed[e][2] for e in entries],
            stage_id,
        ),
    )
