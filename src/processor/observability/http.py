"""The HTTP endpoints (docs/metrics.md): a quart-trio app served by hypercorn inside the task tree.

- `GET /metrics`: Prometheus exposition of this instance's registry, in the format the scraper
  asks for (`Accept` negotiation by prometheus-client: classic text by default, OpenMetrics when
  requested).
- `GET /healthz`: 200 while the task tree runs (the endpoint is served by that tree).
- `GET /readyz`: 200 or 503 from the cached readiness verdict, with a JSON body naming the
  failing checks.

`HttpServer.run` reports started only once the socket listens, with the bound port (so
HTTP_PORT=0 works and tests can find the port). `stop()` triggers hypercorn's graceful shutdown:
idle keep-alive connections are closed at once, requests in flight get `GRACEFUL_TIMEOUT_S`,
after which hypercorn cancels them, so a scraper's idle connection never holds shutdown up.
"""

from __future__ import annotations

import logging
from functools import partial
from urllib.parse import urlsplit

import orjson
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from quart import Response, request
from trio import TaskStatus

from processor.observability.asgi import KeepAliveSafeQuartTrio
from processor.observability.readiness import Readiness

log = structlog.get_logger("processor.http")

GRACEFUL_TIMEOUT_S = 1.0
JSON = "application/json"


def make_app(registry: CollectorRegistry, readiness: Readiness) -> KeepAliveSafeQuartTrio:
    """One app per Service (no module-level app), so each instance serves its own registry."""
    app = KeepAliveSafeQuartTrio("processor")

    @app.get("/metrics")
    async def metrics() -> Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(registry), status=200, content_type=content_type)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(orjson.dumps({"status": "ok"}), status=200, content_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        verdict = readiness.verdict()
        status = 200 if verdict.ready else 503
        return Response(orjson.dumps(verdict.body), status=status, content_type=JSON)

    return app


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpServer:
    def __init__(self, app: KeepAliveSafeQuartTrio, *, host: str, port: int) -> None:
        self.app = app
        self.config = HypercornConfig()
        self.config.bind = [bind_address(host, port)]
        self.config.graceful_timeout = GRACEFUL_TIMEOUT_S
        self.config.accesslog = None
        # hypercorn's own lines ("Running on ...") stay out of our structured log; its warnings
        # and errors still reach stderr through the logging module's last-resort handler.
        self.config.errorlog = logging.getLogger("processor.http.hypercorn")
        self.port: int | None = None
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    async def run(self, *, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = trio.Event()  # run again after a failure (supervised restart)
        try:
            async with trio.open_nursery() as nursery:
                try:
                    binds: list[str] = await nursery.start(
                        partial(serve, self.app, self.config, shutdown_trigger=self._shutdown.wait)
                    )
                except* OSError as failed:  # e.g. the port is taken: say which, then fail
                    first: BaseException = failed
                    while isinstance(first, BaseExceptionGroup):
                        first = first.exceptions[0]
                    log.error("http cannot listen", bind=self.config.bind, error=str(first))
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
        """Graceful stop, bounded by the graceful timeout (plus a margin for the lifespan)."""
        self._shutdown.set()
        with trio.move_on_after(GRACEFUL_TIMEOUT_S + 1.0):
            await self._stopped.wait()
