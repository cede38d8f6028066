"""The HTTP server of the endpoints (`observability/http_server.py`) over real sockets.

What any client may do to it: keep connections alive, pipeline, send HEAD or other methods,
ask for unknown paths, send garbage, send slowly, stop reading, come in crowds, and be there at
shutdown. Each time the server answers as HTTP/1.1 says or closes that one connection, and keeps
serving everyone else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from processor.observability.http import make_app
from processor.observability.http_server import App, Receive, Scope, Send, ServerSettings, serve
from processor.observability.readiness import Readiness

FAST = ServerSettings(
    keep_alive_timeout_s=5.0,
    request_timeout_s=0.5,
    send_timeout_s=0.5,
    graceful_timeout_s=0.5,
    max_connections=8,
)


@asynccontextmanager
async def running(
    app: App, server_settings: ServerSettings = FAST, *, within_s: float = 30
) -> AsyncIterator[tuple[int, trio.Event]]:
    """The server on a free port and the event that shuts it down (set at the latest when the
    block ends); the whole, shutdown included, within `within_s`."""
    shutdown = trio.Event()
    with trio.fail_after(within_s):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app,
                    host="127.0.0.1",
                    port=0,
                    settings=server_settings,
                    shutdown_trigger=shutdown.wait,
                    task_status=task_status,
                )
            )
            yield int(binds[0].rsplit(":", 1)[1]), shutdown
            shutdown.set()


@asynccontextmanager
async def serving(app: App, server_settings: ServerSettings = FAST) -> AsyncIterator[int]:
    """The server on a free port for the block; then shut down, which must not take long."""
    async with running(app, server_settings) as (port, _shutdown):
        yield port


def endpoints() -> tuple[App, trio.Event]:
    started = trio.Event()
    return make_app(CollectorRegistry(), Readiness([], started, trio.Event())), started


class Client:
    """A raw HTTP/1.1 client (h11) on one connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[Client]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            yield cls(stream)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]] | None = None
    ) -> tuple[h11.Response, bytes]:
        head = h11.Request(method=method, target=target, headers=[("host", "x"), *(headers or [])])
        await self.stream.send_all(self.conn.send(head) + self.conn.send(h11.EndOfMessage()))
        return await self.response()

    async def response(self) -> tuple[h11.Response, bytes]:
        head: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return head, body
            else:
                raise AssertionError(f"unexpected {event!r}")


async def closed_by_server(stream: trio.SocketStream) -> bytes:
    """Everything the server still sends until it closes the connection."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def send_all_and_eof(stream: trio.SocketStream, data: bytes) -> None:
    """Send everything, then half-close; the server may close first (it refused)."""
    try:
        await stream.send_all(data)
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass


def header(response: h11.Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    app, started = endpoints()
    async with serving(app) as port, Client.connect(port) as client:
        for _ in range(20):
            response, body = await client.request("GET", "/healthz")
            assert response.status_code == 200 and body == b'{"status":"ok"}'
        response, body = await client.request("GET", "/readyz")
        assert response.status_code == 503 and b"starting" in body
        started.set()
        assert (await client.request("GET", "/readyz"))[0].status_code == 200
        assert header(response, b"connection") is None  # never asked to close


async def test_head_is_get_without_the_body_and_the_connection_goes_on() -> None:
    app, _ = endpoints()
    async with serving(app) as port, Client.connect(port) as client:
        get, body = await client.request("GET", "/healthz")
        head, nothing = await client.request("HEAD", "/healthz")
        assert head.status_code == 200 and nothing == b""
        assert header(head, b"content-length") == header(get, b"content-length") == b"15"
        assert header(head, b"content-type") == b"application/json"
        assert (await client.request("GET", "/healthz"))[1] == body


async def test_unknown_paths_are_404_and_other_methods_405() -> None:
    app, _ = endpoints()
    async with serving(app) as port, Client.connect(port) as client:
        for target in ("/", "/metrics/", "/healthz/x", "/%00", "/../metrics", "//readyz", "*"):
            assert (await client.request("GET", target))[0].status_code == 404, target
        assert (await client.request("GET", "/readyz?x=1"))[0].status_code == 503  # a query
        assert (await client.request("GET", "/%72eadyz"))[0].status_code == 503  # %-decoded
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW"):
            response, _ = await client.request(method, "/metrics")
            assert response.status_code == 405, method
            assert header(response, b"allow") == b"GET, HEAD"


async def test_metrics_negotiates_the_exposition_format() -> None:
    app, _ = endpoints()
    async with serving(app) as port, Client.connect(port) as client:
        classic, _ = await client.request("GET", "/metrics")
        assert header(classic, b"content-type") == b"text/plain; version=0.0.4; charset=utf-8"
        accept = [("accept", "application/openmetrics-text; version=1.0.0")]
        open_metrics, body = await client.request("GET", "/metrics", accept)
        content_type = header(open_metrics, b"content-type") or b""
        assert content_type.startswith(b"application/openmetrics-text")
        assert body.endswith(b"# EOF\n")


async def test_pipelined_requests_are_answered_in_order() -> None:
    app, _ = endpoints()
    targets = ("/healthz", "/nope", "/healthz")
    async with serving(app) as port, Client.connect(port) as client:
        await client.stream.send_all(
            b"".join(f"GET {t} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for t in targets)
        )
        statuses = []
        for target in targets:  # the client side's h11 follows the same requests
            client.conn.send(h11.Request(method="GET", target=target, headers=[("host", "x")]))
            client.conn.send(h11.EndOfMessage())
            statuses.append((await client.response())[0].status_code)
        assert statuses == [200, 404, 200]


async def test_http_1_0_and_connection_close_end_the_connection() -> None:
    app, _ = endpoints()
    async with serving(app) as port:
        for request in (
            b"GET /healthz HTTP/1.0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ):
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(request)
                reply = await closed_by_server(stream)
                assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply
                assert reply.endswith(b'{"status":"ok"}')


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70_000,
            b"413",
        ),
    ],
    ids=["garbage", "no-host", "bad-length", "huge-head", "huge-body"],
)
async def test_malformed_requests_get_an_error_and_are_closed(
    request_bytes: bytes, status: bytes
) -> None:
    app, _ = endpoints()
    async with serving(app) as port:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await send_all_and_eof(stream, request_bytes)
            reply = await closed_by_server(stream)
            assert reply.startswith(b"HTTP/1.1 " + status), reply[:100]
        async with Client.connect(port) as client:  # the server goes on
            assert (await client.request("GET", "/healthz"))[0].status_code == 200


async def test_a_request_body_is_read_and_100_continue_answered() -> None:
    app, _ = endpoints()
    async with serving(app) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = await stream.receive_some(1024)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        await stream.send_all(b"hello")
        reply = await stream.receive_some(1024)
        assert reply.startswith(b"HTTP/1.1 405 "), reply


async def test_a_slow_request_is_cut_with_408_and_others_are_served_meanwhile() -> None:
    app, _ = endpoints()
    async with serving(app) as port, await trio.open_tcp_stream("127.0.0.1", port) as slow:
        await slow.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        began = time.monotonic()
        async with Client.connect(port) as other:
            assert (await other.request("GET", "/healthz"))[0].status_code == 200
        reply = await closed_by_server(slow)
        waited = time.monotonic() - began
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert FAST.request_timeout_s * 0.8 < waited < FAST.request_timeout_s + 2, waited


async def test_a_client_that_does_not_read_loses_its_connection_not_the_server() -> None:
    """Its response fills the socket buffers; after the send timeout the connection is closed
    and its slot freed (one slot: the next client proves it)."""

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/endless":
            await endless(scope, receive, send)
        else:
            await endpoints()[0](scope, receive, send)

    one_slot = ServerSettings(send_timeout_s=0.3, max_connections=1, graceful_timeout_s=0.5)
    async with serving(app, one_slot) as port:
        reader = await trio.open_tcp_stream("127.0.0.1", port)
        await reader.send_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        with trio.fail_after(10):
            async with Client.connect(port) as other:
                assert (await other.request("GET", "/healthz"))[0].status_code == 200
        await reader.aclose()


async def test_many_clients_at_once_are_all_served() -> None:
    """200 concurrent clients against 8 slots: they queue in the backlog, none is refused."""
    app, _ = endpoints()
    statuses: list[int] = []

    async def one() -> None:
        async with Client.connect(port) as client:
            statuses.append((await client.request("GET", "/metrics"))[0].status_code)

    async with serving(app) as port:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(one)
    assert statuses == [200] * 200


async def test_idle_connections_make_room_for_new_ones_at_the_cap() -> None:
    """Every slot held by an idle keep-alive client: a new client still gets in at once."""
    app, _ = endpoints()
    async with serving(app) as port:
        idle = []
        for _ in range(FAST.max_connections):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200 ")
            idle.append(stream)
        with trio.fail_after(FAST.keep_alive_timeout_s / 2):
            async with Client.connect(port) as newcomer:
                assert (await newcomer.request("GET", "/healthz"))[0].status_code == 200
        assert await closed_by_server(idle[0]) == b""  # the longest idle made room
        for stream in idle:
            await stream.aclose()


async def test_a_failing_app_answers_500_and_the_server_goes_on() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] == "/half":  # starts a response, then fails
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("half")
        if scope["path"] == "/silent":  # returns without a response
            return
        await endpoints()[0](scope, receive, send)

    async with serving(app) as port:
        for path in ("/boom", "/silent"):
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert (await closed_by_server(stream)).startswith(b"HTTP/1.1 500 "), path
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await closed_by_server(stream)  # cut short: closed, never completed
            assert reply.startswith(b"HTTP/1.1 200 ") and not reply.endswith(b"0\r\n\r\n")
        async with Client.connect(port) as client:
            assert (await client.request("GET", "/healthz"))[0].status_code == 200


async def test_shutdown_closes_idle_connections_and_finishes_requests_in_flight() -> None:
    entered, release = trio.Event(), trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            entered.set()
            await release.wait()
        await endpoints()[0](scope, receive, send)

    async with running(app, within_s=10) as (port, shutdown):
        idle = Client(await trio.open_tcp_stream("127.0.0.1", port))
        await idle.request("GET", "/healthz")
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await entered.wait()
        shutdown.set()
        assert await closed_by_server(idle.stream) == b""  # at once
        with pytest.raises(OSError, match="connect"):  # new clients are refused meanwhile
            await trio.open_tcp_stream("127.0.0.1", port)
        release.set()
        reply = await closed_by_server(busy)
        assert reply.startswith(b"HTTP/1.1 404 "), reply  # answered, then closed
        assert b"connection: close" in reply.lower()
        began = time.monotonic()
    assert time.monotonic() - began < FAST.graceful_timeout_s
    with pytest.raises(OSError, match="connect"):  # no longer listening
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_shutdown_cuts_a_request_that_outlasts_the_graceful_timeout() -> None:
    async def never(scope: Scope, receive: Receive, send: Send) -> None:
        await trio.sleep_forever()

    async with serving(never) as port:
        stuck = await trio.open_tcp_stream("127.0.0.1", port)
        await stuck.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        began = time.monotonic()
    assert time.monotonic() - began < FAST.graceful_timeout_s + 1.0
    assert await closed_by_server(stuck) == b""
    await stuck.aclose()


@given(data=st.binary(max_size=4096))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_never_break_the_server(data: bytes) -> None:
    """Whatever arrives on a connection, the server answers or closes it, and serves the next."""

    async def main() -> None:
        app, _ = endpoints()
        async with serving(app) as port:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await send_all_and_eof(stream, data)
                reply = await closed_by_server(stream)
                assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:100]
            async with Client.connect(port) as client:
                assert (await client.request("GET", "/healthz"))[0].status_code == 200

    trio.run(main)


@given(
    path=st.text(max_size=200).map(lambda t: "/" + t.encode().hex()),
    query=st.binary(max_size=200),
    method=st.sampled_from(["GET", "HEAD", "POST", "X"]),
    values=st.lists(st.binary(max_size=100), max_size=5),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_well_formed_requests_get_an_answer(
    path: str, query: bytes, method: str, values: list[bytes]
) -> None:
    async def main() -> None:
        app, _ = endpoints()
        async with serving(app) as port, Client.connect(port) as client:
            target = f"{path}?{query.hex()}"
            headers: list[Any] = [(f"x-{i}", v.hex()) for i, v in enumerate(values)]
            response, _ = await client.request(method, target, headers)
            assert response.status_code in (404, 405), response

    trio.run(main)
