"""Who listens to what: connection <-> topic subscriptions, and each subscription's state.

Two indexes kept in step: topic -> {connection: Subscription} for the broadcaster, connection ->
{topic: Subscription} so that `forget` removes a closing connection completely in one call. A
Subscription starts pending (registered before its snapshot is read: no gap) and holds positions
against the connection's byte budget; `activate` then sets a per-device floor from the snapshot
and releases them through it, in order. Nothing here mutates the indexes while the broadcaster
iterates them. Why a byte budget and a floor: docs/pipeline.md, Internals.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Protocol

import attrs

from processor.codecs.position import Position
from processor.observability.metrics import Metrics

POSITION = "position"


class Outlet(Protocol):
    """The sending side of a connection, as subscriptions see it."""

    def enqueue(self, frame: str, kind: str, entry_ms: int | None) -> None:
        """Queue a frame without waiting (a full queue closes the connection with 4008)."""

    def overflow(self) -> None:
        """Too far behind: close as a slow consumer."""

    def hold(self, size: int) -> bool:
        """Reserve `size` bytes of the budget for a held position (False: over it, closing)."""

    def release(self, size: int) -> None:
        """Give back bytes reserved by `hold`."""


@attrs.define(eq=False, slots=True)
class Grants:
    """The race-control frame kinds (`timing`, `results`, `alert`, `violation`) a session's
    subscriptions may receive: one object per session, shared by its subscriptions and replaced
    in place by its re-checks (`live/session.py`), so a change applies at once to all of them."""

    kinds: frozenset[str] = frozenset()
    read_at: float = float("-inf")  # trio time of the Directus read behind `kinds`


HELD_OVERHEAD = 64  # bytes per held position besides its (shared) frame string


# device_id, ts, frame, stream entry time (ms), frame kind; a race frame (`offer_frame`) is
# held as (None, None, frame, None, kind)
Held = tuple[str | None, datetime | None, str, int | None, str]


@attrs.define(eq=False, slots=True)
class Subscription:
    outlet: Outlet
    topic: str
    grants: Grants
    held: list[Held] | None = attrs.field(factory=list)  # None once active
    held_bytes: int = 0
    # device -> snapshot ts. Shared, read-only: one dict per snapshot read, built in the
    # snapshot's worker thread, so a subscribe costs O(1) here even for 3,000 devices.
    floor: Mapping[str, datetime] = attrs.field(factory=dict)

    def offer(self, device_id: str, ts: datetime, frame: str, entry_ms: int | None) -> None:
        if self.held is not None:
            size = len(frame) + HELD_OVERHEAD
            if self.outlet.hold(size):
                self.held_bytes += size
                self.held.append((device_id, ts, frame, entry_ms, POSITION))
            return
        floor = self.floor.get(device_id)
        if floor is not None and ts <= floor:
            return
        self.outlet.enqueue(frame, POSITION, entry_ms)

    def offer_frame(self, frame: str, kind: str) -> None:
        """A race-control frame (timing, results, alert, violation): only when the session may
        read its collection (`grants`); no device floor; held like positions while the snapshot
        is read, so it follows the `subscribed` reply."""
        if kind not in self.grants.kinds:
            return
        if self.held is not None:
            size = len(frame) + HELD_OVERHEAD
            if self.outlet.hold(size):
                self.held_bytes += size
                self.held.append((None, None, frame, None, kind))
            return
        self.outlet.enqueue(frame, kind, None)

    def activate(self, snapshot: Iterable[Position]) -> None:
        """The snapshot was queued: release held positions newer than it, in arrival order."""
        self.activate_floors({p.device_id: p.ts for p in snapshot})

    def activate_floors(self, floor: Mapping[str, datetime]) -> None:
        """`activate` with the snapshot's device -> ts map already built (and shared)."""
        self.floor = floor
        held, self.held = self.held or [], None
        self.discard()
        for device_id, ts, frame, entry_ms, kind in held:
            if device_id is None or ts is None:
                self.offer_frame(frame, kind)
            else:
                self.offer(device_id, ts, frame, entry_ms)

    def discard(self) -> None:
        """Give back the budget of what is held (activated, replaced or unsubscribed)."""
        if self.held_bytes:
            self.outlet.release(self.held_bytes)
            self.held_bytes = 0


class Registry:
    def __init__(self, metrics: Metrics) -> None:
        self._by_topic: dict[str, dict[Outlet, Subscription]] = {}
        self._by_outlet: dict[Outlet, dict[str, Subscription]] = {}
        self._metrics = metrics
        self._count = 0

    def subscribe(self, outlet: Outlet, topic: str, grants: Grants) -> Subscription:
        """Register a (new, pending) subscription; a repeated subscribe starts over."""
        subscription = Subscription(outlet, topic, grants)
        topics = self._by_outlet.setdefault(outlet, {})
        previous = topics.get(topic)
        if previous is None:
            self._set_count(self._count + 1)
        else:
            previous.discard()
        topics[topic] = subscription
        self._by_topic.setdefault(topic, {})[outlet] = subscription
        return subscription

    def unsubscribe(self, outlet: Outlet, topic: str) -> bool:
        topics = self._by_outlet.get(outlet)
        removed = topics.pop(topic, None) if topics is not None else None
        if topics is None or removed is None:
            return False
        removed.discard()
        if not topics:
            del self._by_outlet[outlet]
        self._drop(outlet, topic)
        self._set_count(self._count - 1)
        return True

    def forget(self, outlet: Outlet) -> None:
        """Remove every subscription of a closed connection."""
        topics = self._by_outlet.pop(outlet, {})
        for topic, subscription in topics.items():
            subscription.discard()
            self._drop(outlet, topic)
        self._set_count(self._count - len(topics))

    def subscribers(self, topic: str) -> Collection[Subscription]:
        found = self._by_topic.get(topic)
        return found.values() if found else ()

    def subscription_count(self, outlet: Outlet) -> int:
        return len(self._by_outlet.get(outlet, ()))

    def topics_of(self, outlet: Outlet) -> list[str]:
        return list(self._by_outlet.get(outlet, ()))

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
