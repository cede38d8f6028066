"""Live upgrade authentication (docs/websocket.md) against a real HTTP Directus stand-in."""

from __future__ import annotations

import trio

from tests.support.directus import DirectusStandIn
from tests.support.live import ORIGIN, live_client, rejection_status, subscribe
from tests.support.metrics import live_subscriptions, value
from tests.support.service import running_service


async def test_upgrade_outcomes(live_env: dict[str, str], directus: DirectusStandIn) -> None:
    env = live_env
    directus.user("good")
    for mode in ("401", "403", "null", "500", "502", "nodata", "slow"):
        directus.user(f"tok-{mode}", mode)
    async with running_service(env) as service:
        port = service.live_port
        with trio.fail_after(20):
            # no credentials / unknown (expired) token / Directus says no -> 401
            assert await rejection_status(port, token=None) == 401
            assert await rejection_status(port, token="expired-token") == 401
            assert await rejection_status(port, token="tok-401") == 401
            assert await rejection_status(port, token="tok-403") == 401
            assert await rejection_status(port, token="tok-null") == 401
            # Directus broken or slow -> 503 (slow is cut at DIRECTUS_AUTH_TIMEOUT_MS=500)
            assert await rejection_status(port, token="tok-500") == 503
            assert await rejection_status(port, token="tok-502") == 503
            assert await rejection_status(port, token="tok-nodata") == 503
            started = trio.current_time()
            assert await rejection_status(port, token="tok-slow") == 503
            assert trio.current_time() - started < 2.0
            # wrong path
            assert await rejection_status(port, token="good", path="/other") == 404
            # a good token is accepted
            async with live_client(port, token="good") as ws:
                assert ws.closed is None
        metrics = service.metrics
        assert value(metrics.live_auth.labels("ok")) == 1
        assert value(metrics.live_auth.labels("unauthorized")) == 4
        assert value(metrics.live_auth.labels("unavailable")) == 4
        assert value(metrics.live_auth.labels("missing")) == 1
    # The credential went to Directus as it came (that credentials never reach the logs is
    # checked on a real daemon's log file in test_live_shutdown.py).
    assert {s.credential for s in directus.seen if s.token == "good"} == {"bearer"}


async def test_cookie_sessions_need_an_allowed_origin(
    live_env: dict[str, str], directus: DirectusStandIn
) -> None:
    directus.user("cookie-session")
    async with running_service(live_env) as service:
        port = service.live_port
        with trio.fail_after(15):
            # foreign or missing Origin: refused before Directus is even asked
            assert await rejection_status(port, token=None, cookie="cookie-session") == 403
            assert (
                await rejection_status(
                    port, token=None, cookie="cookie-session", origin="https://evil.example"
                )
                == 403
            )
            assert not [s for s in directus.seen if s.token == "cookie-session"]
            # an allowed Origin (trailing slash tolerated): the cookie is forwarded
            async with live_client(port, token=None, cookie="cookie-session", origin=ORIGIN + "/"):
                pass
            assert [s.credential for s in directus.seen if s.token == "cookie-session"] == [
                "cookie"
            ]
            # a Bearer token needs no Origin (browsers cannot set Authorization on upgrades)
            async with live_client(port, token="cookie-session"):
                pass
        assert value(service.metrics.live_auth.labels("origin_refused")) == 2


async def test_empty_origin_list_allows_no_cookie_session(
    live_env: dict[str, str], directus: DirectusStandIn
) -> None:
    directus.user("cookie-session")
    env = {**live_env, "LIVE_WS_ALLOWED_ORIGINS": ""}
    async with running_service(env) as service:
        with trio.fail_after(10):
            status = await rejection_status(
                service.live_port, token=None, cookie="cookie-session", origin=ORIGIN
            )
        assert status == 403


async def test_directus_down_is_503(live_env: dict[str, str]) -> None:
    # Nothing listens on port 9 (discard): connection refused.
    env = {**live_env, "DIRECTUS_URL": "http://127.0.0.1:9"}
    async with running_service(env) as service:
        with trio.fail_after(10):
            assert await rejection_status(service.live_port, token="anything") == 503


async def test_event_authorization_fails_closed(
    live_env: dict[str, str], directus: DirectusStandIn
) -> None:
    event_id = "6f1f8d8e-1c8a-4a8e-9a53-3b8d8e2f0c11"
    directus.user("good", events={event_id})
    async with (
        running_service(live_env) as service,
        live_client(service.live_port, token="good") as ws,
    ):
        directus.event_mode = "500"
        reply = await subscribe(ws, event_id)
        assert reply == {
            "type": "error",
            "code": "unavailable",
            "message": "authorization unavailable, retry later",
            "topic": f"event:{event_id}",
        }
        directus.event_mode = "slow"
        reply = await subscribe(ws, event_id)
        assert (reply["type"], reply["code"]) == ("error", "unavailable")
        directus.event_mode = None
        reply = await subscribe(ws, event_id)
        assert reply == {
            "type": "subscribed",
            "topic": f"event:{event_id}",
            "snapshot": [],
            "results": [],
            "alerts": [],
        }
        directus.allowed["good"] = set()
        reply = await subscribe(ws, event_id.upper())  # topics are case-normalised
        assert (reply["type"], reply["code"], reply["topic"]) == (
            "error",
            "forbidden",
            f"event:{event_id}",
        )
        assert live_subscriptions(service) == 1  # the earlier subscription stays
