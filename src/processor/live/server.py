"""The live broadcast service (SPEC §5): WebSocket server, Directus auth, fan-out, shutdown.

    LiveServer.run (a child of the services nursery; started only when DIRECTUS_URL is set)
    ├── device -> events map refresher
    ├── broadcast consumer (own group, NOACK)  --offer-->  subscriptions --enqueue--> connections
    └── trio-websocket server on LIVE_WS_HOST:LIVE_WS_PORT, path /live
        └── one Connection per client (receive / send / ping tasks)

Upgrade decisions, in order (HTTP status of the refusal):
not shutting down (else 503) -> path `/live` (else 404) -> a Cookie or Bearer credential (else
401) -> for cookie sessions an allowed `Origin` (else 403: cross-site WebSocket hijacking) ->
Directus `/users/me` (401 / 503 as `auth.Directus` maps it) -> accept.

`close()` is the graceful part of shutdown: refuse new upgrades, stop the broadcast consumer,
close every client with 1001 and wait (bounded) until they are gone; the caller cancels the
services nursery right after.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import timedelta
from functools import partial
from urllib.parse import urlsplit

import redis
import structlog
import trio
from trio import TaskStatus
from trio_websocket import WebSocketRequest, serve_websocket

from processor.config import Config
from processor.live.auth import (
    AuthOutcome,
    Credentials,
    Directus,
    credentials_from_headers,
    header,
    origin_allowed,
)
from processor.live.broadcast import Broadcaster
from processor.live.connection import CLOSE_TIMEOUT_S, GOING_AWAY, Connection
from processor.live.device_events import DeviceEventMap
from processor.live.registry import Registry
from processor.live.snapshot import Snapshots
from processor.observability.metrics import Metrics
from processor.quality import QualityRules
from processor.store.postgres import Database

log = structlog.get_logger("processor.live.server")

PATH = "/live"
HANDSHAKE_TIMEOUT_S = 10.0


class LiveServer:
    def __init__(
        self, config: Config, *, database: Database, control: redis.Redis, metrics: Metrics
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.port: int | None = None
        self.registry = Registry(metrics)
        self.device_events = DeviceEventMap(
            database,
            refresh_s=config.live_device_event_refresh_ms / 1000,
            metrics=metrics,
            on_refresh=self._on_map_refresh,
        )
        self.broadcaster = Broadcaster(
            redis_url=config.redis_url,
            control=control,
            stream=config.redis_stream,
            group=config.live_group,
            consumer=config.instance_id,
            # A read is handed out at once, so it is kept to a quarter of a client's queue: when
            # the server itself is busy, the backlog waits in Redis (as broadcast lag) instead of
            # filling queues, and 4008 keeps meaning "this client does not read".
            read_count=min(config.read_count, max(1, config.live_ws_max_queue // 4)),
            read_block_ms=config.read_block_ms,
            rules=QualityRules(
                future_tolerance=timedelta(seconds=config.future_tolerance_s),
                max_speed_kmh=config.max_plausible_speed_kmh,
            ),
            events_of=self.device_events.events_of,
            registry=self.registry,
            metrics=metrics,
        )
        self._snapshots = Snapshots(database, metrics)
        self._directus: Directus | None = None
        self._connections: set[Connection] = set()
        self._ids = itertools.count(1)
        self._closing = False
        self._all_closed = trio.Event()

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        timeout_s = config.directus_auth_timeout_ms / 1000
        async with (
            Directus.client(config.directus_url, timeout_s) as http,
            trio.open_nursery() as nursery,
        ):
            self._directus = Directus(http, timeout_s=timeout_s, metrics=self.metrics)
            await nursery.start(self.device_events.run)
            await nursery.start(self.broadcaster.run)
            server = await nursery.start(
                partial(
                    serve_websocket,
                    self._handle,
                    config.live_ws_host,
                    config.live_ws_port,
                    None,
                    # Characters >= bytes/4, so this cuts oversized frames early (1009); the
                    # exact byte limit is checked per frame by the connection.
                    max_message_size=config.live_ws_max_message_bytes,
                    connect_timeout=HANDSHAKE_TIMEOUT_S,
                    disconnect_timeout=CLOSE_TIMEOUT_S,
                )
            )
            self.port = int(server.port)
            log.info(
                "live broadcast listening",
                host=config.live_ws_host,
                port=self.port,
                path=PATH,
                group=config.live_group,
            )
            task_status.started()

    async def close(self) -> None:
        """Refuse new clients, stop broadcasting, close every client with 1001 (bounded)."""
        self._closing = True
        await self.broadcaster.stop()
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self.broadcaster.stopped.wait()  # it removes its group on the way out
        count = len(self._connections)
        for connection in list(self._connections):
            connection.close(GOING_AWAY, "server shutting down")
        if self._connections:
            with trio.move_on_after(CLOSE_TIMEOUT_S + 1):
                await self._all_closed.wait()
        log.info("live clients closed", clients=count, left=len(self._connections))

    def _on_map_refresh(self, mapping: Mapping[str, tuple[str, ...]]) -> None:
        self.broadcaster.forget_devices_not_in(mapping)

    async def _handle(self, request: WebSocketRequest) -> None:
        status = await self._admit(request)
        if isinstance(status, int):
            await request.reject(status, body=_STATUS_BODIES[status])
            return
        config = self.config
        assert self._directus is not None
        ws = await request.accept()
        connection = Connection(
            ws,
            status,
            name=f"live-{next(self._ids)}",
            max_queue=config.live_ws_max_queue,
            max_message_bytes=config.live_ws_max_message_bytes,
            max_protocol_errors=config.live_ws_max_protocol_errors,
            ping_interval_s=config.live_ws_ping_interval_ms / 1000,
            registry=self.registry,
            directus=self._directus,
            snapshots=self._snapshots,
            metrics=self.metrics,
        )
        self._connections.add(connection)
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)
            if self._closing and not self._connections:
                self._all_closed.set()

    async def _admit(self, request: WebSocketRequest) -> int | Credentials:
        """The client's credentials when the upgrade may proceed, else the HTTP status."""
        if self._closing or self._directus is None:
            return 503
        if urlsplit(request.path).path != PATH:
            return 404
        credentials = credentials_from_headers(request.headers)
        if credentials is None:
            self.metrics.live_auth.labels("missing").inc()
            return 401
        if credentials.via_cookie and not origin_allowed(
            header(request.headers, b"origin"), self.config.live_ws_allowed_origins
        ):
            self.metrics.live_auth.labels("origin_refused").inc()
            log.warning("live upgrade refused: origin not allowed", origin=_origin(request))
            return 403
        outcome = await self._directus.authenticate(credentials)
        self.metrics.live_auth.labels(outcome.value).inc()
        if outcome is AuthOutcome.UNAUTHORIZED:
            return 401
        if outcome is AuthOutcome.UNAVAILABLE:
            return 503
        return credentials


def _origin(request: WebSocketRequest) -> str:
    return (header(request.headers, b"origin") or "<none>")[:120]


_STATUS_BODIES = {
    401: b"unauthorized",
    403: b"origin not allowed",
    404: b"not found: the live endpoint is /live",
    503: b"unavailable, retry later",
}
