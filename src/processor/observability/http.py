"""The HTTP endpoints (docs/metrics.md): a plain ASGI app served inside the task tree.

`GET /metrics` (format negotiated by prometheus-client), `GET /healthz` (200 while the task tree
runs), `GET /readyz` (200 or 503 from the cached readiness verdict). `HttpServer.run` reports
started only once the socket listens, with the bound port (so HTTP_PORT=0 works); `stop()`
shuts the server down gracefully, so a scraper's idle connection never holds shutdown up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from urllib.parse import parse_qsl, urlsplit

import attrs
import orjson
import structlog
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from trio import TaskStatus

from processor.observability.http_server import App, Receive, Scope, Send, ServerSettings, serve
from processor.observability.readiness import Readiness

log = structlog.get_logger("processor.http")

GRACEFUL_TIMEOUT_S = 1.0
JSON = "application/json"
READ_METHODS = ("GET", "HEAD")


@attrs.frozen
class Request:
    """What a handler reads of an HTTP request."""

    method: str
    path: str
    query: dict[str, str]  # the first value of each parameter
    headers: dict[str, str]  # lower-case names; repeated headers joined by ", "

    @classmethod
    def from_scope(cls, scope: Scope) -> Request:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        query: dict[str, str] = {}
        for name, value in parse_qsl(scope["query_string"].decode("latin-1"), True):
            query.setdefault(name, value)
        return cls(scope["method"], scope["path"], query, headers)

    @property
    def host(self) -> str:
        """The host name the client asked for (Host header, without the port)."""
        return urlsplit(f"//{self.headers.get('host', '')}").hostname or ""


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


def asgi_app(handler: Handler) -> App:
    """An ASGI app answering each HTTP request with `handler`'s response."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = await handler(Request.from_scope(scope))
        headers = [("content-type", response.content_type), *response.headers]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    return app


def json_response(status: int, body: object) -> Response:
    return Response(status, orjson.dumps(body), JSON)


NOT_FOUND = json_response(404, {"error": "not found"})
NOT_ALLOWED = Response(
    405, orjson.dumps({"error": "method not allowed"}), JSON, (("allow", ", ".join(READ_METHODS)),)
)


def make_app(registry: CollectorRegistry, readiness: Readiness) -> App:
    """One app per Service (no module-level app), so each instance serves its own registry."""

    def metrics(request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(200, encode(registry), content_type)

    def healthz(_request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    def readyz(_request: Request) -> Response:
        verdict = readiness.verdict()
        return json_response(200 if verdict.ready else 503, verdict.body)

    routes: dict[str, Callable[[Request], Response]] = {
        "/metrics": metrics,
        "/healthz": healthz,
        "/readyz": readyz,
    }

    async def endpoints(request: Request) -> Response:
        route = routes.get(request.path)
        if route is None:
            return NOT_FOUND
        if request.method not in READ_METHODS:
            return NOT_ALLOWED
        return route(request)

    return asgi_app(endpoints)


class HttpServer:
    def __init__(
        self, app: App, *, host: str, port: int, settings: ServerSettings | None = None
    ) -> None:
        self.app = app
        self.host = host
        self.bind_port = port
        self.settings = settings or ServerSettings(graceful_timeout_s=GRACEFUL_TIMEOUT_S)
        self.port: int | None = None
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    async def run(self, *, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = trio.Event()  # run again after a failure (supervised restart)
        bind = f"{self.host}:{self.bind_port}"
        try:
            async with trio.open_nursery() as nursery:
                try:
                    binds: list[str] = await nursery.start(
                        partial(
                            serve,
                            self.app,
                            host=self.host,
                            port=self.bind_port,
                            settings=self.settings,
                            shutdown_trigger=self._shutdown.wait,
                        )
                    )
                except OSError as failed:  # e.g. the port is taken: say which, then fail
                    log.error("http cannot listen", bind=bind, error=str(failed))
                    raise
                port = urlsplit(binds[0]).port
                assert port is not None, binds
                self.port = port
                log.info("http listening", binds=binds, port=port)
                task_status.started(port)
        finally:
            self._stopped.set()
            log.info("http stopped")

    async def stop(self) -> None:
        """Graceful stop, bounded by the graceful timeout (plus a margin)."""
        self._shutdown.set()
        with trio.move_on_after(self.settings.graceful_timeout_s + 1.0):
            await self._stopped.wait()
