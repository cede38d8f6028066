"""Timing on the WebSocket (issue 12 item 4), against real Redis, PostgreSQL and a running daemon.

A client subscribed to the rally's event sees, after its `subscribed` reply (which carries the
stage's current standings and the open alerts): a `timing` frame for each pass the domain
engine commits, coalesced `results` frames (whole table, at most one per second per stage),
and, when buffered fixes arrive late and add the waypoint pass that was missed, a `timing`
frame for it and standings without the penalty. With two instances, each instance's client
sees the same changes, each once, whichever instance computed them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import redis
import trio

from processor.app import Service
from processor.codecs import race_feed
from processor.codecs.race_feed import TIMING, decode_fields, feed_key
from tests.support import racing
from tests.support.fixes import BASE_TIME, fix
from tests.support.live import (
    Frames,
    LiveRig,
    live_client,
    no_message,
    receive,
    subscribe,
    watching,
)
from tests.support.racing import WAYPOINT_PENALTY_S, WAYPOINT_X
from tests.support.service import running_service, wait_until

CARS = [("steady", "T1"), ("late", "T1")]


def race_tracks(course: racing.Course) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every fix but the late car's waypoint dip, the dip: buffered, sent afterwards)."""
    d = course.devices
    steady = racing.track(d["steady"], racing.constant(20), 160)
    late = racing.track(d["late"], racing.detour(20), 160)
    gap = [
        doc
        for doc in late
        if abs((doc["longitude"] - racing.LON0) * racing.M_PER_DEG_LON - WAYPOINT_X) <= 120
    ]
    return steady + [doc for doc in late if doc not in gap], gap


def finished(frames: Frames, count: int, *, penalty_free: int = 0) -> Callable[[], bool]:
    """The last `results` frame shows `count` finished entries (`penalty_free` of them with
    no penalty)."""

    def check() -> bool:
        tables = frames.of("results")
        if not tables:
            return False
        rows = tables[-1]["results"]
        done = [r for r in rows if r["status"] == "finished"]
        return len(done) == count and sum(r["penalty_ms"] == 0 for r in done) >= penalty_free

    return check


def passes(frames: Frames) -> set[tuple[str, str]]:
    return {
        (f["record"]["entry_id"], f["record"]["control_id"])
        for f in frames.of("timing")
        if "record" in f
    }


async def test_client_sees_timing_then_results_and_a_late_pass(live_rig: LiveRig) -> None:
    course = racing.live_course(live_rig, CARS)
    documents, gap = race_tracks(course)
    e, c = course.entries, course.controls
    async with running_service(racing.domain_env(live_rig.env)) as service:
        assert service.live is not None
        await racing.judging(service)
        async with watching(service.live_port, course.event_id) as (reply, frames):
            assert reply["type"] == "subscribed"
            assert reply["results"] == [{"stage_id": course.stage_id, "results": []}]
            assert reply["alerts"] == []
            started = trio.current_time()

            live_rig.publish(documents)
            await racing.all_judged(live_rig)
            await frames.until(finished(frames, 2, penalty_free=1))
            # every pass as a timing frame: steady passes all four controls, late misses
            # the waypoint (its dip has not arrived)
            assert passes(frames) == {
                *((e["steady"], c[k]) for k in ("start", "waypoint", "checkpoint", "finish")),
                *((e["late"], c[k]) for k in ("start", "checkpoint", "finish")),
            }
            record = next(
                f["record"]
                for f in frames.of("timing")
                if f["record"]["entry_id"] == e["steady"]
                and f["record"]["control_id"] == c["start"]
            )
            assert record["control_ordinal"] == 1 and record["kind"] == "start"
            assert record["device_id"] == course.devices["steady"]
            assert record["passed_at"].endswith("Z") and record["distance_m"] == 0.0
            assert all(f["topic"] == f"event:{course.event_id}" for f in frames.frames)
            assert all(f["stage_id"] == course.stage_id for f in frames.of("timing"))
            # the first timing frame comes before the first results frame
            kinds = [f["type"] for f in frames.frames]
            assert kinds.index("timing") < kinds.index("results")
            table = frames.of("results")[-1]["results"]
            assert [r["number"] for r in table] == ["101", "102"]  # steady wins: no penalty
            assert table[0]["position"] == 1 and table[0]["gap_ms"] == 0
            assert table[1]["penalty_ms"] == WAYPOINT_PENALTY_S * 1000
            assert set(table[0]) == {
                "entry_id", "number", "class", "status", "started_at", "finished_at",
                "elapsed_ms", "penalty_ms", "total_ms", "controls_passed", "controls_missed",
                "position", "class_position", "gap_ms",
            }  # fmt: skip

            # the late car's buffered dip arrives: a new waypoint pass, the penalty goes
            before = len(frames.frames)
            live_rig.publish(gap)
            await racing.all_judged(live_rig)
            await frames.until(finished(frames, 2, penalty_free=2))
            later = frames.frames[before:]
            assert any(
                f["type"] == "timing"
                and f.get("record", {}).get("entry_id") == e["late"]
                and f["record"]["control_id"] == c["waypoint"]
                for f in later
            )
            # coalesced: at most one results frame per second for the stage (plus one)
            elapsed = trio.current_time() - started
            assert len(frames.of("results")) <= elapsed + 2

        # a new subscriber gets the standings in `subscribed`
        async with live_client(service.live_port) as ws:
            reply = await subscribe(ws, course.event_id)
            [stage] = reply["results"]
            assert stage["stage_id"] == course.stage_id
            assert [r["penalty_ms"] for r in stage["results"]] == [0, 0]
    assert live_rig.redis.xlen(feed_key(live_rig.stream_key)) > 0


async def test_two_instances_clients_see_every_change_once(live_rig: LiveRig) -> None:
    course = racing.live_course(live_rig, CARS)
    documents, gap = race_tracks(course)
    base = {**racing.domain_env(live_rig.env), "READ_COUNT": "20"}
    async with (
        running_service({**base, "INSTANCE_ID": "a"}) as a,
        running_service({**base, "INSTANCE_ID": "b"}) as b,
    ):
        await racing.judging(a, b)
        async with (
            watching(a.live_port, course.event_id) as (reply_a, frames_a),
            watching(b.live_port, course.event_id) as (reply_b, frames_b),
        ):
            assert reply_a["type"] == reply_b["type"] == "subscribed"
            got = [frames_a, frames_b]
            for i in range(0, len(documents + gap), 40):
                live_rig.publish((documents + gap)[i : i + 40])
            await racing.all_judged(live_rig)
            for frames in got:
                await frames.until(finished(frames, 2, penalty_free=2))
            # every timing change on the feed reached both clients (they read all of it)
            written = _timing_written(live_rig.redis, live_rig.stream_key)
            for frames in got:
                await frames.until(lambda: len(frames.of("timing")) >= written, timeout=30)  # noqa: B023
        # both engines worked, and each client saw every timing change exactly once
        assert a.domain is not None and b.domain is not None
        timing = [Counter(orjson.dumps(f) for f in frames.of("timing")) for frames in got]
        assert timing[0] == timing[1]
        assert max(timing[0].values()) == 1
        assert len(passes(got[0])) == 8


def _timing_written(client: redis.Redis, stream: str) -> int:
    """The timing changes on the race feed (one event here: each is one frame per client)."""
    entries = client.xrange(feed_key(stream))
    return sum(1 for _, fields in entries if decode_fields(fields).kind == TIMING)


async def test_results_pump_survives_notices_while_it_waits() -> None:
    """Notices for a stage arriving while its window runs (and while it is being read) are
    coalesced into one more frame; an empty wake-up is harmless."""
    from processor.codecs.race_feed import results_change
    from processor.live.race_feed_reader import RaceFeedReader
    from processor.live.registry import Grants, Registry
    from processor.observability.metrics import Metrics

    sent: list[str] = []
    sent_at: list[float] = []

    class Outlet:
        def enqueue(self, frame: str, kind: str, entry_ms: int | None) -> None:
            sent.append(kind)
            sent_at.append(trio.current_time())

        def overflow(self) -> None:
            raise AssertionError("overflow")

        def hold(self, size: int) -> bool:
            return True

        def release(self, size: int) -> None:
            pass

    class Database:
        async def run(self, fn: Any) -> Any:
            await trio.sleep(0.05)
            return {"s": []}

    metrics = Metrics()
    registry = Registry(metrics)
    registry.subscribe(Outlet(), "event:e", Grants(frozenset({"results"}))).activate([])
    feed = RaceFeedReader(
        redis_url="redis://unused",
        control=None,  # type: ignore[arg-type]
        stream="x",
        read_block_ms=100,
        database=Database(),  # type: ignore[arg-type]
        registry=registry,
        metrics=metrics,
        results_window_s=0.2,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed._pump)
        feed._dirty_event.set()  # a wake-up with nothing dirty (a stage sent meanwhile)
        await trio.sleep(0.05)
        notice = results_change("e", "s").fields()
        for _ in range(20):
            feed.dispatch({k.encode(): v for k, v in notice.items()})
            await trio.sleep(0.03)
        last_notice = trio.current_time()
        with trio.fail_after(10):  # the last notice is answered by a frame after it
            while not sent_at or sent_at[-1] < last_notice:  # noqa: ASYNC110
                await trio.sleep(0.05)
        await trio.sleep(0.3)  # and by no more than that one
        nursery.cancel_scope.cancel()
    assert 1 <= len(sent) <= 5  # ~0.6 s of notices, one frame per 0.2 s window at most
    assert set(sent) == {"results"}


async def test_race_control_frames_follow_directus_permissions(live_rig: LiveRig) -> None:
    """Each subscriber gets timing/results/violation/alert frames (and results/alerts in
    `subscribed`) only for the collections its Directus role can read, checked at subscribe
    and again at each re-check; positions only need the event."""
    course = racing.live_course(live_rig, CARS)
    directus = live_rig.directus
    event_id, stage_id = course.event_id, course.stage_id
    directus.user("viewer", events={event_id}, collections=set())
    directus.user("timer", events={event_id}, collections={"timing_records"})
    env = {**live_rig.env, "LIVE_WS_REAUTH_S": "0.2"}
    device, entry, control = course.devices["steady"], course.entries["steady"], course.controls
    at = race_feed.timestamp(BASE_TIME)
    record = race_feed.record_object(
        entry_id=entry,
        control_id=control["start"],
        control_ordinal=1,
        kind="start",
        device_id=device,
        passed_at=BASE_TIME,
        speed_kmh=72.0,
        distance_m=0.0,
        fix_before=None,
        fix_after=None,
    )
    alert = {
        "id": entry, "event_id": event_id, "stage_id": stage_id, "entry_id": entry,
        "number": "101", "kind": "stopped", "raised_at": at, "cleared_at": None,
        "latitude": 41.3, "longitude": 19.8, "details": {"since": at, "last_fix_at": at},
    }  # fmt: skip
    violation = {
        "stage_id": stage_id, "entry_id": entry, "number": "101", "zone_id": control["finish"],
        "started_at": at, "ended_at": at, "max_speed_kmh": 100.0, "excess_kmh": 20.0,
        "distance_m": 10.0, "penalty_s": 60,
    }  # fmt: skip
    changes = [
        race_feed.timing_change(event_id, stage_id, record),
        race_feed.alert_change(event_id, alert),
        race_feed.violation_change(event_id, violation),
    ]

    async with (
        running_service(env) as service,
        live_client(service.live_port) as everything,
        live_client(service.live_port, token="viewer") as viewer,
        live_client(service.live_port, token="timer") as timer,
    ):
        replies = [await subscribe(ws, event_id) for ws in (everything, viewer, timer)]
        assert replies[0]["results"] == [{"stage_id": stage_id, "results": []}]
        assert [reply["results"] for reply in replies[1:]] == [[], []]

        async def announce(*fixes_at: float) -> list[str]:
            """The changes, then positions: the client that may read everything has received
            the last change, so the feed reader has queued each change to every subscriber
            (one dispatch, no await) before these positions are read."""
            for change in changes:
                live_rig.redis.xadd(feed_key(live_rig.stream_key), change.fields())
            kinds = [(await receive(everything))["type"] for _ in changes]
            live_rig.publish([fix(device, t) for t in fixes_at])
            return kinds

        assert await announce(1) == ["timing", "alert", "violation"]
        assert (await receive(everything))["type"] == "position"
        assert (await receive(viewer))["type"] == "position"
        assert [(await receive(timer))["type"] for _ in range(2)] == ["timing", "position"]

        # the timer's role loses timing_records: the next re-check stops those frames
        directus.readable["timer"] = set()
        await wait_until(lambda: sessions_of(service, "timer") == [frozenset()])
        assert await announce(2) == ["timing", "alert", "violation"]
        for ws in (viewer, timer):
            assert (await receive(ws))["type"] == "position"
        assert (await receive(everything))["type"] == "position"
        for ws in (viewer, timer):
            await no_message(ws, 0.3)


def sessions_of(service: Service, token: str) -> list[frozenset[str]]:
    """The race-control kinds granted to the live sessions of `token`."""
    assert service.live is not None
    return [
        session.grants.kinds
        for credentials, session in service.live._sessions.items()
        if credentials.bearer == token
    ]
