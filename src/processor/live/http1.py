"""HTTP/1.1 on the live port: one request read with h11, plain responses, the WebSocket upgrade.

Each socket carries one request: every plain response says `Connection: close`, so nothing idles
on the port between requests and every request passes the same admission (docs/websocket.md).
h11 parses and bounds the request head (`MAX_HEAD_BYTES`, else 431); a request with a body is
refused (nothing on this port takes one). The WebSocket opening handshake (RFC 6455 4.2.1) is
checked here, as hypercorn does it, and `accept_websocket` answers 101; from then on the frames
are wsproto's (`live/websocket.py`), fed whatever the client sent after its request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from collections.abc import Iterable
from http import HTTPStatus

import attrs
import h11
import trio

MAX_HEAD_BYTES = 16 * 1024
RECEIVE_BYTES = 4096
MAX_EARLY_BYTES = 64 * 1024  # sent after the request while it is still being decided
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3

Headers = tuple[tuple[bytes, bytes], ...]


# What h11 refuses with a status of its own: a head over the limit, and a transfer coding other
# than one `chunked` (RFC 9112 6.1: 501 for a coding the server does not implement).
PARSER_REFUSALS = {431: "request head too large", 501: "unsupported transfer coding"}


class Refusal(Exception):
    """The request is refused: `status`, `message` (the plain-text body) and `headers` are the
    answer. Raised for requests that cannot be served as sent, returned by admission checks."""

    def __init__(self, status: int, message: str, headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@attrs.frozen
class Request:
    method: bytes
    target: bytes
    headers: Headers  # names lowercase (h11)
    http_version: bytes

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("ascii")

    @property
    def query(self) -> str:
        parts = self.target.split(b"?", 1)
        return parts[1].split(b"#", 1)[0].decode("ascii") if len(parts) > 1 else ""

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lowercase), decoded as latin-1 (HTTP's charset)."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1").strip()
        return None

    def tokens(self, name: bytes) -> set[str]:
        """The comma-separated tokens of every `name` header, lowercase."""
        return {
            token.strip().lower()
            for key, value in self.headers
            if key == name
            for token in value.decode("latin-1").split(",")
        }

    @property
    def wants_websocket(self) -> bool:
        return "websocket" in self.tokens(b"upgrade")


class HttpConnection:
    """One socket's HTTP side: read its request, then answer it or switch to WebSocket."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._early = bytearray()

    async def read_request(self) -> Request | None:
        """The request, or None when the peer left before sending a whole one; Refusal when
        what it sent is not a request we take."""
        request: Request | None = None
        while True:
            try:
                event = self._parser.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                message = PARSER_REFUSALS.get(status, "malformed HTTP request")
                raise Refusal(status, message) from None
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not data:  # the peer left before its request was complete
                    return None
                self._parser.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                request = Request(
                    event.method, event.target, tuple(event.headers), event.http_version
                )
                if _has_body(request):
                    raise Refusal(400, "a request body is not accepted here")
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                assert request is not None
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"text/plain; charset=utf-8",
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """A complete response, then the connection is to be closed."""
        if self._parser.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response already went out
        head = h11.Response(
            status_code=status,
            reason=_reason(status),
            headers=[
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        )
        data = self._parser.send(head) or b""
        data += self._parser.send(h11.Data(data=body)) or b""
        data += self._parser.send(h11.EndOfMessage()) or b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)  # (suppressed: the peer left, nobody to answer)

    async def accept_websocket(self, request: Request) -> bytes:
        """Answer 101 to a checked upgrade (`websocket_key`); the bytes the client sent after its
        request, for the WebSocket to read first."""
        key = websocket_key(request)
        head = h11.InformationalResponse(
            status_code=101,
            reason=b"Switching Protocols",
            headers=[
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-accept", accept_token(key)),
            ],
        )
        data = self._parser.send(head) or b""
        await self.stream.send_all(data)
        trailing, _closed = self._parser.trailing_data
        return bytes(trailing) + bytes(self._early)

    async def watch_hang_up(self, on_gone: trio.CancelScope) -> None:
        """While the request is decided (Directus is asked): cancel `on_gone` as soon as the peer
        hangs up, or sends more than MAX_EARLY_BYTES before an answer. What it sends meanwhile
        is kept for the WebSocket."""
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self._early += data
            if not data or len(self._early) > MAX_EARLY_BYTES:
                on_gone.cancel()
                return


def websocket_key(request: Request) -> bytes:
    """The handshake's key when `request` is a valid WebSocket opening handshake (RFC 6455
    4.2.1), else Refusal with the status RFC 6455 4.2.2 asks for."""
    if request.method != b"GET":
        raise Refusal(405, "the live endpoint takes GET", ((b"allow", b"GET"),))
    if request.http_version != b"1.1":
        raise Refusal(400, "a WebSocket upgrade needs HTTP/1.1")
    if not request.wants_websocket or "upgrade" not in request.tokens(b"connection"):
        raise Refusal(
            426, "this is a WebSocket endpoint: upgrade required", ((b"upgrade", b"websocket"),)
        )
    if request.header(b"sec-websocket-version") != "13":
        raise Refusal(
            426, "unsupported WebSocket version: 13 only", ((b"sec-websocket-version", b"13"),)
        )
    key = request.header(b"sec-websocket-key") or ""
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise Refusal(400, "bad Sec-WebSocket-Key")
    return key.encode("ascii")


def accept_token(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for `key` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())  # noqa: S324 - the RFC's


def _has_body(request: Request) -> bool:
    length = request.header(b"content-length")
    return request.header(b"transfer-encoding") is not None or (
        length is not None and length != "0"
    )


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
