"""What is wrong in the racing domain right now, said once and shown on `/readyz`.

A problem belongs to one *owner*: the schema check (`schema`), one stage (`stage:<id>`) or one
feature (`feature:zones`, `feature:alerts`, `feature:io`). Each owner's problems are replaced
whole whenever it is judged again, so a problem disappears by itself once its cause is fixed.

Said once: a problem is logged at `error` when it first appears (with its subject, what is
wrong and what to change) and counted in `processor_domain_stage_errors_total{reason}`; while it
persists nothing more is logged; when it goes away that is logged at `info`. `reason` is one of
the bounded `REASONS`, so the metric's label set stays small whatever the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import structlog

from processor.store.retry import Backoff

log = structlog.get_logger("processor.domain.health")

# definition: a stage or zone as typed in Directus cannot be evaluated (a value out of range,
#             a half-typed control); schema: a table, column, constraint or privilege;
# data: the database refused a value the engine wrote (SQLSTATE class 22/23);
# database: any other refusal (a statement timeout, a lock wait, ...).
REASONS = ("definition", "schema", "data", "database")


@attrs.frozen
class Problem:
    subject: str  # "stage <id>", "table alerts", "feature zones", ...
    reason: str  # one of REASONS
    detail: str  # what is wrong, in one line (with the SQLSTATE when the database said it)
    fix: str = ""  # what to change (SQL where there is one)

    def as_json(self) -> dict[str, str]:
        return {"subject": self.subject, "reason": self.reason, "detail": self.detail,
                "fix": self.fix}  # fmt: skip


class _Counter(Protocol):
    def labels(self, *values: str) -> Any: ...


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class DomainHealth:
    """The problems of the racing domain, by owner (see the module docstring)."""

    def __init__(
        self,
        counter: _Counter | None = None,
        gauge: _Gauge | None = None,
        *,
        retry_initial_s: float = 10.0,
        retry_max_s: float = 300.0,
    ) -> None:
        self._counter = counter
        self._gauge = gauge
        self._by_owner: dict[str, tuple[Problem, ...]] = {}
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._backoffs: dict[str, Backoff] = {}
        self._due: dict[str, float] = {}
        if counter is not None:
            for reason in REASONS:
                counter.labels(reason)

    def set(self, owner: str, problems: Iterable[Problem]) -> None:
        """Replace `owner`'s problems: new ones are logged and counted, vanished ones logged
        as resolved."""
        new = tuple(dict.fromkeys(problems))
        old = self._by_owner.get(owner, ())
        for problem in new:
            if problem not in old:
                assert problem.reason in REASONS, problem.reason
                log.error(
                    "racing domain problem",
                    owner=owner,
                    subject=problem.subject,
                    reason=problem.reason,
                    error=problem.detail,
                    fix=problem.fix,
                )
                if self._counter is not None:
                    self._counter.labels(problem.reason).inc()
        for problem in old:
            if problem not in new:
                log.info(
                    "racing domain problem resolved",
                    owner=owner,
                    subject=problem.subject,
                    reason=problem.reason,
                )
        if new:
            self._by_owner[owner] = new
        else:
            self._by_owner.pop(owner, None)
        if self._gauge is not None:
            self._gauge.set(sum(len(p) for p in self._by_owner.values()))

    def clear(self, owner: str) -> None:
        self.set(owner, ())
        self._backoffs.pop(owner, None)
        self._due.pop(owner, None)

    def failed(self, owner: str, problem: Problem, now: float) -> None:
        """`owner` (a stage, a feature) failed at run time: its problem is set, and it is not
        tried again before a capped, growing delay (`due`) unless its cause changes."""
        self.set(owner, [problem])
        backoff = self._backoffs.setdefault(
            owner, Backoff(initial_s=self._retry_initial_s, max_s=self._retry_max_s)
        )
        self._due[owner] = now + backoff.next_delay()

    def due(self, owner: str, now: float) -> bool:
        """Whether `owner` may be tried (again) now."""
        return now >= self._due.get(owner, -math.inf)

    def retry_now(self, owner: str) -> None:
        """The cause may have changed (an edited definition, a fixed table): try at once."""
        self._due.pop(owner, None)

    def clear_missing(self, prefix: str, keep: Iterable[str]) -> None:
        """Clear every owner starting with `prefix` that is not in `keep` (a stage deleted
        in Directus takes its problems with it)."""
        kept = set(keep)
        for owner in [o for o in self._by_owner if o.startswith(prefix) and o not in kept]:
            self.clear(owner)
        for owner in [o for o in self._due if o.startswith(prefix) and o not in kept]:
            self._due.pop(owner, None)
            self._backoffs.pop(owner, None)

    def has(self, owner: str) -> bool:
        return owner in self._by_owner

    def owners(self) -> list[str]:
        return sorted(self._by_owner)

    def problems(self) -> list[Problem]:
        return [p for owner in sorted(self._by_owner) for p in self._by_owner[owner]]


class _DomainMetrics(Protocol):
    @property
    def domain_stage_errors(self) -> _Counter: ...

    @property
    def domain_problems(self) -> _Gauge: ...


def metrics_health(metrics: _DomainMetrics, *, retry_initial_s: float) -> DomainHealth:
    """The domain's problem registry counting into `metrics`; a failed stage or feature is
    tried again after `retry_initial_s` (the refresh interval), doubling to 5 minutes."""
    return DomainHealth(
        metrics.domain_stage_errors,
        metrics.domain_problems,
        retry_initial_s=retry_initial_s,
        retry_max_s=max(300.0, retry_initial_s),
    )
