"""Supervision of side services: a failure at run time restarts the service, never the process.

Each side service of the root nursery runs under `Supervisor.run`:

    await nursery.start(supervisor.run, "lag-sampler", run_lag_sampler, client, ...)

Invariants: the first start is strict (a failure before `task_status.started()` stops the
process); after it, a failure is logged, counted and restarted after a capped backoff; a service
that returns, or any after `request_stop()`, is not restarted; `Cancelled` always propagates.
Whether a service being down makes the instance unready is the caller's choice (`critical`).
The exact rules: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import structlog
import trio
from trio import TaskStatus

from processor.lifecycle import Stopper, leaf_types
from processor.store.retry import Backoff

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

log = structlog.get_logger("processor.supervise")

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0


class ServiceMetrics(Protocol):
    """The two metrics the supervisor keeps (`processor.observability.metrics.Metrics` has
    them). A protocol, not an import: observability runs its services under the supervisor, so
    importing it back here would close an import circle."""

    @property
    def service_up(self) -> Gauge: ...

    @property
    def service_restarts(self) -> Counter: ...


@attrs.define
class ServiceState:
    name: str
    critical: bool
    up: bool = False
    restarts: int = 0
    last_error: str = ""


def describe_failure(failure: BaseException) -> str:
    """The exception type names of a failure (leaves of a group), never their messages."""
    return ",".join(leaf_types(failure))


class Supervisor:
    """Runs side services and knows which of them are up (for `/readyz` and the metrics)."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        *,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        self._metrics = metrics
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._healthy_after_s = healthy_after_s
        self.services: dict[str, ServiceState] = {}
        self._stopper = Stopper()

    def request_stop(self) -> None:
        """The drain has begun: services that fail or return from now on stay stopped."""
        self._stopper.request()

    def down(self, *, critical: bool | None = None) -> list[str]:
        """Names of the services waiting to be restarted (optionally only (non-)critical)."""
        return sorted(
            s.name
            for s in self.services.values()
            if not s.up and (critical is None or s.critical == critical)
        )

    async def run(
        self,
        name: str,
        service: Callable[..., Awaitable[Any]],
        *args: Any,
        critical: bool = False,
        task_status: TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run `service(*args, task_status=...)` under supervision; `started()` passes on the
        value of the service's first start."""
        state = self.services.setdefault(name, ServiceState(name, critical))
        up = self._metrics.service_up.labels(name)
        self._metrics.service_restarts.labels(name)
        backoff = Backoff(self._initial_backoff_s, self._max_backoff_s)
        first = True
        while True:
            began = trio.current_time()
            failure: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    value = await nursery.start(service, *args)
                    state.up = True
                    up.set(1)
                    if first:
                        first = False
                        task_status.started(value)
            except* Exception as group:  # noqa: BLE001 - the boundary; Cancelled passes through
                failure = group
            state.up = False
            up.set(0)
            if failure is None:
                log.info("service stopped", service=name)
                return
            if first:
                log.error("service failed to start", service=name, error=describe_failure(failure))
                raise failure
            if self._stopper.requested:
                log.warning(
                    "service failed while stopping", service=name, error=describe_failure(failure)
                )
                return
            if trio.current_time() - began >= self._healthy_after_s:
                backoff.reset()
            delay = backoff.next_delay()
            state.restarts += 1
            state.last_error = describe_failure(failure)
            self._metrics.service_restarts.labels(name).inc()
            log.error(
                "service failed; restarting",
                service=name,
                error=state.last_error,
                restarts=state.restarts,
                retry_in_s=round(delay, 2),
                exc_info=failure,
            )
            if await self._stopper.pause(delay if math.isfinite(delay) else self._max_backoff_s):
                return
