"""The snapshot sent on subscribe: the latest non-faulty stored fix of every device of an event.

One worker-thread hop reads the event's devices from the Directus tables, each device's latest
shown fix through the `positions` primary key, and encodes the frame, so a large snapshot is
never built on the Trio thread. Invariants: reads use the live server's own pool; reads of one
event are coalesced (at most one per `window_s`, shared frame included); a subscriber only joins
a read that has not started, so the no-gap rule holds; a fix dated ahead of the clock never
freezes a device (the broadcaster's floor rule). Details: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs
import orjson
import psycopg
import structlog
import trio

from processor.codecs.io_map import ModelMap, derive
from processor.codecs.position import Position
from processor.codecs.race_feed import ALERT, RESULTS
from processor.live.broadcast import AHEAD_SKEW
from processor.live.device_events import event_devices
from processor.live.protocol import (
    INTERNAL,
    UNAVAILABLE,
    position_object,
    subscribed_frame,
    topic_json,
    topic_of,
)
from processor.observability.metrics import Metrics
from processor.store.positions import latest_shown_positions
from processor.store.postgres import TRANSIENT_ERRORS, Database
from processor.store.standings import event_results, open_alerts

log = structlog.get_logger("processor.live.snapshot")

WINDOW_S = 1.0
PURGE_AT = 64  # events with state before idle ones are forgotten


class SnapshotError(Exception):
    """The snapshot could not be read; `code` is the protocol error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.define(eq=False, slots=True)
class Snapshot:
    """One read, shared by every subscriber that joined it. The `subscribed` frame exists in
    up to four variants (results and alerts each included or not, by the subscriber's
    permissions), each built once on first use and then shared."""

    positions: tuple[Position, ...]
    topic_json: str
    snapshot_json: str
    results_json: str
    alerts_json: str
    floor: Mapping[str, datetime]  # device -> ts, shared (read-only) by those subscriptions
    _frames: dict[tuple[bool, bool], str] = attrs.field(factory=dict)

    def frame_for(self, kinds: Collection[str]) -> str:
        """The `subscribed` frame for a session allowed the race-control frame `kinds`."""
        key = (RESULTS in kinds, ALERT in kinds)
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = subscribed_frame(
                self.topic_json,
                self.snapshot_json,
                self.results_json if key[0] else "[]",
                self.alerts_json if key[1] else "[]",
            )
        return frame


@attrs.define(eq=False)
class _Read:
    """One read of one event, and everyone waiting for it."""

    done: trio.Event = attrs.field(factory=trio.Event)
    result: Snapshot | SnapshotError | None = None


@attrs.define(eq=False)
class _EventReads:
    next: _Read | None = None  # not started yet: new subscribers join this one
    running: bool = False
    last_start: float = float("-inf")
    idle: trio.Event = attrs.field(factory=trio.Event)


class Snapshots:
    def __init__(
        self,
        database: Database,
        metrics: Metrics,
        *,
        window_s: float = WINDOW_S,
        io_of: Callable[[str], ModelMap | None] = lambda _device: None,
    ) -> None:
        self._database = database
        self._io_of = io_of  # device -> its model's IO mapping (the device map's, refreshed)
        self._metrics = metrics
        self._window_s = window_s
        self._events: dict[str, _EventReads] = {}
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Reads run as tasks of the live server's nursery: a subscriber that goes away while
        waiting does not cancel the read the others wait for."""
        self._nursery = nursery

    async def read(self, event_id: str) -> Snapshot:
        """A snapshot read after this call began (raises SnapshotError)."""
        assert self._nursery is not None, "Snapshots.attach() first"
        reads = self._events.get(event_id)
        if reads is None:
            if len(self._events) >= PURGE_AT:
                self._purge()
            reads = self._events[event_id] = _EventReads()
        pending = reads.next
        if pending is None:
            pending = reads.next = _Read()
            self._nursery.start_soon(self._perform, event_id, reads, pending)
        await pending.done.wait()
        result = pending.result
        if isinstance(result, SnapshotError):
            raise result
        assert result is not None
        return result

    async def _perform(self, event_id: str, reads: _EventReads, pending: _Read) -> None:
        try:
            while reads.running:  # one read per event at a time
                reads.idle = trio.Event()
                await reads.idle.wait()
            await trio.sleep_until(reads.last_start + self._window_s)
            reads.next = None  # from here on, new subscribers wait for the following read
            reads.running = True
            reads.last_start = trio.current_time()
            pending.result = await self._read(event_id)
        except* Exception as group:
            log.error("snapshot read failed", event_id=event_id, exc_info=group)
            pending.result = SnapshotError(INTERNAL, "snapshot failed")
        finally:
            if pending.result is None:  # cancelled (the server is stopping)
                pending.result = SnapshotError(UNAVAILABLE, "server stopping")
            pending.done.set()
            reads.running = False
            reads.idle.set()

    def _purge(self) -> None:
        """Forget events with nothing running or waiting whose window has passed (the state
        is kept that long so the window also holds between reads that do not overlap)."""
        now = trio.current_time()
        for event_id, reads in list(self._events.items()):
            if not reads.running and reads.next is None and reads.last_start + self._window_s < now:
                del self._events[event_id]

    async def _read(self, event_id: str) -> Snapshot | SnapshotError:
        started = time.perf_counter()
        try:
            return await self._database.run(lambda conn: _read(conn, event_id, self._io_of))
        except TRANSIENT_ERRORS as exc:
            log.warning("snapshot unavailable", event_id=event_id, error=str(exc).strip()[:200])
            return SnapshotError(UNAVAILABLE, "snapshot unavailable, retry later")
        except psycopg.Error as exc:
            log.error("snapshot query failed", event_id=event_id, error=str(exc).strip()[:200])
            return SnapshotError(INTERNAL, "snapshot query failed")
        finally:
            self._metrics.live_snapshot_duration.observe(time.perf_counter() - started)


def _read(
    conn: psycopg.Connection[Any], event_id: str, io_of: Callable[[str], ModelMap | None]
) -> Snapshot:
    """In the worker thread: query, then encode the frame (no Trio-thread time for either)."""
    bound = datetime.now(UTC) + AHEAD_SKEW
    latest = latest_shown_positions(conn, event_devices(conn, event_id), bound)
    positions = tuple(latest[device_id] for device_id in sorted(latest))
    floor = MappingProxyType({p.device_id: p.ts for p in positions if p.ts <= bound})
    # read after the subscription was registered, like the positions: a change committed
    # meanwhile is in the table or arrives as a frame after this reply (or both)
    results = event_results(conn, event_id)
    alerts = open_alerts(conn, event_id)

    def io(position: Position) -> dict[str, Any] | None:
        mapping = io_of(position.device_id)
        return None if mapping is None else derive(position.attributes, mapping)

    return Snapshot(
        positions,
        topic_json(topic_of(event_id)),
        orjson.dumps([position_object(p, io(p)) for p in positions]).decode(),
        orjson.dumps(results).decode(),
        orjson.dumps(alerts).decode(),
        floor,
    )
