"""The `/readyz` verdict: is this instance fit to take traffic right now?

Ready means: the pipeline has started, it is not draining, Redis and PostgreSQL both
answered their latest probe, and no stall is reported (a failure that repeats while both servers
answer, e.g. a refused INSERT: see `stalls`). The verdict is computed from cached state only,
so it never blocks; the `processor_ready` gauge is computed from the same verdict at scrape
time, so the gauge and the endpoint can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import trio

from processor.observability.probes import Probe
from processor.observability.stalls import Stalls
from processor.redaction import redact


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
        stalls: Stalls | None = None,
    ) -> None:
        self._probes = tuple(probes)
        self._stalls = stalls if stalls is not None else Stalls()
        self._started = started
        self._draining = draining

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
        status = "ready" if not failing else "unavailable"
        return Verdict(not failing, {"status": status, "failing": failing, "checks": checks})

    def gauge_value(self) -> float:
        return 1.0 if self.verdict().ready else 0.0
