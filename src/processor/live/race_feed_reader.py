"""The race feed, live side: timing, results, alert and violation frames to an event's subscribers.

    RaceFeedReader.run (supervised "live-race")
    ├── reader: XREAD BLOCK on `<REDIS_STREAM>:race` from where it left off -> dispatch
    └── results pump: stages whose standings changed -> one read per second per stage at most
        (the live server's own pool) -> one `results` frame per stage to its event's subscribers

Invariants: a supervised restart resumes from the last id it saw; frames go through the same
bounded queue as positions; a stage's `results` are read at most once per `RESULTS_WINDOW_S`,
only while its event has subscribers; a frame for a subscription still waiting for its snapshot
is held and sent after `subscribed`, in order. The rules: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import psycopg
import redis
import structlog
import trio
from trio import TaskStatus

from processor.codecs.race_feed import (
    RESULTS,
    FeedError,
    decode_fields,
    feed_key,
    frame,
    results_frame,
)
from processor.live.protocol import topic_of
from processor.live.registry import Registry
from processor.observability.metrics import Metrics
from processor.store.group_reader import TailReader
from processor.store.postgres import TRANSIENT_ERRORS, Database
from processor.store.standings import stage_results

log = structlog.get_logger("processor.live.race_feed_reader")

RESULTS_WINDOW_S = 1.0
READ_COUNT = 500


class RaceFeedReader:
    def __init__(
        self,
        *,
        redis_url: str,
        control: redis.Redis,
        stream: str,
        read_block_ms: int,
        database: Database,
        registry: Registry,
        metrics: Metrics,
        results_window_s: float = RESULTS_WINDOW_S,
    ) -> None:
        self.key = feed_key(stream)
        self._redis_url = redis_url
        self._control = control
        self._block_ms = read_block_ms
        self._database = database
        self._registry = registry
        self._metrics = metrics
        self._window_s = results_window_s
        self._position: str | None = None  # None: not started yet (start at the feed's end)
        self._reader: TailReader | None = None
        self._dirty: dict[str, str] = {}  # stage -> event: standings changed, not yet sent
        self._dirty_event = trio.Event()
        self._last_sent: dict[str, float] = {}  # stage -> trio time of its last results read

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        reader = self._reader = TailReader(
            self._redis_url,
            self._control,
            stream=self.key,
            count=READ_COUNT,
            block_ms=self._block_ms,
            position=self._position,
        )
        try:
            log.info("race feed reader started", key=self.key, from_id=self._position or "$")
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump)
                while not reader.stopping:
                    for raw_id, fields in await reader.read():
                        self._position = raw_id.decode()
                        self.dispatch(fields)
                    self._position = reader.position
                nursery.cancel_scope.cancel()
        finally:
            reader.close()

    def request_stop(self) -> None:
        """No new read starts, and a read blocked in Redis returns at once."""
        if self._reader is not None:
            self._reader.request_stop()

    def dispatch(self, fields: dict[bytes, bytes]) -> None:
        """Hand one feed entry to the subscribers of its event (no awaits)."""
        try:
            change = decode_fields(fields)
        except FeedError as exc:
            log.warning("race feed entry skipped", error=str(exc))
            return
        topic = topic_of(change.event_id)
        if change.kind == RESULTS:
            if change.stage_id is not None:
                self._dirty[change.stage_id] = change.event_id
                self._dirty_event.set()
            return
        subscribers = self._registry.subscribers(topic)
        if not subscribers:
            return
        text = frame(topic, change)
        for subscription in list(subscribers):
            subscription.offer_frame(text, change.kind)

    async def _pump(self) -> None:
        """Send the changed stages' standings, each at most once per window."""
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            if not self._dirty:  # set again by a notice for a stage sent meanwhile
                continue
            now = trio.current_time()
            due_at = min(self._last_sent.get(s, -math.inf) + self._window_s for s in self._dirty)
            if due_at > now:
                await trio.sleep_until(due_at)
                now = trio.current_time()
            due = {
                s: e
                for s, e in self._dirty.items()
                if self._last_sent.get(s, -math.inf) + self._window_s <= now
            }
            for stage_id in due:
                del self._dirty[stage_id]
            if self._dirty:
                self._dirty_event.set()  # the rest are due later
            wanted = {s: e for s, e in due.items() if self._registry.subscribers(topic_of(e))}
            if not wanted:
                continue
            for stage_id in wanted:
                self._last_sent[stage_id] = now
            tables = await self._read_results(sorted(wanted))
            if tables is None:  # try again after the window
                for stage_id, event_id in wanted.items():
                    self._dirty.setdefault(stage_id, event_id)
                self._dirty_event.set()
                continue
            for stage_id, results in tables.items():
                owner = wanted.get(stage_id)
                if owner is None:
                    continue
                topic = topic_of(owner)
                text = results_frame(topic, stage_id, results)
                for subscription in list(self._registry.subscribers(topic)):
                    subscription.offer_frame(text, RESULTS)

    async def _read_results(
        self, stage_ids: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]] | None:
        try:
            return await self._database.run(lambda conn: stage_results(conn, stage_ids))
        except TRANSIENT_ERRORS as exc:
            log.warning("results read failed", error=str(exc)[:200])
        except psycopg.Error as exc:
            log.error("results query failed", error=str(exc)[:200])
        return None
