"""Live access with a lifetime: each session's periodic re-check against Directus.

A session is one credential and every open connection that presented it; one task per session
re-checks it every `LIVE_WS_REAUTH_S` (jittered), whatever its number of connections and
subscriptions (docs/websocket.md, Session lifetime). Invariants: an expired or revoked session
closes its connections with 4001; a lost event permission removes that subscription only; a
Directus outage drops nobody before `GRACE_CHECKS` failed re-checks in a row (then 4002); a
re-check that raises is logged and counted, never escapes. Details: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

import structlog
import trio

from processor.codecs.race_feed import ALERT, RESULTS, TIMING, VIOLATION
from processor.live.auth import AuthOutcome, Credentials, Directus, Verdict
from processor.live.protocol import TOPIC_PREFIX
from processor.live.registry import Grants
from processor.observability.metrics import Metrics

log = structlog.get_logger("processor.live.session")

# frame kind -> the Directus collection a session must be able to read to receive it
RACE_COLLECTIONS: Mapping[str, str] = {
    TIMING: "timing_records",
    RESULTS: "stage_results",
    VIOLATION: "speed_violations",
    ALERT: "alerts",
}
SESSION_EXPIRED, REAUTH_UNAVAILABLE = 4001, 4002
GRACE_CHECKS = 3  # unanswered re-checks in a row before the session's connections are closed
JITTER = 0.25  # each wait is drawn from [1 - JITTER, 1] x LIVE_WS_REAUTH_S
GRANTS_FRESH_S = 5.0
RECHECKS_AT_ONCE = 16


class Member(Protocol):
    """A connection, as its session sees it."""

    def topics(self) -> Collection[str]:
        """The topics it is subscribed to."""

    def revoke(self, topic: str) -> bool:
        """Remove a subscription no longer authorized, telling the client (False: not
        subscribed any more)."""

    def request_close(self, code: int, reason: str) -> None:
        """Close the connection with `code` (returns at once)."""


# A generator of its own: the global `random` state stays the caller's.
_JITTER = random.Random()  # noqa: S311 - jitter, not a secret


class Session:
    def __init__(
        self,
        credentials: Credentials,
        *,
        directus: Directus,
        metrics: Metrics,
        period_s: float,
        limiter: trio.CapacityLimiter,
        jitter: Callable[[], float] = _JITTER.random,
    ) -> None:
        self.credentials = credentials
        self.members: set[Member] = set()
        self.grants = Grants()
        self.failures = 0  # unanswered re-checks in a row
        self.ended = False
        self._directus = directus
        self._metrics = metrics
        self._period_s = period_s
        self._limiter = limiter
        self._jitter = jitter
        self._scope = trio.CancelScope()
        self._grants_lock = trio.Lock()

    def close(self) -> None:
        """Stop re-checking (its last connection is gone); safe before `run` started."""
        self._scope.cancel()

    def next_wait(self) -> float:
        return self._period_s * (1 - JITTER * self._jitter())

    async def run(self) -> None:
        with self._scope:
            while not self.ended:
                await trio.sleep(self.next_wait())
                async with self._limiter:
                    try:
                        await self.recheck()
                    except Exception:  # the boundary: one session, logged and counted
                        self._metrics.live_reauth.labels("error").inc()
                        log.exception("live session re-check failed")

    async def race_kinds(self) -> frozenset[str] | None:
        """The race-control kinds this session may receive, read from Directus unless read
        less than GRANTS_FRESH_S ago; None when Directus could not say (fail closed)."""
        async with self._grants_lock:
            if trio.current_time() - self.grants.read_at < GRANTS_FRESH_S:
                return self.grants.kinds
            verdicts = await self._directus.collection_access(
                self.credentials, RACE_COLLECTIONS.values()
            )
            if any(v is Verdict.UNAVAILABLE for v in verdicts.values()):
                return None
            self._grant(verdicts)
            return self.grants.kinds

    async def recheck(self) -> None:
        """One re-check of the session (module docstring)."""
        outcome, _user = await self._directus.authenticate(self.credentials)
        if outcome is AuthOutcome.UNAUTHORIZED:
            await self._expired()
            return
        if outcome is AuthOutcome.UNAVAILABLE:
            await self._unanswered()
            return
        subscribed = {member: list(member.topics()) for member in list(self.members)}
        events = {topic[len(TOPIC_PREFIX) :] for topics in subscribed.values() for topic in topics}
        if events:
            verdict, readable = await self._directus.readable_events(self.credentials, events)
            collections = await self._directus.collection_access(
                self.credentials, RACE_COLLECTIONS.values()
            )
            verdicts = [verdict, *collections.values()]
            if Verdict.EXPIRED in verdicts:
                await self._expired()
                return
            if Verdict.UNAVAILABLE in verdicts:
                await self._unanswered()
                return
            for member, topics in subscribed.items():
                for topic in topics:
                    if topic[len(TOPIC_PREFIX) :] not in readable and member.revoke(topic):
                        self._metrics.live_revocations.labels("event_forbidden").inc()
            self._grant(collections)
        self.failures = 0
        self._metrics.live_reauth.labels("ok").inc()

    def _grant(self, verdicts: Mapping[str, Verdict]) -> None:
        self.grants.kinds = frozenset(
            kind
            for kind, collection in RACE_COLLECTIONS.items()
            if verdicts.get(collection) is Verdict.ALLOWED
        )
        self.grants.read_at = trio.current_time()

    async def _expired(self) -> None:
        self._metrics.live_reauth.labels("expired").inc()
        log.info("live session expired or revoked", connections=len(self.members))
        await self._end(SESSION_EXPIRED, "session expired", "session_expired")

    async def _unanswered(self) -> None:
        self.failures += 1
        self._metrics.live_reauth.labels("unavailable").inc()
        if self.failures >= GRACE_CHECKS:
            log.warning("live session could not be re-checked; closing", failures=self.failures)
            await self._end(REAUTH_UNAVAILABLE, "authorization unavailable", "reauth_unavailable")

    async def _end(self, code: int, reason: str, label: str) -> None:
        self.ended = True
        for member in list(self.members):
            self._metrics.live_revocations.labels(label).inc()
            member.request_close(code, reason)
