"""The `/readyz` verdict: is this instance fit to take traffic right now?

Ready: the pipeline has started and is not draining, Redis and PostgreSQL answered their latest
probe, no stall is reported (`stalls`), and no critical side service is down. Invariants: the
verdict comes from cached state only, so it never blocks, and `processor_ready` is computed from
the same verdict, so gauge and endpoint never disagree. A critical service down (live server,
broadcast consumer) is 503; other services or domain problems are 200 `degraded`. Why that
split: docs/pipeline.md, Internals.
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
