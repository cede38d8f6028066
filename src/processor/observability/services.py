"""The observability side services of one Service: HTTP endpoints, probes, lag sampler.

Each runs under the Service's supervisor (`processor.supervise`): a failure at start-up (the
HTTP port cannot be bound) stops the process, a failure at run time restarts that service with
backoff; none of them is critical for readiness (see `readiness.py`).

HTTP and the probes start first, before the servers are reached (`/readyz` says `starting`
meanwhile); the lag sampler once the consumer group exists. The Service waits for the first
probe verdict and the first lag sample before it reports ready. The endpoints stay up through
the drain (`/readyz` answers 503 as soon as draining starts while `/metrics` still shows the
drain's progress). Like `LiveServer`, it runs its own nursery: `stop()` ends the HTTP server
gracefully, then cancels that nursery, which ends the probe and sampler loops.
"""

from __future__ import annotations

from functools import partial

import redis
import trio
from trio import TaskStatus

from processor.config import Config
from processor.observability.http import HttpServer, make_app
from processor.observability.lag import run_lag_sampler
from processor.observability.metrics import Metrics
from processor.observability.probes import Probe, postgres_probe, redis_probe, run_probes
from processor.observability.readiness import ProblemSource, Readiness
from processor.observability.stalls import Stalls
from processor.store.postgres import Database
from processor.supervise import Supervisor


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
        self.probed = trio.Event()  # the first round of probes has a verdict
        self._http: HttpServer | None = None
        self._nursery: trio.Nursery | None = None

    async def run(
        self,
        *,
        database: Database,
        started: trio.Event,
        draining: trio.Event,
        task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve HTTP and report its bound port, start probing (`probed` once the first
        round has a verdict), and run until `stop()`."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            config = self.config
            probes = [
                redis_probe(config.redis_url, config.probe_timeout_s),
                postgres_probe(database),
            ]
            readiness = Readiness(
                probes,
                started,
                draining,
                supervisor=self.supervisor,
                stalls=self.stalls,
                domain=self.domain_health,
            )
            self.metrics.ready.set_function(readiness.gauge_value)
            self._http = HttpServer(
                make_app(self.metrics.registry, readiness),
                host=config.http_host,
                port=config.http_port,
            )
            port: int = await nursery.start(self.supervisor.run, "http", self._http.run)
            nursery.start_soon(self._start_probes, nursery, probes)
            task_status.started(port)
            await trio.sleep_forever()

    async def _start_probes(self, nursery: trio.Nursery, probes: list[Probe]) -> None:
        config = self.config
        run = partial(
            run_probes, probes, interval_s=config.probe_interval_s, timeout_s=config.probe_timeout_s
        )
        await nursery.start(self.supervisor.run, "probes", run)
        self.probed.set()

    async def start_lag_sampler(self, control: redis.Redis) -> None:
        """Sample the consumer group's lag (started after its first sample); call once the
        group exists."""
        assert self._nursery is not None, "run() first"
        config = self.config
        await self._nursery.start(
            self.supervisor.run,
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

    async def stop(self) -> None:
        """End the HTTP server gracefully (bounded), then the probe and sampler loops."""
        if self._http is not None:
            await self._http.stop()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
