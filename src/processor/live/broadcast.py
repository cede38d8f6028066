"""The broadcast consumer: live positions from the stream to every subscriber of their events.

Invariants: it reads through this instance's own group `LIVE_GROUP_PREFIX-INSTANCE_ID`, created
at `$`, with `XREADGROUP ... NOACK`, so it never touches the durable group and leaves nothing
pending; a slow client never slows it (`Subscription.offer` never blocks). Faulty, repeated and
out-of-order fixes are skipped by the writer's own rules; a frame is encoded once per topic and
shared by its subscribers. The group is destroyed on a clean stop. Details: docs/pipeline.md,
Internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import redis
import structlog
import trio
from trio import TaskStatus

from processor.codecs.io_map import ModelMap, derive
from processor.codecs.position import CodecError, Position, decode_payload
from processor.codecs.quality import QualityRules, faulty_reason
from processor.config import ConfigError
from processor.lifecycle import Stopper
from processor.live.protocol import encode_position_object, position_frame, topic_json, topic_of
from processor.live.registry import Registry
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store
from processor.store.group_reader import GroupRead, GroupReader, StreamEntries
from processor.store.live_group import GroupInUse, take_live_group

log = structlog.get_logger("processor.live.broadcast")

PAYLOAD = b"payload"
AHEAD_SKEW_S = 5.0  # a fix dated later than the clock plus this does not move the floor
AHEAD_SKEW = timedelta(seconds=AHEAD_SKEW_S)
_DESTROY_ERRORS: tuple[type[Exception], ...] = (*redis_store.TRANSIENT_ERRORS, redis.ResponseError)


class Broadcaster:
    def __init__(
        self,
        *,
        redis_url: str,
        control: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        read_count: int,
        read_block_ms: int,
        rules: QualityRules,
        events_of: Callable[[str], tuple[str, ...]],
        registry: Registry,
        metrics: Metrics,
        io_of: Callable[[str], ModelMap | None] = lambda _device: None,
    ) -> None:
        self._io_of = io_of  # device_id -> its IO mapping (DeviceEventMap.io_of)
        self._control = control
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._rules = rules
        self._events_of = events_of  # device_id -> its event ids (DeviceEventMap.events_of)
        self._registry = registry
        self._metrics = metrics
        self._redis_url = redis_url
        # NOACK: "ack at once" in the same round trip. A vanished group is recreated at `$`:
        # live data only, history is never replayed to browsers.
        self._read = GroupRead(
            stream=stream,
            group=group,
            consumer=consumer,
            count=read_count,
            block_ms=read_block_ms,
            recreate_at="$",
            noack=True,
        )
        self._reader: GroupReader | None = None  # one per run (a supervised restart: a new one)
        self._stopper = Stopper()
        self.stopped = trio.Event()
        self.last: dict[str, Position] = {}  # device -> last broadcast fix
        self.floor: dict[str, datetime] = {}  # device -> ts of its last broadcast fix not ahead

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._stopper.requested:
            task_status.started()
            return
        self.stopped = trio.Event()
        # A group left by a crashed predecessor with the same INSTANCE_ID would replay everything
        # since the crash to browsers: live data starts now, whatever the group remembered. But
        # only a group that is provably this broadcaster's is reset (store/live_group.py).
        try:
            await trio.to_thread.run_sync(
                take_live_group, self._control, self._stream, self._group, self._consumer
            )
        except GroupInUse as exc:
            raise ConfigError(str(exc)) from None
        log.info("broadcast consumer started", stream=self._stream, group=self._group)
        reader = self._reader = GroupReader(self._redis_url, self._control, self._read)
        task_status.started()
        try:
            while not self._stopper.requested and not reader.stopping:
                entries = await reader.read()
                if entries:
                    self.fan_out(entries)
            await self._destroy_group()
        finally:
            reader.close()
            self.stopped.set()
            log.info("broadcast consumer stopped")

    def fan_out(self, entries: StreamEntries) -> None:
        """Judge and hand out one read's positions (pure CPU, no awaits)."""
        now = datetime.now(UTC)
        self._metrics.live_entries_read.inc(len(entries))
        for raw_id, fields in entries:
            if not fields:
                continue
            try:
                position = decode_payload(fields.get(PAYLOAD))
            except CodecError:
                continue  # the durable pipeline dead-letters it; live just skips it
            self.offer(position, int(raw_id.split(b"-", 1)[0]), now)

    def offer(self, position: Position, entry_ms: int | None, now: datetime) -> None:
        events = self._events_of(position.device_id)
        if not events:
            return
        previous = self.last.get(position.device_id)
        floor = self.floor.get(position.device_id)
        if (floor is not None and position.ts <= floor) or (
            previous is not None and position.ts == previous.ts
        ):
            return  # late (buffered) or repeated fix: stored, never broadcast
        if faulty_reason(position, previous, now, self._rules) is not None:
            return
        self.last[position.device_id] = position
        if position.ts <= now + AHEAD_SKEW:
            self.floor[position.device_id] = position.ts
        self._metrics.live_positions_broadcast.inc()
        position_json: str | None = None
        for event_id in events:
            subscribers = self._registry.subscribers(topic_of(event_id))
            if not subscribers:
                continue
            if position_json is None:
                mapping = self._io_of(position.device_id)
                io = None if mapping is None else derive(position.attributes, mapping)
                position_json = encode_position_object(position, io)
            frame = position_frame(topic_json(topic_of(event_id)), position_json)
            for subscription in subscribers:
                subscription.offer(position.device_id, position.ts, frame, entry_ms)

    def forget_devices_not_in(self, mapping: Mapping[str, tuple[str, ...]]) -> None:
        """After a map refresh: drop last-broadcast fixes of devices no longer in any event."""
        for device_id in [d for d in self.last if d not in mapping]:
            del self.last[device_id]
            self.floor.pop(device_id, None)

    def request_stop(self) -> None:
        """Stop reading: no new read starts, and a read blocked in Redis returns at once;
        `stopped` is set once the group is removed."""
        self._stopper.request()
        if self._reader is not None:
            self._reader.request_stop()
        else:
            self.stopped.set()

    async def _destroy_group(self) -> None:
        """Clean stop: remove this instance's group (a restart creates it again at `$`)."""
        with trio.move_on_after(redis_store.COMMAND_TIMEOUT_S):
            try:
                await redis_store.call(self._control, "xgroup_destroy", self._stream, self._group)
                log.info("live consumer group removed", group=self._group)
            except _DESTROY_ERRORS as exc:
                log.warning("could not remove the live consumer group", error=str(exc)[:200])
