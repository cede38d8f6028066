"""The writer: batches deliveries, judges fix quality, stores, then acks.

    consumer --Delivery--> batcher --Batch--> lane x WRITE_CONCURRENCY --> PostgreSQL, then XACK

The batcher is the only task touching device state, so quality verdicts are deterministic in
stream order. Each batch is split over the flusher lanes by device; lanes write concurrently
(each on its own pooled connection, one thread hop per batch) and ack exactly the entries whose
rows were inserted, merged or proved duplicate.

A transient failure (database or Redis unreachable) is retried with capped exponential backoff
and nothing is acked meanwhile; because the channels are bounded, the consumer stops reading
while the writer cannot write. A batch refused for a data reason is split in halves until the
refused records are isolated; those are dead-lettered, the rest is stored.

Shutdown needs no flag: when the consumer closes its channel, the batcher flushes what is left
and closes its own, and the flushers finish their last batches and return.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import attrs
import psycopg
import redis
import structlog
import trio

from processor.core.device_state import DeviceStates
from processor.core.inflight import InFlight
from processor.core.quality import QualityRules, faulty_reason
from processor.core.records import Delivery, Record, Rejected, entry_time
from processor.core.settle import StreamNames, settle_sync
from processor.observability.metrics import Metrics, observe_many
from processor.store import redis as redis_store
from processor.store.positions import INSERTED, Row, latest_good_positions, write_rows
from processor.store.postgres import Database
from processor.store.retry import Backoff

T = TypeVar("T")
log = structlog.get_logger("processor.writer")

# SQLSTATE classes that mean "this data can never be stored": 22 data exception,
# 23 integrity constraint violation. Anything else is treated as transient and retried.
_DATA_SQLSTATE_CLASSES = ("22", "23")


class DataRefused(Exception):
    """The database refused the batch because of its content, not its own state."""


def is_data_refusal(exc: psycopg.Error) -> bool:
    sqlstate = exc.sqlstate or ""
    if sqlstate[:2] in _DATA_SQLSTATE_CLASSES:
        return True
    # psycopg refuses some values client-side (NUL in text) with DataError and no sqlstate.
    return isinstance(exc, psycopg.DataError) and not sqlstate


@attrs.frozen
class WriterSettings:
    batch_size: int
    flush_interval_s: float
    concurrency: int
    retry_initial_s: float
    retry_max_s: float
    rules: QualityRules


@attrs.define
class Batch:
    records: list[Record]
    rejected: list[Rejected]


class Writer:
    def __init__(
        self,
        *,
        database: Database,
        redis_client: redis.Redis,
        names: StreamNames,
        settings: WriterSettings,
        states: DeviceStates,
        metrics: Metrics,
        in_flight: InFlight,
    ) -> None:
        self.in_flight = in_flight
        self.database = database
        self.redis = redis_client
        self.names = names
        self.settings = settings
        self.states = states
        self.metrics = metrics

    async def run(self, deliveries: trio.MemoryReceiveChannel[Delivery]) -> None:
        lanes = [trio.open_memory_channel[Batch](1) for _ in range(self.settings.concurrency)]
        async with trio.open_nursery() as nursery:
            for _, receive in lanes:
                nursery.start_soon(self._flusher, receive)
            await self._batcher(deliveries, [send for send, _ in lanes])

    # --- batching ----------------------------------------------------------------------------

    async def _batcher(
        self,
        deliveries: trio.MemoryReceiveChannel[Delivery],
        lanes: list[trio.MemorySendChannel[Batch]],
    ) -> None:
        size = self.settings.batch_size
        async with deliveries, contextlib.AsyncExitStack() as closing:
            for lane in lanes:
                await closing.enter_async_context(lane)
            records: list[Record] = []
            rejected: list[Rejected] = []
            finished = False
            while not finished:
                try:
                    first = await deliveries.receive()
                except trio.EndOfChannel:
                    break
                records.extend(first.records)
                rejected.extend(first.rejected)
                with trio.move_on_after(self.settings.flush_interval_s):
                    while len(records) < size:
                        try:
                            more = await deliveries.receive()
                        except trio.EndOfChannel:
                            finished = True
                            break
                        records.extend(more.records)
                        rejected.extend(more.rejected)
                while records or rejected:
                    chunk, records = records[:size], records[size:]
                    await self._judge(chunk)
                    await self._dispatch(lanes, chunk, rejected)
                    rejected = []

    @staticmethod
    async def _dispatch(
        lanes: list[trio.MemorySendChannel[Batch]], records: list[Record], rejected: list[Rejected]
    ) -> None:
        """Split a batch over the flusher lanes by device.

        A device always goes to the same lane and each lane writes its batches in order, so all
        records of one key reach the database in stream order (the first stored IO value of a
        key wins deterministically) and two concurrent transactions never touch the same key.
        """
        if len(lanes) == 1:
            await lanes[0].send(Batch(records, rejected))
            return
        parts: list[list[Record]] = [[] for _ in lanes]
        for record in records:
            parts[hash(record.position.device_id) % len(lanes)].append(record)
        for index, (lane, part) in enumerate(zip(lanes, parts, strict=True)):
            extra = rejected if index == 0 else []
            if part or extra:
                await lane.send(Batch(part, extra))

    async def _judge(self, records: list[Record]) -> None:
        """Set each record's fix-quality verdict and advance device state (stream order)."""
        missing = self.states.missing(r.position.device_id for r in records)
        if missing:
            found = await self._retrying(
                "rehydrate",
                lambda: self.database.run_sync(lambda conn: latest_good_positions(conn, missing)),
            )
            for device_id in missing:
                self.states.hydrate(device_id, found.get(device_id))
        now = datetime.now(UTC)
        rules = self.settings.rules
        for record in records:
            state = self.states.get(record.position.device_id)
            last_good = state.last_position if state is not None else None
            record.faulty_reason = faulty_reason(record.position, last_good, now, rules)
            self.states.observe(record.position, good=not record.faulty, seen_at=now)
        self.metrics.device_state_size.set(len(self.states))

    # --- flushing ----------------------------------------------------------------------------

    async def _flusher(self, batches: trio.MemoryReceiveChannel[Batch]) -> None:
        async with batches:
            async for batch in batches:
                await self._flush(batch)

    async def _flush(self, batch: Batch) -> None:
        started = time.perf_counter()
        outcomes, refused = await self._store(batch.records)
        committed_at = time.time()
        write_s = time.perf_counter() - started
        stored = [r for r in batch.records if r.entry_id in outcomes]
        rejected = batch.rejected + refused
        acked = await self._retrying(
            "ack",
            lambda: settle_sync(self.redis, self.names, [r.entry_id for r in stored], rejected),
        )
        self.in_flight.settle(r.entry_id for r in batch.records)
        self.in_flight.settle(r.entry_id for r in batch.rejected)
        self._count(
            batch=batch,
            stored=stored,
            outcomes=outcomes,
            rejected=rejected,
            acked=acked,
            committed_at=committed_at,
            write_s=write_s,
            started=started,
        )

    async def _store(self, records: list[Record]) -> tuple[dict[str, str], list[Rejected]]:
        """Write records, isolating refused ones; returns (entry_id -> outcome, refused)."""
        if not records:
            return {}, []
        try:
            outcomes = await self._retrying(
                "write",
                lambda: self.database.run_sync(
                    lambda conn: write_rows(conn, [Row(r.position, r.faulty) for r in records])
                ),
            )
        except DataRefused as exc:
            if len(records) == 1:
                record = records[0]
                log.error(
                    "record refused by the database",
                    entry_id=record.entry_id,
                    device_id=record.position.device_id,
                    error=str(exc.__cause__)[:300],
                )
                return {}, [
                    Rejected(
                        record.entry_id,
                        record.fields,
                        "database refused record",
                        str(exc.__cause__)[:1000],
                        "db_rejected",
                    )
                ]
            middle = len(records) // 2
            left, left_refused = await self._store(records[:middle])
            right, right_refused = await self._store(records[middle:])
            return left | right, left_refused + right_refused
        return {r.entry_id: outcome for r, outcome in zip(records, outcomes, strict=True)}, []

    async def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run `call` in a worker thread until it succeeds; transient failures back off.

        A data refusal is raised as DataRefused (retrying cannot help); anything unexpected
        propagates and stops the service loudly rather than looping on a bug.
        """
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        while True:
            try:
                return await trio.to_thread.run_sync(call)
            except psycopg.Error as exc:
                if is_data_refusal(exc):
                    raise DataRefused(str(exc)) from exc
                error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            except redis_store.TRANSIENT_ERRORS as exc:
                error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            delay = backoff.next_delay()
            self.metrics.write_retries.inc()
            log.warning(
                f"{what} failed, retrying",
                attempt=backoff.attempts,
                error=error,
                retry_in_s=round(delay, 2),
            )
            await trio.sleep(delay)

    def _count(
        self,
        *,
        batch: Batch,
        stored: Sequence[Record],
        outcomes: dict[str, str],
        rejected: Sequence[Rejected],
        acked: int,
        committed_at: float,
        write_s: float,
        started: float,
    ) -> None:
        m = self.metrics
        if batch.records:  # a batch of only rejected entries writes nothing: no write sample
            m.write_duration.observe(write_s)
            m.write_batch_size.observe(len(batch.records))
        # Counters move once per outcome and batch (a labelled inc costs a lock and a lookup:
        # per record it showed in profiles); the latency histogram needs every record.
        for outcome, count in Counter(outcomes.values()).items():
            m.position_writes.labels(outcome).inc(count)
        observe_many(
            m.e2e_latency, [max(0.0, committed_at - entry_time(r.entry_id)) for r in stored]
        )
        for record in stored:
            # Only an inserted row is stored with this verdict (a merge keeps the row's flag, a
            # duplicate stores nothing), so a redelivered faulty fix is not counted twice.
            if record.faulty_reason is not None and outcomes[record.entry_id] == INSERTED:
                m.faulty_positions.labels(record.faulty_reason).inc()
        for entry in rejected:
            m.dead_letters.labels(entry.category.split(":")[0]).inc()
            if entry.category == "db_rejected":
                m.position_writes.labels("failed").inc()
        m.acks.inc(acked)
        log.debug(
            "batch stored",
            records=len(batch.records),
            rejected=len(rejected),
            acked=acked,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
