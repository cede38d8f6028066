"""The root of the task tree: what runs, in which order it starts, and how it drains.

    Service.run
    ├── startup: PostgreSQL (retry) -> migrations -> Redis (retry) -> consumer group
    └── services nursery (lives until the pipeline has drained)
        ├── ... HTTP endpoints, probes, lag sampler, live broadcast (when configured)
        └── pipeline nursery
            ├── consumer  --Delivery channel-->  writer (batcher + flushers)
            └── reclaimer (same channel)

Drain order on SIGTERM/SIGINT: stop reading (consumer and reclaimer close their ends of the
channel), the writer stores and acks everything already read and returns, then the services
(live clients closed with 1001, HTTP) are stopped. All of it under `SHUTDOWN_TIMEOUT_S`: past the
deadline, or on a second signal, everything is cancelled and un-acked entries simply stay
pending in Redis for the next start (nothing is lost).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from datetime import timedelta

import redis
import structlog
import trio
from trio import TaskStatus

from processor.config import Config
from processor.core.consumer import Consumer, ConsumerSettings
from processor.core.device_state import DeviceStates
from processor.core.quality import QualityRules
from processor.core.records import Delivery
from processor.core.settle import StreamNames
from processor.core.writer import Writer, WriterSettings
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store
from processor.store.migrations import (
    apply_migrations,
    apply_storage_policy,
    default_directory,
    load_migrations,
)
from processor.store.positions import prepare_connection
from processor.store.postgres import Database

log = structlog.get_logger("processor.app")

EXIT_OK = 0
EXIT_FORCED = 1


def make_database(config: Config) -> Database:
    return Database(
        config.database_url,
        pool_size=config.db_pool_size,
        statement_timeout_ms=config.db_statement_timeout_ms,
        configure=prepare_connection,
    )


async def migrate(config: Config, database: Database) -> list[str]:
    """Apply pending migrations and the storage policy; returns the migrations applied."""
    migrations = load_migrations(default_directory())

    def work() -> tuple[list[str], str]:
        conn = database.dedicated_connection()
        try:
            applied = apply_migrations(conn, migrations)
            flavour = apply_storage_policy(
                conn,
                chunk_interval=config.positions_chunk_interval,
                compress_after_days=config.positions_compress_after_days,
                retention_days=config.positions_retention_days,
            )
            return applied, flavour
        finally:
            conn.close()

    applied, flavour = await trio.to_thread.run_sync(work)
    log.info("migrations applied", applied=applied, storage=flavour)
    return applied


class Service:
    """One processor instance. `run` returns after a complete drain or a cancellation."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.ready = trio.Event()
        self.draining = trio.Event()
        self.states = DeviceStates(
            config.device_state_cap, on_evict=self.metrics.device_state_evictions.inc
        )

    def begin_drain(self) -> None:
        self.draining.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        log.info("starting", instance=config.instance_id, stream=config.redis_stream)
        database = make_database(config)
        control = redis_store.make_client(config.redis_url)
        try:
            await database.connect(deadline_s=config.startup_timeout_s)
            await migrate(config, database)
            await redis_store.wait_for_redis(control, deadline_s=config.startup_timeout_s)
            await redis_store.ensure_group(control, config.redis_stream, config.redis_group)
            await self._serve(database, control, task_status)
        finally:
            with trio.CancelScope(shield=True):
                await database.aclose()
                control.close()
            log.info("stopped")

    async def _serve(
        self, database: Database, control: redis.Redis, task_status: TaskStatus[None]
    ) -> None:
        config = self.config
        names = StreamNames(
            stream=config.redis_stream,
            group=config.redis_group,
            consumer=config.consumer_name,
            dead_letter_stream=config.dead_letter_stream,
            dead_letter_maxlen=config.dlq_maxlen,
        )
        consumer = Consumer(
            redis_url=config.redis_url,
            control=control,
            settings=ConsumerSettings(
                stream=config.redis_stream,
                group=config.redis_group,
                consumer=config.consumer_name,
                read_count=config.read_count,
                read_block_ms=config.read_block_ms,
            ),
            metrics=self.metrics,
        )
        writer = Writer(
            database=database,
            redis_client=control,
            names=names,
            settings=WriterSettings(
                batch_size=config.write_batch_size,
                flush_interval_s=config.write_flush_ms / 1000,
                concurrency=config.write_concurrency,
                retry_initial_s=config.write_retry_initial_ms / 1000,
                retry_max_s=config.write_retry_max_ms / 1000,
                rules=QualityRules(
                    future_tolerance=timedelta(seconds=config.future_tolerance_s),
                    max_speed_kmh=config.max_plausible_speed_kmh,
                ),
            ),
            states=self.states,
            metrics=self.metrics,
        )
        send, receive = trio.open_memory_channel[Delivery](config.pipeline_buffer_batches)
        async with trio.open_nursery() as services:
            # (observability and live services are started here)
            async with trio.open_nursery() as pipeline:
                pipeline.start_soon(writer.run, receive)
                await pipeline.start(consumer.run, send)
                self.ready.set()
                log.info("ready")
                task_status.started()
                await self.draining.wait()
                log.info("draining")
                await consumer.stop()
            log.info("pipeline drained")
            services.cancel_scope.cancel()


async def run_until_signalled(config: Config, service: Service | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit code."""
    service = service if service is not None else Service(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        with trio.CancelScope() as service_scope:
            async with trio.open_nursery() as root:
                root.start_soon(_watch_signals, signals, service, service_scope, config)
                await service.run()
                root.cancel_scope.cancel()
    if service_scope.cancelled_caught and service.ready.is_set():
        log.error("drain deadline exceeded or forced stop: un-acked entries stay pending")
        return EXIT_FORCED
    return EXIT_OK


async def _watch_signals(
    signals: AsyncIterator[int],
    service: Service,
    scope: trio.CancelScope,
    config: Config,
) -> None:
    received = 0
    async for signum in signals:
        received += 1
        name = signal.Signals(signum).name
        if received == 1 and service.ready.is_set():
            log.info("shutdown requested", signal=name, timeout_s=config.shutdown_timeout_s)
            service.begin_drain()
            scope.deadline = trio.current_time() + config.shutdown_timeout_s
        else:
            log.warning("stopping now", signal=name)
            scope.cancel()
