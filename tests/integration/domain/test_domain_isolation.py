"""One wrong stage, table or feature never stops timing and safety alerts for the rest.

An event with two stages over the same course and window (every fix counts on both): stage X
gets something wrong, stage Y must keep being timed and its silent car must still raise
`no_signal`; the operator sees the problem once in the log, in
`processor_domain_stage_errors_total{reason}` and on `/readyz` (200, degraded, with the fix);
once the cause is fixed the stage is timed again by itself.

The fixes are dated months before the wall clock, so every car that has started and not
finished counts as silent (ALERT_NO_SIGNAL_S): the "late" car below stops before the finish.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import trio
from psycopg import sql
from psycopg.types.json import Jsonb

from processor.app import Service
from tests.support import racing
from tests.support.metrics import value
from tests.support.racing import BRACKETS, stored
from tests.support.service import Rig, running_service, wait_until

CARS = [("steady", "T1"), ("stopped", "T1")]


def documents(course: racing.Course) -> list[dict[str, Any]]:
    d = course.devices
    return [
        *racing.track(d["steady"], racing.constant(20), 160),
        *racing.track(d["stopped"], racing.constant(20), 60),  # started, never finishes
    ]


def readyz(service: Service) -> tuple[int, dict[str, Any]]:
    """GET /readyz, blocking: call it in a worker thread (`wait_until` predicates, or
    `trio.to_thread.run_sync`), never on the event loop that serves it."""
    response = httpx.get(f"http://127.0.0.1:{service.http_port}/readyz", timeout=5)
    return response.status_code, response.json()


def open_alerts(database_url: str, stage_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        return [
            (entry, kind)
            for entry, kind in conn.execute(
                "SELECT entry_id::text, kind FROM alerts "
                "WHERE stage_id = %s AND cleared_at IS NULL ORDER BY 1, 2",
                (stage_id,),
            )
        ]


def add_zone(database_url: str, course: racing.Course, stage_id: str, brackets: Any) -> str:
    zone_id = str(uuid.uuid4())
    start, checkpoint = course.controls["start"], course.controls["checkpoint"]
    with psycopg.connect(database_url) as conn:
        controls = dict(
            conn.execute(
                "SELECT kind, id::text FROM controls WHERE stage_id = %s", (stage_id,)
            ).fetchall()
        )
        start, checkpoint = controls.get("start", start), controls.get("checkpoint", checkpoint)
        conn.execute(
            "INSERT INTO speed_zones (id, stage_id, start_control_id, end_control_id, "
            "limit_kmh, penalties) VALUES (%s, %s, %s, %s, 50, %s)",
            (zone_id, stage_id, start, checkpoint, Jsonb(brackets)),
        )
    return zone_id


def env_of(rig: Rig) -> dict[str, str]:
    return {**racing.domain_env(rig.env), "ALERT_NO_SIGNAL_S": "120"}


async def test_a_zone_no_column_can_hold_invalidates_its_own_stage_only(rig: Rig) -> None:
    course = racing.setup_course(rig, CARS)
    y = course.stage_id
    x, _ = racing.add_twin_stage(rig.database_url, course)
    zone = add_zone(rig.database_url, course, x, [{"penalty_s": 3_000_000_000}])
    async with running_service(env_of(rig)) as service:
        await racing.judging(service)
        rig.publish(documents(course))
        await racing.all_judged(rig)
        steady, stopped = course.entries["steady"], course.entries["stopped"]
        results = lambda: stored(rig.database_url, y)["results"]  # noqa: E731
        await wait_until(lambda: steady in results() and stopped in results(), timeout=60)
        assert results()[steady][0] == "finished"
        assert stored(rig.database_url, x) == {"records": {}, "results": {}}
        # the silent car on the healthy stage: no_signal still raised
        await wait_until(lambda: (stopped, "no_signal") in open_alerts(rig.database_url, y))
        # said once, counted, and on /readyz with what to change
        definition = service.metrics.domain_stage_errors.labels("definition")
        assert value(definition) == 1
        code, body = await trio.to_thread.run_sync(readyz, service)
        assert code == 200 and body["status"] == "degraded" and "domain" in body["degraded"]
        [problem] = body["domain_problems"]
        assert problem["subject"] == f"stage {x}" and problem["reason"] == "definition"
        assert f"zone {zone}" in problem["detail"] and "3000000000" in problem["detail"]
        assert "Directus" in problem["fix"]

        # the organiser corrects the penalty: the stage is rebuilt and timed, the problem gone
        with psycopg.connect(rig.database_url) as conn:
            conn.execute(
                "UPDATE speed_zones SET penalties = %s WHERE id = %s", (Jsonb(BRACKETS), zone)
            )
        await wait_until(lambda: steady in stored(rig.database_url, x)["results"], timeout=60)
        await wait_until(lambda: not service.domain_health.problems())
        assert (await trio.to_thread.run_sync(readyz, service))[1]["status"] == "ready"
        assert value(definition) == 1


async def test_a_stage_whose_rows_the_database_refuses_is_isolated_and_heals(rig: Rig) -> None:
    course = racing.setup_course(rig, CARS)
    y = course.stage_id
    x, _ = racing.add_twin_stage(rig.database_url, course)
    with psycopg.connect(rig.database_url) as conn:  # e.g. a constraint an admin added
        check = sql.SQL("ALTER TABLE stage_results ADD CONSTRAINT not_x CHECK (stage_id <> {})")
        conn.execute(check.format(sql.Literal(x)))
    async with running_service(env_of(rig)) as service:
        await racing.judging(service)
        rig.publish(documents(course))
        await racing.all_judged(rig)
        steady = course.entries["steady"]
        await wait_until(lambda: steady in stored(rig.database_url, y)["results"], timeout=60)
        data = service.metrics.domain_stage_errors.labels("data")
        await wait_until(lambda: value(data) >= 1)
        [problem] = service.domain_health.problems()
        assert problem.subject == f"stage {x}" and problem.reason == "data"
        assert "[23514]" in problem.detail and "not_x" in problem.detail
        assert stored(rig.database_url, x)["results"] == {}
        stopped = course.entries["stopped"]
        await wait_until(lambda: (stopped, "no_signal") in open_alerts(rig.database_url, y))

        with psycopg.connect(rig.database_url) as conn:  # fixed: healthy again by itself
            conn.execute("ALTER TABLE stage_results DROP CONSTRAINT not_x")
        await wait_until(lambda: steady in stored(rig.database_url, x)["results"], timeout=60)
        await wait_until(lambda: not service.domain_health.problems())
        assert value(data) == 1  # said once, however often it was retried


async def test_alerts_without_their_partial_index_turn_alerts_off_only(rig: Rig) -> None:
    """The index a Directus admin easily leaves out: timing and speed zones go on, alerts are
    off with the SQL that fixes them, and come back once it is run."""
    course = racing.setup_course(rig, CARS)
    add_zone(rig.database_url, course, course.stage_id, BRACKETS)
    with psycopg.connect(rig.database_url) as conn:
        conn.execute("DROP INDEX alerts_one_open")
    async with running_service(env_of(rig)) as service:
        await racing.judging(service)
        rig.publish(documents(course))
        await racing.all_judged(rig)
        steady = course.entries["steady"]
        await wait_until(
            lambda: steady in stored(rig.database_url, course.stage_id)["results"], timeout=60
        )
        code, body = await trio.to_thread.run_sync(readyz, service)
        assert code == 200 and body["status"] == "degraded"
        [problem] = body["domain_problems"]
        assert problem["subject"] == "table alerts" and problem["reason"] == "schema"
        assert problem["detail"] == (
            "no partial unique index on (entry_id, kind) WHERE cleared_at IS NULL (its ON "
            "CONFLICT clause needs one) (safety alerts off)"
        )
        assert open_alerts(rig.database_url, course.stage_id) == []

        with psycopg.connect(rig.database_url) as conn:  # the operator runs the given SQL
            conn.execute(problem["fix"])
        stopped = course.entries["stopped"]
        await wait_until(
            lambda: (stopped, "no_signal") in open_alerts(rig.database_url, course.stage_id)
        )
        await wait_until(lambda: readyz(service)[1]["status"] == "ready")
