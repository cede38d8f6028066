"""One race-control session end to end, as a client sees it (issue 12 items 4 and 6).

A stage with a speed zone (start line to checkpoint, 80 km/h, brackets 60/120/180 s) and two
cars: `speeder` reports 100 km/h for 5 s inside the zone, `stopper` stops 200 s after the
waypoint and drives on. A subscribed client receives, after `subscribed`: timing frames,
results frames, the violation, the stop raised and later cleared, and the final standings with
the zone penalty. The frames (positions trimmed) are written as JSON lines to the path in
`RACE_SESSION_RECORD` when set (docs/examples/race-control-session.jsonl was recorded so), and
always to the test's tmp dir.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import trio
from psycopg.types.json import Jsonb

from tests.integration.domain.test_race_alerts import stopper
from tests.support import racing
from tests.support.live import (
    Frames,
    LiveRig,
    live_client,
    send,
)
from tests.support.racing import BRACKETS
from tests.support.service import running_service


async def test_a_recorded_session_with_a_violation_and_a_stop(
    live_rig: LiveRig,
    tmp_path: Path,
) -> None:
    course = racing.live_course(live_rig, [("speeder", "T1"), ("stopper", "T1")])
    with psycopg.connect(live_rig.database_url) as conn:
        conn.execute(
            "INSERT INTO speed_zones (id, stage_id, start_control_id, end_control_id, limit_kmh, "
            "min_duration_s, penalties) VALUES (%s, %s, %s, %s, 80, 3, %s)",
            (str(uuid.uuid4()), course.stage_id, course.controls["start"],
             course.controls["checkpoint"], Jsonb(BRACKETS)),
        )  # fmt: skip
    speeder = racing.track(course.devices["speeder"], racing.constant(20), 160)
    for document in speeder[50:55]:
        document["speed"] = 100.0
    stop = racing.track(course.devices["stopper"], stopper, 420)
    env = {**racing.domain_env(live_rig.env), "ALERT_NO_SIGNAL_S": "1000000000"}
    async with running_service(env) as service:
        await racing.judging(service)
        async with live_client(service.live_port) as ws, trio.open_nursery() as nursery:
            frames = Frames()
            nursery.start_soon(frames.collect, ws)
            await send(ws, {"type": "subscribe", "topic": f"event:{course.event_id}"})
            await frames.until(lambda: bool(frames.of("subscribed")))
            live_rig.publish(speeder + stop[:250])
            await racing.all_judged(live_rig)
            await frames.until(lambda: bool(frames.of("alert")) and bool(frames.of("violation")))
            live_rig.publish(stop[250:])
            await racing.all_judged(live_rig)
            await frames.until(lambda: len(frames.of("alert")) >= 2 and _all_finished(frames))
            nursery.cancel_scope.cancel()

    kinds = [f["type"] for f in frames.frames]
    assert kinds[0] == "subscribed"
    assert kinds.index("timing") < kinds.index("results")
    raised, cleared = (f["alert"] for f in frames.of("alert"))
    assert raised["kind"] == cleared["kind"] == "stopped" and raised["id"] == cleared["id"]
    assert raised["cleared_at"] is None and cleared["cleared_at"] is not None
    [violation] = {
        orjson.dumps(f["violation"]): f["violation"] for f in frames.of("violation")
    }.values()
    assert violation["entry_id"] == course.entries["speeder"] and violation["penalty_s"] == 60
    final = {r["entry_id"]: r for r in frames.of("results")[-1]["results"]}
    assert final[course.entries["speeder"]]["penalty_ms"] == 60_000
    assert final[course.entries["stopper"]]["penalty_ms"] == 0

    lines = _trimmed(frames.frames)
    (tmp_path / "session.jsonl").write_bytes(lines)
    target = os.environ.get("RACE_SESSION_RECORD")
    if target:
        await trio.Path(target).write_bytes(lines)


def _all_finished(frames: Frames) -> bool:
    tables = frames.of("results")
    return (
        bool(tables)
        and all(r["status"] == "finished" for r in tables[-1]["results"])
        and (len(tables[-1]["results"]) == 2)
    )


def _trimmed(frames: list[dict[str, Any]]) -> bytes:
    """Every race frame; positions: the first three only; the snapshot: first two."""
    out: list[bytes] = []
    positions = 0
    for frame in frames:
        if frame["type"] == "position":
            positions += 1
            if positions > 3:
                continue
        shown = frame
        if frame["type"] == "subscribed":
            shown = {**frame, "snapshot": frame["snapshot"][:2]}
        out.append(orjson.dumps(shown))
    out.append(orjson.dumps({"type": "_note", "positions_received": positions, "kept": 3}))
    return b"\n".join(out) + b"\n"
