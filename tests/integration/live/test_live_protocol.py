"""The live JSON protocol: the server's answers to malformed frames (the parsing itself:
tests/unit/live/test_protocol.py)."""

from __future__ import annotations

import trio
from wsproto.events import CloseConnection, Ping

from processor.live.connection import PING_TIMEOUT
from tests.support.directus import DirectusStandIn
from tests.support.live import TOKEN, close_code, live_client, receive, send
from tests.support.metrics import live_connections, value
from tests.support.raw import RawWebSocket
from tests.support.service import running_service, wait_until


async def test_every_malformed_frame_gets_an_error_then_1008(
    live_env: dict[str, str], directus: DirectusStandIn
) -> None:
    directus.user(TOKEN)
    env = {**live_env, "LIVE_WS_MAX_PROTOCOL_ERRORS": "4"}
    async with running_service(env) as service, live_client(service.live_port) as ws:
        with trio.fail_after(10):
            await send(ws, "garbage{")
            assert await receive(ws) == {
                "type": "error",
                "code": "bad_request",
                "message": "invalid JSON",
                "topic": None,
            }
            await send(ws, {"type": ["subscribe"]})
            assert (await receive(ws))["message"] == "'type' must be a string"
            await ws.send_message(b"\x00\x01")
            assert (await receive(ws))["message"] == (
                "binary frames are not supported: send JSON text frames"
            )
            await send(ws, {"type": "subscribe", "topic": "event:nope"})
            code, before = await close_code(ws)
        assert before == [
            {
                "type": "error",
                "code": "bad_request",
                "message": "subscribe: 'topic' must be event:<uuid>",
                "topic": "event:nope",
            }
        ]
        assert code == 1008
        assert value(service.metrics.live_messages.labels("in", "invalid")) == 4
        assert value(service.metrics.live_messages.labels("out", "error")) == 4


async def test_oversized_frames_close_with_1009(
    live_env: dict[str, str], directus: DirectusStandIn
) -> None:
    directus.user(TOKEN)
    env = {**live_env, "LIVE_WS_MAX_MESSAGE_BYTES": "256"}
    async with running_service(env) as service:
        async with live_client(service.live_port) as ws:
            await send(ws, "x" * 257)  # one byte over
            code, _ = await close_code(ws)
            assert code == 1009
        async with live_client(service.live_port) as ws:
            await send(ws, "é" * 200)  # 200 characters but 400 bytes
            code, _ = await close_code(ws)
            assert code == 1009
        async with live_client(service.live_port) as ws:  # at the limit: just an error frame
            await send(ws, "x" * 256)
            assert (await receive(ws))["message"] == "invalid JSON"


async def test_unanswered_pings_close_the_connection(
    live_env: dict[str, str], directus: DirectusStandIn
) -> None:
    """A peer that stops answering pings is closed after one interval."""
    directus.user(TOKEN)
    env = {**live_env, "LIVE_WS_PING_INTERVAL_MS": "200"}
    async with running_service(env) as service:
        # A client that answers pings (trio-websocket does) stays connected.
        async with live_client(service.live_port) as ws:
            await trio.sleep(0.7)
            assert ws.closed is None
            assert live_connections(service) == 1
        await wait_until(lambda: live_connections(service) == 0)
        # A client that reads nothing (so answers no ping): closed with 1011 within about
        # one interval. What it finds when it reads at last: pings, then the close.
        client = await RawWebSocket.open(service.live_port, TOKEN)
        try:
            opened = trio.current_time()
            await trio.sleep(1.0)
            events = []
            with trio.fail_after(5):
                while not events or not isinstance(events[-1], CloseConnection):
                    events.append(await client.next_event())
            close = events[-1]
            assert isinstance(close, CloseConnection)
            assert close.code == PING_TIMEOUT, close
            assert all(isinstance(event, Ping) for event in events[:-1]), events
            await wait_until(lambda: live_connections(service) == 0)
            assert trio.current_time() - opened < 5
        finally:
            await client.aclose()
