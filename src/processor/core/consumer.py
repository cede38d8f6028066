"""The consumer: reads the stream through the consumer group and feeds the writer.

It first re-reads this consumer's own pending entries (`XREADGROUP ... 0`), so a restarted
instance finishes what it had read before it died, then reads new entries (`>`). Each read is
decoded into a Delivery and sent into a bounded channel: when the writer is behind (or the
database is down), `send` blocks and the consumer stops reading.

Stopping: `stop()` sets a flag and unblocks a pending `BLOCK` read with `CLIENT UNBLOCK` from
another connection, so the drain does not wait out `READ_BLOCK_MS`. Whatever the last read
returned is still handed to the writer; then the channel is closed, which is how the writer
learns that the input is over.
"""

from __future__ import annotations

from typing import Any

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.core.deliveries import split_worn_out
from processor.core.inflight import InFlight
from processor.core.records import Delivery, Records, Rejected
from processor.core.settle import StreamNames
from processor.observability.metrics import Metrics
from processor.position import CodecError, decode_row
from processor.store import redis as redis_store
from processor.store.group_reader import GroupRead, GroupReader, StreamEntries

log = structlog.get_logger("processor.consumer")


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


class Consumer:
    def __init__(
        self,
        *,
        redis_url: str,
        control: redis.Redis,
        names: StreamNames,
        settings: ConsumerSettings,
        metrics: Metrics,
        in_flight: InFlight,
        own_pending_done: trio.Event | None = None,
    ) -> None:
        self.names = names
        self.settings = settings
        self.metrics = metrics
        self.in_flight = in_flight
        self._control = control
        # Set once this consumer's own pending entries have been re-read (the reclaimer waits).
        self.own_pending_done = own_pending_done if own_pending_done is not None else trio.Event()
        # A vanished group is recreated from the start of the stream: re-reading is idempotent,
        # skipping would lose whatever was not yet stored.
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
            on_error=metrics.consumer_reads.labels("error").inc,
        )

    async def run(
        self,
        deliveries: trio.MemorySendChannel[Delivery],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        n = self.names
        log.info("consumer started", stream=n.stream, group=n.group, consumer=n.consumer)
        task_status.started()
        start_id = "0"  # own pending entries first, paged by id; then ">" for new entries
        try:
            async with deliveries:
                while not self._reader.stopping:
                    entries = await self._reader.read(start_id)
                    if not entries:
                        if self._reader.stopping:
                            break
                        self.metrics.consumer_reads.labels("empty").inc()
                        if start_id != ">":
                            start_id = ">"
                            self.own_pending_done.set()
                            log.info("own pending entries done, reading new entries")
                        continue
                    self.metrics.consumer_reads.labels("entries").inc()
                    self.metrics.consumer_records.inc(len(entries))
                    worn_out: list[Rejected] = []
                    if start_id != ">":
                        start_id = entries[-1][0].decode()
                        entries, worn_out = await self._without_worn_out(entries)
                    delivery = decode_entries(entries, self.metrics)
                    delivery.rejected.extend(worn_out)
                    self.in_flight.add(delivery.entry_ids())
                    await deliveries.send(delivery)
        finally:
            self._reader.close()
            log.info("consumer stopped")

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

    async def stop(self) -> None:
        """Stop reading: no new read starts, and a read blocked in Redis returns at once."""
        await self._reader.stop()
