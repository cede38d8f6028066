"""The writer: batches deliveries, judges fix quality, stores, then acks.

    consumer --Delivery--> batcher --Batch--> lane x WRITE_CONCURRENCY --> PostgreSQL, then XACK

Invariants: the batcher alone touches device state, so quality verdicts follow stream order;
lanes are split by device and ack exactly the entries whose rows were inserted, merged or
proved duplicate, merges and acks in stream order; nothing is acked while the database or Redis
fails (retried with backoff); a batch refused for a data reason is halved until the refused
records are isolated and dead-lettered. Shutdown needs no flag: the consumer closing its channel
drains the writer. Details: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import psycopg
import redis
import structlog
import trio
from trio import TaskStatus

from processor.codecs.quality import QualityRules
from processor.core.device_state import DeviceStates
from processor.core.inflight import InFlight
from processor.core.records import Delivery, Records, Rejected, latencies_s
from processor.core.settle import DeadLetterUnwritable, settle_sync
from processor.core.stream_names import StreamNames
from processor.observability.metrics import Metrics, observe_many
from processor.observability.stalls import Stalls
from processor.store import db_errors, retry
from processor.store.positions import (
    BatchOutcome,
    StagedRow,
    copy_staged,
    latest_good_positions,
    merge_staged,
    staged_rows,
    write_batch,
)
from processor.store.postgres import Database

T = TypeVar("T")
log = structlog.get_logger("processor.writer")

# A failure that is not transient (see store/db_errors.py), or a dead-letter stream that
# refuses copies, is reported as a stall (logged at error, /readyz fails naming it) once it
# has failed this many attempts in a row. It is retried regardless: nothing is acked or lost.
STALL_AFTER_ATTEMPTS = 3


class DataRefused(Exception):
    """The database refused the batch because of its content, not its own state."""


@attrs.frozen
class WriterSettings:
    batch_size: int
    flush_interval_s: float
    concurrency: int
    retry_initial_s: float
    retry_max_s: float
    rules: QualityRules


@attrs.define
class Copied:
    """A batch between a lane's two stages: once copied, its rows wait in `conn`'s staging
    table, the transaction open. Whoever holds it gives `conn` back exactly once (`take`)."""

    batch: Batch
    conn: psycopg.Connection[Any] | None = None  # None: not copied, or already taken
    copy_s: float = 0.0  # how long the copy took (the write-duration metric counts it)

    def take(self) -> psycopg.Connection[Any] | None:
        conn, self.conn = self.conn, None
        return conn


@attrs.define
class Batch:
    records: Records
    faults: list[str | None]  # each record's fix-quality verdict (None: good)
    rejected: list[Rejected]
    staged: list[StagedRow]  # each record as COPY writes it (`positions.staged_rows`)


class Writer:
    def __init__(
        self,
        *,
        database: Database,
        control: redis.Redis,
        names: StreamNames,
        settings: WriterSettings,
        states: DeviceStates,
        metrics: Metrics,
        in_flight: InFlight,
        stalls: Stalls | None = None,
    ) -> None:
        self.stalls = stalls if stalls is not None else Stalls()
        self.in_flight = in_flight
        self.database = database
        self.control = control
        self.names = names
        self.settings = settings
        self.states = states
        self.metrics = metrics

    async def run(
        self,
        deliveries: trio.MemoryReceiveChannel[Delivery],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Batch, store and ack until `deliveries` is closed and everything is flushed."""
        lanes = [trio.open_memory_channel[Batch](1) for _ in range(self.settings.concurrency)]
        async with trio.open_nursery() as nursery:
            for _, receive in lanes:
                nursery.start_soon(self._flusher, receive)
            task_status.started()
            await self._batcher(deliveries, [send for send, _ in lanes])

    # --- batching ----------------------------------------------------------------------------

    async def _batcher(
        self,
        deliveries: trio.MemoryReceiveChannel[Delivery],
        lanes: list[trio.MemorySendChannel[Batch]],
    ) -> None:
        """Collect, judge, dispatch, until the channel is closed and drained; closing the
        lanes on the way out lets the flushers finish their last batches and return."""
        async with deliveries, contextlib.AsyncExitStack() as closing:
            for lane in lanes:
                await closing.enter_async_context(lane)
            while (collected := await self._collect(deliveries)) is not None:
                for chunk in _chunks(collected, self.settings.batch_size):
                    records = chunk.records
                    faults = await self._judge(records)
                    staged = staged_rows(records.rows, [fault is not None for fault in faults])
                    await self._dispatch(lanes, Batch(records, faults, chunk.rejected, staged))

    async def _collect(self, deliveries: trio.MemoryReceiveChannel[Delivery]) -> Delivery | None:
        """Wait for a delivery, then add more until `batch_size` records or the flush interval.

        None once the channel is closed and empty. A close met while adding just ends this
        collection: the next call meets it again (a closed channel keeps saying so), so no
        flag carries it over.
        """
        try:
            collected = await deliveries.receive()
        except trio.EndOfChannel:
            return None
        first, collected = collected, Delivery(Records(), [])
        collected.extend(first)
        with trio.move_on_after(self.settings.flush_interval_s):
            while len(collected.records) < self.settings.batch_size:
                try:
                    more = await deliveries.receive()
                except trio.EndOfChannel:
                    break
                collected.extend(more)
        return collected

    @staticmethod
    async def _dispatch(lanes: list[trio.MemorySendChannel[Batch]], batch: Batch) -> None:
        """Split a batch over the flusher lanes by device.

        A device always goes to the same lane and each lane writes its batches in order, so all
        records of one key reach the database in stream order (the first stored IO value of a
        key wins deterministically) and two concurrent transactions never touch the same key.
        """
        if len(lanes) == 1:
            await lanes[0].send(batch)
            return
        parts = [Batch(Records(), [], [], []) for _ in lanes]
        parts[0].rejected = batch.rejected
        records = batch.records
        # Rounds stay valid in a part: every record of a key goes to the same part.
        for entry_id, row, fields, fault, staged in zip(
            records.ids, records.rows, records.fields, batch.faults, batch.staged, strict=True
        ):
            part = parts[hash(row[0]) % len(lanes)]
            part.records.ids.append(entry_id)
            part.records.rows.append(row)
            part.records.fields.append(fields)
            part.faults.append(fault)
            part.staged.append(staged)
        for lane, part in zip(lanes, parts, strict=True):
            if part.records or part.rejected:
                await lane.send(part)

    async def _judge(self, records: Records) -> list[str | None]:
        """Each record's fix-quality verdict, with device state advanced (stream order)."""
        rows = records.rows
        missing = self.states.missing(row[0] for row in rows)
        if missing:
            found = await self._retrying(
                "rehydrate",
                lambda: self.database.run_sync(lambda conn: latest_good_positions(conn, missing)),
            )
            for device_id in missing:
                self.states.hydrate(device_id, found.get(device_id))
        now = datetime.now(UTC)
        rules = self.settings.rules
        faults = self.states.judge(
            rows,
            now=now,
            latest_ts=now + rules.future_tolerance,
            max_speed_kmh=rules.max_speed_kmh,
        )
        self.metrics.device_state_size.set(len(self.states))
        return faults

    # --- flushing ----------------------------------------------------------------------------

    async def _flusher(self, batches: trio.MemoryReceiveChannel[Batch]) -> None:
        """One lane, a pipeline of two stages: while batch k merges and commits, batch k+1 is
        copied into another connection's staging table (`_copy_ahead`), so the database's
        merge and the client's COPY overlap instead of adding up. Merges stay one at a time,
        in stream order; a copied batch waits, its transaction open, until its turn."""
        copied_send, copied_receive = trio.open_memory_channel[Copied](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._committer, copied_receive)
            async with batches, copied_send:
                async for batch in batches:
                    copied = await self._copy_ahead(batch)
                    handed_over = False
                    try:
                        await copied_send.send(copied)
                        handed_over = True
                    finally:
                        if not handed_over:  # a send that raises has delivered nothing
                            await self._give_back(copied)

    async def _copy_ahead(self, batch: Batch) -> Copied:
        """COPY the batch into a pooled connection's staging table, its transaction left open
        for the committer. A failure is not retried here: the batch goes on uncopied, and the
        committer writes it the careful way (`_store`: retries, isolation of refused records)."""
        copied = Copied(batch)
        if not batch.records:
            return copied
        staged = batch.staged
        started = time.perf_counter()

        def copy() -> psycopg.Connection[Any]:
            conn = self.database.checkout()
            try:
                copy_staged(conn, staged)
            except Exception:  # a worker thread: nothing else is raised here
                _roll_back_and_check_in(self.database, conn)
                raise
            return conn

        try:
            copied.conn = await trio.to_thread.run_sync(copy)
        except db_errors.DATABASE_ERRORS as exc:
            log.debug("batch not copied ahead: written on its own", error=str(exc)[:300])
        copied.copy_s = time.perf_counter() - started
        return copied

    async def _committer(self, copied_batches: trio.MemoryReceiveChannel[Copied]) -> None:
        async with copied_batches:
            async for copied in copied_batches:
                try:
                    await self._flush(copied)
                finally:
                    await self._give_back(copied)

    async def _give_back(self, copied: Copied) -> None:
        """Return a copied batch's connection, if it still has one, rolled back (also when
        cancelled: the thread is never abandoned, and a rollback is bounded like any statement)."""
        conn = copied.take()
        if conn is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_roll_back_and_check_in, self.database, conn)

    async def _flush(self, copied: Copied) -> None:
        batch, started = copied.batch, time.perf_counter()
        written = await self._store(batch, 0, len(batch.records), copied)
        committed_at = time.time()
        # the copy and the merge, not the copied batch's wait for its turn (a database that
        # is slow shows here; a lane that is merely busy does not)
        write_s = copied.copy_s + time.perf_counter() - started
        stored = batch.records.ids
        if written.refused:
            refused_ids = {r.entry_id for r in written.refused}
            stored = [entry_id for entry_id in stored if entry_id not in refused_ids]
        rejected = batch.rejected + written.refused
        acked = await self._settle(list(stored), rejected)
        self.in_flight.settle(batch.records.ids)
        self.in_flight.settle(r.entry_id for r in batch.rejected)
        self._count(
            batch=batch,
            stored=stored,
            written=written,
            rejected=rejected,
            acked=acked,
            committed_at=committed_at,
            write_s=write_s,
            started=started,
        )

    async def _store(
        self, batch: Batch, start: int, stop: int, copied: Copied | None = None
    ) -> Written:
        """Write the batch's records[start:stop], isolating refused ones by halving the range.

        The first attempt merges what `copied` holds already (the whole batch) on its
        connection; a retry, or a half, writes its rows anew. A half keeps its rows' rounds: a
        key whose earlier twin is in the other half is then inserted by a later round of this
        one, which is just as correct."""
        if start == stop:
            return Written()
        records, faults = batch.records, batch.faults
        staged = batch.staged[start:stop]

        def write() -> BatchOutcome:
            conn = copied.take() if copied is not None else None
            if conn is None:
                return self.database.run_sync(lambda conn: write_batch(conn, staged))
            try:
                outcome = merge_staged(conn, staged)
                conn.commit()
            finally:
                _roll_back_and_check_in(self.database, conn)
            return outcome

        try:
            outcome = await self._retrying("write", write)
        except DataRefused as exc:
            if stop - start == 1:
                entry_id = records.ids[start]
                log.error(
                    "record refused by the database",
                    entry_id=entry_id,
                    device_id=records.rows[start][0],
                    error=str(exc.__cause__)[:300],
                )
                refused = Rejected(
                    entry_id,
                    records.fields[start],
                    "database refused record",
                    str(exc.__cause__)[:1000],
                    "db_rejected",
                )
                return Written(refused=[refused])
            middle = (start + stop) // 2
            left = await self._store(batch, start, middle)
            right = await self._store(batch, middle, stop)
            return left.plus(right)
        return Written(
            counts=Counter(outcome.counts),
            faults=Counter(str(faults[start + index]) for index in outcome.faulty_inserted),
        )

    async def _settle(self, ack_ids: list[str], rejected: list[Rejected]) -> int:
        """Ack and dead-letter (settle.py) until done; returns how many entries were acked.

        A dead-letter copy that Redis refuses is retried, with backoff, for exactly the entries
        still without a copy: never acked before its copy exists, and no copy written twice.
        """
        todo_ids, todo_rejected, acked = list(ack_ids), list(rejected), 0

        def attempt() -> int:
            nonlocal todo_ids, todo_rejected, acked
            try:
                acked += settle_sync(self.control, self.names, todo_ids, todo_rejected)
            except DeadLetterUnwritable as exc:
                acked += exc.acked
                todo_ids, todo_rejected = [], exc.unwritten
                raise
            return acked

        return await self._retrying("ack", attempt)

    async def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run `call` in a worker thread until it succeeds (store/retry.py's one helper).

        A data refusal is raised as DataRefused (retrying cannot help). Any other database
        failure, or a dead-letter stream refusing copies, is retried until it succeeds; one
        that is not transient is reported as a stall once it repeats past
        STALL_AFTER_ATTEMPTS. Anything unexpected propagates and stops the service loudly
        rather than looping on a bug.
        """
        check = "dead_letter_stream" if what == "ack" else "postgres_writes"

        def on_failure(failure: retry.Failure) -> None:
            self.metrics.write_retries.inc()
            if failure.persistent and backoff.attempts >= STALL_AFTER_ATTEMPTS:
                self.stalls.report(check, failure.error)

        backoff = retry.Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        try:
            return await retry.retry_in_thread(
                what,
                call,
                backoff=backoff,
                classify_failure=_classify,
                on_failure=on_failure,
                on_recovery=lambda: self.stalls.clear(check),
                stall_after=STALL_AFTER_ATTEMPTS,
            )
        except db_errors.DATABASE_ERRORS as exc:  # only a data refusal is not retried
            raise DataRefused(str(exc)) from exc

    def _count(
        self,
        *,
        batch: Batch,
        stored: list[str],
        written: Written,
        rejected: Sequence[Rejected],
        acked: int,
        committed_at: float,
        write_s: float,
        started: float,
    ) -> None:
        """Metrics for one flushed batch: each counter moves once per batch and label (a
        labelled `inc` costs a lock and a look-up: per record it showed in profiles)."""
        m = self.metrics
        if batch.records:  # a batch of only rejected entries writes nothing: no write sample
            m.write_duration.observe(write_s)
            m.write_batch_size.observe(len(batch.records))
        for outcome, count in written.counts.items():
            if count:
                m.position_writes.labels(outcome).inc(count)
        observe_many(m.e2e_latency, latencies_s(stored, committed_at))
        # Only an inserted row is stored with this verdict (a merge keeps the row's flag, a
        # duplicate stores nothing), so a redelivered faulty fix is not counted twice.
        for reason, count in written.faults.items():
            m.faulty_positions.labels(reason).inc(count)
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


def _roll_back_and_check_in(database: Database, conn: psycopg.Connection[Any]) -> None:
    """Roll back whatever `conn` still has open and return it to the pool (a broken connection
    is discarded by the pool)."""
    try:
        if not conn.closed:
            conn.rollback()
    except psycopg.Error:
        log.debug("rollback before check-in failed: the pool discards the connection")
    database.checkin(conn)


def _chunks(delivery: Delivery, size: int) -> list[Delivery]:
    """`delivery` cut into pieces of at most `size` records (the last read may overshoot the
    batch size); the rejected entries ride with the first piece. Always at least one piece,
    so that a delivery of only rejected entries is still settled."""
    records = delivery.records
    if len(records) <= size:
        return [delivery]
    return [
        Delivery(records.slice(start, start + size), delivery.rejected if start == 0 else [])
        for start in range(0, len(records), size)
    ]


def _classify(exc: Exception) -> retry.Failure | None:
    """store/retry.py's classification, plus the dead-letter stream refusing copies (persistent:
    nothing transient about a key of the wrong type or a full Redis)."""
    if isinstance(exc, DeadLetterUnwritable):
        return retry.Failure(f"dead-letter stream refuses copies: {exc.error}", persistent=True)
    return retry.classify(exc)


@attrs.define
class Written:
    """What storing a batch (or a part of it, when a refusal splits it) did."""

    counts: Counter[str] = attrs.Factory(Counter)  # records per outcome
    faults: Counter[str] = attrs.Factory(Counter)  # inserted faulty records per reason
    refused: list[Rejected] = attrs.Factory(list)  # refused by the database: dead-lettered

    def plus(self, other: Written) -> Written:
        return Written(
            self.counts + other.counts, self.faults + other.faults, self.refused + other.refused
        )
