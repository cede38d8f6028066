"""Attacker's tools: raw TCP bytes and a hand-driven wsproto client against the live port.

trio-websocket's own client is polite (it answers close frames, never sends oversized frames
after a close, cannot send a non-ASCII header); these helpers do exactly what a test tells
them to, so the server's handling of each misbehaviour can be checked in isolation.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, RejectConnection, Request

GOOD_HEADERS = (
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)


def upgrade_request(
    path: bytes = b"/live", extra: bytes = b"", *, version: bytes = b"HTTP/1.1"
) -> bytes:
    """A well-formed upgrade request with `extra` header lines (each ending in CRLF)."""
    return b"GET " + path + b" " + version + b"\r\n" + GOOD_HEADERS + extra + b"\r\n"


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


def reset_on_close(stream: trio.SocketStream) -> None:
    """Make `aclose()` send an RST (what a crashed client or a yanked cable looks like)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def read_until_closed(stream: trio.SocketStream, within: float = 15) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    received = b""
    with trio.fail_after(within):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return received
            if not chunk:
                return received
            received += chunk


async def exchange(port: int, data: bytes, within: float = 15) -> bytes:
    """Send `data` (best effort: the server may hang up first) and read until closed."""
    stream = await connect(port)
    async with stream:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            return b""
        return await read_until_closed(stream, within)


def status_of(response: bytes) -> int | None:
    """The HTTP status of a response head (None when the server sent no HTTP response)."""
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


def refusal(response: bytes) -> tuple[int, bytes]:
    """The status and body of a refused upgrade, checked to be what docs/websocket.md promises:
    a complete HTTP response (Content-Length matches) with a short plain-text body and
    `Connection: close`. Fails on anything else, including no answer at all."""
    head, separator, body = response.partition(b"\r\n\r\n")
    assert separator, f"no complete HTTP response: {response[:200]!r}"
    status_line, *lines = head.split(b"\r\n")
    version, status, _reason = status_line.split(b" ", 2)
    assert version == b"HTTP/1.1", status_line
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    assert headers.get(b"content-type", b"").startswith(b"text/plain"), headers
    assert headers.get(b"connection") == b"close", headers
    assert int(headers[b"content-length"]) == len(body) > 0, (headers, body)
    return int(status), body


class RawWebSocket:
    """A wsproto client on a raw socket: frames go out exactly as asked."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []

    @classmethod
    async def open(cls, port: int, token: str, path: str = "/live") -> RawWebSocket:
        client = cls(await connect(port))
        request = Request(
            host="127.0.0.1",
            target=path,
            extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
        )
        await client.stream.send_all(client.ws.send(request))
        event = await client.next_event()
        if isinstance(event, RejectConnection):
            raise AssertionError(f"upgrade refused with {event.status_code}")
        assert isinstance(event, AcceptConnection), event
        return client

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self, within: float = 10) -> Event:
        with trio.fail_after(within):
            while True:
                for event in self.ws.events():
                    return event
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self.ws.receive_data(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 5.2), built by hand so anything can be sent."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9


def random_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def tls_client_hello() -> bytes:
    """The first bytes a TLS client sends (a ClientHello record), as a browser would on wss://."""
    import ssl

    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="example.org")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello: bytes = outgoing.read()
    return hello
