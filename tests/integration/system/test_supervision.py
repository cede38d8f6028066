"""Side services fail at run time, ingestion does not notice (issue 9, `processor.supervise`).

The supervisor alone (pure Trio), then every side service of a running processor broken at run
time through the dependency it calls; each time fixes keep being stored, the failure is counted
in `processor_service_restarts_total{service}` and the service comes back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
from trio import TaskStatus

from processor.app import Service
from processor.live import broadcast, device_events
from processor.observability import http, lag
from processor.observability.metrics import Metrics
from processor.observability.probes import Probe
from processor.observability.readiness import Readiness
from processor.supervise import Supervisor
from tests.support.live import (
    TOKEN,
    LiveRig,
    live_client,
)
from tests.support.metrics import value
from tests.support.scrape import get
from tests.support.service import running_service, wait_until

# --- the supervisor alone ---------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def fast(metrics: Metrics) -> Supervisor:
    return Supervisor(metrics, initial_backoff_s=0.01, max_backoff_s=0.05)


async def test_start_up_failure_propagates() -> None:
    async def broken(*, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise Boom("cannot bind")

    metrics = Metrics()
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(fast(metrics).run, "svc", broken)
    assert caught.group_contains(Boom)
    assert value(metrics.service_restarts.labels("svc")) == 0


async def test_run_time_failures_restart_with_backoff_until_stopped() -> None:
    runs: list[int] = []
    recovered = trio.Event()

    async def flaky(*, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(len(runs))
        if len(runs) in (3, 4):  # a restart that fails before started() is one more attempt
            raise Boom("not again")
        task_status.started(len(runs))
        if len(runs) < 5:
            raise ExceptionGroup("inner", [Boom("failed at run time")])
        recovered.set()
        await trio.sleep_forever()

    metrics = Metrics()
    supervisor = fast(metrics)
    async with trio.open_nursery() as nursery:
        first = await nursery.start(supervisor.run, "svc", flaky)
        assert first == 1
        with trio.fail_after(30):
            await recovered.wait()
        await wait_until(lambda: supervisor.down() == [])
        assert value(metrics.service_restarts.labels("svc")) == 4
        assert value(metrics.service_up.labels("svc")) == 1
        nursery.cancel_scope.cancel()  # Cancelled passes through supervision


async def test_a_service_that_returns_is_not_restarted_and_stop_ends_restarts() -> None:
    calls = 0

    async def once(*, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal calls
        calls += 1
        task_status.started()

    async def fails(*, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(0.01)
        raise Boom("late")

    metrics = Metrics()
    supervisor = Supervisor(metrics, initial_backoff_s=10, max_backoff_s=10)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run, "once", once)
            await nursery.start(supervisor.run, "fails", fails)
            await wait_until(lambda: supervisor.down() == ["fails", "once"])
            supervisor.request_stop()  # the drain: the pending restart is abandoned, run() returns
    assert calls == 1


def test_readiness_503_for_critical_services_200_degraded_for_others() -> None:
    metrics = Metrics()
    supervisor = Supervisor(metrics)
    started = trio.Event()
    started.set()
    readiness = Readiness([], started, trio.Event(), supervisor=supervisor)
    assert readiness.verdict().body["status"] == "ready"
    supervisor.services["lag-sampler"] = _state("lag-sampler", critical=False)
    verdict = readiness.verdict()
    assert verdict.ready and verdict.body["status"] == "degraded"
    assert verdict.body["degraded"] == ["lag-sampler"]
    supervisor.services["live-server"] = _state("live-server", critical=True)
    verdict = readiness.verdict()
    assert not verdict.ready and verdict.body["failing"] == ["live-server"]


def _state(name: str, *, critical: bool) -> Any:
    from processor.supervise import ServiceState

    return ServiceState(name, critical, up=False)


# --- every side service of a running processor, broken at run time ---------------------------


class Fault:
    """Armed: the patched dependency raises. Counts how often it did."""

    def __init__(self) -> None:
        self.armed = False
        self.raised = 0
        self.armed_event = trio.Event()

    def arm(self) -> None:
        self.armed = True
        self.armed_event.set()

    def maybe_raise(self) -> None:
        if self.armed:
            self.raised += 1
            raise Boom("injected")


def break_lag_sampler(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    real = lag.sample_lag_sync

    def sample(*args: Any) -> Any:
        fault.maybe_raise()
        return real(*args)

    monkeypatch.setattr(lag, "sample_lag_sync", sample)


def break_probes(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    real = Probe.probe

    async def probe(self: Probe, timeout_s: float) -> Any:
        fault.maybe_raise()
        return await real(self, timeout_s)

    monkeypatch.setattr(Probe, "probe", probe)


def break_http(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    """hypercorn's serve fails while running (as if its listener broke)."""
    real = http.serve

    async def serve(*args: Any, task_status: Any = trio.TASK_STATUS_IGNORED, **kwargs: Any) -> Any:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(real, *args, **kwargs))
            task_status.started(binds)
            await fault.armed_event.wait()
            fault.maybe_raise()

    monkeypatch.setattr(http, "serve", serve)


def break_broadcast(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    real = broadcast.decode_payload

    def decode(payload: Any) -> Any:
        fault.maybe_raise()
        return real(payload)

    monkeypatch.setattr(broadcast, "decode_payload", decode)


def break_device_map(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    real = device_events.read_device_events

    def read(conn: Any) -> Any:
        fault.maybe_raise()
        return real(conn)

    monkeypatch.setattr(device_events, "read_device_events", read)


BREAKERS: dict[str, Callable[[pytest.MonkeyPatch, Fault], None]] = {
    "lag-sampler": break_lag_sampler,
    "probes": break_probes,
    "http": break_http,
    "live-broadcast": break_broadcast,
    "live-device-map": break_device_map,
}


@asynccontextmanager
async def processor(env: dict[str, str]) -> AsyncIterator[Service]:
    fast_env = {
        **env,
        "PROBE_INTERVAL_S": "0.3",
        "PROBE_TIMEOUT_S": "0.3",
        "LAG_SAMPLE_INTERVAL_S": "0.1",
        "LIVE_DEVICE_EVENT_REFRESH_MS": "100",
    }
    async with running_service(fast_env) as service:
        yield service


def restarts(service: Service, name: str) -> float:
    return value(service.metrics.service_restarts.labels(name))


@pytest.mark.parametrize("name", [*BREAKERS, "live-server"])
async def test_breaking_a_side_service_never_stops_ingestion(
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    live_rig: LiveRig,
) -> None:
    live_rig.directus.user(TOKEN)
    fault = Fault()
    if name in BREAKERS:
        BREAKERS[name](monkeypatch, fault)
    async with processor(live_rig.env) as service:
        assert service.live is not None
        live = service.live
        await live_rig.assert_ingesting()
        if name == "live-server":
            for listener in live.listeners:
                await listener.aclose()  # the accept loop's socket breaks under it
        else:
            fault.arm()
            if name == "live-broadcast":  # it fails on the next entry it reads
                await live_rig.assert_ingesting()
        await wait_until(lambda: restarts(service, name) >= 1)
        assert name in service.supervisor.down() or restarts(service, name) >= 1
        # While it is broken (and being restarted), fixes are still stored.
        await live_rig.assert_ingesting()
        if name not in ("http", "live-server", "live-broadcast"):
            response = await get(service.http_port, "/readyz")
            body = response.json()
            if name in service.supervisor.down():
                assert response.status_code == 200 and name in body["degraded"], body
        fault.armed = False
        await wait_until(lambda: service.supervisor.down() == [], timeout=60)
        if name == "http":
            port = service.observability._http.port if service.observability._http else None
            assert port is not None
            assert (await get(port, "/readyz")).status_code == 200
        if name == "live-server":
            async with live_client(live.port) as ws:
                assert ws.closed is None
        await live_rig.assert_ingesting()
