"""The root of the task tree: what runs, in which order it starts, and how it drains.

    Service.run
    └── services nursery (lives until the pipeline has drained)
        ├── supervised "http", then "probes"   /metrics /healthz /readyz (first: 503 `starting`)
        ├── start-up, side by side: PostgreSQL -> migrations | Redis -> consumer group
        ├── supervised "lag-sampler"
        ├── LiveServer.run (when DIRECTUS_URL is set; its subtree: live/server.py)
        │   └── supervised "live-device-map", "live-broadcast", "live-race", "live-server"
        ├── pipeline nursery (not supervised: it is the process's job)
        │   └── consumer --Delivery channel--> writer <-- reclaimer   ... then "ready"
        ├── supervised "domain-engine"      (after ready: readiness needs neither)
        └── supervised "consumer-cleanup"

Invariants (docs/pipeline.md): a side service never takes ingestion down; an exception escaping
the pipeline ends the process; SIGTERM drains what was read within `SHUTDOWN_TIMEOUT_S`.
"""

from __future__ import annotations

import importlib
import signal
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.config import Config, ConfigError
from processor.core.consumer import Consumer, ConsumerSettings, durable_consumer
from processor.core.consumer_cleanup import CleanupSettings, run_consumer_cleanup
from processor.core.device_state import DeviceStates
from processor.core.inflight import InFlight
from processor.core.reclaimer import Reclaimer, ReclaimSettings, durable_reclaimer
from processor.core.records import Delivery
from processor.core.stream_names import StreamNames
from processor.core.writer import Writer, WriterSettings
from processor.domain.health import DomainHealth, metrics_health
from processor.lifecycle import leaves
from processor.observability.metrics import Metrics
from processor.observability.services import Observability
from processor.store import redis as redis_store
from processor.store.migrations import (
    apply_migrations,
    apply_storage_policy,
    default_directory,
    load_migrations,
)
from processor.store.positions import prepare_connection
from processor.store.postgres import Database
from processor.store.retry import Unavailable
from processor.supervise import Supervisor

if TYPE_CHECKING:
    from processor.domain.engine import DomainEngine
    from processor.live.server import LiveServer

log = structlog.get_logger("processor.app")

_E = TypeVar("_E", bound=BaseException)

EXIT_OK = 0
EXIT_FORCED = 1


def make_database(config: Config) -> Database:
    return Database(
        config.database_url,
        # two connections per writer lane (one merging, one copying ahead), plus rehydration
        # (live has a pool of its own)
        pool_size=max(config.db_pool_size, 2 * config.write_concurrency + 2),
        statement_timeout_ms=config.db_statement_timeout_ms,
        configure=prepare_connection,
    )


DOMAIN_POOL_SIZE = 3  # the refresher, the evaluator and the silence check, one each


def make_domain_engine(
    config: Config, control: redis.Redis, metrics: Metrics, health: DomainHealth | None = None
) -> DomainEngine:
    """The engine, with its own small pool: it never takes the writer's connections, and its
    statements may run longer (a rebuild reads a whole stage's fixes)."""
    from processor.domain.engine import DomainEngine, EngineSettings  # noqa: PLC0415
    from processor.domain.rules.stops import AlertRules  # noqa: PLC0415 - Service._start_after_ready

    return DomainEngine(
        settings=EngineSettings(
            stream=config.redis_stream,
            group=config.domain_group,
            durable_group=config.redis_group,
            consumer=config.consumer_name,
            read_count=config.domain_read_count,
            read_block_ms=config.read_block_ms,
            refresh_s=config.domain_refresh_ms / 1000,
            visibility_timeout_s=config.domain_visibility_timeout_ms / 1000,
            yield_backlog=config.domain_yield_backlog,
            alert_rules=AlertRules(
                stopped_kmh=config.alert_stopped_kmh,
                stopped_s=config.alert_stopped_s,
                no_signal_s=config.alert_no_signal_s,
            ),
            reclaim_interval_s=config.reclaim_interval_s,
            reclaim_min_idle_ms=config.reclaim_min_idle_ms,
            max_deliveries=config.max_deliveries,
            dead_letter_stream=config.dead_letter_stream,
            dead_letter_maxlen=config.dlq_maxlen,
        ),
        open_database=lambda: Database(
            config.database_url,
            pool_size=DOMAIN_POOL_SIZE,
            statement_timeout_ms=max(config.db_statement_timeout_ms, 120_000),
        ),
        redis_url=config.redis_url,
        control=control,
        metrics=metrics,
        health=health,
        startup_timeout_s=config.startup_timeout_s,
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


@attrs.frozen
class Pipeline:
    """The daemon's job: consumer and reclaimer feed the writer through one channel."""

    consumer: Consumer[Delivery]
    writer: Writer
    reclaimer: Reclaimer[Delivery]


class Service:
    """One processor instance. `run` returns after a complete drain or a cancellation."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.ready = trio.Event()
        self.draining = trio.Event()
        self.supervisor = Supervisor(self.metrics)
        # the racing domain's problems, shown on /readyz (docs/racing-domain.md)
        self.domain_health = metrics_health(
            self.metrics, retry_initial_s=config.domain_refresh_ms / 1000
        )
        self.observability = Observability(
            config, self.metrics, self.supervisor, self.domain_health
        )
        self.http_port: int | None = None  # the bound HTTP port (HTTP_PORT=0 picks one)
        self.live: LiveServer | None = None  # the live broadcast, when DIRECTUS_URL is set
        self.live_port: int | None = None  # its bound port (LIVE_WS_PORT=0 picks one)
        self.domain: DomainEngine | None = None  # the racing-domain engine (docs/racing-domain.md)
        self.states = DeviceStates(
            config.device_state_cap, on_evict=self.metrics.device_state_evictions.inc
        )

    def request_stop(self) -> None:
        """Begin the drain (see the module docstring); `run` returns once it is complete."""
        self.draining.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        log.info("starting", instance=config.instance_id, stream=config.redis_stream)
        database = make_database(config)
        control = redis_store.make_client(config.redis_url)
        try:
            async with trio.open_nursery() as services:  # lives until the pipeline has drained
                await self._start_observability(services, database, control)
                await self._prepare(database, control)
                await self._serve(services, database, control, task_status)
        finally:
            with trio.CancelScope(shield=True):
                await database.aclose()
                control.close()
            log.info("stopped")

    async def _start_observability(
        self, services: trio.Nursery, database: Database, control: redis.Redis
    ) -> None:
        """HTTP first: /healthz answers and /readyz says `starting` while the servers are
        reached and migrated; the first probes run meanwhile."""
        self.http_port = await services.start(
            partial(
                self.observability.run,
                database=database,
                started=self.ready,
                draining=self.draining,
            )
        )

    async def _prepare(self, database: Database, control: redis.Redis) -> None:
        """PostgreSQL (connect with retry, migrate) and Redis (connect with retry, consumer
        group) side by side: neither waits for the other."""
        config = self.config

        async def postgres() -> None:
            await database.connect(deadline_s=config.startup_timeout_s)
            await migrate(config, database)

        async def stream() -> None:
            await redis_store.wait_for_redis(control, deadline_s=config.startup_timeout_s)
            await redis_store.ensure_group(control, config.redis_stream, config.redis_group)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(postgres)
            nursery.start_soon(stream)

    async def _serve(
        self,
        services: trio.Nursery,
        database: Database,
        control: redis.Redis,
        task_status: TaskStatus[None],
    ) -> None:
        """The tree of the module docstring: side services, then the pipeline; on drain the
        pipeline stops reading and flushes, then the services are stopped."""
        pipeline = self._build_pipeline(database, control)
        send, receive = trio.open_memory_channel[Delivery](self.config.pipeline_buffer_batches)
        await self._start_services(services, control)
        async with trio.open_nursery() as nursery:
            # The writer ends when every send end is closed: the consumer's and the
            # reclaimer's clone (each closes its own when it stops).
            await nursery.start(pipeline.writer.run, receive)
            await nursery.start(pipeline.reclaimer.run, send.clone())
            await nursery.start(pipeline.consumer.run, send)
            await self.observability.probed.wait()  # long done, as a rule: they began first
            self.ready.set()
            log.info("ready")
            await self._start_after_ready(services, control)
            task_status.started()
            await self.draining.wait()
            log.info("draining")
            pipeline.reclaimer.request_stop()
            pipeline.consumer.request_stop()
        log.info("pipeline drained")
        await self._stop_services()
        services.cancel_scope.cancel()

    def _build_pipeline(self, database: Database, control: redis.Redis) -> Pipeline:
        """Consumer, writer and reclaimer, sharing one StreamNames, one in-flight set and the
        event by which the reclaimer waits for the consumer's re-read of its own pending list."""
        config = self.config
        in_flight = InFlight()
        own_pending_done = trio.Event()
        names = StreamNames(
            stream=config.redis_stream,
            group=config.redis_group,
            consumer=config.consumer_name,
            dead_letter_stream=config.dead_letter_stream,
            dead_letter_maxlen=config.dlq_maxlen,
        )
        consumer = durable_consumer(
            redis_url=config.redis_url,
            control=control,
            names=names,
            settings=ConsumerSettings(
                read_count=config.read_count,
                read_block_ms=config.read_block_ms,
                max_deliveries=config.max_deliveries,
            ),
            metrics=self.metrics,
            in_flight=in_flight,
            own_pending_done=own_pending_done,
        )
        writer = Writer(
            database=database,
            control=control,
            names=names,
            settings=WriterSettings(
                batch_size=config.write_batch_size,
                flush_interval_s=config.write_flush_ms / 1000,
                concurrency=config.write_concurrency,
                retry_initial_s=config.write_retry_initial_ms / 1000,
                retry_max_s=config.write_retry_max_ms / 1000,
                rules=config.quality_rules,
            ),
            states=self.states,
            metrics=self.metrics,
            in_flight=in_flight,
            stalls=self.observability.stalls,
        )
        reclaimer = durable_reclaimer(
            control=control,
            names=names,
            settings=ReclaimSettings(
                interval_s=config.reclaim_interval_s,
                min_idle_ms=config.reclaim_min_idle_ms,
                max_deliveries=config.max_deliveries,
            ),
            metrics=self.metrics,
            in_flight=in_flight,
            own_pending_done=own_pending_done,
        )
        return Pipeline(consumer, writer, reclaimer)

    async def _start_services(self, services: trio.Nursery, control: redis.Redis) -> None:
        """Start the side services that must be up before the pipeline reports ready.

        Each is started with `services.start(...)` so that it is listening before we go on.
        """
        # --- the lag sampler (its first sample once the group exists) ---
        await self.observability.start_lag_sampler(control)
        # --- live broadcast (only when DIRECTUS_URL is set) ---
        if self.config.live_enabled:
            # Imported only when live is on: its stack (httpx, h11, wsproto) is start-up time.
            from processor.live.server import LiveServer  # noqa: PLC0415

            self.live = LiveServer(
                self.config, control=control, metrics=self.metrics, supervisor=self.supervisor
            )
            await services.start(self.live.run)
            self.live_port = self.live.port
        else:
            log.info("live broadcast off: DIRECTUS_URL is not set")

    async def _start_after_ready(self, services: trio.Nursery, control: redis.Redis) -> None:
        """The side services readiness never depends on, started once the instance is ready.

        The racing domain (runs once the racing tables exist; logs once while they do not): its
        modules are a good share of the start-up imports, so they are imported in a worker
        thread, and /readyz answers meanwhile. Then the dead-consumer cleanup, which sweeps the
        domain's group too.
        """
        # --- racing domain ---
        await trio.to_thread.run_sync(importlib.import_module, "processor.domain.engine")
        self.domain = make_domain_engine(self.config, control, self.metrics, self.domain_health)
        await services.start(self.supervisor.run, "domain-engine", self.domain.run)
        # --- dead consumers of gone instances (core/consumer_cleanup.py) ---
        config = self.config
        cleanup = CleanupSettings(
            stream=config.redis_stream,
            groups=(config.redis_group, config.domain_group),
            own=config.consumer_name,
            max_idle_s=config.consumer_max_idle_s,
            interval_s=config.consumer_cleanup_interval_s,
        )
        await services.start(
            self.supervisor.run,
            "consumer-cleanup",
            partial(run_consumer_cleanup, control, settings=cleanup, metrics=self.metrics),
        )

    async def _stop_services(self) -> None:
        """Graceful part of stopping the side services (e.g. close live clients with 1001),
        bounded: the caller cancels the services nursery right after."""
        self.supervisor.request_stop()
        if self.live is not None:
            await self.live.stop()
        if self.domain is not None:
            self.domain.request_stop()
        await self.observability.stop()


async def run_until_signalled(config: Config, service: Service | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit code."""
    service = service if service is not None else Service(config)
    # The one-line failures are raised after the `except*` blocks, never inside them: before
    # CPython 3.11.4 (Debian bookworm ships 3.11.2) an exception raised in an `except*` block
    # comes out wrapped in an ExceptionGroup, which the CLI would print as a traceback (exit 1).
    failure: Unavailable | ConfigError | None = None
    with (
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        trio.CancelScope() as service_scope,
    ):
        try:
            async with trio.open_nursery() as root:
                root.start_soon(
                    stop_on_signals, signals, service, service_scope, config.shutdown_timeout_s
                )
                await service.run()
                root.cancel_scope.cancel()
        except* Unavailable as group:  # start-up gave up: the CLI reports it in one line
            failure = _first_leaf(group)
        except* ConfigError as group:  # found at start (e.g. a group in use): one line, exit 2
            failure = _first_leaf(group)
    if failure is not None:
        raise failure from None
    if service_scope.cancelled_caught and service.ready.is_set():
        log.error("drain deadline exceeded or forced stop: un-acked entries stay pending")
        return EXIT_FORCED
    return EXIT_OK


def _first_leaf(group: BaseExceptionGroup[_E]) -> _E:
    """The first exception inside (possibly nested) exception groups."""
    leaf = leaves(group)[0]
    return cast("_E", leaf)


class Stoppable(Protocol):
    """What `stop_on_signals` drives: set `ready` once serving; `request_stop()` starts a
    graceful finish and returns without waiting for it."""

    ready: trio.Event

    def request_stop(self) -> None: ...


async def stop_on_signals(
    signals: AsyncIterator[int],
    target: Stoppable,
    scope: trio.CancelScope,
    timeout_s: float,
) -> None:
    """The process's signal rule (the daemon's, reused by the demo): the first SIGTERM/SIGINT
    once `target` is ready asks it to stop and gives `scope` a deadline of `timeout_s`; a second
    signal, or one before `target` is ready, cancels `scope` at once (un-acked entries stay
    pending for the next start, nothing is lost)."""
    received = 0
    async for signum in signals:
        received += 1
        name = signal.Signals(signum).name
        if received == 1 and target.ready.is_set():
            log.info("shutdown requested", signal=name, timeout_s=timeout_s)
            target.request_stop()
            scope.deadline = trio.current_time() + timeout_s
        else:
            log.warning("stopping now", signal=name)
            scope.cancel()
