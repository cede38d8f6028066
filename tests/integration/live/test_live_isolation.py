"""Isolation (docs/pipeline.md, Isolation; issue 9): nothing one live client does ends, stalls or
slows ingestion.

The first four tests reproduce the crashes found on the live port (each took the whole daemon
down, exit 1); every test ends with a liveness probe: a fix published afterwards is stored.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from wsproto.events import CloseConnection

from processor.app import Service
from processor.live.auth import Directus
from processor.live.connection import Connection
from processor.live.http1 import HttpConnection
from processor.live.websocket import WebSocket
from processor.observability.metrics import LIVE_STAGES
from tests.support.live import (
    TOKEN,
    LiveRig,
)
from tests.support.metrics import live_quiet, sample
from tests.support.raw import (
    TEXT,
    RawWebSocket,
    connect,
    exchange,
    frame,
    read_until_closed,
    refusal,
    reset_on_close,
    upgrade_request,
)
from tests.support.service import running_service, wait_until


def connection_errors(service: Service, stage: str) -> float:
    return sample(service, "processor_live_connection_errors_total", stage=stage)


async def test_malformed_upgrade_path_is_refused_not_fatal(live_rig: LiveRig) -> None:
    """`//[/live` made `urlsplit` raise ValueError in the admission code."""
    live_rig.directus.user(TOKEN)
    async with live_rig.service() as service:
        assert service.live_port
        response = await exchange(service.live_port, upgrade_request(b"//[/live"))
        assert refusal(response)[0] == 404  # a path other than /live
        await live_rig.assert_ingesting()


async def test_non_ascii_credentials_are_unauthorized(live_rig: LiveRig) -> None:
    """`Bearer caf\\xe9` (and such a cookie) made httpx raise UnicodeEncodeError. Each is refused
    as docs/websocket.md says: 401 for credentials that are not printable ASCII, 400 for a NUL
    byte (not a valid header value: a malformed request)."""
    async with live_rig.service() as service:
        assert service.live_port
        for extra, status in (
            (b"Authorization: Bearer caf\xe9\r\n", 401),
            (b"Cookie: directus_session_token=caf\xe9\r\nOrigin: https://race.example\r\n", 401),
            (b"Authorization: Bearer a\x00b\r\n", 400),  # NUL: not a valid HTTP header value
        ):
            response = await exchange(service.live_port, upgrade_request(extra=extra))
            assert refusal(response)[0] == status, (extra, response[:200])
        await live_rig.assert_ingesting()
    # Non-ASCII credentials never reach Directus.
    assert not [s for s in live_rig.directus.seen if s.token and not s.token.isascii()]


async def test_hang_up_while_the_upgrade_is_refused(live_rig: LiveRig) -> None:
    """Clients that reset while their upgrade is being refused: the refusal (401 at once for
    an unknown token; 503 after the Directus timeout for a slow one) was written to a dead
    socket, which raised ConnectionClosed out of `reject()`. Now a hang-up also ends the
    upgrade at once (the slow Directus call is abandoned, its slot freed)."""
    live_rig.directus.user("tok-slow", "slow")
    live_rig.directus.slow_s = 2.0
    async with live_rig.service() as service:
        assert service.live_port
        for token, pause in [("unknown", 0.0)] * 20 + [("tok-slow", 0.1)] * 3:
            stream = await connect(service.live_port)
            await stream.send_all(
                upgrade_request(extra=f"Authorization: Bearer {token}\r\n".encode())
            )
            await trio.sleep(pause)  # tok-slow: the server is now waiting for Directus
            reset_on_close(stream)
            await stream.aclose()
        await wait_until(lambda: live_quiet(service))
        await live_rig.assert_ingesting()


async def test_oversized_frame_after_garbage_frames(live_rig: LiveRig) -> None:
    """Garbage frames until the server closes with 1008, then (without answering its close
    frame) an oversized frame: the server once tried to send a 1009 close in LOCAL_CLOSING and
    wsproto raised LocalProtocolError out of the connection's reader task. Now the late frames
    are dropped and the connection ends without a failure."""
    live_rig.directus.user(TOKEN)
    env = {**live_rig.env, "LIVE_WS_MAX_PROTOCOL_ERRORS": "3"}
    async with running_service(env) as service:
        assert service.live_port
        client = await RawWebSocket.open(service.live_port, TOKEN)
        for _ in range(3):
            await client.send_raw(frame(TEXT, b"garbage{"))
        with trio.fail_after(10):
            while not isinstance(await client.next_event(), CloseConnection):
                pass
        try:
            await client.send_raw(frame(TEXT, b"x" * 10_000))
            await client.send_raw(frame(TEXT, b"y" * 10_000))
        except trio.BrokenResourceError:
            pass
        await client.aclose()
        await wait_until(lambda: live_quiet(service))
        assert [stage for stage in LIVE_STAGES if connection_errors(service, stage)] == []
        await live_rig.assert_ingesting()


SECRET = "token-that-must-never-be-logged"


def _raise(*_args: Any, **_kwargs: Any) -> Any:
    raise KeyError(SECRET)  # an unexpected exception whose text carries the credential


async def _raise_async(*_args: Any, **_kwargs: Any) -> Any:
    raise ExceptionGroup("inner", [KeyError(SECRET), ValueError(SECRET)])


def _close_fails(real: Any) -> Any:
    async def aclose(self: WebSocket, *args: Any, **kwargs: Any) -> None:
        if not args and not kwargs:  # the boundary's own final close (stage "close")
            raise KeyError(SECRET)
        await real(self, *args, **kwargs)

    return aclose


BREAK_STAGE: dict[str, tuple[Any, str, Any]] = {
    "request": (HttpConnection, "read_request", _raise_async),
    "admission": (Directus, "authenticate", _raise_async),
    "reject": (HttpConnection, "respond", _raise_async),
    "accept": (HttpConnection, "accept_websocket", _raise_async),
    "serve": (Connection, "serve", _raise_async),
    "close": (WebSocket, "aclose", None),
}


@pytest.mark.parametrize("stage", list(BREAK_STAGE))
async def test_the_boundary_contains_any_failure_at_any_stage(
    stage: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    live_rig: LiveRig,
) -> None:
    """Not a list of caught exception types: whatever raises, wherever in one connection's
    handling, ends that connection with one warning line (stage and exception types, never
    the message, which here carries the credential) and one count, and nothing else."""
    live_rig.directus.user(SECRET)
    owner, name, replacement = BREAK_STAGE[stage]
    if replacement is None:
        replacement = _close_fails(getattr(owner, name))
    monkeypatch.setattr(owner, name, replacement)
    # One connection per user: a slot the failure leaked would refuse the next client with 429.
    async with live_rig.service(LIVE_WS_MAX_CONNECTIONS_PER_USER="1") as service:
        assert service.live_port
        token = b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
        path = b"/elsewhere" if stage == "reject" else b"/live"
        for failed in range(1, 4):  # each client leaves after a second (after the 101, if any)
            stream = await connect(service.live_port)
            await stream.send_all(upgrade_request(path, token))
            with trio.move_on_after(1):
                await read_until_closed(stream)
            await stream.aclose()
            await wait_until(lambda: connection_errors(service, stage) == failed)  # noqa: B023
            await wait_until(lambda: live_quiet(service))
        too_many = sample(service, "processor_live_auth_total", result="too_many_connections")
        assert too_many == 0  # every failed connection gave its user's slot back
        await live_rig.assert_ingesting()
    logged = capfd.readouterr().err
    failures = [line for line in logged.splitlines() if "live connection failed" in line]
    assert len(failures) == 3, logged[-3000:]
    assert f"stage={stage}" in failures[0]
    assert "KeyError" in failures[0]
    assert SECRET not in logged
