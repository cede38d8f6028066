"""Open HTTP connections (a scraper's idle keep-alive, a client stuck mid-request) never hold
shutdown up: the HTTP server stops within its short graceful timeout."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import trio
from prometheus_client import CollectorRegistry

from processor.observability.http import GRACEFUL_TIMEOUT_S, HttpServer, make_app
from processor.observability.http_server import ServerSettings
from processor.observability.readiness import Readiness
from tests.support.daemon import Daemon
from tests.support.service import running_service

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: processor\r\nConnection: keep-alive\r\n\r\n"


async def test_idle_keep_alive_does_not_hold_up_shutdown(env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with running_service(env) as service:
            idle = await trio.open_tcp_stream("127.0.0.1", service.http_port)
            await request_healthz(idle)
            service.request_stop()
            started = time.monotonic()
        stopped_in = time.monotonic() - started
        # idle connections are closed at once; well under the graceful timeout
        assert stopped_in < GRACEFUL_TIMEOUT_S * 0.75, stopped_in
        assert await idle.receive_some(4096) == b""  # the server closed it
        await idle.aclose()


async def request_healthz(stream: trio.SocketStream) -> None:
    await stream.send_all(REQUEST)
    response = b""
    while not response.endswith(b'{"status":"ok"}'):
        response += await stream.receive_some(4096)
    assert response.startswith(b"HTTP/1.1 200"), response


async def test_idle_keep_alive_connections_time_out() -> None:
    """After a request, an idle connection is closed after the keep-alive timeout."""
    readiness = Readiness([], trio.Event(), trio.Event())
    server = HttpServer(
        make_app(CollectorRegistry(), readiness),
        host="127.0.0.1",
        port=0,
        settings=ServerSettings(keep_alive_timeout_s=0.2),
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            await request_healthz(idle)
            started = time.monotonic()
            assert await idle.receive_some(4096) == b""  # closed by the server
            assert 0.15 < time.monotonic() - started < 2
            await idle.aclose()
            await server.stop()


async def test_stalled_request_is_cut_at_the_graceful_timeout(env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with running_service(env) as service:
            stalled = await trio.open_tcp_stream("127.0.0.1", service.http_port)
            await stalled.send_all(b"GET /metrics HTTP/1.1\r\nHost: processor\r\n")  # unfinished
            await trio.sleep(0.1)
            service.request_stop()
            started = time.monotonic()
        stopped_in = time.monotonic() - started
        assert stopped_in < GRACEFUL_TIMEOUT_S + 1.0, stopped_in
        await stalled.aclose()


async def test_daemon_with_a_keep_alive_scraper_exits_on_sigterm(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The real process: port from the log line, a keep-alive client, SIGTERM, exit 0 fast."""
    daemon = Daemon(env | {"SHUTDOWN_TIMEOUT_S": "10"}, tmp_path / "processor.log")
    try:
        port = await daemon.http_port()
        await daemon.wait_for("ready")  # HTTP listens before the servers are reached
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200  # connection kept alive
            started = time.monotonic()
            daemon.terminate()
            code = await daemon.wait_exit(within=10)
            stopped_in = time.monotonic() - started
        assert code == 0, daemon.tail()
        assert stopped_in < 3, stopped_in
        assert daemon.events("http stopped"), daemon.tail()
    finally:
        daemon.close()
