"""Failures the pipeline keeps retrying that no dependency probe can see.

The readiness probes ask "does Redis answer PING, does PostgreSQL answer SELECT 1?". A revoked
INSERT privilege, a missing table or a dead-letter stream key of the wrong type passes both probes
while nothing gets stored or settled. The writer reports such a failure here once it has repeated
past its bound, and clears it on the next success; `/readyz` fails naming each reported stall,
and `processor_pipeline_stalled{check}` shows it to Prometheus (the `ProcessorNotReady` alert
fires from `processor_ready`).
"""

from __future__ import annotations

from prometheus_client import Gauge


class Stalls:
    def __init__(self, gauge: Gauge | None = None) -> None:
        self._failing: dict[str, str] = {}
        self._gauge = gauge  # labelled by `check`

    def report(self, check: str, error: str) -> None:
        self._failing[check] = error
        if self._gauge is not None:
            self._gauge.labels(check).set(1)

    def clear(self, check: str) -> None:
        if self._failing.pop(check, None) is not None and self._gauge is not None:
            self._gauge.labels(check).set(0)

    def failing(self) -> dict[str, str]:
        """check -> the latest error, for every stall reported and not cleared yet."""
        return dict(self._failing)
