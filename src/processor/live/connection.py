"""One authenticated live client: its protocol loop, its bounded outbound queue, its heartbeat.

Three tasks under one nursery: receive (subscribe/unsubscribe in order), send (the only writer
of data frames, from one bounded queue, so frames keep their order), ping. Invariants: producers
never wait (`enqueue` does not block); a queue over `LIVE_WS_MAX_QUEUE` frames or
`LIVE_WS_MAX_QUEUE_BYTES` closes this client with 4008 and no one else; subscribes are paced to
`LIVE_WS_AUTHORIZATIONS_PER_S`; every close goes through `request_close(code, reason)` and never
cuts a frame in half. Details: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import time

import attrs
import structlog
import trio

from processor.live import protocol
from processor.live.auth import Access, Directus
from processor.live.registry import Registry
from processor.live.session import Session
from processor.live.snapshot import SnapshotError, Snapshots
from processor.live.websocket import ConnectionClosed, MessageTooBig, WebSocket
from processor.observability.metrics import LIVE_MESSAGES_OUT, Metrics, observe_many

log = structlog.get_logger("processor.live.connection")

CLOSE_TIMEOUT_S = 5.0
SEND_BATCH = 64  # frames per socket write at most (`WebSocket.send_texts`) ...
SEND_BATCH_BYTES = 256 * 1024  # ... and about this many bytes (one write's copy stays small)
SLOW_CONSUMER, GOING_AWAY, POLICY, TOO_BIG, PING_TIMEOUT = 4008, 1001, 1008, 1009, 1011

Outgoing = tuple[str, str, int | None]  # frame, type (metric label), stream entry time in ms


@attrs.frozen
class Budgets:
    """Per-connection caps (settings `LIVE_WS_*`)."""

    max_queue: int
    max_queue_bytes: int
    max_subscriptions: int
    authorizations_per_s: float
    max_message_bytes: int
    max_protocol_errors: int
    ping_interval_s: float


class TokenBucket:
    """`rate` per second, bursts up to one second's worth; `take` waits for a token."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._at = trio.current_time()

    async def take(self) -> None:
        now = trio.current_time()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            await trio.sleep((1 - self._tokens) / self._rate)
            self._tokens, self._at = 1.0, trio.current_time()
        self._tokens -= 1


class Connection:
    def __init__(
        self,
        ws: WebSocket,
        session: Session,
        *,
        name: str,
        budgets: Budgets,
        registry: Registry,
        directus: Directus,
        snapshots: Snapshots,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self._ws = ws
        self._session = session
        self._budgets = budgets
        self._max_queue = budgets.max_queue
        self._max_message_bytes = budgets.max_message_bytes
        self._max_protocol_errors = budgets.max_protocol_errors
        self._ping_interval_s = budgets.ping_interval_s
        self._registry = registry
        self._directus = directus
        self._snapshots = snapshots
        self._metrics = metrics
        self._authorizations = TokenBucket(budgets.authorizations_per_s)
        self._outgoing_send, self._outgoing = trio.open_memory_channel[Outgoing](budgets.max_queue)
        self.queued_bytes = 0
        self.held_bytes = 0  # held for pending subscriptions (registry.Subscription)
        self._sent = {kind: metrics.live_messages.labels("out", kind) for kind in LIVE_MESSAGES_OUT}
        self._closing = trio.Event()
        self._sender_done = trio.Event()
        self.close_code: int | None = None
        self.close_reason = ""

    # --- Outlet (called by subscriptions and the broadcaster; never blocks) ------------------

    def enqueue(self, frame: str, kind: str, entry_ms: int | None) -> None:
        if self._closing.is_set():
            return
        size = len(frame)  # characters: bytes for the ASCII JSON orjson writes for us
        if self.queued_bytes + self.held_bytes + size > self._budgets.max_queue_bytes:
            self.overflow()
            return
        try:
            self._outgoing_send.send_nowait((frame, kind, entry_ms))
        except trio.WouldBlock:
            self.overflow()
            return
        self.queued_bytes += size

    def hold(self, size: int) -> bool:
        """Positions held for a pending subscription share the byte budget with the queue."""
        if self._closing.is_set():
            return False
        if self.queued_bytes + self.held_bytes + size > self._budgets.max_queue_bytes:
            self.overflow()
            return False
        self.held_bytes += size
        return True

    def release(self, size: int) -> None:
        self.held_bytes -= size

    def overflow(self) -> None:
        if self._closing.is_set():
            return
        self._metrics.live_slow_consumer_closes.inc()
        log.warning(
            "closing slow live client",
            client=self.name,
            queued=self._outgoing.statistics().current_buffer_used,
            queued_bytes=self.queued_bytes,
        )
        self._begin_close(SLOW_CONSUMER, "slow consumer")

    # --- lifecycle ---------------------------------------------------------------------------

    def topics(self) -> list[str]:
        return self._registry.topics_of(self)

    def revoke(self, topic: str) -> bool:
        """A re-check found the event no longer readable: drop the subscription, say why."""
        if not self._registry.unsubscribe(self, topic):
            return False
        self._reply(
            protocol.error_frame(protocol.FORBIDDEN, "no longer allowed to read this event", topic)
        )
        return True

    def request_close(self, code: int, reason: str) -> None:
        """Ask the client to go: the close handshake with `code` (`serve` finishes it, bounded).

        Returns at once; the caller waits for the connection to be gone if it needs to.
        """
        self._begin_close(code, reason)

    def _begin_close(self, code: int | None, reason: str = "") -> None:
        """Begin closing (first caller wins). `code` None: the peer is already gone."""
        if self._closing.is_set():
            return
        self.close_code, self.close_reason = code, reason
        self._closing.set()

    async def serve(self) -> None:
        self._metrics.live_connections.inc()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop)
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._ping_loop)
                await self._closing.wait()
                if self.close_code == SLOW_CONSUMER:
                    self._outgoing.close()  # drop the backlog; the sender stops after this frame
                else:
                    self._outgoing_send.close()  # flush what is queued, then the sender stops
                # A peer that missed a pong is presumed gone: do not wait long for its answer.
                grace = CLOSE_TIMEOUT_S
                if self.close_code == PING_TIMEOUT:
                    grace = min(grace, self._ping_interval_s)
                with trio.move_on_after(grace):
                    await self._sender_done.wait()
                    if self.close_code is not None:
                        await self._ws.aclose(self.close_code, self.close_reason)
                nursery.cancel_scope.cancel()
        finally:
            self._registry.forget(self)
            self._metrics.live_connections.dec()
            log.debug("live client closed", client=self.name, code=self.close_code)

    # --- tasks -------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        lag = self._metrics.live_broadcast_lag
        try:
            while True:
                batch = [await self._outgoing.receive()]
                size = len(batch[0][0])
                while len(batch) < SEND_BATCH and size < SEND_BATCH_BYTES:
                    try:  # whatever else is queued goes in the same write
                        batch.append(self._outgoing.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                    size += len(batch[-1][0])
                self.queued_bytes -= size
                await self._ws.send_texts([frame for frame, _kind, _entry in batch])
                now = time.time()
                for _frame, kind, _entry_ms in batch:
                    self._sent[kind].inc()
                observe_many(
                    lag, [max(0.0, now - ms / 1000) for _f, _k, ms in batch if ms is not None]
                )
        except (trio.EndOfChannel, trio.ClosedResourceError):
            pass
        except ConnectionClosed:
            self._begin_close(None)
        finally:
            self._sender_done.set()

    async def _receive_loop(self) -> None:
        errors = 0
        while True:
            try:
                frame = await self._ws.get_message()
            except MessageTooBig:
                self._metrics.live_messages.labels("in", "too_big").inc()
                self._begin_close(TOO_BIG, f"message over {self._max_message_bytes} bytes")
                return
            except ConnectionClosed:
                self._begin_close(None)  # the peer closed or went away
                return
            try:
                request = protocol.parse_client_frame(frame)
            except protocol.ProtocolError as exc:
                errors += 1
                self._metrics.live_messages.labels("in", "invalid").inc()
                self._reply(protocol.error_frame(protocol.BAD_REQUEST, exc.message, exc.topic))
                if errors >= self._max_protocol_errors:
                    self._begin_close(POLICY, "too many protocol errors")
                    return
                continue
            self._metrics.live_messages.labels("in", request.kind).inc()
            if request.kind == protocol.SUBSCRIBE:
                await self._subscribe(request)
            else:
                self._registry.unsubscribe(self, request.topic)
                self.enqueue(protocol.unsubscribed_frame(request.topic), "unsubscribed", None)

    async def _ping_loop(self) -> None:
        while True:
            await trio.sleep(self._ping_interval_s)
            with trio.move_on_after(self._ping_interval_s) as waiting:
                try:
                    await self._ws.ping()
                except ConnectionClosed:
                    self._begin_close(None)
                    return
            if waiting.cancelled_caught:
                log.info("live client missed a pong", client=self.name)
                self._begin_close(PING_TIMEOUT, "ping timeout")
                return

    # --- requests ----------------------------------------------------------------------------

    async def _subscribe(self, request: protocol.ClientFrame) -> None:
        topic = request.topic
        budgets = self._budgets
        if (
            not self._registry.is_subscribed(self, topic)
            and self._registry.subscription_count(self) >= budgets.max_subscriptions
        ):
            self._reply(
                protocol.error_frame(
                    protocol.BAD_REQUEST,
                    f"too many subscriptions: at most {budgets.max_subscriptions} per connection",
                    topic,
                )
            )
            return
        await self._authorizations.take()
        session = self._session
        access = await self._directus.event_access(session.credentials, request.event_id)
        if access is Access.FORBIDDEN:
            self._reply(
                protocol.error_frame(protocol.FORBIDDEN, "not allowed to read this event", topic)
            )
            return
        if access is Access.UNAVAILABLE or await session.race_kinds() is None:
            self._reply(
                protocol.error_frame(
                    protocol.UNAVAILABLE, "authorization unavailable, retry later", topic
                )
            )
            return
        # Registered before the snapshot is read: positions arriving meanwhile are held, not lost.
        subscription = self._registry.subscribe(self, topic, session.grants)
        try:
            snapshot = await self._snapshots.read(request.event_id)
        except SnapshotError as exc:
            self._registry.unsubscribe(self, topic)
            self._reply(protocol.error_frame(exc.code, exc.message, topic))
            return
        self.enqueue(snapshot.frame_for(session.grants.kinds), "subscribed", None)
        subscription.activate_floors(snapshot.floor)

    def _reply(self, frame: str) -> None:
        self.enqueue(frame, "error", None)
