"""Who listens to what: connection <-> topic subscriptions, and each subscription's state.

Two indexes kept in step: topic -> {connection: Subscription} for the broadcaster (one lookup per
position and event), connection -> {topic: Subscription} so that a closing connection is
forgotten completely in one call (`forget`), leaving nothing behind.

A Subscription starts *pending*: it is registered before its snapshot is read (SPEC §5, no gap),
and positions arriving meanwhile are held (bounded by the connection's queue cap). `activate`
then records the snapshot's timestamp per device as a floor (a live position not newer than the
snapshot's for its device is not sent again: the durable writer may commit a fix before the
broadcast consumer reads it) and releases the held positions through the same filter, in order.

Nothing here mutates the indexes while the broadcaster iterates them: `offer` only queues a frame
or flags the connection as slow; the connection's own task later calls `forget`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Protocol

import attrs

from processor.observability.metrics import Metrics
from processor.position import Position

POSITION = "position"


class Outlet(Protocol):
    """The sending side of a connection, as subscriptions see it."""

    def enqueue(self, frame: str, kind: str, entry_ms: int | None) -> None:
        """Queue a frame without waiting (a full queue closes the connection with 4008)."""

    def overflow(self) -> None:
        """Too far behind: close as a slow consumer."""


Held = tuple[str, datetime, str, int | None]  # device_id, ts, frame, stream entry time (ms)


@attrs.define(eq=False, slots=True)
class Subscription:
    outlet: Outlet
    topic: str
    cap: int
    held: list[Held] | None = attrs.field(factory=list)  # None once active
    # device -> snapshot ts. Shared, read-only: one dict per snapshot read, built in the
    # snapshot's worker thread, so a subscribe costs O(1) here even for 3,000 devices.
    floor: Mapping[str, datetime] = attrs.field(factory=dict)

    def offer(self, device_id: str, ts: datetime, frame: str, entry_ms: int | None) -> None:
        if self.held is not None:
            if len(self.held) >= self.cap:
                self.outlet.overflow()
                return
            self.held.append((device_id, ts, frame, entry_ms))
            return
        floor = self.floor.get(device_id)
        if floor is not None and ts <= floor:
            return
        self.outlet.enqueue(frame, POSITION, entry_ms)

    def activate(self, snapshot: Iterable[Position]) -> None:
        """The snapshot was queued: release held positions newer than it, in arrival order."""
        self.activate_floors({p.device_id: p.ts for p in snapshot})

    def activate_floors(self, floor: Mapping[str, datetime]) -> None:
        """`activate` with the snapshot's device -> ts map already built (and shared)."""
        self.floor = floor
        held, self.held = self.held or [], None
        for device_id, ts, frame, entry_ms in held:
            self.offer(device_id, ts, frame, entry_ms)


class Registry:
    def __init__(self, metrics: Metrics) -> None:
        self._by_topic: dict[str, dict[Outlet, Subscription]] = {}
        self._by_outlet: dict[Outlet, dict[str, Subscription]] = {}
        self._metrics = metrics
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def subscribe(self, outlet: Outlet, topic: str, cap: int) -> Subscription:
        """Register a (new, pending) subscription; a repeated subscribe starts over."""
        subscription = Subscription(outlet, topic, cap)
        topics = self._by_outlet.setdefault(outlet, {})
        if topic not in topics:
            self._set_count(self._count + 1)
        topics[topic] = subscription
        self._by_topic.setdefault(topic, {})[outlet] = subscription
        return subscription

    def unsubscribe(self, outlet: Outlet, topic: str) -> bool:
        topics = self._by_outlet.get(outlet)
        if topics is None or topics.pop(topic, None) is None:
            return False
        if not topics:
            del self._by_outlet[outlet]
        self._drop(outlet, topic)
        self._set_count(self._count - 1)
        return True

    def forget(self, outlet: Outlet) -> None:
        """Remove every subscription of a closed connection."""
        topics = self._by_outlet.pop(outlet, {})
        for topic in topics:
            self._drop(outlet, topic)
        self._set_count(self._count - len(topics))

    def subscribers(self, topic: str) -> Collection[Subscription]:
        found = self._by_topic.get(topic)
        return found.values() if found else ()

    def subscription_count(self, outlet: Outlet) -> int:
        return len(self._by_outlet.get(outlet, ()))

    def is_subscribed(self, outlet: Outlet, topic: str) -> bool:
        return topic in self._by_outlet.get(outlet, ())

    def _drop(self, outlet: Outlet, topic: str) -> None:
        outlets = self._by_topic.get(topic)
        if outlets is not None:
            outlets.pop(outlet, None)
            if not outlets:
                del self._by_topic[topic]

    def _set_count(self, count: int) -> None:
        self._count = count
        self._metrics.live_subscriptions.set(count)
