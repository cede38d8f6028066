"""One entry's evaluation on one stage: course order, missed controls, penalties, result.

Invariants: the result depends only on the set of fixes, never on their order; the first
forward finish crossing after the start ends the stage (flying finish); intermediate controls are
matched greedily in ordinal order; `elapsed_ms` is computed from microsecond instants as stored,
so it can be recomputed from the stored rows. The exact rules: docs/racing-domain.md, Engine
internals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from processor.domain.rules.course import Line, StageError, course_of
from processor.domain.rules.instants import to_ms
from processor.domain.rules.model import EntryResult, Fix, Pass, Stage, Status
from processor.domain.rules.passes import first_crossing, first_visit
from processor.domain.rules.track import build_track

__all__ = ["StageError", "evaluate_entry", "settled_prefix", "to_ms"]

_INF = math.inf

NOT_STARTED = EntryResult(
    status=Status.RUNNING,
    started_at=None,
    finished_at=None,
    elapsed_ms=None,
    penalty_ms=0,
    total_ms=None,
    controls_passed=0,
    controls_missed=0,
    passes=(),
)


def evaluate_entry(stage: Stage, fixes: Iterable[Fix], kept: Sequence[Pass] = ()) -> EntryResult:
    """Evaluate one entry's fixes on `stage` (see the module docstring for the rules).

    `kept`: passes already known for a course-order prefix (the first is the start pass); only
    fixes at or after `kept[-1].fix_before` are needed (earlier ones are ignored). The result
    equals a full evaluation of all the entry's fixes provided `kept` is what `settled_prefix`
    returns for them. Controls skipped between kept passes count as missed.

    Raises `StageError` for a malformed stage, `ValueError` for a `kept` that is not a
    course-order prefix of this stage's controls.
    """
    course = course_of(stage)
    targets = course.targets
    last_target = len(targets) - 1
    kept = tuple(kept)
    indexes = _kept_indexes(course.index, kept)
    track = build_track(
        fixes, stage.opens_at, stage.closes_at, kept[-1].fix_before if kept else None
    )

    if kept:
        passes = list(kept)
    else:
        start = first_crossing(track, course.start, -_INF, _INF)
        if start is None:
            return NOT_STARTED
        passes = [start]
        indexes = [0]
    started_at = passes[0].passed_at

    finish: Pass | None
    if indexes[-1] == last_target:
        finish = passes[-1]
    else:
        finish = first_crossing(track, course.finish, started_at, _INF)
        before = _INF if finish is None else finish.passed_at
        latest = passes[-1].passed_at
        for i in range(indexes[-1] + 1, last_target):
            target = targets[i]
            if isinstance(target, Line):
                found = first_crossing(track, target, latest, before)
            else:
                found = first_visit(track, target, latest, before)
            if found is not None:
                passes.append(found)
                indexes.append(i)
                latest = found.passed_at
        if finish is not None:
            passes.append(finish)
            indexes.append(last_target)

    decided = last_target if finish is not None else indexes[-1]
    passed = set(indexes)
    penalty_s = 0
    missed = 0
    for i in range(1, decided):
        if i not in passed:
            missed += 1
            penalty_s += targets[i].control.penalty_s
    penalty_ms = penalty_s * 1000
    elapsed_ms = None if finish is None else to_ms(started_at, finish.passed_at)
    return EntryResult(
        status=Status.RUNNING if finish is None else Status.FINISHED,
        started_at=started_at,
        finished_at=None if finish is None else finish.passed_at,
        elapsed_ms=elapsed_ms,
        penalty_ms=penalty_ms,
        total_ms=None if elapsed_ms is None else elapsed_ms + penalty_ms,
        controls_passed=len(passes),
        controls_missed=missed,
        passes=tuple(passes),
    )


def _kept_indexes(index: dict[str, int], kept: tuple[Pass, ...]) -> list[int]:
    indexes: list[int] = []
    for p in kept:
        i = index.get(p.control_id)
        if i is None:
            raise ValueError(f"kept pass of control {p.control_id}, which is not on this stage")
        if (not indexes and i != 0) or (indexes and i <= indexes[-1]):
            raise ValueError("kept passes must be a course-order prefix starting with the start")
        indexes.append(i)
    return indexes


def settled_prefix(stage: Stage, passes: Sequence[Pass], t: float) -> tuple[Pass, ...]:
    """The passes to keep (and resume from) when new fixes at or after time `t` arrive.

    `passes`: a previous evaluation's passes (course order, as `EntryResult.passes` or as stored).
    A pass is kept when it and every earlier one is settled (`fix_after` known and < t, see
    `Pass`) and no control between it and the previous kept one was skipped: a skipped control
    is decided only by the greedy course order over the *whole* track — a later fix may hold its
    pass, which then moves every pass after it — so resuming past a gap could differ from a full
    evaluation. The engine then loads fixes from `kept[-1].fix_before` on (all of them if empty).
    """
    index = course_of(stage).index
    kept: list[Pass] = []
    for expected, p in enumerate(passes):
        if index.get(p.control_id) != expected:
            break
        if p.fix_after is None or not p.fix_after < t:
            break
        kept.append(p)
    return tuple(kept)
