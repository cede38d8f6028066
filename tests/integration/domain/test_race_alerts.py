"""Safety alerts (issue 12 item 2) on a running daemon, real Redis and PostgreSQL.

- A car stops for 200 s on the stage: one `stopped` alert, raised when the stop reached 180 s
  of fix time and cleared at its first moving fix; an instance restart and a second instance
  judging the same car meanwhile never duplicate it; live clients see it raised and cleared.
- A device goes silent (its newest fix older than ALERT_NO_SIGNAL_S on the wall clock): one
  `no_signal` alert, cleared when a newer fix is stored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.support import racing
from tests.support.fixes import BASE_TIME, fix
from tests.support.live import (
    Frames,
    LiveRig,
    watching,
)
from tests.support.metrics import value
from tests.support.racing import to_latlon
from tests.support.service import running_service, wait_until

STOP_AT, STOP_S = 60.0, 200.0


def stopper(t: float) -> tuple[float, float, float]:
    """20 m/s east, stopped at x=1200 for 200 s from t=60, then on to the finish."""
    if t < STOP_AT:
        return 20 * t, 0.0, 20.0
    if t < STOP_AT + STOP_S:
        return 20 * STOP_AT, 0.0, 0.0
    return 20 * STOP_AT + 20 * (t - STOP_AT - STOP_S), 0.0, 20.0


def alert_rows(database_url: str, kind: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT entry_id::text, raised_at, cleared_at, details FROM alerts WHERE kind = %s "
            "ORDER BY raised_at",
            (kind,),
        ).fetchall()


def alerts_of(frames: Frames, kind: str) -> list[dict[str, Any]]:
    return [f["alert"] for f in frames.of("alert") if f["alert"]["kind"] == kind]


async def test_a_stop_of_200_s_raised_once_and_cleared(live_rig: LiveRig) -> None:
    course = racing.live_course(live_rig, [("stopper", "T1"), ("driver", "T1")])
    d = course.devices
    stop = racing.track(d["stopper"], stopper, 420)
    drive = racing.track(d["driver"], racing.constant(20), 160)
    # fixes at t = 0.5 + k: up to 189 s into the stop, still stopped, moving again
    during, later, after = stop[:250], stop[250:259], stop[259:]
    # the stopper's model maps IO 239 to `ignition`; it switched the engine off while stopped
    with psycopg.connect(live_rig.database_url) as conn:
        conn.execute("UPDATE devices SET model = 'FMB920' WHERE imei = %s", (d["stopper"],))
        conn.execute(
            "INSERT INTO io_mappings (model, io_id, name, unit) VALUES ('FMB920', 239, "
            "'ignition', 'bool')"
        )
    for document in during[int(STOP_AT) + 1 :]:
        document["attributes"] = {"239": 0}
    base = {
        **racing.domain_env(live_rig.env),
        "READ_COUNT": "20",
        "ALERT_NO_SIGNAL_S": "1000000000",
    }
    env_a, env_b = {**base, "INSTANCE_ID": "a"}, {**base, "INSTANCE_ID": "b"}

    async with running_service(env_a) as a:
        await racing.judging(a)
        async with watching(a.live_port, course.event_id) as (_, frames):
            live_rig.publish(drive + during)
            await racing.all_judged(live_rig)
            await frames.until(lambda: bool(alerts_of(frames, "stopped")))
            [raised] = alerts_of(frames, "stopped")
        assert raised["entry_id"] == course.entries["stopper"]
        assert raised["number"] == "101" and raised["cleared_at"] is None
        assert raised["stage_id"] == course.stage_id and raised["event_id"] == course.event_id
        assert raised["raised_at"] == _iso(STOP_AT + 0.5 + 180)
        assert raised["details"]["since"] == _iso(STOP_AT + 0.5)
        assert raised["details"]["ignition"] is False  # reported as stopped with ignition off
        assert raised["latitude"] is not None

    # restarted, with a second instance: both judge the still stopped car; still one alert
    async with running_service(env_a) as a, running_service(env_b) as b:
        await racing.judging(a, b)
        for i in range(0, len(later), 2):
            live_rig.publish(later[i : i + 2])
        await racing.all_judged(live_rig)
        [(entry, _raised, cleared_at, _details)] = alert_rows(live_rig.database_url, "stopped")
        assert entry == course.entries["stopper"] and cleared_at is None
        async with watching(b.live_port, course.event_id) as (reply, frames):
            assert [x["id"] for x in reply["alerts"]] == [raised["id"]]
            live_rig.publish(after)
            await racing.all_judged(live_rig)
            await frames.until(lambda: bool(alerts_of(frames, "stopped")))
            [cleared] = alerts_of(frames, "stopped")
        assert cleared["id"] == raised["id"]
        assert cleared["cleared_at"] == _iso(STOP_AT + STOP_S + 0.5)  # the first moving fix
    [(entry, _raised, cleared_at, _details)] = alert_rows(live_rig.database_url, "stopped")
    assert entry == course.entries["stopper"] and cleared_at is not None


async def test_a_silent_device_raises_no_signal_until_it_reports(live_rig: LiveRig) -> None:
    course = racing.live_course(live_rig, [("quiet", None), ("chatty", None)])
    now = datetime.now(UTC)
    with psycopg.connect(live_rig.database_url) as conn:
        conn.execute(
            "UPDATE stages SET opens_at = %s WHERE id = %s",
            (now - timedelta(hours=1), course.stage_id),
        )
    # both cross the start line; "quiet"'s last fix is 200 s old, "chatty"'s is current
    offset = (now - BASE_TIME).total_seconds()
    documents = [
        *_fixes(course.devices["quiet"], offset - 260, 60),
        *_fixes(course.devices["chatty"], offset - 58, 58),
    ]
    env = {**racing.domain_env(live_rig.env), "ALERT_NO_SIGNAL_S": "120"}
    async with running_service(env) as service:
        await racing.judging(service)
        async with watching(service.live_port, course.event_id) as (_, frames):
            live_rig.publish(documents)
            await frames.until(lambda: bool(alerts_of(frames, "no_signal")))
            [raised] = alerts_of(frames, "no_signal")
            assert raised["entry_id"] == course.entries["quiet"]
            assert raised["cleared_at"] is None and raised["details"]["last_fix_at"]
            # it reports again: cleared
            live_rig.publish(_fixes(course.devices["quiet"], offset - 1, 1))
            await frames.until(lambda: len(alerts_of(frames, "no_signal")) >= 2)
            cleared = alerts_of(frames, "no_signal")[1]
            assert cleared["id"] == raised["id"] and cleared["cleared_at"] is not None
            metrics = service.metrics
            assert value(metrics.alerts_raised.labels("no_signal")) == 1
            await wait_until(lambda: value(metrics.alerts_open.labels("no_signal")) == 0)
    rows = alert_rows(live_rig.database_url, "no_signal")
    assert [r[0] for r in rows] == [course.entries["quiet"]]  # chatty: never


def _fixes(device: str, t0: float, seconds: int) -> list[dict[str, Any]]:
    """1 Hz at 20 m/s from x=0 (the start line is at x=100), `t0` seconds after BASE_TIME."""
    documents = []
    for k in range(seconds):
        lat, lon = to_latlon(20.0 * k, 0.0)
        documents.append(fix(device, t0 + k, lat=lat, lon=lon, speed=72.0, angle=90))
    return documents


def _at(second: float) -> str:
    return (BASE_TIME + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso(second: float) -> str:
    return _at(second)


def test_no_signal_does_not_flap_while_late_fixes_catch_up(database_url: str) -> None:
    """A car silent for 5 minutes uploads its buffered fixes late: they are dated inside the
    silence, so the silence has not ended and the alert stays open (no clear and re-raise per
    check: one alert per silence episode). A fix dated within ALERT_NO_SIGNAL_S of now ends it."""
    from processor.domain.alerts import judge_silence
    from processor.domain.definitions import read_current
    from processor.domain.evaluation import evaluate_pairs, rebuild_stage
    from processor.domain.rules.stops import AlertRules

    course = racing.migrated_course(database_url, [("quiet", None)])
    now = datetime.now(UTC)
    offset = (now - BASE_TIME).total_seconds()
    device, entry = course.devices["quiet"], course.entries["quiet"]
    rules = AlertRules(no_signal_s=120)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE stages SET opens_at = %s WHERE id = %s",
            (now - timedelta(hours=1), course.stage_id),
        )
        conn.commit()
        racing.store_fixes(conn, _fixes(device, offset - 600, 30))  # crossed the start line
        assert rebuild_stage(conn, read_current(conn), course.stage_id) is not None
        definitions = read_current(conn)
        changes = []
        for check in range(4):
            late = _fixes(device, offset - 560 + 60 * check, 30)  # still 240 s old or more
            racing.store_fixes(conn, late)
            pair = (course.stage_id, entry)
            evaluate_pairs(conn, definitions, {pair: BASE_TIME.timestamp() + offset - 560})
            changes += judge_silence(conn, rules)
        assert [c.body["alert"]["cleared_at"] is None for c in changes] == [True]  # raised once
        racing.store_fixes(conn, _fixes(device, offset - 5, 1))  # the link is back
        cleared = judge_silence(conn, rules)
    assert [c.body["alert"]["id"] for c in cleared] == [changes[0].body["alert"]["id"]]
    assert cleared[0].body["alert"]["cleared_at"] is not None
    rows = alert_rows(database_url, "no_signal")
    assert len(rows) == 1 and rows[0][2] is not None
