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

from processor.core.inflight import InFlight
from processor.core.records import Delivery, Record, Rejected, decode_entry
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store
from processor.store.retry import Backoff

log = structlog.get_logger("processor.consumer")

StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


@attrs.frozen
class ConsumerSettings:
    stream: str
    group: str
    consumer: str
    read_count: int
    read_block_ms: int


def decode_entries(entries: StreamEntries, metrics: Metrics) -> Delivery:
    """Decode a read's entries (pure CPU, per record) and count decode errors by reason."""
    records: list[Record] = []
    rejected: list[Rejected] = []
    for raw_id, fields in entries:
        entry_id = raw_id.decode()
        if fields is None:  # the entry was trimmed from the stream while pending
            rejected.append(
                Rejected(entry_id, {}, "entry trimmed", "stream data was deleted", "trimmed")
            )
            continue
        decoded = decode_entry(entry_id, fields)
        if isinstance(decoded, Record):
            records.append(decoded)
        else:
            metrics.decode_errors.labels(decoded.category.split(":", 1)[1]).inc()
            log.error(
                "undecodable entry",
                entry_id=entry_id,
                reason=decoded.reason,
                error=decoded.error[:200],
            )
            rejected.append(decoded)
    return Delivery(records, rejected)


class Consumer:
    def __init__(
        self,
        *,
        redis_url: str,
        control: redis.Redis,
        settings: ConsumerSettings,
        metrics: Metrics,
        in_flight: InFlight,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.in_flight = in_flight
        self._control = control
        # A dedicated connection for blocking reads: its socket timeout exceeds the BLOCK time,
        # and its client id lets stop() unblock it.
        self._reader = redis_store.make_client(
            redis_url, socket_timeout_s=settings.read_block_ms / 1000 + 5
        )
        self._reader_id: int | None = None
        self._stopping = False
        self._stopped = trio.Event()

    async def run(
        self,
        deliveries: trio.MemorySendChannel[Delivery],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        s = self.settings
        log.info(
            f"consumer started stream={s.stream} group={s.group} consumer={s.consumer}",
            stream=s.stream,
            group=s.group,
            consumer=s.consumer,
        )
        task_status.started()
        backoff = Backoff(initial_s=0.2, max_s=5.0)
        start_id = "0"  # own pending entries first
        try:
            async with deliveries:
                while not self._stopping:
                    try:
                        entries = await trio.to_thread.run_sync(self._read, start_id)
                    except redis.ResponseError as exc:
                        if "NOGROUP" not in str(exc):
                            raise
                        # The group (or the stream) was deleted under us. Recreate it from the
                        # start of the stream: re-reading is idempotent, skipping would lose.
                        self.metrics.consumer_reads.labels("error").inc()
                        log.error("consumer group missing, recreating it", error=str(exc)[:200])
                        await redis_store.ensure_group(self._control, s.stream, s.group, "0")
                        continue
                    except redis_store.TRANSIENT_ERRORS as exc:
                        self.metrics.consumer_reads.labels("error").inc()
                        delay = backoff.next_delay()
                        log.warning(
                            "stream read failed",
                            error=str(exc)[:200],
                            attempt=backoff.attempts,
                            retry_in_s=round(delay, 2),
                        )
                        self._reader_id = None
                        with trio.move_on_after(delay):
                            await self._stopped.wait()
                        continue
                    backoff.reset()
                    if not entries:
                        self.metrics.consumer_reads.labels("empty").inc()
                        if start_id != ">":
                            start_id = ">"
                            log.info("own pending entries done, reading new entries")
                        continue
                    self.metrics.consumer_reads.labels("entries").inc()
                    self.metrics.consumer_records.inc(len(entries))
                    if start_id != ">":
                        start_id = entries[-1][0].decode()  # page through the pending list
                    delivery = decode_entries(entries, self.metrics)
                    self.in_flight.add(delivery.entry_ids())
                    await deliveries.send(delivery)
        finally:
            self._reader.close()
            log.info("consumer stopped")

    def _read(self, start_id: str) -> StreamEntries:
        if self._reader_id is None:
            self._reader_id = int(self._reader.client_id())
        s = self.settings
        block = None if start_id != ">" else s.read_block_ms
        if self._stopping:
            return []
        reply: Any = self._reader.xreadgroup(
            s.group, s.consumer, {s.stream: start_id}, count=s.read_count, block=block
        )
        if not reply:
            return []
        entries: StreamEntries = reply[0][1]
        return entries

    async def stop(self) -> None:
        """Stop reading: no new read starts, and a read blocked in Redis returns at once."""
        if self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        reader_id = self._reader_id
        if reader_id is not None:
            try:
                with trio.move_on_after(2):
                    await trio.to_thread.run_sync(self._control.client_unblock, reader_id)
            except redis_store.TRANSIENT_ERRORS as exc:
                log.warning("could not unblock the stream read", error=str(exc)[:200])
