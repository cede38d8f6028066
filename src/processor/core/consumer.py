"""The consumer: reads the stream through a consumer group and feeds the group's worker.

It re-reads its own pending entries (`XREADGROUP ... 0`) before new ones (`>`), turns each read
into the owner's unit of work (`to_work`) and sends it into a bounded channel, so a worker that
is behind stops the reading. Entries re-read more than `MAX_DELIVERIES` times are handed over
separately for the owner to dead-letter. `request_stop()` releases a blocked read at once; what
the last read returned is still handed over, then the channel is closed, which is how the
worker learns that the input is over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.codecs.position import CodecError, decode_row
from processor.core.deliveries import split_worn_out
from processor.core.inflight import InFlight
from processor.core.records import Delivery, Records, Rejected
from processor.core.stream_names import StreamNames
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store
from processor.store.group_reader import GroupRead, GroupReader, StreamEntries

log = structlog.get_logger("processor.consumer")

T = TypeVar("T")


@attrs.frozen
class ConsumerSettings:
    """How to read (the names come as the pipeline's one StreamNames)."""

    read_count: int
    read_block_ms: int
    max_deliveries: int = 0  # 0: no limit (the re-read of own pending entries is not checked)


def decode_entries(entries: StreamEntries, metrics: Metrics) -> Delivery:
    """Decode a read's entries straight into COPY values and count decode errors by reason."""
    records = Records()
    ids, rows, kept = records.ids, records.rows, records.fields
    rejected: list[Rejected] = []
    for raw_id, fields in entries:
        entry_id = raw_id.decode()
        if not fields:  # deleted from the stream while pending: Redis answers nil, read as {}
            rejected.append(
                Rejected(entry_id, {}, "entry trimmed", "stream data was deleted", "trimmed")
            )
            continue
        try:
            rows.append(decode_row(fields.get(b"payload")))
        except CodecError as exc:
            metrics.decode_errors.labels(exc.kind).inc()
            log.error(
                "undecodable entry", entry_id=entry_id, reason=exc.reason, error=exc.detail[:200]
            )
            rejected.append(
                Rejected(entry_id, fields, exc.reason, exc.detail, f"decode_error:{exc.kind}")
            )
            continue
        ids.append(entry_id)
        kept.append(fields)
    return Delivery(records, rejected)


@attrs.frozen
class ReadCounters:
    """What a consumer counts: each read by result (`entries`, `empty`, `error`) and the
    entries read."""

    on_read: Callable[[str], None] = lambda _result: None
    on_entries: Callable[[int], None] = lambda _count: None


async def _nothing_first() -> None:
    await trio.lowlevel.checkpoint()


class Consumer(Generic[T]):
    def __init__(
        self,
        *,
        redis_url: str,
        control: redis.Redis,
        names: StreamNames,
        settings: ConsumerSettings,
        in_flight: InFlight,
        to_work: Callable[[StreamEntries, list[Rejected]], T],
        work_ids: Callable[[T], list[str]],
        counters: ReadCounters | None = None,
        before_read: Callable[[], Awaitable[None]] = _nothing_first,
        own_pending_done: trio.Event | None = None,
    ) -> None:
        self.names = names
        self.settings = settings
        self.in_flight = in_flight
        self._control = control
        self._to_work = to_work
        self._work_ids = work_ids
        self._counters = counters if counters is not None else ReadCounters()
        self._before_read = before_read
        # Set once this consumer's own pending entries have been re-read (the reclaimer waits).
        self.own_pending_done = own_pending_done if own_pending_done is not None else trio.Event()
        # A vanished group is recreated from the start of the stream: re-reading is idempotent,
        # skipping would lose whatever was not yet processed.
        self._reader = GroupReader(
            redis_url,
            control,
            GroupRead(
                stream=names.stream,
                group=names.group,
                consumer=names.consumer,
                count=settings.read_count,
                block_ms=settings.read_block_ms,
                recreate_at="0",
            ),
            on_error=lambda: self._counters.on_read("error"),
        )

    async def run(
        self,
        deliveries: trio.MemorySendChannel[T],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        n = self.names
        log.info("consumer started", stream=n.stream, group=n.group, consumer=n.consumer)
        task_status.started()
        start_id = "0"  # own pending entries first, paged by id; then ">" for new entries
        counters = self._counters
        try:
            async with deliveries:
                while not self._reader.stopping:
                    await self._before_read()
                    entries = await self._reader.read(start_id)
                    if not entries:
                        if self._reader.stopping:
                            break
                        counters.on_read("empty")
                        if start_id != ">":
                            start_id = ">"
                            self.own_pending_done.set()
                            log.info("own pending entries done, reading new entries", group=n.group)
                        continue
                    counters.on_read("entries")
                    counters.on_entries(len(entries))
                    worn_out: list[Rejected] = []
                    if start_id != ">":
                        start_id = entries[-1][0].decode()
                        entries, worn_out = await self._without_worn_out(entries)
                    work = self._to_work(entries, worn_out)
                    self.in_flight.add(self._work_ids(work))
                    await deliveries.send(work)
        finally:
            self._reader.close()
            log.info("consumer stopped", group=n.group)

    async def _without_worn_out(
        self, entries: StreamEntries
    ) -> tuple[StreamEntries, list[Rejected]]:
        """Re-read own pending entries: this read was a delivery too (deliveries.py). Those now
        delivered more than MAX_DELIVERIES times (they kept killing this instance) are split
        off as `max_deliveries` rejects."""
        s, n = self.settings, self.names
        if not s.max_deliveries or not entries:
            return entries, []
        first, last = entries[0][0], entries[-1][0]
        rows: Any = await redis_store.call(
            self._control,
            "xpending_range",
            n.stream,
            n.group,
            min=first,
            max=last,
            count=len(entries),
            consumername=n.consumer,
        )
        counts = {row["message_id"].decode(): int(row["times_delivered"]) for row in rows}
        return split_worn_out(entries, counts, s.max_deliveries)

    def request_stop(self) -> None:
        """Stop reading: no new read starts, and a read blocked in Redis returns at once."""
        self._reader.request_stop()


def durable_consumer(
    *,
    redis_url: str,
    control: redis.Redis,
    names: StreamNames,
    settings: ConsumerSettings,
    metrics: Metrics,
    in_flight: InFlight,
    own_pending_done: trio.Event | None = None,
) -> Consumer[Delivery]:
    """The durable pipeline's consumer: each read decoded into a Delivery for the writer."""

    def to_delivery(entries: StreamEntries, worn_out: list[Rejected]) -> Delivery:
        delivery = decode_entries(entries, metrics)
        delivery.rejected.extend(worn_out)
        return delivery

    return Consumer(
        redis_url=redis_url,
        control=control,
        names=names,
        settings=settings,
        in_flight=in_flight,
        to_work=to_delivery,
        work_ids=Delivery.entry_ids,
        counters=ReadCounters(
            on_read=lambda result: metrics.consumer_reads.labels(result).inc(),
            on_entries=metrics.consumer_records.inc,
        ),
        own_pending_done=own_pending_done,
    )
