"""Evaluate (stage, entry) pairs from the stored fixes and write what changed, in one transaction.

This is the engine's whole database side; the stream side only decides *which* pairs to
evaluate and from *when*. Everything here runs in a worker thread on one connection.

Concurrency (several instances, or two batches of one): each pair is serialised with a
transaction-scoped advisory lock taken before anything is read, and everything — stored passes,
fixes, results — is read *inside* the lock, from committed data. So whichever evaluation of a
pair runs last sees every fix whose own evaluation has started, and writes the from-scratch
answer for it. Locks are taken in one global order (pair keys sorted, then stage keys sorted,
pairs always before stages), so two transactions never wait on each other in a cycle.

Resuming: a pair triggered by new fixes whose earliest time is `t0` keeps the stored passes that
are *settled* for `t0` — in course order, the prefix of passes whose `fix_after` is known and
earlier than `t0` (`Pass` docstring) — and loads fixes only from the last kept pass's
`fix_before` on. A pair with `t0 = None` is evaluated from scratch (rebuild, changed controls).
All pairs of a batch load their fixes with one query.

Idempotence: rows are compared with what is stored and only differing rows are written; the
upserts also carry `IS DISTINCT FROM` guards, so `updated_at` moves only when a value changed.
Values are normalised before comparing: times to the microsecond the database stores, speeds to
0.01 km/h and distances to 1 mm (finer digits are floating-point noise, not evidence); the core
computes `elapsed_ms` from the microsecond-rounded times, so an incremental evaluation (whose
kept passes come back from the database) and a from-scratch one agree to the last digit.

Ownership: the processor owns the rows of `timing_records` and `stage_results` it derives. A
record that an evaluation no longer produces (the pass moved to another control or vanished) is
deleted, and an entry without a start pass has no `stage_results` row. Hand edits to these rows
are overwritten at the next evaluation of the pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import psycopg

from processor.domain.definitions import Course
from processor.domain.model import (
    ControlKind,
    EntryResult,
    Fix,
    Pass,
    Ranking,
    Stage,
    Status,
)
from processor.domain.ranking import rank
from processor.domain.timing import evaluate_entry, settled_prefix
from processor.domain.zone_store import judge_zones
from processor.race_feed import (
    RaceChange,
    record_object,
    removed_change,
    results_change,
    timing_change,
)

Pair = tuple[str, str]  # (stage_id, entry_id)
Evaluate = Callable[..., EntryResult]
Rank = Callable[..., Mapping[str, Ranking]]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Keys are hashed in the server together with the schema: advisory locks are per database, and
# two schemas of one database (tests, benchmarks, staging next to production) may hold the same
# ids. Taken in the order given (a FunctionScan keeps array order).
LOCK = """
SELECT count(pg_advisory_xact_lock(hashtextextended(current_schema() || ':' || k, 0)))
FROM unnest(%s::text[]) AS k
"""

STORED_RECORDS = """
SELECT tr.stage_id::text, tr.entry_id::text, tr.control_id::text, tr.device_id, tr.passed_at,
       tr.speed_kmh, tr.distance_m, tr.fix_before, tr.fix_after
FROM unnest(%s::uuid[], %s::uuid[]) AS q(stage_id, entry_id)
JOIN timing_records tr ON tr.stage_id = q.stage_id AND tr.entry_id = q.entry_id
"""

STORED_RESULTS = """
SELECT sr.stage_id::text, sr.entry_id::text, sr.status, sr.started_at, sr.finished_at,
       sr.elapsed_ms, sr.penalty_ms, sr.total_ms, sr.controls_passed, sr.controls_missed
FROM unnest(%s::uuid[], %s::uuid[]) AS q(stage_id, entry_id)
JOIN stage_results sr ON sr.stage_id = q.stage_id AND sr.entry_id = q.entry_id
"""

# One query for every pair of a batch. Two devices of one entry reporting the same instant
# are one fix (the lowest device id wins, deterministically).
# A pair that had no pass at all before (nothing stored: not started) and gets new fixes from
# `before_ts` on needs the track only from the last fix before `before_ts` (per device: a
# longer suffix is as good): every earlier segment was evaluated already and crossed no start
# line forward (else a pass would be stored). Without this, a car waiting at the start would
# re-read its whole wait every batch. Bounds are plain ranges on (device_id, ts), so every
# read is a range scan of the positions key.
FIXES = """
WITH q AS (
    SELECT * FROM unnest(%s::int[], %s::uuid[], %s::timestamptz[], %s::timestamptz[],
                         %s::timestamptz[], %s::timestamptz[])
        AS q(i, entry_id, from_ts, opens_at, closes_at, before_ts)
), dev AS (
    SELECT q.i, d.imei, q.before_ts,
           coalesce(greatest(q.from_ts, q.opens_at), '-infinity'::timestamptz) AS lo,
           coalesce(q.closes_at, 'infinity'::timestamptz) AS hi
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
SELECT gen_random_uuid(), * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::text[], %s::timestamptz[],
                     %s::float8[], %s::float8[], %s::timestamptz[], %s::timestamptz[])
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
USING unnest(%s::uuid[], %s::uuid[], %s::uuid[]) AS q(stage_id, entry_id, control_id)
WHERE tr.stage_id = q.stage_id AND tr.entry_id = q.entry_id AND tr.control_id = q.control_id
"""

UPSERT_RESULTS = """
INSERT INTO stage_results AS sr (id, stage_id, entry_id, status, started_at, finished_at,
                                 elapsed_ms, penalty_ms, total_ms, controls_passed,
                                 controls_missed)
SELECT gen_random_uuid(), * FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::timestamptz[], %s::timestamptz[],
                     %s::int8[], %s::int8[], %s::int8[], %s::int4[], %s::int4[])
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
DELETE FROM stage_results sr
USING unnest(%s::uuid[], %s::uuid[]) AS q(stage_id, entry_id)
WHERE sr.stage_id = q.stage_id AND sr.entry_id = q.entry_id
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
    """The text of an advisory-lock key; every transaction takes its keys sorted by it (pair
    keys before stage keys), so no two wait on each other in a cycle."""
    return ":".join(("processor.domain", *parts))


def to_datetime(t: float) -> datetime:
    """Seconds since the epoch -> the microsecond the database stores (halves up, as the
    core rounds before computing `elapsed_ms`)."""
    return EPOCH + timedelta(microseconds=math.floor(t * 1_000_000.0 + 0.5))


def micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _round(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


@attrs.frozen
class Record:
    """One timing_records row's values (normalised), keyed elsewhere by (pair, control)."""

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


@attrs.frozen
class Change:
    """A timing record that appeared, moved or vanished (what `timing rebuild` prints)."""

    stage_id: str
    entry_id: str
    control_id: str
    old: datetime | None
    new: datetime | None


@attrs.define
class Outcome:
    pairs: int = 0
    fixes: int = 0
    late: int = 0  # pairs that had to recompute an already stored pass (a late fix)
    changes: list[Change] = attrs.field(factory=list)
    passes_by_kind: dict[str, int] = attrs.field(factory=dict)
    results_changed: int = 0
    stages_ranked: int = 0
    # what the race feed announces once this outcome is committed (`race_feed`)
    feed: list[RaceChange] = attrs.field(factory=list)

    def announce_results(self, course: Course, stage_id: str) -> None:
        definition = course.stages.get(stage_id)
        if definition is None or definition.event_id is None:
            return
        change = results_change(definition.event_id, stage_id)
        if change not in self.feed:
            self.feed.append(change)


def kept_passes(stage: Stage, stored: Mapping[str, Record], t0: float | None) -> list[Pass]:
    """The stored passes no fix at or after `t0` can change (the core's `settled_prefix` over
    the stored records in course order); none when evaluating from scratch."""
    if t0 is None:
        return []
    passes = [stored[c.id].as_pass(c.id) for c in stage.controls if c.id in stored]
    return list(settled_prefix(stage, passes, t0))


def result_of(evaluated: EntryResult) -> Result | None:
    """The stage_results values, or None when the entry has not started (no row)."""
    if evaluated.started_at is None:
        return None
    return Result(
        status=str(Status(evaluated.status)),
        started_at=to_datetime(evaluated.started_at),
        finished_at=None if evaluated.finished_at is None else to_datetime(evaluated.finished_at),
        elapsed_ms=evaluated.elapsed_ms,
        penalty_ms=int(evaluated.penalty_ms),
        total_ms=evaluated.total_ms,
        controls_passed=int(evaluated.controls_passed),
        controls_missed=int(evaluated.controls_missed),
    )


def _record_of(found: Pass, device_id: str | None) -> Record:
    return Record(
        device_id=device_id,
        passed_at=to_datetime(found.passed_at),
        speed_kmh=_round(found.speed_kmh, 2),
        distance_m=_round(found.distance_m, 3),
        fix_before=to_datetime(found.fix_before),
        fix_after=None if found.fix_after is None else to_datetime(found.fix_after),
    )


def evaluate_pairs(
    conn: psycopg.Connection[Any],
    course: Course,
    triggers: Mapping[Pair, float | None],
    *,
    evaluate: Evaluate = evaluate_entry,
    ranker: Rank = rank,
) -> Outcome:
    """Evaluate every pair of `triggers` (pair -> earliest new fix time, None = from scratch)
    and commit what changed, in one transaction. Pairs of unknown stages are skipped."""
    pairs = sorted(p for p in triggers if p[0] in course.stages)
    outcome = Outcome(pairs=len(pairs))
    if not pairs:
        return outcome
    with conn.transaction():
        conn.execute(LOCK, (sorted(lock_key(s, e) for s, e in pairs),))
        stage_ids = [s for s, _ in pairs]
        entry_ids = [e for _, e in pairs]
        stored: dict[Pair, dict[str, Record]] = {p: {} for p in pairs}
        for row in conn.execute(STORED_RECORDS, (stage_ids, entry_ids)):
            stage_id, entry_id, control_id, device, *values = row
            stored[(stage_id, entry_id)][control_id] = Record(device, *values)
        stored_results: dict[Pair, Result] = {}
        for row in conn.execute(STORED_RESULTS, (stage_ids, entry_ids)):
            stored_results[(row[0], row[1])] = Result(*row[2:])

        kept: dict[Pair, list[Pass]] = {}
        for pair in pairs:
            stage = course.stages[pair[0]].stage
            kept[pair] = kept_passes(stage, stored[pair], triggers[pair])
            if len(kept[pair]) < len(stored[pair]) and triggers[pair] is not None:
                outcome.late += 1

        fresh = {p for p in pairs if triggers[p] is not None and not stored[p]}
        fixes, devices = _load_fixes(conn, course, pairs, kept, {p: triggers[p] for p in fresh})
        outcome.fixes = sum(len(f) for f in fixes)

        upserts: list[tuple[Pair, str, Record]] = []
        deletes: list[tuple[Pair, str]] = []
        result_upserts: list[tuple[Pair, Result]] = []
        result_deletes: list[Pair] = []
        kinds = {c.id: c.kind for sd in course.stages.values() for c in sd.stage.controls}
        evaluations: dict[Pair, EntryResult] = {}
        for index, pair in enumerate(pairs):
            stage = course.stages[pair[0]].stage
            evaluated = evaluate(stage, fixes[index], kept=tuple(kept[pair]))
            old = stored[pair]
            new: dict[str, Record] = {}
            for found in evaluated.passes:
                previous = old.get(found.control_id)
                device = devices[index].get(found.fix_before)
                if device is None and previous is not None:
                    device = previous.device_id
                new[found.control_id] = _record_of(found, device)
            for control_id, record in new.items():
                if old.get(control_id) != record:
                    upserts.append((pair, control_id, record))
                    kind = str(kinds.get(control_id, ControlKind.CHECKPOINT))
                    outcome.passes_by_kind[kind] = outcome.passes_by_kind.get(kind, 0) + 1
                    before = old.get(control_id)
                    outcome.changes.append(
                        Change(
                            *pair,
                            control_id,
                            None if before is None else before.passed_at,
                            record.passed_at,
                        )
                    )
            for control_id, record in old.items():
                if control_id not in new:
                    deletes.append((pair, control_id))
                    outcome.changes.append(Change(*pair, control_id, record.passed_at, None))
            evaluations[pair] = evaluated

        zone_penalty_ms: Mapping[Pair, int] = {}
        zone_feed: list[RaceChange] = []  # announced after the passes that led to them
        if course.zones_enabled:
            zone_penalty_ms = judge_zones(conn, course, evaluations, zone_feed)
        for pair, evaluated in evaluations.items():
            result = result_of(evaluated)
            if result is not None and zone_penalty_ms.get(pair):
                extra = zone_penalty_ms[pair]
                result = attrs.evolve(
                    result,
                    penalty_ms=result.penalty_ms + extra,
                    total_ms=None if result.total_ms is None else result.total_ms + extra,
                )
            if result is None:
                if pair in stored_results:
                    result_deletes.append(pair)
            elif stored_results.get(pair) != result:
                result_upserts.append((pair, result))

        _write_records(conn, upserts, deletes)
        _write_results(conn, result_upserts, result_deletes)
        outcome.feed.extend(_timing_feed(course, upserts, deletes))
        outcome.feed.extend(zone_feed)
        outcome.results_changed = len(result_upserts) + len(result_deletes)
        changed_stages = sorted({p[0] for p, _ in result_upserts} | {p[0] for p in result_deletes})
        if changed_stages:
            conn.execute(LOCK, (sorted(lock_key("stage", s) for s in changed_stages),))
            for stage_id in changed_stages:
                rank_stage(conn, stage_id, ranker=ranker)
                outcome.announce_results(course, stage_id)
            outcome.stages_ranked = len(changed_stages)
    return outcome


def _timing_feed(
    course: Course,
    upserts: Sequence[tuple[Pair, str, Record]],
    deletes: Sequence[tuple[Pair, str]],
) -> list[RaceChange]:
    """One `timing` change per written or deleted record (stages of no event: none)."""
    feed: list[RaceChange] = []
    controls = {c.id: c for definition in course.stages.values() for c in definition.stage.controls}
    for (stage_id, entry_id), control_id, record in upserts:
        event_id = course.stages[stage_id].event_id
        control = controls.get(control_id)
        if event_id is None or control is None:
            continue
        body = record_object(
            entry_id=entry_id,
            control_id=control_id,
            control_ordinal=control.ordinal,
            kind=str(control.kind),
            device_id=record.device_id,
            passed_at=record.passed_at,
            speed_kmh=record.speed_kmh,
            distance_m=record.distance_m,
            fix_before=record.fix_before,
            fix_after=record.fix_after,
        )
        feed.append(timing_change(event_id, stage_id, body))
    for (stage_id, entry_id), control_id in deletes:
        event_id = course.stages[stage_id].event_id
        if event_id is not None:
            feed.append(removed_change(event_id, stage_id, entry_id, control_id))
    return feed


def _load_fixes(
    conn: psycopg.Connection[Any],
    course: Course,
    pairs: Sequence[Pair],
    kept: Mapping[Pair, list[Pass]],
    not_started: Mapping[Pair, float | None],
) -> tuple[list[list[Fix]], list[dict[float, str]]]:
    """Every pair's fixes in one query: from its last kept pass's `fix_before` on, or for a
    pair in `not_started` (nothing stored) from its last fix before the new fixes' time."""
    before_col: list[datetime | None] = []
    index_col: list[int] = []
    entry_col: list[str] = []
    from_col: list[datetime | None] = []
    opens_col: list[datetime | None] = []
    closes_col: list[datetime | None] = []
    for index, pair in enumerate(pairs):
        stage = course.stages[pair[0]].stage
        index_col.append(index)
        entry_col.append(pair[1])
        resume = kept[pair][-1].fix_before if kept[pair] else None
        from_col.append(None if resume is None else to_datetime(resume))
        opens_col.append(None if stage.opens_at is None else to_datetime(stage.opens_at))
        closes_col.append(None if stage.closes_at is None else to_datetime(stage.closes_at))
        before = not_started.get(pair)
        before_col.append(None if before is None else to_datetime(before))
    fixes: list[list[Fix]] = [[] for _ in pairs]
    devices: list[dict[float, str]] = [{} for _ in pairs]
    # binary rows and integer microseconds: no datetime per fix (t = us / 1e6 is exactly
    # what `datetime.timestamp()` gives for the same instant, so kept passes still match)
    cursor = conn.cursor(binary=True)
    rows = cursor.execute(
        FIXES, (index_col, entry_col, from_col, opens_col, closes_col, before_col)
    )
    for index, us, latitude, longitude, speed, device_id in rows:
        t = us / 1_000_000
        fixes[index].append(Fix(t=t, latitude=latitude, longitude=longitude, speed_kmh=speed))
        devices[index][t] = device_id
    return fixes, devices


def _write_records(
    conn: psycopg.Connection[Any],
    upserts: Sequence[tuple[Pair, str, Record]],
    deletes: Sequence[tuple[Pair, str]],
) -> None:
    if upserts:
        conn.execute(
            UPSERT_RECORDS,
            (
                [p[0] for p, _, _ in upserts],
                [p[1] for p, _, _ in upserts],
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
        conn.execute(
            DELETE_RECORDS,
            ([p[0] for p, _ in deletes], [p[1] for p, _ in deletes], [c for _, c in deletes]),
        )


def _write_results(
    conn: psycopg.Connection[Any],
    upserts: Sequence[tuple[Pair, Result]],
    deletes: Sequence[Pair],
) -> None:
    if upserts:
        conn.execute(
            UPSERT_RESULTS,
            (
                [p[0] for p, _ in upserts],
                [p[1] for p, _ in upserts],
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
        conn.execute(DELETE_RESULTS, ([p[0] for p in deletes], [p[1] for p in deletes]))


def rank_stage(conn: psycopg.Connection[Any], stage_id: str, *, ranker: Rank = rank) -> int:
    """Recompute position, class_position and gap of every result of the stage (the caller
    holds the stage's ranking lock). Returns the number of rows whose ranking changed."""
    rows = conn.execute(STAGE_STANDINGS, (stage_id,)).fetchall()
    results: dict[str, tuple[EntryResult, str | None]] = {}
    current: dict[str, tuple[int | None, int | None, int | None]] = {}
    for (
        entry_id,
        status,
        started,
        finished,
        elapsed,
        penalty,
        total,
        passed,
        missed,
        klass,
        *r,
    ) in rows:
        results[entry_id] = (
            EntryResult(
                status=Status(status),
                started_at=None if started is None else started.timestamp(),
                finished_at=None if finished is None else finished.timestamp(),
                elapsed_ms=elapsed,
                penalty_ms=penalty or 0,
                total_ms=total,
                controls_passed=passed or 0,
                controls_missed=missed or 0,
                passes=(),
            ),
            klass,
        )
        current[entry_id] = (r[0], r[1], r[2])
    rankings = call_rank(ranker, results)
    changed = [
        (entry_id, ranking)
        for entry_id, ranking in rankings.items()
        if current.get(entry_id) != (ranking.position, ranking.class_position, ranking.gap_ms)
    ]
    if changed:
        conn.execute(
            UPDATE_RANKING,
            (
                [e for e, _ in changed],
                [r.position for _, r in changed],
                [r.class_position for _, r in changed],
                [r.gap_ms for _, r in changed],
                stage_id,
            ),
        )
    return len(changed)


def call_rank(
    ranker: Rank, results: Mapping[str, tuple[EntryResult, str | None]]
) -> Mapping[str, Ranking]:
    """Adapter to the pure core's `rank` (entry_id -> (result, class))."""
    return ranker(results)


STORED_STAGE_ENTRIES = """
SELECT entry_id::text FROM stage_results WHERE stage_id = %(stage)s::uuid
UNION
SELECT entry_id::text FROM timing_records WHERE stage_id = %(stage)s::uuid
"""


def rebuild_stage(
    conn: psycopg.Connection[Any],
    course: Course,
    stage_id: str,
    *,
    evaluate: Evaluate = evaluate_entry,
    ranker: Rank = rank,
) -> Outcome:
    """Evaluate every entry of the stage from scratch: the event's entries, and any entry that
    still has rows on the stage (unlinked since: its rows go). Ranked even when nothing
    changed, so a rebuild also repairs a hand-edited ranking."""
    with conn.transaction():
        stored = [e for (e,) in conn.execute(STORED_STAGE_ENTRIES, {"stage": stage_id})]
    entries = set(course.entries_of_stage(stage_id)) | set(stored)
    triggers: dict[Pair, float | None] = {(stage_id, e): None for e in entries}
    outcome = evaluate_pairs(conn, course, triggers, evaluate=evaluate, ranker=ranker)
    if stage_id in course.stages:
        with conn.transaction():
            conn.execute(LOCK, ([lock_key("stage", stage_id)],))
            if rank_stage(conn, stage_id, ranker=ranker):
                outcome.announce_results(course, stage_id)
    return outcome
