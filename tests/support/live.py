"""Live-broadcast test helpers: fixtures (Directus stand-in, live env, live rig) and a real WS
client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import pytest
import redis
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from tests.support.directus import (
    COOKIE_NAME,
    RACE_COLLECTIONS,
    DirectusStandIn,
    add_event,
    create_directus_tables,
)
from tests.support.liveness import assert_ingesting
from tests.support.service import Rig
from tests.support.wire_schema import server_frame

ORIGIN = "https://race.example"
TOKEN = "token-alice"


@pytest.fixture
async def directus(nursery: trio.Nursery) -> DirectusStandIn:
    stand_in = DirectusStandIn()
    await nursery.start(stand_in.serve)
    return stand_in


@pytest.fixture
def live_env(env: dict[str, str], directus: DirectusStandIn, database_url: str) -> dict[str, str]:
    """`env` with live broadcast on, pointed at the stand-in, Directus tables created."""
    create_directus_tables(database_url)
    return {
        **env,
        "DIRECTUS_URL": directus.url,
        "DIRECTUS_AUTH_TIMEOUT_MS": "500",
        "LIVE_WS_HOST": "127.0.0.1",
        "LIVE_WS_PORT": "0",
        "LIVE_WS_ALLOWED_ORIGINS": f"{ORIGIN},https://other.example",
        "LIVE_DEVICE_EVENT_REFRESH_MS": "60000",
    }


@attrs.frozen
class LiveRig(Rig):
    """A `Rig` whose environment has live broadcast on (`live_env`), with its Directus stand-in."""

    directus: DirectusStandIn

    async def assert_ingesting(self) -> None:
        """The liveness probe every attack test ends with: a fix published now is stored."""
        await assert_ingesting(self.redis, self.stream_key, self.database_url)

    def event(self, imeis: list[str]) -> str:
        """An event with one entry per device (`add_event`) that TOKEN's user may read, as well
        as the events granted before (the user is (re)made an "ok" one)."""
        event_id = add_event(self.database_url, imeis)
        self.directus.user(
            TOKEN,
            events=self.directus.allowed.get(TOKEN, set()) | {event_id},
            collections=self.directus.readable.get(TOKEN, RACE_COLLECTIONS),
        )
        return event_id


@pytest.fixture(name="live_rig")
def live_rig_fixture(
    live_env: dict[str, str],
    directus: DirectusStandIn,
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
) -> LiveRig:
    """Imported by the test modules that use it (conftest.py does not list it)."""
    return LiveRig(live_env, redis_client, stream_key, database_url, directus)


def _headers(
    token: str | None, cookie: str | None, origin: str | None
) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    if token is not None:
        headers.append((b"Authorization", f"Bearer {token}".encode()))
    if cookie is not None:
        headers.append((b"Cookie", f"theme=dark; {COOKIE_NAME}={cookie}".encode()))
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    return headers


@asynccontextmanager
async def live_client(
    port: int | None,
    *,
    token: str | None = TOKEN,
    cookie: str | None = None,
    origin: str | None = None,
    path: str = "/live",
    message_queue_size: int = 64,
) -> AsyncIterator[WebSocketConnection]:
    assert port, "the live server has no port"
    async with open_websocket_url(
        f"ws://127.0.0.1:{port}{path}",
        extra_headers=_headers(token, cookie, origin),
        connect_timeout=5,
        disconnect_timeout=2,
        message_queue_size=message_queue_size,
        max_message_size=2**24,
    ) as ws:
        yield ws


async def rejection_status(port: int | None, **kwargs: Any) -> int:
    """The HTTP status of a refused upgrade (fails when the upgrade is accepted)."""
    try:
        async with live_client(port, **kwargs):
            pass
    except ConnectionRejected as exc:
        return int(exc.status_code)
    raise AssertionError("the upgrade was accepted")


async def receive(ws: WebSocketConnection, within: float = 5) -> dict[str, Any]:
    """The next frame, checked against docs/websocket.schema.json."""
    with trio.fail_after(within):
        message = await ws.get_message()
    document: dict[str, Any] = server_frame(orjson.loads(message))
    return document


async def send(ws: WebSocketConnection, document: Any) -> None:
    await ws.send_message(
        document if isinstance(document, str) else orjson.dumps(document).decode()
    )


async def subscribe(ws: WebSocketConnection, event_id: str) -> dict[str, Any]:
    await send(ws, {"type": "subscribe", "topic": f"event:{event_id}"})
    return await receive(ws)


async def close_code(ws: WebSocketConnection, within: float = 10) -> tuple[int, list[Any]]:
    """Read until the server closes; (close code, messages received before the close)."""
    received: list[Any] = []
    with trio.fail_after(within):
        while True:
            try:
                received.append(server_frame(orjson.loads(await ws.get_message())))
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return exc.reason.code, received


async def no_message(ws: WebSocketConnection, seconds: float = 0.5) -> None:
    """Nothing arrives within `seconds`."""
    with trio.move_on_after(seconds):
        message = await ws.get_message()
        raise AssertionError(f"unexpected message {message!r}")


class Frames:
    """Everything one client receives, with the (trio) time it arrived."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.times: list[float] = []

    async def collect(self, ws: WebSocketConnection) -> None:
        while True:
            message = await ws.get_message()
            self.frames.append(server_frame(orjson.loads(message)))
            self.times.append(trio.current_time())

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def until(self, predicate: Callable[[], bool], timeout: float = 60) -> None:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            while not predicate():  # noqa: ASYNC110 - frames arrive on another task
                await trio.sleep(0.05)


@asynccontextmanager
async def watching(port: int | None, event_id: str) -> AsyncIterator[tuple[dict[str, Any], Frames]]:
    """A client subscribed to `event_id`: its reply to the subscribe, and every frame after it,
    collected in the background until the block ends (then the client leaves)."""
    async with live_client(port) as ws, trio.open_nursery() as nursery:
        reply = await subscribe(ws, event_id)
        frames = Frames()
        nursery.start_soon(frames.collect, ws)
        yield reply, frames
        nursery.cancel_scope.cancel()
