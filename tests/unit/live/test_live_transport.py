"""The live port's own HTTP and WebSocket layers (`live/http1.py`, `live/websocket.py`), each
against a real socket pair and a client that sends exactly what the test says (wsproto's, or
raw bytes), so every misbehaviour is checked in isolation; the server-level attacks are in
test_live_attacks.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)

from processor.live.http1 import (
    MAX_EARLY_BYTES,
    HttpConnection,
    Refusal,
    Request,
    accept_token,
    websocket_key,
)
from processor.live.websocket import ConnectionClosed, MessageTooBig, WebSocket
from tests.support.raw import BINARY, CLOSE, PING, TEXT, frame, upgrade_request


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


# --- the opening handshake ----------------------------------------------------------------------


def request(
    *headers: tuple[bytes, bytes], method: bytes = b"GET", version: bytes = b"1.1"
) -> Request:
    good = {
        b"host": b"x",
        b"upgrade": b"websocket",
        b"connection": b"keep-alive, Upgrade",
        b"sec-websocket-key": b"dGhlIHNhbXBsZSBub25jZQ==",
        b"sec-websocket-version": b"13",
    }
    for name, value in headers:
        if value == b"":
            good.pop(name, None)
        else:
            good[name] = value
    return Request(method, b"/live?x=1", tuple(good.items()), version)


def test_the_rfc_example_accept_token() -> None:
    """RFC 6455 1.3: the sample nonce and its answer."""
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_valid_handshake_gives_its_key() -> None:
    assert websocket_key(request()) == b"dGhlIHNhbXBsZSBub25jZQ=="
    # header values are case-insensitive tokens
    assert websocket_key(request((b"upgrade", b"WebSocket"), (b"connection", b"upgrade")))


@pytest.mark.parametrize(
    ("changes", "method", "version", "status"),
    [
        ((), b"POST", b"1.1", 405),
        ((), b"GET", b"1.0", 400),
        (((b"upgrade", b""),), b"GET", b"1.1", 426),
        (((b"upgrade", b"h2c"),), b"GET", b"1.1", 426),
        (((b"connection", b"keep-alive"),), b"GET", b"1.1", 426),
        (((b"sec-websocket-version", b"8"),), b"GET", b"1.1", 426),
        (((b"sec-websocket-version", b""),), b"GET", b"1.1", 426),
        (((b"sec-websocket-key", b""),), b"GET", b"1.1", 400),
        (((b"sec-websocket-key", b"short"),), b"GET", b"1.1", 400),
        (((b"sec-websocket-key", b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA"),), b"GET", b"1.1", 400),
        (
            ((b"sec-websocket-key", b"caf\xe9caf\xe9caf\xe9caf\xe9caf\xe9AA=="),),
            b"GET",
            b"1.1",
            400,
        ),
    ],
)
def test_what_is_not_a_handshake_is_refused_with_the_rfc_status(
    changes: tuple[tuple[bytes, bytes], ...], method: bytes, version: bytes, status: int
) -> None:
    with pytest.raises(Refusal) as refused:
        websocket_key(request(*changes, method=method, version=version))
    assert refused.value.status == status
    if status == 426 and changes and changes[0][0] == b"sec-websocket-version":
        assert (b"sec-websocket-version", b"13") in refused.value.headers


def test_request_parts() -> None:
    r = Request(b"GET", b"/history/a?from=1&to=2#frag", ((b"origin", b" https://x \t"),), b"1.1")
    assert r.path == "/history/a"
    assert r.query == "from=1&to=2"
    assert r.header(b"origin") == "https://x"
    assert r.header(b"cookie") is None


# --- reading one request --------------------------------------------------------------------------


async def read(data: bytes, *, close: bool = True) -> tuple[Request | None, bytes]:
    """What `read_request` makes of `data` (the peer then half-closes unless told), and what
    the server answered to a refusal."""
    server, client = socket_pair()
    async with server, client:
        http = HttpConnection(server)
        await client.send_all(data)
        if close:
            await client.send_eof()
        try:
            result = await http.read_request()
        except Refusal as refusal:
            await http.respond(refusal.status, refusal.message.encode(), headers=refusal.headers)
            await server.send_eof()
            answer = b""
            while chunk := await client.receive_some(65536):
                answer += chunk
            return None, answer
        return result, b""


async def test_a_request_is_read_whole() -> None:
    got, _ = await read(upgrade_request(extra=b"Cookie: a=b\r\n"), close=False)
    assert got is not None
    assert got.path == "/live" and got.wants_websocket
    assert got.header(b"cookie") == "a=b"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
        (b"GET /live HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /live HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET /live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET /live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /live HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (upgrade_request(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(2000))), 431),
        # RFC 9112 6.1: a transfer coding the server does not implement is 501
        (b"GET /live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: websocket\r\n\r\n", 501),
    ],
)
async def test_malformed_requests_get_a_status_and_a_reason(data: bytes, status: int) -> None:
    got, answer = await read(data)
    assert got is None
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:80]
    reason = answer.split(b"\r\n\r\n", 1)[1]
    said = {431: b"request head too large", 501: b"unsupported transfer coding"}
    assert reason == said[status] if status in said else reason, reason
    assert b"\r\nconnection: close\r\n" in answer.lower()


@pytest.mark.parametrize("cut", [0, 1, 20, len(upgrade_request()) - 1])
async def test_a_peer_leaving_mid_request_is_no_request(cut: int) -> None:
    got, answer = await read(upgrade_request()[:cut])
    assert got is None and answer == b""


async def test_hang_up_and_early_data_while_deciding() -> None:
    """The watch cancels the decision when the peer leaves or floods; what it sent before the
    answer reaches the WebSocket first."""
    server, client = socket_pair()
    async with server, client:
        http = HttpConnection(server)
        await client.send_all(upgrade_request())
        got = await http.read_request()
        assert got is not None
        with trio.CancelScope() as deciding:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(http.watch_hang_up, deciding)
                await client.send_all(frame(TEXT, b"early"))
                await trio.sleep(0.2)  # the decision takes its time (Directus)
                nursery.cancel_scope.cancel()
        assert not deciding.cancelled_caught
        received = await http.accept_websocket(got)
        assert (await client.receive_some(4096)).startswith(b"HTTP/1.1 101 Switching Protocols")
        ws = WebSocket(server, max_message_bytes=100, received=received)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.run)
            assert await ws.get_message() == "early"
            nursery.cancel_scope.cancel()
    for flood in (b"", b"x" * (MAX_EARLY_BYTES + 10)):
        server, client = socket_pair()
        async with server, client:
            http = HttpConnection(server)
            with trio.fail_after(5), trio.CancelScope() as deciding:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(http.watch_hang_up, deciding)
                    if flood:
                        await client.send_all(flood)
                    else:
                        await client.aclose()
                    await trio.sleep_forever()
            assert deciding.cancelled_caught


# --- the WebSocket after the upgrade -------------------------------------------------------------


class Peer:
    """The client's end: a wsproto client connection on the other socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.protocol = Connection(ConnectionType.CLIENT)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.protocol.send(event))

    async def next_event(self) -> Event:
        with trio.fail_after(5):
            while True:
                for event in self.protocol.events():
                    return event
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError
                self.protocol.receive_data(data)


@asynccontextmanager
async def websocket(max_message_bytes: int = 64) -> AsyncIterator[tuple[WebSocket, Peer]]:
    server, client = socket_pair()
    async with server, client, trio.open_nursery() as nursery:
        ws = WebSocket(server, max_message_bytes=max_message_bytes)
        nursery.start_soon(ws.run)
        yield ws, Peer(client)
        nursery.cancel_scope.cancel()


async def test_messages_arrive_whole_and_in_order() -> None:
    async with websocket() as (ws, peer):
        await peer.send(TextMessage("hel", message_finished=False))
        await peer.send(TextMessage("lo"))
        await peer.send(BytesMessage(b"\x00\x01"))
        await peer.send(TextMessage("é" * 32))  # 64 bytes: at the limit
        assert await ws.get_message() == "hello"
        assert await ws.get_message() == b"\x00\x01"
        assert await ws.get_message() == "é" * 32


async def test_a_message_over_the_limit_in_bytes_is_refused_and_dropped() -> None:
    async with websocket() as (ws, peer):
        await peer.send(TextMessage("é" * 33))  # 33 characters, 66 bytes
        with pytest.raises(MessageTooBig):
            await ws.get_message()
        # fragments: refused once over, its later fragments dropped, the next message intact
        await peer.send(TextMessage("x" * 60, message_finished=False))
        await peer.send(TextMessage("y" * 60, message_finished=False))
        await peer.send(TextMessage("z" * 60))
        await peer.send(TextMessage("next"))
        with pytest.raises(MessageTooBig):
            await ws.get_message()
        assert await ws.get_message() == "next"


async def test_pings_are_answered_and_pongs_awaited() -> None:
    async with websocket() as (ws, peer):
        await peer.send(Ping(b"abc"))
        event = await peer.next_event()
        assert isinstance(event, Pong) and event.payload == b"abc"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.ping)
            nursery.start_soon(ws.ping)
            first, second = await peer.next_event(), await peer.next_event()
            assert isinstance(first, Ping) and isinstance(second, Ping)
            await peer.send(Pong(b"unsolicited"))
            await peer.send(second.response())  # the later pong answers both pings
        # a ping the peer never answers waits (the caller bounds it)
        with trio.move_on_after(0.2) as waited:
            await ws.ping()
        assert waited.cancelled_caught


async def test_a_batch_is_one_write_of_separate_messages() -> None:
    async with websocket() as (ws, peer):
        await ws.send_texts([f"m{i}" for i in range(50)])
        got = [await peer.next_event() for _ in range(50)]
        assert [e.data for e in got if isinstance(e, TextMessage)] == [f"m{i}" for i in range(50)]


async def test_the_peer_closes_first() -> None:
    async with websocket() as (ws, peer):
        await peer.send(TextMessage("last words"))
        await peer.send(CloseConnection(code=1000, reason="bye"))
        assert await ws.get_message() == "last words"  # delivered before the end
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        reply = await peer.next_event()
        assert isinstance(reply, CloseConnection) and reply.code == 1000
        assert peer.protocol.state is ConnectionState.CLOSED
        with pytest.raises(ConnectionClosed):
            await ws.send_texts(["too late"])
        with pytest.raises(ConnectionClosed):
            await ws.ping()
        await ws.aclose()  # nothing left to do: returns at once


async def test_we_close_and_the_peer_answers() -> None:
    async with websocket() as (ws, peer):
        await peer.send(TextMessage("unread"))  # dropped: we are closing
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.aclose, 4008, "slow consumer")
            event = await peer.next_event()
            while isinstance(event, TextMessage):
                event = await peer.next_event()
            assert isinstance(event, CloseConnection)
            assert (event.code, event.reason) == (4008, "slow consumer")
            await peer.send(event.response())
        with pytest.raises(ConnectionClosed):
            await ws.send_texts(["after close"])


async def test_a_peer_that_never_answers_our_close_is_bounded_by_the_caller() -> None:
    async with websocket() as (ws, peer):
        with trio.move_on_after(0.2) as waited:
            await ws.aclose(1001, "server shutting down")
        assert waited.cancelled_caught
        event = await peer.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1001
        # a frame the late peer sends now (even an oversized one) is simply dropped
        await peer.stream.send_all(frame(TEXT, b"x" * 1000))
        await peer.stream.aclose()  # and its leaving ends the handshake
        with trio.fail_after(5):
            await ws.aclose()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(TEXT, b"\xff\xfe"), 1007),  # invalid UTF-8
        (bytes([0x83, 0x80]) + b"\x00" * 4, 1002),  # reserved opcode
        (bytes([0x81, 0x05]) + b"hello", 1002),  # an unmasked client frame
        (frame(CLOSE, b"\x03"), 1002),  # a close payload of one byte
        (frame(PING, b"p" * 200), 1002),  # a control frame over 125 bytes
        (frame(BINARY, b"a", fin=False) + frame(TEXT, b"b"), 1002),  # a new message mid-message
    ],
)
async def test_frames_the_parser_refuses_close_with_its_code(data: bytes, code: int) -> None:
    async with websocket() as (ws, peer):
        await peer.stream.send_all(data)
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        event = await peer.next_event()
        assert isinstance(event, CloseConnection) and event.code == code
