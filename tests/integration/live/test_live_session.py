"""Live access with a lifetime (docs/websocket.md, Session lifetime): every session is re-checked
with Directus every LIVE_WS_REAUTH_S, against a running service and the Directus stand-in; the
re-check policy itself (jitter, coalescing, the grace rule) in-process on a mock clock."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import orjson
import trio
import trio.testing

from processor.app import Service
from processor.live.auth import EVENTS_PER_CALL, AuthOutcome, Credentials, Directus, Verdict
from processor.live.session import (
    GRACE_CHECKS,
    RACE_COLLECTIONS,
    REAUTH_UNAVAILABLE,
    SESSION_EXPIRED,
    Session,
)
from processor.observability.metrics import Metrics
from tests.support.directus import DirectusStandIn
from tests.support.fixes import fix
from tests.support.live import (
    TOKEN,
    LiveRig,
    close_code,
    live_client,
    no_message,
    receive,
    subscribe,
)
from tests.support.metrics import live_connections, live_subscriptions, value
from tests.support.service import running_service, wait_until

PERIOD_S = 0.2


def reauth_env(live_rig: LiveRig) -> dict[str, str]:
    return {**live_rig.env, "LIVE_WS_REAUTH_S": str(PERIOD_S)}


def count(metric: Any, label: str) -> float:
    return float(value(metric.labels(label)))


def live(service: Service) -> Any:
    assert service.live is not None
    return service.live


async def test_a_revoked_session_is_closed_with_4001_and_others_stay(live_rig: LiveRig) -> None:
    """Two connections of one session (same token) and one of another: Directus sees one
    re-check per session per period, however many connections and subscriptions; when the
    session is revoked (401), both its connections receive positions until the close frame
    4001 "session expired"; the other session is untouched."""
    events = [live_rig.event([f"d{i}"]) for i in range(3)]
    live_rig.directus.user("bob", events=set(events))
    async with (
        running_service(reauth_env(live_rig)) as service,
        live_client(service.live_port) as first,
        live_client(service.live_port) as second,
        live_client(service.live_port, token="bob") as other,
    ):
        metrics = service.metrics
        for ws in (first, second, other):
            for event_id in events:
                assert (await subscribe(ws, event_id))["type"] == "subscribed"
        await wait_until(lambda: count(metrics.live_reauth, "ok") >= 8)
        seen = list(live_rig.directus.seen)
        rechecks = sum(1 for s in seen if s.path == "/users/me" and s.token == TOKEN) - 2
        listed = sum(1 for s in seen if s.path == "/items/events" and s.token == TOKEN)
        assert rechecks >= 3
        assert rechecks - 1 <= listed <= rechecks  # one list read per re-check (one may run)
        per_event = [s for s in seen if s.path.startswith("/items/events/") and s.token == TOKEN]
        assert len(per_event) == 6  # the subscribes' own authorizations only
        # every subscribed event of the session, in one read
        last = next(s for s in reversed(seen) if s.path == "/items/events" and s.token == TOKEN)
        assert sorted(orjson.loads(last.query["filter"][0])["id"]["_in"]) == sorted(events)
        assert last.query["fields"] == ["id"]

        live_rig.publish([fix("d0", 1)])
        for ws in (first, second, other):
            assert (await receive(ws))["position"]["device_id"] == "d0"
        live_rig.directus.users[TOKEN] = "401"
        for ws in (first, second):
            code, before = await close_code(ws, within=10)
            assert code == SESSION_EXPIRED
            assert ws.closed is not None
            assert ws.closed.reason == "session expired"
            assert all(frame["type"] == "position" for frame in before)
        assert count(metrics.live_reauth, "expired") == 1  # one re-check for both
        assert count(metrics.live_revocations, "session_expired") == 2
        live_rig.publish([fix("d1", 2)])
        assert (await receive(other))["position"]["device_id"] == "d1"
        assert other.closed is None
        await wait_until(lambda: live_connections(service) == 1)
        assert len(live(service)._sessions) == 1  # the ended session was forgotten


async def test_an_event_no_longer_readable_is_unsubscribed_with_an_error(
    live_rig: LiveRig,
) -> None:
    event_a = live_rig.event(["a1"])
    event_b = live_rig.event(["b1"])
    async with (
        running_service(reauth_env(live_rig)) as service,
        live_client(service.live_port) as ws,
    ):
        await subscribe(ws, event_a)
        await subscribe(ws, event_b)
        live_rig.directus.allowed[TOKEN] = {event_b}
        assert await receive(ws, within=10) == {
            "type": "error",
            "code": "forbidden",
            "message": "no longer allowed to read this event",
            "topic": f"event:{event_a}",
        }
        assert count(service.metrics.live_revocations, "event_forbidden") == 1
        live_rig.publish([fix("a1", 1), fix("b1", 1)])
        assert (await receive(ws))["position"]["device_id"] == "b1"
        await no_message(ws)
        assert ws.closed is None
        assert live_subscriptions(service) == 1
        # the role loses read on `events` altogether (403 on the list): the rest goes too
        live_rig.directus.event_mode = "403"
        reply = await receive(ws, within=10)
        assert (reply["type"], reply["code"], reply["topic"]) == (
            "error",
            "forbidden",
            f"event:{event_b}",
        )
        assert ws.closed is None


async def test_directus_unreachable_keeps_sessions_for_the_grace_then_closes_with_4002(
    live_rig: LiveRig,
) -> None:
    """Unanswered re-checks keep the last good verdict; GRACE_CHECKS of them in a row close."""
    event_a = live_rig.event(["a1"])
    async with (
        running_service(reauth_env(live_rig)) as service,
        live_client(service.live_port) as ws,
    ):
        metrics = service.metrics
        await subscribe(ws, event_a)
        directus = live_rig.directus
        directus.users[TOKEN] = "503"
        await wait_until(lambda: count(metrics.live_reauth, "unavailable") >= GRACE_CHECKS - 1)
        directus.users[TOKEN] = "ok"  # answered again before the grace ran out: reset
        ok = count(metrics.live_reauth, "ok")
        await wait_until(lambda: count(metrics.live_reauth, "ok") > ok)
        assert ws.closed is None
        live_rig.publish([fix("a1", 1)])
        assert (await receive(ws))["position"]["device_id"] == "a1"
        # a timeout on the events read counts the same as a 5xx on /users/me
        directus.event_mode = "slow"
        directus.slow_s = 2.0
        unanswered = count(metrics.live_reauth, "unavailable")
        await wait_until(lambda: count(metrics.live_reauth, "unavailable") > unanswered)
        directus.event_mode = None
        directus.users[TOKEN] = "500"
        code, _ = await close_code(ws, within=20)
        assert code == REAUTH_UNAVAILABLE
        assert ws.closed is not None
        assert ws.closed.reason == "authorization unavailable"
        assert count(metrics.live_revocations, "reauth_unavailable") == 1
        assert count(metrics.live_reauth, "expired") == 0


# --- the policy, in-process on a mock clock ---------------------------------------------------


class Answers:
    """A Directus double with scripted verdicts (the real client is exercised above)."""

    def __init__(self) -> None:
        self.outcome = AuthOutcome.OK
        self.events = Verdict.ALLOWED
        self.readable: set[str] = set()
        self.collections: dict[str, Verdict] = dict.fromkeys(
            RACE_COLLECTIONS.values(), Verdict.ALLOWED
        )
        self.calls: list[tuple[float, str]] = []

    async def authenticate(self, credentials: Credentials) -> tuple[AuthOutcome, str]:
        self.calls.append((trio.current_time(), "users/me"))
        await trio.sleep(0.01)
        return self.outcome, "u"

    async def readable_events(
        self, credentials: Credentials, event_ids: Collection[str]
    ) -> tuple[Verdict, frozenset[str]]:
        self.calls.append((trio.current_time(), "events"))
        return self.events, frozenset(self.readable.intersection(event_ids))

    async def collection_access(
        self, credentials: Credentials, collections: Iterable[str]
    ) -> Mapping[str, Verdict]:
        self.calls.append((trio.current_time(), "collections"))
        return {c: self.collections[c] for c in collections}


class Member:
    def __init__(self, topics: list[str]) -> None:
        self.subscribed = list(topics)
        self.revoked: list[str] = []
        self.closed: tuple[int, str] | None = None

    def topics(self) -> list[str]:
        return list(self.subscribed)

    def revoke(self, topic: str) -> bool:
        self.subscribed.remove(topic)
        self.revoked.append(topic)
        return True

    def request_close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def session_for(answers: Answers, metrics: Metrics, **kwargs: Any) -> Session:
    return Session(
        Credentials(bearer="t"),
        directus=answers,  # type: ignore[arg-type]
        metrics=metrics,
        period_s=60.0,
        limiter=trio.CapacityLimiter(1),
        **kwargs,
    )


async def test_rechecks_are_jittered_coalesced_and_keep_the_last_verdict(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers = Answers()
    answers.readable = {"e1", "e2"}
    metrics = Metrics()
    session = session_for(answers, metrics)
    members = [Member(["event:e1", "event:e2"]) for _ in range(5)]
    session.members.update(members)
    waits = [session.next_wait() for _ in range(1000)]
    assert 45.0 <= min(waits) < 46.0 and 59.0 < max(waits) <= 60.0  # 75-100 % of the period
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await trio.sleep(60 * 10)
        # five connections, ten subscriptions: three reads per period, never more
        checks = [t for t, what in answers.calls if what == "users/me"]
        assert 10 <= len(checks) <= 14
        assert [what for _t, what in answers.calls].count("events") == len(checks)
        gaps = [b - a for a, b in itertools.pairwise(checks)]
        assert all(45.0 <= gap <= 61.0 for gap in gaps)
        assert len({round(gap, 3) for gap in gaps}) > 1  # jittered
        assert session.grants.kinds == set(RACE_COLLECTIONS)

        # Directus down: the verdict stands for GRACE_CHECKS - 1 re-checks, then closes
        answers.outcome = AuthOutcome.UNAVAILABLE
        answers.collections["alerts"] = Verdict.FORBIDDEN  # not seen while unanswered
        while session.failures < GRACE_CHECKS - 1:  # noqa: ASYNC110 - a mock clock
            await trio.sleep(1)
        assert all(m.closed is None for m in members)
        assert session.grants.kinds == set(RACE_COLLECTIONS)
        answers.outcome = AuthOutcome.OK  # back: the count starts over, new verdicts apply
        while session.failures:  # noqa: ASYNC110
            await trio.sleep(1)
        assert session.grants.kinds == set(RACE_COLLECTIONS) - {"alert"}
        answers.events = Verdict.UNAVAILABLE  # a part unanswered is an unanswered re-check
        for _ in range(GRACE_CHECKS):
            await trio.sleep(60)
        assert all(m.closed == (REAUTH_UNAVAILABLE, "authorization unavailable") for m in members)
        assert session.ended
        assert count(metrics.live_revocations, "reauth_unavailable") == 5
        nursery.cancel_scope.cancel()
    assert not any(m.revoked for m in members)


async def test_a_failing_recheck_is_contained_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Broken(Answers):
        async def authenticate(self, credentials: Credentials) -> tuple[AuthOutcome, str]:
            raise RuntimeError("a bug")

    metrics = Metrics()
    session = session_for(Broken(), metrics)
    session.members.add(Member([]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await trio.sleep(60 * 3)
        session.close()
    assert count(metrics.live_reauth, "error") >= 2


async def test_expired_session_closes_every_connection_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers = Answers()
    metrics = Metrics()
    session = session_for(answers, metrics)
    members = [Member(["event:e1"]), Member([])]
    session.members.update(members)
    answers.readable = {"e1"}
    answers.collections["timing_records"] = Verdict.EXPIRED  # 401 on any read: expired
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await trio.sleep(61)
        assert [m.closed for m in members] == [(SESSION_EXPIRED, "session expired")] * 2
        assert session.ended
        calls = len(answers.calls)
        await trio.sleep(600)
        assert len(answers.calls) == calls  # an ended session checks no more
    assert count(metrics.live_reauth, "expired") == 1


async def test_the_recheck_reads_map_every_directus_answer(directus: DirectusStandIn) -> None:
    """The two re-check reads against the stand-in's every answer, and the events read split
    into calls of EVENTS_PER_CALL ids."""
    events = [str(uuid.uuid4()) for _ in range(EVENTS_PER_CALL * 2 + 50)]
    directus.user("t", events=set(events[::2]), collections={"alerts"})
    credentials = Credentials(bearer="t")
    async with Directus.client(directus.url, 0.5) as http:
        client = Directus(http, timeout_s=0.5, metrics=Metrics())
        verdict, readable = await client.readable_events(credentials, events)
        assert (verdict, readable) == (Verdict.ALLOWED, frozenset(events[::2]))
        assert directus.calls("/items/events") == 3
        access = await client.collection_access(credentials, ["alerts", "stage_results"])
        assert access == {"alerts": Verdict.ALLOWED, "stage_results": Verdict.FORBIDDEN}
        for mode, expected in (
            ("401", Verdict.EXPIRED),
            ("403", Verdict.FORBIDDEN),
            ("404", Verdict.UNAVAILABLE),
            ("500", Verdict.UNAVAILABLE),
            ("nodata", Verdict.UNAVAILABLE),
            ("null", Verdict.UNAVAILABLE),  # a list read never answers null: cannot tell
            ("slow", Verdict.UNAVAILABLE),  # cut at the 0.5 s deadline
        ):
            directus.event_mode = directus.collection_mode = mode
            directus.slow_s = 5.0
            with trio.fail_after(3):
                assert (await client.readable_events(credentials, events[:3]))[0] is expected
                assert (await client.collection_access(credentials, ["alerts"])) == {
                    "alerts": expected
                }
        directus.event_mode = directus.collection_mode = None
        directus.users["t"] = "401"  # an expired session: 401 on every read
        assert (await client.readable_events(credentials, events[:1]))[0] is Verdict.EXPIRED
        assert await client.collection_access(credentials, ["alerts"]) == {
            "alerts": Verdict.EXPIRED
        }
        assert await client.readable_events(credentials, []) == (Verdict.ALLOWED, frozenset())
