"""The observability side services of one Service: probes, lag sampler, HTTP endpoints.

Each runs under the Service's supervisor (`processor.supervise`): a failure at start-up (the
HTTP port cannot be bound) stops the process, a failure at run time restarts that service with
backoff; none of them is critical for readiness (see `readiness.py`).

Started (in that order) in the Service's services nursery before the pipeline, so that the
first probe verdict and the first lag sample exist before the instance reports ready, and the
endpoints stay up through the drain (`/readyz` answers 503 as soon as draining starts while
`/metrics` still shows the drain's progress). Like `LiveServer`, it runs its own nursery:
`stop()` ends the HTTP server gracefully, then cancels that nursery, which ends the probe and
sampler loops.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import redis
import trio
from trio import TaskStatus

from processor.config import Config
from processor.observability.lag import run_lag_sampler
from processor.observability.metrics import Metrics
from processor.observability.probes import postgres_probe, redis_probe, run_probes
from processor.observability.readiness import ProblemSource, Readiness
from processor.observability.stalls import Stalls
from processor.store.postgres import Database
from processor.supervise import Supervisor

if TYPE_CHECKING:
    from processor.observability.http import HttpServer


class Observability:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        supervisor: Supervisor,
        domain_health: ProblemSource | None = None,
    ) -> None:
        self.config = config
        self.domain_health = domain_health
        self.metrics = metrics
        self.supervisor = supervisor
        # Reported by the pipeline (see stalls.py), read by /readyz.
        self.stalls = Stalls(metrics.pipeline_stalled)
        self._http: HttpServer | None = None
        self._nursery: trio.Nursery | None = None

    async def run(
        self,
        *,
        database: Database,
        control: redis.Redis,
        started: trio.Event,
        draining: trio.Event,
        task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start everything in this service's own nursery, report the bound HTTP port, and
        run until `stop()`."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            port = await self._start(nursery, database, control, started, draining)
            task_status.started(port)
            await trio.sleep_forever()

    async def _start(
        self,
        nursery: trio.Nursery,
        database: Database,
        control: redis.Redis,
        started: trio.Event,
        draining: trio.Event,
    ) -> int:
        config = self.config
        probes = [redis_probe(config.redis_url, config.probe_timeout_s), postgres_probe(database)]
        readiness = Readiness(
            probes,
            started,
            draining,
            supervisor=self.supervisor,
            stalls=self.stalls,
            domain=self.domain_health,
        )
        self.metrics.ready.set_function(readiness.gauge_value)
        supervised = self.supervisor.run
        await nursery.start(
            supervised,
            "probes",
            partial(
                run_probes,
                probes,
                interval_s=config.probe_interval_s,
                timeout_s=config.probe_timeout_s,
            ),
        )
        await nursery.start(
            supervised,
            "lag-sampler",
            partial(
                run_lag_sampler,
                control,
                stream=config.redis_stream,
                group=config.redis_group,
                metrics=self.metrics,
                interval_s=config.lag_sample_interval_s,
            ),
        )
        # Imported here: the HTTP stack (quart, hypercorn) is most of the start-up import time,
        # and `processor run` logs its first line before it gets this far.
        from processor.observability.http import HttpServer, make_app  # noqa: PLC0415

        self._http = HttpServer(
            make_app(self.metrics.registry, readiness), host=config.http_host, port=config.http_port
        )
        port: int = await nursery.start(supervised, "http", self._http.run)
        return port

    async def stop(self) -> None:
        """End the HTTP server gracefully (bounded), then the probe and sampler loops."""
        if self._http is not None:
            await self._http.stop()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
