"""The racing-domain engine: a side service of the root nursery with its own durable group.

    DomainEngine.run (one life, under the service's supervisor)
    ├── its own pool; wait for the racing tables (checked every DOMAIN_REFRESH_MS)
    ├── group `DOMAIN_GROUP` on the input stream, created at 0 when missing
    └── nursery: refresher, consumer --Batch--> evaluator <-- reclaimer, silence, feed, lag

Invariants: ingestion never waits for it (its own group; the durable pipeline does not know it
exists); an entry is acked only after the evaluation it triggered has committed, or proved
irrelevant; a crash leaves it pending and re-evaluating is idempotent. A failure ends this life,
and the supervisor starts a new one (docs/racing-domain.md, Engine internals).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.codecs.race_feed import RaceChange
from processor.core.consumer import Consumer, ConsumerSettings
from processor.core.deliveries import split_worn_out
from processor.core.inflight import InFlight
from processor.core.reclaimer import ClaimedPage, ReclaimCounters, Reclaimer, ReclaimSettings
from processor.core.records import Rejected
from processor.core.stream_names import StreamNames
from processor.domain.evaluator import (
    Batch,
    Evaluator,
    EvaluatorSettings,
    FailureMemory,
)
from processor.domain.feed import FeedWriter
from processor.domain.health import DomainHealth, metrics_health
from processor.domain.refresher import Refresher
from processor.domain.rules.stops import AlertRules
from processor.domain.silence import SilenceWatch
from processor.lifecycle import Stopper, StopRequested
from processor.observability.lag import SAMPLE_ERRORS, sample_lag_sync
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store
from processor.store.group_reader import StreamEntries
from processor.store.postgres import Database
from processor.store.retry import Backoff, Unavailable

log = structlog.get_logger("processor.domain.engine")


@attrs.frozen
class EngineSettings:
    stream: str
    group: str  # DOMAIN_GROUP
    durable_group: str  # REDIS_GROUP: asked whether a missing row was dead-lettered
    consumer: str
    read_count: int
    read_block_ms: int
    refresh_s: float
    visibility_timeout_s: float
    reclaim_interval_s: float
    reclaim_min_idle_ms: int
    max_deliveries: int = 5
    dead_letter_stream: str = ""  # default <stream>:dead
    dead_letter_maxlen: int = 100_000
    yield_backlog: int = 0  # pause while the durable group has more to store (0: never)
    alert_rules: AlertRules = attrs.field(factory=AlertRules)

    @property
    def names(self) -> StreamNames:
        return StreamNames(
            stream=self.stream,
            group=self.group,
            consumer=self.consumer,
            dead_letter_stream=self.dead_letter_stream or f"{self.stream}:dead",
            dead_letter_maxlen=self.dead_letter_maxlen,
        )


class DomainEngine:
    def __init__(
        self,
        *,
        settings: EngineSettings,
        open_database: Callable[[], Database],
        redis_url: str,
        control: redis.Redis,
        metrics: Metrics,
        health: DomainHealth | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        """`open_database` makes the engine's own pool: one per life of `run`, which opens and
        closes it (a closed psycopg pool cannot be opened again)."""
        self.settings = settings
        self.health = (
            health
            if health is not None
            else metrics_health(metrics, retry_initial_s=settings.refresh_s)
        )
        self.enabled = trio.Event()  # set once the racing tables exist and the group is ready
        self._startup_timeout_s = startup_timeout_s
        self._open_database = open_database
        self._redis_url = redis_url
        self._control = control
        self._metrics = metrics
        self._stopper = Stopper()
        self._failures = FailureMemory()  # across lives: what repeatedly failing batches raised

    def request_stop(self) -> None:
        """Stop reading; `run` returns once the parts have wound down (a batch in hand is
        either finished and acked or left pending)."""
        self._stopper.request()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One life of the engine (module docstring): returns once stopped; a failure closes
        this life's pool and propagates."""
        database = self._open_database()
        task_status.started()
        try:
            if not await self._connect(database):
                return
            refresher = self._refresher(database)
            if not await self._wait_for_tables(refresher):
                return
            s = self.settings
            await redis_store.ensure_group(self._control, s.stream, s.group, "0")
            log.info("domain engine started", group=s.group)
            self.enabled.set()
            await self._serve(database, refresher)
        except StopRequested:
            return
        except Exception:
            self._metrics.domain_errors.inc()
            raise
        finally:
            with trio.CancelScope(shield=True):
                await database.aclose()
            log.info("domain engine stopped")

    async def _connect(self, database: Database) -> bool:
        """Open the engine's pool; the service is already connected, so this rarely waits. A
        failure never ends the service: the engine keeps trying (logged) until stopped."""
        while not self._stopper.requested:
            try:
                await database.connect(deadline_s=self._startup_timeout_s)
                return True
            except Unavailable as exc:
                log.error("domain engine cannot reach PostgreSQL, retrying", error=str(exc))
                await self._stopper.pause(self.settings.refresh_s)
        return False

    def _refresher(self, database: Database) -> Refresher:
        return Refresher(
            database=database,
            health=self.health,
            metrics=self._metrics,
            stopper=self._stopper,
            refresh_s=self.settings.refresh_s,
        )

    async def _wait_for_tables(self, refresher: Refresher) -> bool:
        """Refresh until the racing tables exist (the refresher logs their absence once)."""
        while not self._stopper.requested:
            await refresher.refresh()
            if not refresher.timing_absent:
                return True
            await self._stopper.pause(self.settings.refresh_s)
        return False

    async def _serve(self, database: Database, refresher: Refresher) -> None:
        s = self.settings
        names = s.names
        in_flight = InFlight()
        own_pending_done = trio.Event()
        batches_in, batches_out = trio.open_memory_channel[Batch](2)
        feed_in, feed_out = trio.open_memory_channel[Sequence[RaceChange]](8)
        consumer = Consumer(
            redis_url=self._redis_url,
            control=self._control,
            names=names,
            settings=ConsumerSettings(
                read_count=s.read_count,
                read_block_ms=s.read_block_ms,
                max_deliveries=s.max_deliveries,
            ),
            in_flight=in_flight,
            to_work=Batch,
            work_ids=Batch.entry_ids,
            before_read=self._yield_to_ingestion,
            own_pending_done=own_pending_done,
        )
        reclaimer = Reclaimer(
            control=self._control,
            names=names,
            settings=ReclaimSettings(
                interval_s=s.reclaim_interval_s,
                min_idle_ms=s.reclaim_min_idle_ms,
                max_deliveries=s.max_deliveries,
            ),
            in_flight=in_flight,
            to_work=partial(claimed_batch, max_deliveries=s.max_deliveries),
            work_ids=Batch.entry_ids,
            counters=ReclaimCounters(
                reclaimed=self._metrics.domain_reclaimed,
                trimmed=self._metrics.domain_skipped_fixes.labels("trimmed"),
            ),
            own_pending_done=own_pending_done,
        )
        evaluator = Evaluator(
            settings=EvaluatorSettings(
                names=names,
                durable_group=s.durable_group,
                visibility_timeout_s=s.visibility_timeout_s,
                alert_rules=s.alert_rules,
            ),
            database=database,
            control=self._control,
            refresher=refresher,
            health=self.health,
            metrics=self._metrics,
            stopper=self._stopper,
            failures=self._failures,
            settled=in_flight.settle,
        )
        silence = SilenceWatch(
            database=database,
            refresher=refresher,
            health=self.health,
            metrics=self._metrics,
            stopper=self._stopper,
            rules=s.alert_rules,
            every_s=s.refresh_s,
        )
        feed = FeedWriter(self._control, s.stream, self._metrics, self._stopper)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._release_on_stop, consumer, reclaimer)
            await nursery.start(feed.run, feed_out)
            await nursery.start(refresher.run, feed_in.clone())
            await nursery.start(silence.run, feed_in.clone())
            await nursery.start(evaluator.run, batches_out, feed_in)
            await nursery.start(reclaimer.run, batches_in.clone())
            await nursery.start(consumer.run, batches_in)
            await nursery.start(self._sample_lag)

    async def _release_on_stop(
        self, consumer: Consumer[Batch], reclaimer: Reclaimer[Batch]
    ) -> None:
        """On a stop request: end the reads (a blocked XREADGROUP returns at once); the
        evaluator ends when both have closed their ends of the batch channel."""
        await self._stopper.wait()
        reclaimer.request_stop()
        consumer.request_stop()

    async def _yield_to_ingestion(self) -> None:
        """Pause while the durable pipeline has a backlog (more than DOMAIN_YIELD_BACKLOG
        entries undelivered or unacked): storing fixes comes first, and in this process both
        share one interpreter and the same database. The engine catches up once the backlog is
        gone (its lag says by how much); a fix it evaluated now would mostly wait for its row
        anyway. Backoff 50 ms doubling to 1 s; a failed check does not hold the engine."""
        s = self.settings
        if s.yield_backlog <= 0:
            return
        backoff = Backoff(initial_s=0.05, max_s=1.0)
        while not self._stopper.requested:
            try:
                sample = await trio.to_thread.run_sync(
                    sample_lag_sync, self._control, s.stream, s.durable_group
                )
            except SAMPLE_ERRORS:
                return
            if not sample.exact or sample.lag + sample.pending <= s.yield_backlog:
                return  # (an inexact lag is XLEN: an upper bound that could hold us for good)
            self._metrics.domain_yields.inc()
            await self._stopper.pause(backoff.next_delay())

    async def _sample_lag(
        self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await self.sample_lag()
            if await self._stopper.pause(self.settings.refresh_s):
                return

    async def sample_lag(self) -> None:
        """`processor_domain_lag`: entries in the stream not yet delivered to the domain group
        (XINFO GROUPS, XLEN when Redis cannot tell)."""
        try:
            sample = await trio.to_thread.run_sync(
                sample_lag_sync, self._control, self.settings.stream, self.settings.group
            )
        except SAMPLE_ERRORS as exc:
            log.debug("domain lag sample failed", error=str(exc)[:200])
        else:
            self._metrics.domain_lag.set(sample.lag)


def claimed_batch(page: ClaimedPage, *, max_deliveries: int) -> Batch:
    """A page the reclaimer claimed, as a batch: entries delivered too often split off."""
    fresh: StreamEntries
    worn_out: list[Rejected]
    fresh, worn_out = split_worn_out(page.entries, page.delivery_counts, max_deliveries)
    return Batch(fresh, worn_out)
