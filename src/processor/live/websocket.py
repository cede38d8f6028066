"""A server-side WebSocket after the opening handshake: wsproto's frame protocol on a Trio stream.

From the 101 on (the upgrade is `live/http1.py`'s), wsproto's post-handshake `Connection`
parses and builds frames and this class does the I/O. Invariants: `run` is the only reader;
every write happens under one lock, so frames never interleave and nothing follows the close
frame; an inbound message is delivered whole or refused as `MessageTooBig` without buffering
past the limit; inbound messages wait in a queue of one (back-pressure by TCP); a frame the
parser refuses closes with the code wsproto names. Details, and why `send_texts` writes many
frames at once: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence

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
from wsproto.utilities import LocalProtocolError

NORMAL_CLOSURE = 1000
RECEIVE_BYTES = 4096
INBOUND_QUEUE = 1


class ConnectionClosed(Exception):
    """The WebSocket is closed or closing: nothing more can be sent or received."""


class MessageTooBig(Exception):
    """The peer sent a message larger than `max_message_bytes` (its data was dropped)."""


class WebSocket:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_bytes: int,
        received: bytes = b"",
        receive_bytes: int = RECEIVE_BYTES,
    ) -> None:
        """`received`: bytes that arrived after the upgrade request, before the 101."""
        self._stream = stream
        self._protocol = Connection(ConnectionType.SERVER, trailing_data=received)
        self._max_message_bytes = max_message_bytes
        self._receive_bytes = receive_bytes
        self._write_lock = trio.Lock()
        self._deliver, self._inbound = trio.open_memory_channel[str | bytes | MessageTooBig](
            INBOUND_QUEUE
        )
        self._parts: list[str | bytes] = []
        self._size = 0
        self._discarding = False  # the rest of a message already refused as too big
        self._ping_ids = itertools.count()
        self._pings: dict[bytes, trio.Event] = {}
        self._finished = trio.Event()  # the reader is done: closing handshake over or peer gone

    @property
    def open(self) -> bool:
        return self._protocol.state is ConnectionState.OPEN

    # --- receiving ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the socket until the closing handshake is over or the peer is gone."""
        try:
            async with self._deliver:
                await self._read()
        finally:
            self._finished.set()
            for waiter in self._pings.values():
                waiter.set()
            self._pings.clear()

    async def _read(self) -> None:
        while True:
            for event in self._protocol.events():
                if not await self._handle(event):
                    return
            try:
                data = await self._stream.receive_some(self._receive_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self._protocol.receive_data(bytes(data))

    async def _handle(self, event: Event) -> bool:
        """Act on one event; False when reading is over."""
        if isinstance(event, TextMessage | BytesMessage):
            await self._message_part(event)
        elif isinstance(event, Ping):
            await self._write_quietly(event.response())
        elif isinstance(event, Pong):
            self._pong(bytes(event.payload))
        elif isinstance(event, CloseConnection):
            state = self._protocol.state
            if state is ConnectionState.REMOTE_CLOSING:  # the peer closes: answer, then done
                await self._write_quietly(event.response())
            elif state is ConnectionState.OPEN:  # wsproto could not parse what arrived
                await self._write_quietly(CloseConnection(event.code, event.reason))
            return False  # (or CLOSED: the peer answered our close)
        return True

    async def _message_part(self, event: TextMessage | BytesMessage) -> None:
        if self._discarding:
            self._discarding = not event.message_finished
            return
        data = event.data if isinstance(event.data, str) else bytes(event.data)
        self._size += len(data.encode()) if isinstance(data, str) else len(data)
        if self._size > self._max_message_bytes:
            self._parts, self._size = [], 0
            self._discarding = not event.message_finished
            await self._put(MessageTooBig())
            return
        self._parts.append(data)
        if event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(data, str):
                await self._put("".join(part for part in parts if isinstance(part, str)))
            else:
                await self._put(b"".join(part for part in parts if isinstance(part, bytes)))

    async def _put(self, item: str | bytes | MessageTooBig) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._deliver.send(item)  # (suppressed: we are closing, nobody reads any more)

    def _pong(self, payload: bytes) -> None:
        """A pong answers its ping and every ping sent before it (RFC 6455 5.5.3)."""
        if payload not in self._pings:
            return  # unsolicited
        while self._pings:
            key, waiter = next(iter(self._pings.items()))
            del self._pings[key]
            waiter.set()
            if key == payload:
                return

    async def get_message(self) -> str | bytes:
        """The next message; raises MessageTooBig for one over the limit, ConnectionClosed at the
        end (messages that arrived before the peer closed are delivered first)."""
        try:
            item = await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed from None
        if isinstance(item, MessageTooBig):
            raise item
        return item

    # --- sending --------------------------------------------------------------------------------

    async def send_texts(self, frames: Sequence[str]) -> None:
        """Send `frames` as text messages, in order, in one write; ConnectionClosed when closing
        has begun."""
        async with self._write_lock:
            if self._finished.is_set():
                raise ConnectionClosed
            try:
                data = b"".join(self._protocol.send(TextMessage(data=frame)) for frame in frames)
            except LocalProtocolError:
                raise ConnectionClosed from None
            await self._send_all(data)

    async def ping(self) -> None:
        """Send a ping and wait for its pong; ConnectionClosed when the connection ends first."""
        payload = next(self._ping_ids).to_bytes(8, "big")
        waiter = self._pings[payload] = trio.Event()  # before writing: the pong may come at once
        try:
            await self._write(Ping(payload=payload))
        except ConnectionClosed:
            self._pings.pop(payload, None)
            raise
        await waiter.wait()
        if self._finished.is_set():
            raise ConnectionClosed

    async def aclose(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """The closing handshake: send a close frame (unless one was sent or answered already) and
        wait until the peer answers or goes. Unbounded on a peer that neither answers nor reads:
        the caller sets the deadline. Idempotent."""
        self._inbound.close()  # unread messages are dropped; the reader no longer waits for us
        if self._protocol.state is ConnectionState.OPEN:
            await self._write_quietly(CloseConnection(code=code, reason=reason))
        await self._finished.wait()

    async def _write(self, event: Event) -> None:
        async with self._write_lock:
            if self._finished.is_set():
                raise ConnectionClosed
            try:
                data = self._protocol.send(event)
            except LocalProtocolError:
                raise ConnectionClosed from None
            await self._send_all(data)

    async def _write_quietly(self, event: Event) -> None:
        """A control frame the protocol owes the peer; if the peer is gone, nothing is owed."""
        with contextlib.suppress(ConnectionClosed):
            await self._write(event)

    async def _send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed from None
