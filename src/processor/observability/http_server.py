"""A small HTTP/1.1 server (h11) for plain ASGI apps, run as a child of the caller's nursery.

Only what the scrape endpoints and the demo's pages need: HTTP/1.1 with keep-alive, no TLS,
HTTP/2, WebSocket or lifespan (why not hypercorn: docs/decisions.md). Invariants: every wait is
bounded (`keep_alive_timeout_s`, `request_timeout_s`, `send_timeout_s`), at most
`max_connections` are open at once, and a failure inside one connection ends that connection
only. Shutdown stops accepting, closes idle connections at once, lets requests in flight finish
within `graceful_timeout_s` and cancels what is left.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
import h11
import structlog
import trio
from trio import TaskStatus

log = structlog.get_logger("processor.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_SIZE = 16384
# Out of file descriptors or buffers: accepting again later may succeed (as trio's own
# serve_listeners treats them).
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_PAUSE_S = 0.1
# After refusing a request: how long, and how much, of the client's input is still read.
LINGER_S = 1.0
LINGER_BYTES = 1 << 20


@attrs.frozen
class ServerSettings:
    keep_alive_timeout_s: float = 5.0
    request_timeout_s: float = 10.0
    send_timeout_s: float = 10.0
    graceful_timeout_s: float = 1.0
    max_connections: int = 64
    max_head_bytes: int = 16384
    max_body_bytes: int = 65536


class _Refused(Exception):
    """The request cannot be served: answer `status` and close the connection."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@attrs.frozen
class _Request:
    head: h11.Request
    body: bytes


async def serve(
    app: App,
    *,
    host: str,
    port: int,
    settings: ServerSettings,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port, report the bound addresses (`http://host:port`), serve `app` until
    `shutdown_trigger` returns, then shut down gracefully (module docstring)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = _Server(app, settings)
    try:
        async with trio.open_nursery() as connections:
            accepting = trio.CancelScope()
            stopped_accepting = trio.Event()
            connections.start_soon(
                server.accept_all, listeners, connections, accepting, stopped_accepting
            )
            task_status.started([_address(listener) for listener in listeners])
            await (shutdown_trigger or trio.sleep_forever)()
            accepting.cancel()
            await stopped_accepting.wait()
            for listener in listeners:  # new clients are refused from now on
                await trio.aclose_forcefully(listener)
            server.close_idle()
            connections.cancel_scope.deadline = trio.current_time() + settings.graceful_timeout_s
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server:
    def __init__(self, app: App, settings: ServerSettings) -> None:
        self._app = app
        self._settings = settings
        self._slots = trio.Semaphore(settings.max_connections)
        # waits for a next request, oldest first; True: it follows a response (evictable)
        self._idle: dict[int, tuple[trio.CancelScope, bool]] = {}
        self._changed = trio.Event()  # a connection went idle or ended
        self._ids = itertools.count()
        self._closing = False

    async def accept_all(
        self,
        listeners: list[trio.SocketListener],
        connections: trio.Nursery,
        accepting: trio.CancelScope,
        stopped: trio.Event,
    ) -> None:
        try:
            with accepting:
                async with trio.open_nursery() as nursery:
                    for listener in listeners:
                        nursery.start_soon(self._accept, listener, connections)
        finally:
            stopped.set()

    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                log.warning("http cannot accept now", error=str(exc))
                await trio.sleep(CAPACITY_PAUSE_S)
                continue
            try:
                await self._take_slot()
            except trio.Cancelled:  # shutting down while waiting for a slot: not served
                await trio.aclose_forcefully(stream)
                raise
            connections.start_soon(self._connection, stream)

    async def _take_slot(self) -> None:
        """A slot for a new connection: a free one, else one an idle keep-alive connection
        gives up (the longest idle), else wait until one of those happens."""
        while True:
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                pass
            else:
                return
            idle = next((scope for scope, evictable in self._idle.values() if evictable), None)
            if idle is not None:
                idle.cancel()
            self._changed = trio.Event()
            await self._changed.wait()

    def close_idle(self) -> None:
        """Shutdown: idle connections close at once, busy ones after their response."""
        self._closing = True
        for scope, _ in self._idle.values():
            scope.cancel()

    @contextmanager
    def _idle_wait(self, *, evictable: bool) -> Iterator[None]:
        key = next(self._ids)
        scope = trio.CancelScope(deadline=trio.current_time() + self._settings.keep_alive_timeout_s)
        if self._closing:
            scope.cancel()
        self._idle[key] = (scope, evictable)
        self._changed.set()
        try:
            with scope:
                yield
        finally:
            del self._idle[key]

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._settings.max_head_bytes)
        try:
            for served in itertools.count():
                if self._closing:
                    break
                try:
                    request = await self._receive(stream, conn, evictable=served > 0)
                except h11.RemoteProtocolError as exc:
                    raise _Refused(exc.error_status_hint) from exc
                if request is None:
                    break
                if not await self._respond(stream, conn, request):
                    break
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except _Refused as refused:
            await self._refuse(stream, conn, refused.status)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.debug("http connection lost", error=repr(exc))
        except Exception:
            log.exception("http connection failed")
        finally:
            await trio.aclose_forcefully(stream)
            self._slots.release()
            self._changed.set()

    async def _event(self, stream: trio.SocketStream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(READ_SIZE))

    async def _receive(
        self, stream: trio.SocketStream, conn: h11.Connection, *, evictable: bool
    ) -> _Request | None:
        """The next request with its whole body, or None when the client is gone or the
        connection stayed idle (keep-alive timeout, room needed after a first request,
        shutdown)."""
        head = conn.next_event()  # a pipelined request may be buffered already
        received = 0  # bytes read for this head: h11's own limit applies to each read only
        if head is h11.NEED_DATA:
            data: bytes | None = None
            with self._idle_wait(evictable=evictable):
                data = await stream.receive_some(READ_SIZE)
            if data is None:
                return None
            received = len(data)
            conn.receive_data(data)
        with trio.move_on_after(self._settings.request_timeout_s):
            while head is h11.NEED_DATA:
                head = conn.next_event()
                if head is h11.NEED_DATA:
                    if received >= self._settings.max_head_bytes:
                        raise _Refused(431)
                    data = await stream.receive_some(READ_SIZE)
                    received += len(data)
                    conn.receive_data(data)
            if isinstance(head, h11.ConnectionClosed):
                return None
            if not isinstance(head, h11.Request):
                raise _Refused(400)
            if conn.they_are_waiting_for_100_continue:
                await self.send(
                    stream, conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            body = bytearray()
            while True:
                event = await self._event(stream, conn)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self._settings.max_body_bytes:
                        raise _Refused(413)
                elif isinstance(event, h11.EndOfMessage):
                    return _Request(head, bytes(body))
                else:  # the client went away mid-request
                    return None
        raise _Refused(408)

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, request: _Request
    ) -> bool:
        """Run the app for one request; False when the connection must close."""
        exchange = _Exchange(self, stream, conn, request)
        try:
            await self._app(_scope(stream, request.head), exchange.receive, exchange.send)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            raise
        except Exception:
            log.exception("http request failed", path=request.head.target.decode("latin-1"))
        finally:
            exchange.done.set()
        if exchange.finished:
            return True
        if exchange.started:  # a response cut short cannot be completed: close
            return False
        raise _Refused(500)

    async def _refuse(self, stream: trio.SocketStream, conn: h11.Connection, status: int) -> None:
        """Answer `status` and close. The client may still be sending (a body too large, bytes
        after a malformed head): its input is read and dropped for a moment after our half
        close, since closing with unread input resets the connection, which can destroy the
        answer before the client reads it."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{status}\n".encode()
        headers = [("content-length", str(len(body))), ("connection", "close")]
        try:
            response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
            data = conn.send(response) or b""
            await self.send(stream, data + (conn.send(h11.Data(data=body)) or b""))
            await stream.send_eof()
            with trio.move_on_after(LINGER_S):
                dropped = 0
                while dropped < LINGER_BYTES and (chunk := await stream.receive_some(READ_SIZE)):
                    dropped += len(chunk)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.TooSlowError):
            return

    async def send(self, stream: trio.SocketStream, data: bytes | None) -> None:
        """Send within `send_timeout_s` (TooSlowError: the client does not read)."""
        if data:
            with trio.fail_after(self._settings.send_timeout_s):
                await stream.send_all(data)

    @property
    def closing(self) -> bool:
        return self._closing


class _Exchange:
    """The ASGI `receive` and `send` of one request."""

    def __init__(
        self, server: _Server, stream: trio.SocketStream, conn: h11.Connection, request: _Request
    ) -> None:
        self._server = server
        self._stream = stream
        self._conn = conn
        self._request = request
        self._head_only = request.head.method == b"HEAD"
        self._start: Message | None = None
        self._delivered = False
        self.started = False
        self.finished = False
        self.done = trio.Event()

    async def receive(self) -> Message:
        if not self._delivered:
            self._delivered = True
            return {"type": "http.request", "body": self._request.body, "more_body": False}
        await self.done.wait()  # nothing more comes in: the request ends with its response
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and self._start is None:
            self._start = message
            return
        if kind != "http.response.body" or self._start is None or self.finished:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        data = b""
        if not self.started:
            data += self._response_head(self._start, None if more else len(body))
            self.started = True
        if body and not self._head_only:
            data += self._conn.send(h11.Data(data=body)) or b""
        if not more:
            data += self._conn.send(h11.EndOfMessage()) or b""
            self.finished = True
        await self._server.send(self._stream, data)

    def _response_head(self, start: Message, length: int | None) -> bytes:
        headers = [(bytes(name), bytes(value)) for name, value in start.get("headers", ())]
        names = {name.lower() for name, _ in headers}
        if length is not None and b"content-length" not in names:
            headers.append((b"content-length", str(length).encode()))
        if self._server.closing:
            headers.append((b"connection", b"close"))
        status = start["status"]
        response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
        return self._conn.send(response) or b""


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _scope(stream: trio.SocketStream, head: h11.Request) -> Scope:
    path, _, query = head.target.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": head.http_version.decode(),
        "method": head.method.decode("ascii"),
        "scheme": "http",
        "path": unquote_to_bytes(path).decode("utf-8", "replace"),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": list(head.headers),
        "client": _address_of(stream.socket.getpeername),
        "server": _address_of(stream.socket.getsockname),
    }


def _address_of(get: Callable[[], Any]) -> tuple[str, int] | None:
    """(host, port), or None for a socket the peer has already reset."""
    try:
        return tuple(get()[:2])
    except OSError:
        return None
