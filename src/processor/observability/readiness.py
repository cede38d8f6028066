"""The `/readyz` verdict: is this instance fit to take traffic right now?

Ready means: the pipeline has started, it is not draining, Redis and PostgreSQL both answered
their latest probe, no stall is reported (a failure that repeats while both servers answer, e.g.
a refused INSERT: see `stalls`), and no *critical* side service is down. The verdict is computed
from cached state only, so it never blocks; the `processor_ready` gauge is computed from the
same verdict at scrape time, so the gauge and the endpoint can never disagree.

Side services that are down (waiting to be restarted by the supervisor, `processor.supervise`)
are decided by what a load balancer does with the answer. `/readyz` routes the only inbound
traffic this instance takes, live WebSocket clients (ingestion pulls from Redis and does not
depend on readiness at all). So:

- **critical** (the live server and the broadcast consumer): while one is down the instance
  cannot serve live clients, so `/readyz` answers **503** naming it in `failing`, and a balancer
  sends new clients to another instance; ingestion carries on regardless.
- **degraded** (probes, lag sampler, device -> event map refresher): the instance still serves
  everything routed to it, a bit staler, so `/readyz` stays **200** with `"status": "degraded"`
  and the services listed in `degraded`; removing it from the balancer would only move clients
  for no gain. Operators alert on `processor_service_up == 0` and on restarts instead.
- **the racing domain's problems** (`processor.domain.health`: a stage or a feature switched
  off by its own data, definition or table): everything else is timed and served, so `/readyz`
  stays **200** with `"status": "degraded"`, `domain` in `degraded`, and the problems (subject,
  reason, what is wrong, what to change) under `domain_problems`.
- The HTTP endpoints themselves: while they are down `/readyz` cannot answer at all, which a
  balancer treats as not ready, the right answer for a gap of one backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import trio

from processor.observability.probes import Probe
from processor.observability.stalls import Stalls
from processor.redaction import redact
from processor.supervise import Supervisor

MAX_PROBLEMS = 50  # listed on /readyz; the count says how many more


class Reported(Protocol):
    def as_json(self) -> dict[str, str]: ...


class ProblemSource(Protocol):
    """What is wrong in a part that keeps serving (the racing domain's health). A protocol,
    not an import: the domain reports to observability, never the other way round."""

    def problems(self) -> Sequence[Reported]: ...


def redact_problem(problem: Reported) -> dict[str, str]:
    return {k: redact(v) for k, v in problem.as_json().items()}


@attrs.frozen
class Verdict:
    ready: bool
    body: dict[str, Any]


class Readiness:
    def __init__(
        self,
        probes: Sequence[Probe],
        started: trio.Event,
        draining: trio.Event,
        *,
        supervisor: Supervisor | None = None,
        stalls: Stalls | None = None,
        domain: ProblemSource | None = None,
    ) -> None:
        self._domain = domain
        self._probes = tuple(probes)
        self._stalls = stalls if stalls is not None else Stalls()
        self._started = started
        self._draining = draining
        self._supervisor = supervisor

    def verdict(self) -> Verdict:
        failing: list[str] = []
        if self._draining.is_set():
            failing.append("draining")
        elif not self._started.is_set():
            failing.append("starting")
        checks: dict[str, dict[str, Any]] = {}
        for probe in self._probes:
            result = probe.result
            checks[probe.name] = {"ok": result.ok}
            if not result.ok:
                checks[probe.name]["error"] = redact(result.error)
                failing.append(probe.name)
        for check, error in self._stalls.failing().items():
            checks[check] = {"ok": False, "error": redact(error)}
            failing.append(check)
        degraded: list[str] = []
        if self._supervisor is not None:
            failing.extend(self._supervisor.down(critical=True))
            degraded = self._supervisor.down(critical=False)
        problems = self._domain.problems() if self._domain is not None else []
        if problems:
            degraded = [*degraded, "domain"]
        status = "unavailable" if failing else "degraded" if degraded else "ready"
        body: dict[str, Any] = {"status": status, "failing": failing, "checks": checks}
        if degraded:
            body["degraded"] = degraded
        if problems:
            body["domain_problems"] = [redact_problem(p) for p in problems[:MAX_PROBLEMS]]
            if len(problems) > MAX_PROBLEMS:
                body["domain_problems_omitted"] = len(problems) - MAX_PROBLEMS
        return Verdict(not failing, body)

    def gauge_value(self) -> float:
        return 1.0 if self.verdict().ready else 0.0
