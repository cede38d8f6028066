"""Live fan-out (docs/websocket.md): snapshot, live positions per event, filtering, the snapshot
gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import trio

from processor.app import Service
from tests.support.fixes import BASE_TIME, fix
from tests.support.live import (
    LiveRig,
    live_client,
    no_message,
    receive,
    send,
    subscribe,
)
from tests.support.metrics import live_broadcasts, live_connections, live_subscriptions, value
from tests.support.service import running_service, wait_until


def at(second: float) -> str:
    return (BASE_TIME + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wire(device: str, second: float, **overrides: Any) -> dict[str, Any]:
    """The `position` object the server sends for `fix(device, second)`."""
    document = {
        "device_id": device,
        "ts": at(second),
        "latitude": 41.3,
        "longitude": 19.8,
        "altitude": 100.0,
        "angle": 90.0,
        "speed": 50.0,
        "satellites": 10,
    }
    document.update(overrides)
    return document


def live(service: Service) -> Any:
    assert service.live is not None
    return service.live


async def test_snapshot_then_live_positions_of_that_event_only(live_rig: LiveRig) -> None:
    event_a = live_rig.event(["a1", "a2"])
    event_b = live_rig.event(["b1"])
    async with live_rig.service() as service:
        live_rig.publish(
            [
                fix("a1", 10),
                fix("a1", 20),
                fix("a2", 10),
                fix("a2", 30, satellites=0),  # newest of a2, but faulty: not in the snapshot
                fix("b1", 10),
                fix("stranger", 10),
            ]
        )
        await wait_until(lambda: live_rig.rows() == 6)
        async with live_client(service.live_port) as ws:
            topic = f"event:{event_a}"
            assert await subscribe(ws, event_a) == {
                "type": "subscribed",
                "topic": topic,
                "snapshot": [wire("a1", 20), wire("a2", 10)],
                "results": [],
                "alerts": [],
            }
            live_rig.publish(
                [fix("b1", 40), fix("a1", 40), fix("stranger", 40), fix("a2", 50, speed=70)]
            )
            assert await receive(ws) == {
                "type": "position",
                "topic": topic,
                "position": wire("a1", 40),
            }
            assert await receive(ws) == {
                "type": "position",
                "topic": topic,
                "position": wire("a2", 50, speed=70.0),
            }
            await no_message(ws)
            # unsubscribe stops delivery
            await send(ws, {"type": "unsubscribe", "topic": topic})
            assert await receive(ws) == {"type": "unsubscribed", "topic": topic}
            live_rig.publish([fix("a1", 60)])
            await wait_until(lambda: live_broadcasts(service) == 8)
            await no_message(ws)
            assert live_subscriptions(service) == 0
            # a second event on the same connection: its own snapshot and topic
            reply = await subscribe(ws, event_b)
            assert reply["snapshot"] == [wire("b1", 40)]
        await wait_until(lambda: live_connections(service) == 0)
        assert live_subscriptions(service) == 0  # the closed connection was forgotten


async def test_late_and_faulty_fixes_are_stored_but_not_broadcast(live_rig: LiveRig) -> None:
    event_a = live_rig.event(["a1"])
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    async with live_rig.service() as service, live_client(service.live_port) as ws:
        assert (await subscribe(ws, event_a))["snapshot"] == []
        live_rig.publish(
            [
                fix("a1", 100),
                fix("a1", 90),  # late: older than the last broadcast fix
                fix("a1", 100, attributes={"1": 1}),  # same timestamp, new IO: merged, not sent
                fix("a1", 110, satellites=0),
                fix("a1", 120, lat=0.0, lon=0.0),
                fix("a1", 130, lat=42.3),  # 111 km in 30 s from the last broadcast fix
                fix("a1", 0, timestamp=future),
                fix("a1", 150),
            ]
        )
        assert (await receive(ws))["position"] == wire("a1", 100)
        assert (await receive(ws))["position"] == wire("a1", 150)
        await no_message(ws)
        await wait_until(lambda: live_rig.rows() == 7)  # all stored (one merged)


async def _locked(database_url: str, statement: str) -> psycopg.Connection[Any]:
    def lock() -> psycopg.Connection[Any]:
        conn = psycopg.connect(database_url)
        conn.execute(statement)  # the transaction stays open until commit/rollback
        return conn

    return await trio.to_thread.run_sync(lock)


async def _release(conn: psycopg.Connection[Any]) -> None:
    await trio.to_thread.run_sync(conn.rollback)
    await trio.to_thread.run_sync(conn.close)


async def test_position_committed_during_the_snapshot_is_sent_once_in_the_snapshot(
    live_rig: LiveRig,
) -> None:
    """The writer commits a1@20 while the snapshot waits: it is in the snapshot, not resent."""
    event_a = live_rig.event(["a1"])
    async with live_rig.service() as service, live_client(service.live_port) as ws:
        live_rig.publish([fix("a1", 10)])
        await wait_until(lambda: live_rig.rows() == 1)
        blocker = await _locked(
            live_rig.database_url, "LOCK TABLE entry_devices IN ACCESS EXCLUSIVE MODE"
        )
        await send(ws, {"type": "subscribe", "topic": f"event:{event_a}"})
        await wait_until(lambda: live_subscriptions(service) == 1)  # registered, snapshot waits
        live_rig.publish([fix("a1", 20)])
        await wait_until(lambda: live_broadcasts(service) == 2)
        await wait_until(lambda: live_rig.rows() == 2)
        await _release(blocker)
        reply = await receive(ws)
        assert reply["snapshot"] == [wire("a1", 20)]
        await no_message(ws)


async def test_position_broadcast_during_the_snapshot_is_delivered_after_it(
    live_rig: LiveRig,
) -> None:
    """a1@20 is broadcast while the snapshot waits and is not yet stored when the snapshot is
    read: it is held and delivered right after the snapshot, exactly once."""
    event_a = live_rig.event(["a1"])
    async with live_rig.service() as service, live_client(service.live_port) as ws:
        live_rig.publish([fix("a1", 10)])
        await wait_until(lambda: live_rig.rows() == 1)
        writes_blocked = await _locked(live_rig.database_url, "LOCK TABLE positions IN SHARE MODE")
        snapshot_blocked = await _locked(
            live_rig.database_url, "LOCK TABLE entry_devices IN ACCESS EXCLUSIVE MODE"
        )
        await send(ws, {"type": "subscribe", "topic": f"event:{event_a}"})
        await wait_until(lambda: live_subscriptions(service) == 1)
        live_rig.publish([fix("a1", 20)])
        await wait_until(lambda: live_broadcasts(service) == 2)
        await _release(snapshot_blocked)
        reply = await receive(ws)
        assert reply["snapshot"] == [wire("a1", 10)]
        assert (await receive(ws))["position"] == wire("a1", 20)
        await _release(writes_blocked)
        await wait_until(lambda: live_rig.rows() == 2)
        await no_message(ws)


async def test_a_device_in_two_events_reaches_both_topics(live_rig: LiveRig) -> None:
    event_a = live_rig.event(["shared"])
    event_b = live_rig.event(["shared"])
    async with live_rig.service() as service, live_client(service.live_port) as ws:
        await subscribe(ws, event_a)
        await subscribe(ws, event_b)
        live_rig.publish([fix("shared", 5)])
        topics = {(await receive(ws))["topic"], (await receive(ws))["topic"]}
        assert topics == {f"event:{event_a}", f"event:{event_b}"}
        await no_message(ws)


async def test_device_event_map_refreshes(live_rig: LiveRig) -> None:
    event_a = live_rig.event(["a1"])
    env = {**live_rig.env, "LIVE_DEVICE_EVENT_REFRESH_MS": "100"}
    async with running_service(env) as service, live_client(service.live_port) as ws:
        await subscribe(ws, event_a)
        assert value(service.metrics.live_device_event_map_size) == 1
        with psycopg.connect(live_rig.database_url) as conn:  # link a second device to event A
            conn.execute("INSERT INTO devices (id, imei) VALUES (gen_random_uuid(), 'a2')")
            conn.execute(
                "INSERT INTO entry_devices (entry_id, device_id) SELECT e.id, d.id "
                "FROM entries e, devices d WHERE e.event_id = %s AND d.imei = 'a2'",
                (event_a,),
            )
        await wait_until(lambda: value(service.metrics.live_device_event_map_size) == 2)
        live_rig.publish([fix("a2", 1)])
        assert (await receive(ws))["position"] == wire("a2", 1)


async def test_a_fix_dated_ahead_of_the_clock_does_not_freeze_the_device(
    live_rig: LiveRig,
) -> None:
    """One fix dated 200 s ahead (inside FUTURE_TOLERANCE_S, so not faulty) is shown, and the
    correctly dated fixes after it still reach subscribers and later snapshots."""
    event_a = live_rig.event(["a1"])
    now = datetime.now(UTC).replace(microsecond=0)

    def dated(seconds: float) -> dict[str, Any]:
        stamp = (now + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
        return fix("a1", 0, timestamp=stamp)

    def shown(seconds: float) -> str:
        return (now + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async with live_rig.service() as service, live_client(service.live_port) as ws:
        assert (await subscribe(ws, event_a))["snapshot"] == []
        live_rig.publish([dated(-10), dated(200), dated(-9), dated(-8), dated(-8.5)])
        received = [(await receive(ws))["position"]["ts"] for _ in range(4)]
        assert received == [shown(-10), shown(200), shown(-9), shown(-8)]
        await no_message(ws)  # -8.5 is late (older than -8): stored, not broadcast
        await wait_until(lambda: live_rig.rows() == 5)
        async with live_client(service.live_port) as second:
            reply = await subscribe(second, event_a)
            assert [p["ts"] for p in reply["snapshot"]] == [shown(-8)]
            live_rig.publish([dated(-7)])
            assert (await receive(second))["position"]["ts"] == shown(-7)
            assert (await receive(ws))["position"]["ts"] == shown(-7)
