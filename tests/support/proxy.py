"""A TCP proxy for fault injection: put it between the processor and Redis or PostgreSQL.

The shared test servers are never stopped (other tests use them); instead the processor under
test is pointed at a proxy that the test can break and mend:

    async with tcp_proxy(postgres_server_url) as proxy:
        env["DATABASE_URL"] = proxy.url(database_url)   # same user, db and options, proxied
        ...
        await proxy.cut()        # connections refused (ECONNREFUSED), open ones reset
        ...
        await proxy.blackhole()  # connections accepted but nothing answers, open ones stall
        ...
        await proxy.restore()    # forwarding again, on the same port

- `cut()` closes the listening socket (a new connect is refused, as when the server is down)
  and resets every open connection (RST), as when the server or the network dies.
- `blackhole()` keeps accepting but forwards nothing, in either direction, on new and open
  connections: a hung server or a dropped route, where only timeouts help.
- `restore()` listens again on the same port and forwards normally; black-holed connections
  that their client has not given up on resume and deliver what was held (a healed partition).

`proxy.connections` is the number of connections open through the proxy. The proxy runs in the
test's own Trio loop, so the test and the processor share one clock and no thread is involved.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit, urlunsplit

import trio

BUFFER = 65536
FORWARD, REFUSE, BLACKHOLE = "forward", "refuse", "blackhole"


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0  # assigned when first listening, then kept across cut/restore
        self.mode = FORWARD
        self._nursery: trio.Nursery | None = None
        self._listener_scope: trio.CancelScope | None = None
        self._listener_closed = trio.Event()
        self._connection_scopes: set[trio.CancelScope] = set()
        self._no_connections = trio.Event()
        self._no_connections.set()
        self._resume = trio.Event()  # set when leaving blackhole mode

    @property
    def connections(self) -> int:
        return len(self._connection_scopes)

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's (user, path, query kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{self.host}:{self.port}"))

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._listen)
            task_status.started(self.port)
            await trio.sleep_forever()  # keeps the nursery open while nothing listens (cut)

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self.mode = REFUSE
        await self._close_listener()
        for scope in list(self._connection_scopes):
            scope.cancel()
        with trio.fail_after(5):
            await self._no_connections.wait()

    async def blackhole(self) -> None:
        """Accept connections but forward nothing (new and open connections stall)."""
        if self.mode == REFUSE:
            await self._start_listener()
        self.mode = BLACKHOLE
        self._resume = trio.Event()

    async def restore(self) -> None:
        """Forward again (listening on the same port)."""
        if self.mode == REFUSE:
            await self._start_listener()
        self.mode = FORWARD
        self._resume.set()

    # --- internals ---------------------------------------------------------------------------

    async def _start_listener(self) -> None:
        assert self._nursery is not None, "the proxy is not running"
        await self._nursery.start(self._listen)

    async def _close_listener(self) -> None:
        if self._listener_scope is not None:
            self._listener_scope.cancel()
            await self._listener_closed.wait()
            self._listener_scope = None

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        self._listener_closed = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._listener_scope = scope
                task_status.started()
                assert self._nursery is not None
                await trio.serve_listeners(self._handle, listeners, handler_nursery=self._nursery)
        finally:
            for listener in listeners:
                listener.socket.close()
            self._listener_closed.set()

    async def _handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connection_scopes.add(scope)
            self._no_connections = trio.Event()
            try:
                if self.mode == BLACKHOLE:
                    await self._resume.wait()  # accepted, never answered (until restore)
                upstream = await trio.open_tcp_stream(*self.upstream)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
            except OSError:
                pass  # upstream unreachable: the client sees its connection close
            finally:
                self._connection_scopes.discard(scope)
                if not self._connection_scopes:
                    self._no_connections.set()
        if scope.cancelled_caught:
            _reset(client)  # cut(): the client sees ECONNRESET, not a polite close
        with trio.CancelScope(shield=True):
            await client.aclose()

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(BUFFER):
                if self.mode == BLACKHOLE:
                    await self._resume.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        both.cancel()  # one side closed: close the other too


def _reset(stream: trio.SocketStream) -> None:
    """Make the coming close send RST (SO_LINGER on, timeout 0)."""
    with suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@asynccontextmanager
async def tcp_proxy(url: str) -> AsyncIterator[TcpProxy]:
    """A running proxy to the host and port of `url` (any scheme), stopped when the block ends."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"{url!r} needs an explicit host and port"
    proxy = TcpProxy(parts.hostname, parts.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
