"""Evaluate one stage's (stage, entry) pairs from the stored fixes and write what changed.

The engine's database side, in a worker thread on one connection, one transaction per stage (a
stage the database refuses rolls back alone). Invariants: each pair is evaluated under its
advisory lock, reading only committed data inside it, so the last evaluation writes the
from-scratch answer; no transaction holds locks of two stages; definitions older than the stored
fingerprint raise `Stale`; only differing rows are written; the processor owns the rows it
derives. Locks, versions, resuming: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import psycopg

from processor.codecs.race_feed import RaceChange, record_object, removed_change, timing_change
from processor.codecs.race_feed import results_change as results_feed
from processor.domain import timing_store as store
from processor.domain.definitions import Definitions, StageDef, stage_problem
from processor.domain.health import Problem
from processor.domain.rules.instants import to_datetime, to_datetime_or_none
from processor.domain.rules.model import ControlKind, EntryResult, Pass, Stage, Status
from processor.domain.rules.ranking import rank
from processor.domain.rules.timing import evaluate_entry, settled_prefix
from processor.domain.timing_store import Pair, Record, Result
from processor.domain.zone_store import judge_zones
from processor.store import db_errors


class Stale(Exception):
    """The definitions an evaluation was given are older than the stage's stored rows."""


class RebuildRace(Exception):
    """Rows of an entry appeared on the stage while its rebuild took its locks: try again."""


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
    """What evaluations did (summed over stages by `add`)."""

    pairs: int = 0
    fixes: int = 0  # fixes loaded
    late: int = 0  # pairs that had to recompute an already stored pass (a late fix)
    settled: int = 0  # pairs whose settled passes reach the finish: nothing to evaluate
    skipped: int = 0  # pairs of a stage whose rebuild is due (it will include their fixes)
    changes: list[Change] = attrs.field(factory=list)
    passes_by_kind: dict[str, int] = attrs.field(factory=dict)
    results_changed: int = 0
    evaluated: list[Pair] = attrs.field(factory=list)  # pairs actually evaluated
    # what the race feed announces once this outcome is committed (`race_feed`)
    feed: list[RaceChange] = attrs.field(factory=list)

    def add(self, other: Outcome) -> None:
        self.pairs += other.pairs
        self.fixes += other.fixes
        self.late += other.late
        self.settled += other.settled
        self.skipped += other.skipped
        self.changes += other.changes
        for kind, count in other.passes_by_kind.items():
            self.passes_by_kind[kind] = self.passes_by_kind.get(kind, 0) + count
        self.results_changed += other.results_changed
        self.evaluated += other.evaluated
        self.feed += other.feed


@attrs.frozen
class StageFailure:
    stage_id: str
    problem: Problem


@attrs.define
class StagesOutcome:
    """`evaluate_stages`: the summed outcome, the stages whose definitions were stale, and
    the stages the database refused (rolled back; their version forgotten)."""

    outcome: Outcome = attrs.field(factory=Outcome)
    stale: list[str] = attrs.field(factory=list)
    failures: list[StageFailure] = attrs.field(factory=list)
    fixes_per_stage: list[int] = attrs.field(factory=list)


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
        finished_at=to_datetime_or_none(evaluated.finished_at),
        elapsed_ms=evaluated.elapsed_ms,
        penalty_ms=int(evaluated.penalty_ms),
        total_ms=evaluated.total_ms,
        controls_passed=int(evaluated.controls_passed),
        controls_missed=int(evaluated.controls_missed),
    )


def _rounded(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def record_of(found: Pass, device_id: str | None) -> Record:
    return Record(
        device_id=device_id,
        passed_at=to_datetime(found.passed_at),
        speed_kmh=_rounded(found.speed_kmh, 2),
        distance_m=_rounded(found.distance_m, 3),
        fix_before=to_datetime(found.fix_before),
        fix_after=to_datetime_or_none(found.fix_after),
    )


def evaluate_stage(
    conn: psycopg.Connection[Any],
    definitions: Definitions,
    stage_id: str,
    triggers: Mapping[str, float | None],
) -> Outcome:
    """Evaluate the stage's entries in `triggers` (entry -> earliest new fix time) and commit
    what changed, in one transaction; `Stale` when the definitions are outdated (module
    docstring)."""
    definition = definitions.stages[stage_id]
    entries = sorted(triggers)
    with conn.transaction():
        store.lock(conn, [store.pair_lock(stage_id, e) for e in entries])
        version = store.stage_version(conn, stage_id)
        if version is None or version.fingerprint != definition.fingerprint:
            if version == definitions.versions.get(stage_id):
                return Outcome(pairs=len(entries), skipped=len(entries))
            raise Stale(stage_id)
        return _evaluate(
            conn,
            definitions=definitions,
            definition=definition,
            triggers=triggers,
        )


def rebuild_stage(
    conn: psycopg.Connection[Any],
    definitions: Definitions,
    stage_id: str,
    *,
    force: bool = False,
) -> Outcome | None:
    """Evaluate every entry of the stage from scratch — the event's entries, and any entry
    that still has rows on the stage (unlinked since: its rows go) — rank it, and record the
    definitions' fingerprint as the stage's version, in one transaction. None when the stage's
    version is this fingerprint already (another instance rebuilt it) unless `force`."""
    definition = definitions.stages[stage_id]
    for _attempt in range(5):
        with conn.transaction():
            known = set(store.stored_stage_entries(conn, stage_id))
        entries = sorted(set(definitions.entries_of_stage(stage_id)) | known)
        try:
            with conn.transaction():
                store.lock(conn, [store.pair_lock(stage_id, e) for e in entries])
                version = store.stage_version(conn, stage_id)
                current = version is not None and version.fingerprint == definition.fingerprint
                if current and not force:
                    return None
                if not set(store.stored_stage_entries(conn, stage_id)) <= set(entries):
                    raise RebuildRace(stage_id)
                triggers: dict[str, float | None] = dict.fromkeys(entries)
                outcome = _evaluate(
                    conn,
                    definitions=definitions,
                    definition=definition,
                    triggers=triggers,
                    rank_always=True,
                )
                store.store_stage_version(conn, stage_id, definition.fingerprint)
                return outcome
        except RebuildRace:
            continue
    raise RebuildRace(stage_id)


def _evaluate(
    conn: psycopg.Connection[Any],
    *,
    definitions: Definitions,
    definition: StageDef,
    triggers: Mapping[str, float | None],
    rank_always: bool = False,
) -> Outcome:
    """The body of one stage's transaction (the pair locks are held)."""
    stage = definition.stage
    stage_id = stage.id
    entries = sorted(triggers)
    outcome = Outcome(pairs=len(entries))
    stored = store.stored_records(conn, stage_id, entries)
    stored_results = store.stored_results(conn, stage_id, entries)
    finish_id = stage.controls[-1].id

    kept: dict[str, list[Pass]] = {}
    for entry_id in entries:
        t0 = triggers[entry_id]
        kept[entry_id] = kept_passes(stage, stored[entry_id], t0)
        if t0 is None:
            continue
        if kept[entry_id] and kept[entry_id][-1].control_id == finish_id:
            outcome.settled += 1  # finished before t0: nothing after the finish counts
        elif len(kept[entry_id]) < len(stored[entry_id]):
            outcome.late += 1
    work = [
        e
        for e in entries
        if triggers[e] is None or not kept[e] or kept[e][-1].control_id != finish_id
    ]
    requests = [
        store.FixRequest(
            entry_id=e,
            from_ts=to_datetime(kept[e][-1].fix_before) if kept[e] else None,
            before_ts=to_datetime_or_none(triggers[e]) if not stored[e] else None,
        )
        for e in work
    ]
    fixes, devices = store.load_fixes(
        conn,
        requests,
        to_datetime_or_none(stage.opens_at),
        to_datetime_or_none(stage.closes_at),
        store.fix_of,
    )
    outcome.fixes = sum(len(f) for f in fixes)
    outcome.evaluated = [(stage_id, e) for e in work]

    upserts: list[tuple[str, str, Record]] = []
    deletes: list[tuple[str, str]] = []
    kinds = {c.id: c.kind for c in stage.controls}
    evaluations: dict[str, EntryResult] = {}
    for index, entry_id in enumerate(work):
        evaluated = evaluate_entry(stage, fixes[index], kept=tuple(kept[entry_id]))
        old = stored[entry_id]
        new: dict[str, Record] = {}
        for found in evaluated.passes:
            device = devices[index].get(found.fix_before)
            previous = old.get(found.control_id)
            if device is None and previous is not None:
                device = previous.device_id
            new[found.control_id] = record_of(found, device)
        for control_id, record in new.items():
            before = old.get(control_id)
            if before != record:
                upserts.append((entry_id, control_id, record))
                kind = str(kinds.get(control_id, ControlKind.CHECKPOINT))
                outcome.passes_by_kind[kind] = outcome.passes_by_kind.get(kind, 0) + 1
                outcome.changes.append(
                    Change(
                        stage_id,
                        entry_id,
                        control_id,
                        None if before is None else before.passed_at,
                        record.passed_at,
                    )
                )
        for control_id, record in old.items():
            if control_id not in new:
                deletes.append((entry_id, control_id))
                outcome.changes.append(
                    Change(stage_id, entry_id, control_id, record.passed_at, None)
                )
        evaluations[entry_id] = evaluated

    zone_penalty_ms: Mapping[str, int] = {}
    zone_feed: list[RaceChange] = []  # announced after the passes that led to them
    if definitions.zones_enabled:
        zone_penalty_ms = judge_zones(conn, definition, evaluations, zone_feed)
    result_upserts: list[tuple[str, Result]] = []
    result_deletes: list[str] = []
    for entry_id, evaluated in evaluations.items():
        result = result_of(evaluated)
        extra = zone_penalty_ms.get(entry_id, 0)
        if result is not None and extra:
            result = attrs.evolve(
                result,
                penalty_ms=result.penalty_ms + extra,
                total_ms=None if result.total_ms is None else result.total_ms + extra,
            )
        if result is None:
            if entry_id in stored_results:
                result_deletes.append(entry_id)
        elif stored_results.get(entry_id) != result:
            result_upserts.append((entry_id, result))

    store.write_records(conn, stage_id, upserts, deletes)
    store.write_results(conn, stage_id, result_upserts, result_deletes)
    outcome.feed.extend(_timing_feed(definition, upserts, deletes))
    outcome.feed.extend(zone_feed)
    outcome.results_changed = len(result_upserts) + len(result_deletes)
    if outcome.results_changed or rank_always:
        store.lock(conn, [store.stage_lock(stage_id)])
        changed = rank_stage(conn, stage_id)
        if (outcome.results_changed or changed) and definition.event_id is not None:
            outcome.feed.append(results_feed(definition.event_id, stage_id))
    return outcome


def _timing_feed(
    definition: StageDef,
    upserts: Sequence[tuple[str, str, Record]],
    deletes: Sequence[tuple[str, str]],
) -> list[RaceChange]:
    """One `timing` change per written or deleted record (a stage of no event: none)."""
    event_id = definition.event_id
    if event_id is None:
        return []
    stage_id = definition.stage.id
    controls = {c.id: c for c in definition.stage.controls}
    feed: list[RaceChange] = []
    for entry_id, control_id, record in upserts:
        control = controls.get(control_id)
        if control is None:
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
    feed.extend(
        removed_change(event_id, stage_id, entry_id, control_id) for entry_id, control_id in deletes
    )
    return feed


def rank_stage(conn: psycopg.Connection[Any], stage_id: str) -> int:
    """Recompute position, class_position and gap of every result of the stage (the caller
    holds the stage's ranking lock). Returns the number of rows whose ranking changed."""
    standings = store.standings(conn, stage_id)
    results = {
        entry_id: (
            EntryResult(
                status=Status(s.result.status),
                started_at=None if s.result.started_at is None else s.result.started_at.timestamp(),
                finished_at=(
                    None if s.result.finished_at is None else s.result.finished_at.timestamp()
                ),
                elapsed_ms=s.result.elapsed_ms,
                penalty_ms=s.result.penalty_ms or 0,
                total_ms=s.result.total_ms,
                controls_passed=s.result.controls_passed or 0,
                controls_missed=s.result.controls_missed or 0,
                passes=(),
            ),
            s.klass,
        )
        for entry_id, s in standings.items()
    }
    rankings = rank(results)
    changed = {
        entry_id: (r.position, r.class_position, r.gap_ms)
        for entry_id, r in rankings.items()
        if standings[entry_id].ranking != (r.position, r.class_position, r.gap_ms)
    }
    store.write_ranking(conn, stage_id, changed)
    return len(changed)


def evaluate_stages(
    conn: psycopg.Connection[Any],
    definitions: Definitions,
    work: Mapping[str, Mapping[str, float | None]],
) -> StagesOutcome:
    """Evaluate each stage of `work` (stage -> entry -> earliest new fix time) in its own
    transaction. A stage the database refuses (any error but a lost connection) is rolled
    back, reported in `failures` and its version forgotten, so that every instance skips it
    until a rebuild succeeds; the other stages go on. A lost connection propagates (the batch
    is retried whole: what committed is re-evaluated idempotently), and so does anything that
    is not a database error (a bug: the engine restarts, the batch stays pending)."""
    result = StagesOutcome()
    for stage_id in sorted(work):
        if stage_id not in definitions.stages:
            continue
        try:
            outcome = evaluate_stage(conn, definitions, stage_id, work[stage_id])
        except Stale:
            result.stale.append(stage_id)
            continue
        except db_errors.DATABASE_ERRORS as exc:
            problem = database_problem(stage_id, exc)
            if problem is None:
                raise
            result.failures.append(StageFailure(stage_id, problem))
            with conn.transaction():
                store.forget_stage_version(conn, stage_id)
            continue
        result.outcome.add(outcome)
        result.fixes_per_stage.append(outcome.fixes)
    return result


def database_problem(stage_id: str, exc: Exception) -> Problem | None:
    """The stage's problem for a database refusal; None for a lost connection (retry)."""
    kind = db_errors.classify(exc)
    if kind is db_errors.Kind.TRANSIENT:
        return None
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if kind is db_errors.Kind.DATA:
        reason = "data"
    elif sqlstate.startswith("42"):
        reason = "schema"
    else:
        reason = "database"
    return stage_problem(stage_id, reason, db_errors.describe_cause(exc))


def evaluate_pairs(
    conn: psycopg.Connection[Any],
    definitions: Definitions,
    triggers: Mapping[Pair, float | None],
) -> StagesOutcome:
    """`evaluate_stages` for (stage, entry) -> t0 triggers."""
    work: dict[str, dict[str, float | None]] = {}
    for (stage_id, entry_id), t0 in triggers.items():
        work.setdefault(stage_id, {})[entry_id] = t0
    return evaluate_stages(conn, definitions, work)
