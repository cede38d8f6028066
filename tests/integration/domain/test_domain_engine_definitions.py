"""The engine's reactions to the database around it: racing tables appearing late, a control
moved in Directus, and a fix the durable pipeline dead-lettered (never stored)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from processor.domain import evaluator
from processor.store.migrations import apply_migrations, default_directory, load_migrations
from tests.support import racing
from tests.support.fixes import fix
from tests.support.metrics import value
from tests.support.racing import stored, to_latlon
from tests.support.schema import migrate_and_forbid
from tests.support.service import (
    Rig,
    running_service,
    wait_until,
)

CARS = [("steady", "T1"), ("cutter", "T1")]


async def test_engine_waits_for_the_racing_tables(rig: Rig) -> None:
    async with running_service(racing.domain_env(rig.env)) as service:
        assert service.domain is not None
        rig.publish([fix(second=s) for s in range(5)])
        await wait_until(lambda: rig.rows() == 5, timeout=120)
        assert not service.domain.enabled.is_set()  # ingestion runs without the domain
        groups = {g["name"] for g in rig.redis.xinfo_groups(rig.stream_key)}
        assert b"domain" not in groups

        course = racing.setup_course(rig, CARS)
        await racing.judging(service)
        rig.publish(racing.track(course.devices["steady"], racing.constant(20), 160))
        await racing.all_judged(rig)
        results = stored(rig.database_url, course.stage_id)["results"]
        assert results[course.entries["steady"]][0] == "finished"


async def test_a_moved_control_re_evaluates_its_stage(rig: Rig) -> None:
    course = racing.setup_course(rig, CARS)
    documents = racing.track(course.devices["steady"], racing.constant(20), 160)
    documents += racing.track(course.devices["cutter"], racing.constant(25, y=40), 130)
    async with running_service(racing.domain_env(rig.env)) as service:
        rig.publish(documents)
        await racing.all_judged(rig)
        cutter = course.entries["cutter"]
        key = (cutter, course.controls["waypoint"])
        assert key not in stored(rig.database_url, course.stage_id)["records"]

        # the organiser moves the waypoint 40 m north: now the cutter passes it
        lat, lon = to_latlon(racing.WAYPOINT_X, 40)
        with psycopg.connect(rig.database_url) as conn:
            conn.execute(
                "UPDATE controls SET latitude = %s, longitude = %s WHERE id = %s",
                (lat, lon, course.controls["waypoint"]),
            )
        records = lambda: stored(rig.database_url, course.stage_id)["records"]  # noqa: E731
        await wait_until(lambda: key in records(), timeout=120)
        rows = stored(rig.database_url, course.stage_id)
        assert rows["results"][cutter][4] == 0  # penalty gone
        assert rows["records"][key][2] is not None and rows["records"][key][2] < 1.0
        # ... and the steady car, 40 m away now, misses it
        assert (course.entries["steady"], course.controls["waypoint"]) not in rows["records"]
        # counted once the rebuild's transaction is in and its changes announced: the rows
        # above can be seen a moment before the counter moves
        rebuilds = service.metrics.domain_rebuilds
        await wait_until(lambda: value(rebuilds) >= 2)  # at start, then for the move


async def test_a_dead_lettered_fix_is_skipped_without_waiting_out_the_timeout(rig: Rig) -> None:
    course = racing.setup_course(rig, CARS)
    poisoned = course.devices["cutter"]
    migrate_and_forbid(rig.database_url, poisoned)  # PostgreSQL refuses every row of this device
    documents = racing.track(course.devices["steady"], racing.constant(20), 160)
    documents += racing.track(poisoned, racing.constant(25), 130)
    async with running_service(
        {**racing.domain_env(rig.env), "DOMAIN_VISIBILITY_TIMEOUT_MS": "600000"}
    ) as service:
        rig.publish(documents)
        await racing.all_judged(rig)
        skipped = service.metrics.domain_skipped_fixes
        assert value(skipped.labels("dead_lettered")) == 130
        assert value(skipped.labels("timeout")) == 0
    rows = stored(rig.database_url, course.stage_id)
    assert course.entries["cutter"] not in rows["results"]
    assert rows["results"][course.entries["steady"]][0] == "finished"


def test_migrations_leave_the_racing_tables_alone(database_url: str) -> None:
    """The racing tables belong to Directus: migrating never creates them."""
    with psycopg.connect(database_url) as conn:
        apply_migrations(conn, load_migrations(default_directory()))
        (found,) = conn.execute("SELECT to_regclass('stages') IS NOT NULL").fetchone() or (None,)
    assert found is False


async def test_an_incomplete_stage_waits_until_it_is_fixed_and_errors_never_end_the_service(
    rig: Rig,
) -> None:
    course = racing.setup_course(rig, CARS)
    waypoint = course.controls["waypoint"]
    with psycopg.connect(rig.database_url) as conn:  # half-typed in Directus: no radius yet
        conn.execute("UPDATE controls SET validate_radius_m = NULL WHERE id = %s", (waypoint,))
    async with running_service(racing.domain_env(rig.env)) as service:
        rig.publish(racing.track(course.devices["steady"], racing.constant(20), 160))
        await racing.all_judged(rig)
        assert stored(rig.database_url, course.stage_id) == {"records": {}, "results": {}}

        # a table Directus renamed under us: reported (named, with its fix), the service goes on
        with psycopg.connect(rig.database_url) as conn:
            conn.execute("ALTER TABLE controls RENAME TO controls_moved")
        schema_errors = service.metrics.domain_stage_errors.labels("schema")
        await wait_until(lambda: value(schema_errors) >= 1, timeout=120)
        problems = service.domain_health.problems()
        assert [(p.subject, p.detail) for p in problems if p.reason == "schema"] == [
            ("table controls", "missing (nothing is timed)")
        ]
        with psycopg.connect(rig.database_url) as conn:
            conn.execute("ALTER TABLE controls_moved RENAME TO controls")
            conn.execute("UPDATE controls SET validate_radius_m = 30 WHERE id = %s", (waypoint,))
        steady = course.entries["steady"]
        results = lambda: stored(rig.database_url, course.stage_id)["results"]  # noqa: E731
        await wait_until(lambda: steady in results(), timeout=120)
        assert stored(rig.database_url, course.stage_id)["results"][steady][6:8] == (4, 0)
        assert service.ready.is_set() and not service.draining.is_set()


async def test_domain_lag_counts_entries_not_yet_delivered_to_the_domain_group(rig: Rig) -> None:
    from processor.app import make_domain_engine
    from processor.config import load_config
    from processor.observability.metrics import Metrics

    rig.publish([fix(second=s) for s in range(7)])
    rig.redis.xgroup_create(rig.stream_key, "domain", id="0")
    rig.redis.xreadgroup("domain", "someone", {rig.stream_key: ">"}, count=3)
    metrics = Metrics()
    engine = make_domain_engine(load_config(rig.env), rig.redis, metrics)
    await engine.sample_lag()
    assert value(metrics.domain_lag) == 4


async def test_an_engine_failure_is_restarted_by_the_supervisor_and_skips_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in a batch (a bug) is not acked away: it ends one life of the
    engine, the service's supervisor counts the restart and starts a new life, which re-reads
    the batch it had not acked and evaluates it."""
    course = racing.setup_course(rig, CARS)
    real = evaluator.evaluate_batch
    failures: list[str] = []

    def fail_first(conn: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append("once")
            raise TypeError("injected bug")
        return real(conn, **kwargs)

    monkeypatch.setattr(evaluator, "evaluate_batch", fail_first)
    async with running_service(racing.domain_env(rig.env)) as service:
        rig.publish(racing.track(course.devices["steady"], racing.constant(20), 160))
        await racing.all_judged(rig)
        restarts = value(service.metrics.service_restarts.labels("domain-engine"))
        assert failures and restarts == 1
        assert value(service.metrics.domain_errors) == 1
        results = stored(rig.database_url, course.stage_id)["results"]
        assert results[course.entries["steady"]][0] == "finished"
        assert service.ready.is_set() and not service.draining.is_set()
        assert value(service.metrics.domain_dead_letters) == 0


async def test_a_batch_that_keeps_failing_is_dead_lettered_for_the_domain_only(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose evaluation raises every time stays pending (restart after restart) until
    it was delivered MAX_DELIVERIES times; then it is dead-lettered with the error it raised,
    for the domain group only: ingestion stored every fix and never saw a dead letter."""
    course = racing.setup_course(rig, CARS)
    poison = course.devices["cutter"]
    real = evaluator.evaluate_batch

    def fail_for_the_cutter(conn: Any, **kwargs: Any) -> Any:
        if any(entry == course.entries["cutter"] for e in kwargs["work"].values() for entry in e):
            raise KeyError("injected bug for the cutter")
        return real(conn, **kwargs)

    monkeypatch.setattr(evaluator, "evaluate_batch", fail_for_the_cutter)
    env = {**racing.domain_env(rig.env), "MAX_DELIVERIES": "2", "DOMAIN_READ_COUNT": "10"}
    async with running_service(env) as service:
        await racing.judging(service)
        rig.publish(racing.track(course.devices["steady"], racing.constant(20), 160))
        await racing.all_judged(rig)
        ids = rig.publish(racing.track(poison, racing.constant(25), 3))
        await racing.all_judged(rig)
        assert rig.rows() == 163  # ingestion: every fix stored
        assert value(service.metrics.dead_letters.labels("max_deliveries")) == 0
        dead = rig.redis.xrange(f"{rig.stream_key}:dead")
        assert sorted(d[b"source_id"].decode() for _, d in dead) == sorted(ids)
        for _, letter in dead:
            assert letter[b"reason"] == b"domain_failed"
            assert b"KeyError: 'injected bug for the cutter'" in letter[b"error"]
            assert b"payload" in letter
        assert value(service.metrics.domain_dead_letters) == 3
        assert value(service.metrics.service_restarts.labels("domain-engine")) >= 2
        results = stored(rig.database_url, course.stage_id)["results"]
        assert results[course.entries["steady"]][0] == "finished"
