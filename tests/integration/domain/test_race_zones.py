"""Speed zones (issue 12 item 1) on a running daemon (the pure rule:
tests/unit/domain/rules/test_zones.py).

The zone runs from the start line to the checkpoint, limit 50 km/h, no tolerance, at least 3 s
over, brackets 60 s up to 20 km/h over, 120 s up to 40, 180 s beyond. Four cars drive the stage
at 40 km/h and report, for a few seconds inside the zone, 60, 85 and 100 km/h (one violation
of each bracket) and 100 km/h for only 2 fixes (1 s: below min_duration_s, no violation).
Fixes arrive shuffled and twice; the rows must equal a rebuild's, the penalties must be in the
results, and a subscribed client sees the `violation` frames.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import psycopg
import trio
from psycopg.types.json import Jsonb

from processor.commands.timing import format_changes
from tests.integration.domain.test_domain_engine import rebuild_changes
from tests.support import racing
from tests.support.fixes import fix
from tests.support.live import (
    LiveRig,
    watching,
)
from tests.support.metrics import value
from tests.support.racing import BRACKETS
from tests.support.service import running_service

SPEEDERS = {"b1": (60.0, 5), "b2": (85.0, 5), "b3": (100.0, 5), "short": (100.0, 2)}
V = 40 / 3.6  # m/s


def speeder_track(device: str, peak: float, fixes_over: int) -> list[dict[str, Any]]:
    documents = []
    for k in range(290):
        t = 0.5 + k
        speed = peak if 50 <= k < 50 + fixes_over else 40.0
        lat, lon = racing.to_latlon(V * t, 0.0)
        documents.append(fix(device, t, lat=lat, lon=lon, speed=speed, angle=90))
    return documents


async def test_zone_violations_on_the_daemon(live_rig: LiveRig) -> None:
    course = racing.live_course(live_rig, [(name, None) for name in SPEEDERS])
    zone_id = str(uuid.uuid4())
    with psycopg.connect(live_rig.database_url) as conn:
        conn.execute(
            "INSERT INTO speed_zones (id, stage_id, start_control_id, end_control_id, limit_kmh, "
            "min_duration_s, penalties) VALUES (%s, %s, %s, %s, 50, 3, %s)",
            (zone_id, course.stage_id, course.controls["start"], course.controls["checkpoint"],
             Jsonb(BRACKETS)),
        )  # fmt: skip
    documents = [
        doc
        for name, (peak, over) in SPEEDERS.items()
        for doc in speeder_track(course.devices[name], peak, over)
    ]
    doubled = documents + documents
    random.Random(5).shuffle(doubled)
    async with running_service(racing.domain_env(live_rig.env)) as service:
        await racing.judging(service)
        async with watching(service.live_port, course.event_id) as (_, frames):
            live_rig.publish(doubled)
            await racing.all_judged(live_rig)
            await frames.until(lambda: len({_key(f) for f in frames.of("violation")}) >= 3)
            await frames.until(
                lambda: (
                    bool(frames.of("results"))
                    and sum(r["status"] == "finished" for r in frames.of("results")[-1]["results"])
                    == 4
                )
            )
        assert value(service.metrics.speed_violations) >= 3
    e = course.entries
    with psycopg.connect(live_rig.database_url) as conn:
        rows = {
            entry: tuple(values)
            for entry, *values in conn.execute(
                "SELECT entry_id::text, penalty_s, round(max_speed_kmh)::int, "
                "round(excess_kmh)::int, extract(epoch FROM ended_at - started_at)::float8 "
                "FROM speed_violations WHERE zone_id = %s",
                (zone_id,),
            )
        }
        penalties = dict(
            conn.execute(
                "SELECT entry_id::text, penalty_ms FROM stage_results WHERE stage_id = %s",
                (course.stage_id,),
            ).fetchall()
        )
    assert rows == {
        e["b1"]: (60, 60, 10, 4.0),
        e["b2"]: (120, 85, 35, 4.0),
        e["b3"]: (180, 100, 50, 4.0),
    }
    assert penalties == {e["b1"]: 60_000, e["b2"]: 120_000, e["b3"]: 180_000, e["short"]: 0}
    last = frames.of("results")[-1]["results"]
    assert [r["number"] for r in last] == ["104", "101", "102", "103"]  # by total with penalties
    violation = frames.of("violation")[-1]["violation"]
    assert set(violation) == {
        "stage_id", "entry_id", "number", "zone_id", "started_at", "ended_at", "max_speed_kmh",
        "excess_kmh", "distance_m", "penalty_s",
    }  # fmt: skip
    changes = await trio.to_thread.run_sync(rebuild_changes, live_rig.database_url, course.stage_id)
    assert format_changes(changes, {}) == "no change"


def _key(frame: dict[str, Any]) -> tuple[str, str]:
    return frame["violation"]["entry_id"], frame["violation"]["started_at"]
