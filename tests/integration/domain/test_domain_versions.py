"""Stage versions and locks: a stale definition never overwrites a rebuild, two instances never
deadlock, and a finished entry's later fixes cost nothing (the engine's database side, driven
directly: `evaluation.evaluate_pairs`, `rebuild_stage`)."""

from __future__ import annotations

import random
import threading
from datetime import datetime
from typing import Any

import psycopg
import pytest

from processor.domain.definitions import read_current
from processor.domain.evaluation import evaluate_pairs, rebuild_stage
from tests.support import racing
from tests.support.racing import stored, to_latlon

CARS = [("steady", "T1"), ("cutter", "T1")]


def steady_and_cutter(course: racing.Course) -> list[dict[str, Any]]:
    return [
        *racing.track(course.devices["steady"], racing.constant(20), 160),
        *racing.track(course.devices["cutter"], racing.constant(25, y=40), 130),
    ]


def move_waypoint_north(database_url: str, course: racing.Course, metres: float) -> None:
    lat, lon = to_latlon(racing.WAYPOINT_X, metres)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE controls SET latitude = %s, longitude = %s WHERE id = %s",
            (lat, lon, course.controls["waypoint"]),
        )


def t_of(document: dict[str, Any]) -> float:
    return datetime.fromisoformat(document["timestamp"]).timestamp()


def test_a_stale_definition_never_overwrites_a_rebuild(database_url: str) -> None:
    course = racing.migrated_course(database_url, CARS)
    documents = steady_and_cutter(course)
    with psycopg.connect(database_url) as conn:
        racing.store_fixes(conn, documents)
        old = read_current(conn)
        assert rebuild_stage(conn, old, course.stage_id) is not None
        old = read_current(conn)  # as an engine holds it: current for the stage
        assert old.current(course.stage_id)
    # the organiser moves the waypoint 40 m north; another instance rebuilds with the new course
    move_waypoint_north(database_url, course, 40)
    with psycopg.connect(database_url) as conn:
        assert rebuild_stage(conn, read_current(conn), course.stage_id) is not None
    rebuilt = stored(database_url, course.stage_id)
    cutter = course.entries["cutter"]
    assert (cutter, course.controls["waypoint"]) in rebuilt["records"]

    # an evaluation that captured the old course before the move now gets a late fix
    last = max((d for d in documents if d["device_id"] == course.devices["cutter"]), key=t_of)
    with psycopg.connect(database_url) as conn:
        result = evaluate_pairs(conn, old, {(course.stage_id, cutter): t_of(last) - 100})
    assert result.stale == [course.stage_id]  # refused: the engine re-reads the definitions
    assert result.outcome.evaluated == []
    assert stored(database_url, course.stage_id) == rebuilt


def test_an_evaluation_of_a_stage_whose_rebuild_is_due_is_skipped(database_url: str) -> None:
    """Definitions changed, nobody rebuilt yet: the batch's pairs are skipped (the rebuild that
    is due will see their fixes, which are stored already), nothing is written."""
    course = racing.migrated_course(database_url, CARS)
    documents = steady_and_cutter(course)
    with psycopg.connect(database_url) as conn:
        racing.store_fixes(conn, documents[:50])
        assert rebuild_stage(conn, read_current(conn), course.stage_id) is not None
    move_waypoint_north(database_url, course, 40)
    with psycopg.connect(database_url) as conn:
        racing.store_fixes(conn, documents[50:])
        fresh = read_current(conn)
        assert not fresh.current(course.stage_id)
        before = stored(database_url, course.stage_id)
        steady = course.entries["steady"]
        result = evaluate_pairs(conn, fresh, {(course.stage_id, steady): t_of(documents[50])})
    assert (result.stale, result.outcome.skipped) == ([], 1)
    assert stored(database_url, course.stage_id) == before


def test_two_instances_evaluating_and_rebuilding_one_stage_never_deadlock(
    database_url: str,
) -> None:
    """Two workers (as two instances' engines: own connections) evaluate overlapping pairs from
    shuffled batches while one of them rebuilds the stage now and then. The lock order (the
    pairs of one stage, sorted, then its ranking key) admits no cycle: PostgreSQL would abort
    one side with 40P01. At the end the rows equal a rebuild's."""
    course = racing.migrated_course(database_url, CARS)
    documents = steady_and_cutter(course)
    with psycopg.connect(database_url) as conn:
        racing.store_fixes(conn, documents)
        assert rebuild_stage(conn, read_current(conn), course.stage_id) is not None
    entries = {course.devices[name]: course.entries[name] for name, _ in CARS}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(database_url) as conn:
                for round_ in range(40):
                    definitions = read_current(conn)
                    if seed == 1 and round_ % 10 == 0:
                        rebuild_stage(conn, definitions, course.stage_id, force=True)
                        continue
                    chunk = rng.sample(documents, 30)
                    triggers: dict[tuple[str, str], float | None] = {}
                    for d in chunk:
                        pair = (course.stage_id, entries[d["device_id"]])
                        triggers[pair] = min(t_of(d), triggers.get(pair) or t_of(d))
                    result = evaluate_pairs(conn, definitions, triggers)
                    assert not result.failures, result.failures
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == []
    rows = stored(database_url, course.stage_id)
    with psycopg.connect(database_url) as conn:
        outcome = rebuild_stage(conn, read_current(conn), course.stage_id, force=True)
    assert outcome is not None and outcome.changes == []
    assert stored(database_url, course.stage_id)["results"] == rows["results"]


@pytest.mark.parametrize("closes", [False, True], ids=["no closes_at", "closes_at"])
def test_a_finished_entry_that_keeps_reporting_costs_nothing(
    database_url: str, closes: bool
) -> None:
    """After the finish, an hour of 1 Hz fixes arrives in batches of 60: every evaluation of the
    finished pair reads no fix at all, with or without a stage close."""
    course = racing.migrated_course(database_url, [("steady", "T1")])
    device = course.devices["steady"]
    if closes:
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE stages SET closes_at = opens_at + interval '1 day' WHERE id = %s",
                (course.stage_id,),
            )
    finished = racing.track(device, racing.constant(20), 160)  # finish at t=150
    after = racing.track(device, racing.constant(0, x0=3300), 3600, offset=160.5)
    pair = (course.stage_id, course.entries["steady"])
    loaded: list[int] = []
    with psycopg.connect(database_url) as conn:
        racing.store_fixes(conn, finished)
        assert rebuild_stage(conn, read_current(conn), course.stage_id) is not None
        definitions = read_current(conn)
        before = stored(database_url, course.stage_id)
        for start in range(0, len(after), 60):
            batch = after[start : start + 60]
            racing.store_fixes(conn, batch)
            result = evaluate_pairs(conn, definitions, {pair: t_of(batch[0])})
            assert result.outcome.settled == 1
            loaded.append(result.outcome.fixes)
    assert loaded == [0] * 60
    assert stored(database_url, course.stage_id) == before
