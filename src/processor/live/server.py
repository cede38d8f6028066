"""The live port (docs/websocket.md): accept loop, upgrade admission, and the four supervised
live services.

    LiveServer.run (started only when DIRECTUS_URL is set)
    ├── supervised "live-device-map", "live-broadcast" (critical), "live-race",
    │   "live-server" (critical: listener + accept loop)
    ├── snapshot reads (`snapshot.py`) and one re-check task per session (`session.py`)
    └── one task per socket: request (h11) -> /live: admission -> 101 -> `Connection.serve`
                                           -> /live/history: `history.py`

Invariants: one failure boundary per socket (`_socket`) ends that socket only; clients live in
this nursery, so a restarted accept loop keeps them. Why: docs/decisions.md, live surface.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from datetime import timedelta
from functools import partial

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.config import Config
from processor.live.auth import (
    AuthOutcome,
    Credentials,
    Directus,
    credentials_from_headers,
    origin_allowed,
)
from processor.live.broadcast import Broadcaster
from processor.live.connection import CLOSE_TIMEOUT_S, GOING_AWAY, Budgets, Connection
from processor.live.device_events import DeviceEventMap
from processor.live.history import PATH as HISTORY_PATH
from processor.live.history import History, Limits
from processor.live.http1 import HttpConnection, Refusal, Request, websocket_key
from processor.live.race_feed_reader import RaceFeedReader
from processor.live.registry import Registry
from processor.live.session import RECHECKS_AT_ONCE, Session
from processor.live.snapshot import Snapshots
from processor.live.websocket import WebSocket
from processor.observability.metrics import Metrics
from processor.store.postgres import Database
from processor.supervise import Supervisor, describe_failure

log = structlog.get_logger("processor.live.server")

PATH = "/live"
LIVE_DB_POOL_SIZE = 3  # snapshots (coalesced per event), the map refresh, one history read


@attrs.define
class SocketStage:
    """Where one connection's handling is (for the failure log line and metric)."""

    name: str = "request"


@attrs.frozen
class Admission:
    credentials: Credentials
    user_id: str


class LiveServer:
    def __init__(
        self, config: Config, *, control: redis.Redis, metrics: Metrics, supervisor: Supervisor
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.supervisor = supervisor
        self.port: int | None = None
        self.listeners: list[trio.SocketListener] = []
        self.registry = Registry(metrics)
        self.database = Database(
            config.database_url,
            pool_size=LIVE_DB_POOL_SIZE,
            min_size=LIVE_DB_POOL_SIZE,  # both kept open: a subscribe never waits for a connect
            statement_timeout_ms=config.db_statement_timeout_ms,
            name="live",
        )
        self.device_events = DeviceEventMap(
            self.database,
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
            rules=config.quality_rules,
            events_of=self.device_events.events_of,
            registry=self.registry,
            metrics=metrics,
            io_of=self.device_events.io_of,
        )
        self.snapshots = Snapshots(self.database, metrics, io_of=self.device_events.io_of)
        self.race = RaceFeedReader(
            redis_url=config.redis_url,
            control=control,
            stream=config.redis_stream,
            read_block_ms=config.read_block_ms,
            database=self.database,
            registry=self.registry,
            metrics=metrics,
        )
        self.budgets = Budgets(
            max_queue=config.live_ws_max_queue,
            max_queue_bytes=config.live_ws_max_queue_bytes,
            max_subscriptions=config.live_ws_max_subscriptions,
            authorizations_per_s=config.live_ws_authorizations_per_s,
            max_message_bytes=config.live_ws_max_message_bytes,
            max_protocol_errors=config.live_ws_max_protocol_errors,
            ping_interval_s=config.live_ws_ping_interval_ms / 1000,
        )
        self.history = History(
            limits=Limits(
                max_window=timedelta(seconds=config.live_history_max_window_s),
                max_points=config.live_history_max_points,
                max_fixes=config.live_history_max_fixes,
                requests_per_s=config.live_history_requests_per_s,
                allowed_origins=config.live_ws_allowed_origins,
            ),
            database=self.database,
            metrics=metrics,
            identify=self._identify,
            directus=lambda: self._directus,
            closing=lambda: self._closing,
        )
        self._directus: Directus | None = None
        self._nursery: trio.Nursery | None = None
        self._connections: set[Connection] = set()
        self._sessions: dict[Credentials, Session] = {}
        self._rechecks = trio.CapacityLimiter(RECHECKS_AT_ONCE)
        self._per_user: Counter[str] = Counter()
        self._pending_upgrades = 0
        self._ids = itertools.count(1)
        self._closing = False
        self._all_closed = trio.Event()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        timeout_s = config.directus_auth_timeout_ms / 1000
        await self.database.connect(deadline_s=config.startup_timeout_s)
        if not await self.database.wait_filled(timeout_s=10.0):
            log.warning("live database pool not filled yet; snapshots may answer unavailable")
        try:
            async with (
                Directus.client(config.directus_url, timeout_s) as http,
                trio.open_nursery() as nursery,
            ):
                self._directus = Directus(http, timeout_s=timeout_s, metrics=self.metrics)
                self._nursery = nursery
                self.snapshots.attach(nursery)
                supervised = self.supervisor.run
                critical = partial(self.supervisor.run, critical=True)  # /readyz 503 while down
                await nursery.start(supervised, "live-device-map", self.device_events.run)
                await nursery.start(critical, "live-broadcast", self.broadcaster.run)
                await nursery.start(supervised, "live-race", self.race.run)
                await nursery.start(critical, "live-server", self._listen, nursery)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.database.aclose()

    async def _listen(
        self, handlers: trio.Nursery, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind (a failure here at start-up stops the process) and accept forever."""
        config = self.config
        listeners = await trio.open_tcp_listeners(config.live_ws_port, host=config.live_ws_host)
        self.listeners = listeners
        self.port = int(listeners[0].socket.getsockname()[1])
        log.info(
            "live broadcast listening",
            host=config.live_ws_host,
            port=self.port,
            path=PATH,
            group=config.live_group,
        )
        task_status.started()
        await trio.serve_listeners(self._socket, listeners, handler_nursery=handlers)

    async def stop(self) -> None:
        """Refuse new clients, stop broadcasting, close every client with 1001 (bounded)."""
        self._closing = True
        self.race.request_stop()
        self.broadcaster.request_stop()
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self.broadcaster.stopped.wait()  # it removes its group on the way out
        count = len(self._connections)
        for connection in list(self._connections):
            connection.request_close(GOING_AWAY, "server shutting down")
        if self._connections:
            with trio.move_on_after(CLOSE_TIMEOUT_S + 1):
                await self._all_closed.wait()
        log.info("live clients closed", clients=count, left=len(self._connections))

    def _on_map_refresh(self, mapping: Mapping[str, tuple[str, ...]]) -> None:
        self.broadcaster.forget_devices_not_in(mapping)

    # --- one socket ------------------------------------------------------------------------

    async def _socket(self, stream: trio.SocketStream) -> None:
        """The failure boundary of one socket: nothing raised inside gets out but Cancelled."""
        if self._pending_upgrades >= self.config.live_ws_max_pending_upgrades:
            self.metrics.live_upgrades_dropped.labels("pending_limit").inc()
            await trio.aclose_forcefully(stream)
            return
        stage = SocketStage()
        failure: BaseException | None = None
        try:
            await self._connection(stream, stage)
        except* Exception as group:  # noqa: BLE001 - the boundary; Cancelled passes through
            failure = group
        finally:
            await trio.aclose_forcefully(stream)
        if failure is not None:
            self.metrics.live_connection_errors.labels(stage.name).inc()
            log.warning("live connection failed", stage=stage.name, error=describe_failure(failure))

    async def _connection(self, stream: trio.SocketStream, stage: SocketStage) -> None:
        config = self.config
        http = HttpConnection(stream)
        handshake = trio.CancelScope(
            deadline=trio.current_time() + config.live_ws_handshake_timeout_ms / 1000
        )
        upgraded: tuple[WebSocket, Admission] | None = None
        self._pending_upgrades += 1
        self.metrics.live_pending_upgrades.inc()
        try:
            with handshake:
                upgraded = await self._upgrade(http, stage, handshake)
        finally:
            self._pending_upgrades -= 1
            self.metrics.live_pending_upgrades.dec()
        if handshake.cancelled_caught and trio.current_time() >= handshake.deadline:
            self.metrics.live_upgrades_dropped.labels("handshake_timeout").inc()
        if upgraded is None:
            return
        ws, admission = upgraded
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.run)  # the socket's only reader from here on
                stage.name = "serve"
                await self._serve(ws, admission)
                stage.name = "close"
                # Only a connection that did not close itself (serve failed) waits for the peer.
                with trio.move_on_after(CLOSE_TIMEOUT_S if ws.open else 0):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
        finally:
            self._release(admission.user_id)

    async def _upgrade(
        self, http: HttpConnection, stage: SocketStage, handshake: trio.CancelScope
    ) -> tuple[WebSocket, Admission] | None:
        """Request -> admission -> reject or accept; the WebSocket and its admission (user slot
        reserved) when accepted."""
        stage.name = "request"
        try:
            request = await http.read_request()
        except Refusal as refusal:
            stage.name = "reject"
            await _refuse(http, refusal)
            return None
        if request is None:  # the peer left first
            return None
        if request.path == HISTORY_PATH:
            stage.name = "history"
            async with trio.open_nursery() as watch:
                watch.start_soon(http.watch_hang_up, handshake)
                await self.history.serve(http, request, handshake.deadline)
                watch.cancel_scope.cancel()
            return None
        stage.name = "admission"
        async with trio.open_nursery() as watch:
            watch.start_soon(http.watch_hang_up, handshake)
            verdict = await self._admit(request)
            watch.cancel_scope.cancel()
        if isinstance(verdict, Refusal):
            stage.name = "reject"
            await _refuse(http, verdict)
            return None
        accepted = False
        try:
            stage.name = "accept"
            received = await http.accept_websocket(request)
            ws = WebSocket(
                http.stream,
                max_message_bytes=self.config.live_ws_max_message_bytes,
                received=received,
            )
            accepted = True
        finally:
            if not accepted:  # failed or cancelled mid-accept: give the user's slot back
                self._release(verdict.user_id)
        return ws, verdict

    def _session(self, credentials: Credentials) -> Session:
        """The session of these credentials, started (its re-check task) when new or ended."""
        assert self._directus is not None
        assert self._nursery is not None
        session = self._sessions.get(credentials)
        if session is None or session.ended:
            session = self._sessions[credentials] = Session(
                credentials,
                directus=self._directus,
                metrics=self.metrics,
                period_s=self.config.live_ws_reauth_s,
                limiter=self._rechecks,
            )
            self._nursery.start_soon(session.run)
        return session

    def _leave(self, session: Session, connection: Connection) -> None:
        session.members.discard(connection)
        if not session.members:
            session.close()
            if self._sessions.get(session.credentials) is session:
                del self._sessions[session.credentials]

    async def _serve(self, ws: WebSocket, admission: Admission) -> None:
        assert self._directus is not None
        session = self._session(admission.credentials)
        connection = Connection(
            ws,
            session,
            name=f"live-{next(self._ids)}",
            budgets=self.budgets,
            registry=self.registry,
            directus=self._directus,
            snapshots=self.snapshots,
            metrics=self.metrics,
        )
        self._connections.add(connection)
        session.members.add(connection)
        try:
            await connection.serve()
        finally:
            self._leave(session, connection)
            self._connections.discard(connection)
            if self._closing and not self._connections:
                self._all_closed.set()

    async def _admit(self, request: Request) -> Refusal | Admission:
        """The admission (with a per-user slot reserved) when the upgrade may proceed, else
        the refusal."""
        if self._closing or self._directus is None:
            return _refusal(503)
        if request.path != PATH:
            return _refusal(404)
        try:
            websocket_key(request)
        except Refusal as refusal:
            return refusal
        identity = await self._identify(request)
        if isinstance(identity, int):
            return _refusal(identity)
        credentials, user_id = identity
        if self._closing:
            return _refusal(503)
        if self._per_user[user_id] >= self.config.live_ws_max_connections_per_user:
            self.metrics.live_auth.labels("too_many_connections").inc()
            return _refusal(429)
        self._per_user[user_id] += 1
        return Admission(credentials, user_id)

    async def _identify(self, request: Request) -> int | tuple[Credentials, str]:
        """Who sends `request` (its credentials and Directus user id), else the HTTP status of
        the refusal: the same rules for an upgrade and a history request."""
        if self._directus is None:
            return 503
        credentials = credentials_from_headers(request.headers)
        if credentials is None:
            self.metrics.live_auth.labels("missing").inc()
            return 401
        if not credentials.usable:
            self.metrics.live_auth.labels("unauthorized").inc()
            return 401
        if credentials.via_cookie and not origin_allowed(
            request.header(b"origin"), self.config.live_ws_allowed_origins
        ):
            self.metrics.live_auth.labels("origin_refused").inc()
            log.warning("live request refused: origin not allowed", origin=_origin(request))
            return 403
        outcome, user_id = await self._directus.authenticate(credentials)
        self.metrics.live_auth.labels(outcome.value).inc()
        if outcome is AuthOutcome.UNAUTHORIZED:
            return 401
        if outcome is AuthOutcome.UNAVAILABLE:
            return 503
        return credentials, user_id

    def _release(self, user_id: str) -> None:
        self._per_user[user_id] -= 1
        if self._per_user[user_id] <= 0:
            del self._per_user[user_id]


def _origin(request: Request) -> str:
    return (
        (request.header(b"origin") or "<none>")[:120].encode("ascii", "backslashreplace").decode()
    )


_STATUS_BODIES = {
    401: "unauthorized",
    403: "origin not allowed",
    404: "not found: the live endpoint is /live",
    429: "too many connections for this user",
    503: "unavailable, retry later",
}


def _refusal(status: int) -> Refusal:
    return Refusal(status, _STATUS_BODIES[status])


async def _refuse(http: HttpConnection, refusal: Refusal) -> None:
    await http.respond(refusal.status, refusal.message.encode(), headers=refusal.headers)
