"""The racing-domain engine in the daemon, against real Redis and PostgreSQL
(docs/racing-domain.md).

One stage (start, waypoint, checkpoint, finish) and five cars: constant speed, accelerating,
missing the waypoint, crossing the start line in reverse first, and one whose fixes around the
waypoint arrive late. Fixes are published shuffled, every one twice, with faulty fixes that
would change the passes if they counted. The stored rows must match the analytic crossing
times, then equal a from-scratch rebuild ("no change"), and a redelivery must not move any
`updated_at`.
"""

from __future__ import annotations

import random
from typing import Any

import psycopg
import pytest
import trio

from processor.commands.timing import format_changes, rebuild
from processor.domain.evaluation import Change
from tests.support import racing
from tests.support.fixes import fix
from tests.support.metrics import value
from tests.support.racing import (
    CHECKPOINT_PENALTY_S,
    WAYPOINT_PENALTY_S,
    WAYPOINT_X,
    seconds_after_base,
    stored,
    to_latlon,
)
from tests.support.service import (
    Rig,
    running_service,
)

CARS = [("steady", "T1"), ("faster", "T1"), ("cutter", "T2"), ("reverse", "T2"), ("late", None)]
B_START = 9.160797831  # 10 t + 0.1 t^2 = 100
B_FINISH = 130.2775638  # 10 t + 0.1 t^2 = 3000


def tracks(course: racing.Course) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every fix but the late car's gap, the late car's gap around the waypoint)."""
    d = course.devices
    documents = [
        *racing.track(d["steady"], racing.constant(20), 160),
        *racing.track(d["faster"], racing.accelerating(10, 0.2), 140, offset=0.3),
        *racing.track(d["cutter"], racing.constant(25, y=40), 130, offset=0.7),
        *racing.track(d["reverse"], racing.reverse_first(20), 170),
    ]
    late = racing.track(d["late"], racing.detour(20), 160)
    gap = [doc for doc in late if abs(_x(doc) - WAYPOINT_X) <= 120]
    documents += [doc for doc in late if doc not in gap]
    # faulty fixes that would create passes (or cut the track) if they counted
    far_lat, far_lon = to_latlon(3100, 0)
    documents += [
        fix(d["steady"], 2.2, lat=far_lat, lon=far_lon, satellites=0),
        fix(d["cutter"], 50.1, lat=to_latlon(1000, 0)[0], lon=to_latlon(1000, 0)[1], satellites=0),
        fix(d["faster"], 20.05, lat=0.0, lon=0.0),
    ]
    return documents, gap


def _x(document: dict[str, Any]) -> float:
    return (document["longitude"] - racing.LON0) * racing.M_PER_DEG_LON


def shuffled_twice(documents: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    doubled = documents + documents
    random.Random(seed).shuffle(doubled)
    return doubled


def check_results(rows: dict[str, Any], course: racing.Course, *, late_passed: bool) -> None:
    records, results = rows["records"], rows["results"]
    c, e = course.controls, course.entries

    def at(car: str, control: str) -> float:
        return seconds_after_base(records[(e[car], c[control])][0])

    # constant speed: exact to 0.01 s (docs/racing-domain.md)
    assert at("steady", "start") == pytest.approx(5.0, abs=0.01)
    assert at("steady", "waypoint") == pytest.approx(50.0, abs=0.1)
    assert at("steady", "checkpoint") == pytest.approx(100.0, abs=0.01)
    assert at("steady", "finish") == pytest.approx(150.0, abs=0.01)
    assert records[(e["steady"], c["waypoint"])][2] == pytest.approx(0.0, abs=1.0)
    # constant acceleration: within 0.1 s
    assert at("faster", "start") == pytest.approx(B_START, abs=0.1)
    assert at("faster", "finish") == pytest.approx(B_FINISH, abs=0.1)
    # the reverse crossing at t=5 does not start the stage; the forward one at t=13 does
    assert at("reverse", "start") == pytest.approx(13.0, abs=0.01)
    assert at("reverse", "finish") == pytest.approx(158.0, abs=0.01)
    # the cutter never comes within the radius: no record, the penalty instead
    assert (e["cutter"], c["waypoint"]) not in records
    status, *_, penalty, total, passed, missed = results[e["cutter"]][:8]
    assert (status, passed, missed) == ("finished", 3, 1)
    assert penalty == WAYPOINT_PENALTY_S * 1000
    assert total == 116_000 + WAYPOINT_PENALTY_S * 1000
    late = results[e["late"]]
    if late_passed:
        assert (e["late"], c["waypoint"]) in records
        assert late[4] == 0 and late[6:8] == (4, 0)
    else:
        assert (e["late"], c["waypoint"]) not in records
        assert late[4] == WAYPOINT_PENALTY_S * 1000 and late[6:8] == (3, 1)
    assert CHECKPOINT_PENALTY_S > 0  # the checkpoint is passed by everyone
    for car in ("steady", "faster", "cutter", "reverse", "late"):
        assert results[e[car]][0] == "finished", car
    # ranking: equal totals share a position; gap to the leader
    position = {car: results[e[car]][8] for car in e}
    gap = {car: results[e[car]][10] for car in e}
    assert position["faster"] == 1 and gap["faster"] == 0
    assert position["steady"] == position["reverse"] == 2
    assert gap["steady"] == 145_000 - results[e["faster"]][3]
    assert results[e["steady"]][9] == 2 and results[e["faster"]][9] == 1  # class T1
    assert results[e["reverse"]][9] == 1 and results[e["cutter"]][9] == 2  # class T2
    if late_passed:
        assert position["late"] == 2 and position["cutter"] == 5
    else:
        assert position["cutter"] == 4 and position["late"] == 5  # 416 s < 445 s


def rebuild_changes(database_url: str, stage_id: str) -> list[Change]:
    with psycopg.connect(database_url) as conn:
        return rebuild(conn, stage_id)


async def test_stage_from_shuffled_duplicated_faulty_and_late_fixes(rig: Rig) -> None:
    course = racing.setup_course(rig, CARS)
    documents, gap = tracks(course)
    async with running_service(racing.domain_env(rig.env)) as service:
        await racing.judging(service)
        rig.publish(shuffled_twice(documents, seed=11))
        await racing.all_judged(rig)
        check_results(stored(rig.database_url, course.stage_id), course, late_passed=False)

        # the late car's buffered fixes arrive: the miss becomes a pass, the penalty goes
        rig.publish(shuffled_twice(gap, seed=12))
        await racing.all_judged(rig)
        before = stored(rig.database_url, course.stage_id)
        check_results(before, course, late_passed=True)
        assert value(service.metrics.domain_late_reevaluations) >= 1
        assert value(service.metrics.domain_passes.labels("waypoint")) >= 4

        # redelivery changes nothing, not even updated_at
        rig.publish(documents[:200] + gap)
        await racing.all_judged(rig)
        assert stored(rig.database_url, course.stage_id) == before

    changes = await trio.to_thread.run_sync(rebuild_changes, rig.database_url, course.stage_id)
    assert format_changes(changes, {}) == "no change"
    assert stored(rig.database_url, course.stage_id) == before
