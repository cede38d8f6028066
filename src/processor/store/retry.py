"""One retry helper, and the one classification of which failures are worth retrying.

Every loop that retries an outside call (the writer's writes and acks, the connect loops at
start-up, the group reader's stream reads) goes through `retry_in_thread`: capped exponential
backoff with jitter, each failed attempt logged under a constant event name with the operation
as a field, and the return to health logged once. What a failure *means* is decided by
`classify` alone (database errors through `db_errors.classify`, Redis connection errors as
transient); a caller may put its own classification in front (the writer's dead-letter refusal).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import attrs
import redis
import structlog
import trio

from processor.store import db_errors

log = structlog.get_logger("processor.retry")

T = TypeVar("T")

# Redis errors meaning "the server or the path to it is gone for now" (store/redis.py re-exports
# this tuple as TRANSIENT_ERRORS; it is here so that the classification lives in one module).
REDIS_TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    ConnectionError,
    OSError,
)

# Event names (constant, so that logs can be searched and tests read fields, not text).
RETRYING = "operation failed, retrying"
STALLED = "operation keeps failing, retrying"
RECOVERED = "operation succeeded again"
CONNECTED = "connected"

# Jitter from a generator of its own: the service never moves the global `random` state that the
# code around it (a seeded simulation, a property-test engine) may rely on.
_JITTER = random.Random()  # noqa: S311 - jitter, not a secret


@attrs.define
class Backoff:
    """Delays of initial, 2x, 4x ... capped at `max_s`, each with +-20% jitter.

    The jitter keeps several instances that lost the same server from retrying in lockstep.
    """

    initial_s: float
    max_s: float
    attempts: int = 0

    def next_delay(self) -> float:
        self.attempts += 1
        base = min(self.max_s, self.initial_s * float(2 ** min(self.attempts - 1, 30)))
        jitter = _JITTER.uniform(0.8, 1.2)
        return base * jitter

    def reset(self) -> None:
        self.attempts = 0


@attrs.frozen
class Failure:
    """A failed attempt worth retrying: one line for logs and `/readyz`, and whether it is
    persistent (nothing transient about it: reported as a stall once it repeats)."""

    error: str
    persistent: bool = False


class Unavailable(RuntimeError):
    """A server did not answer within the start-up deadline (one line for the operator)."""


def classify(exc: Exception) -> Failure | None:
    """The one classification: a Failure to retry, or None for an error retrying cannot fix
    (a data refusal, or anything unexpected -- a bug must stop the service loudly)."""
    if isinstance(exc, db_errors.DATABASE_ERRORS):
        kind = db_errors.classify(exc)
        if kind is db_errors.Kind.DATA:
            return None
        return Failure(db_errors.describe(exc), persistent=kind is db_errors.Kind.PERSISTENT)
    if isinstance(exc, REDIS_TRANSIENT_ERRORS):
        return Failure(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    return None


async def retry_in_thread(
    operation: str,
    call: Callable[[], T],
    *,
    backoff: Backoff,
    classify_failure: Callable[[Exception], Failure | None] = classify,
    on_failure: Callable[[Failure], None] = lambda _failure: None,
    on_recovery: Callable[[], None] = lambda: None,
    stall_after: int | None = None,
    pause: Callable[[float], Awaitable[None]] = trio.sleep,
    context: Mapping[str, object] | None = None,
) -> T:
    """Run the blocking `call` in a worker thread until it succeeds.

    A failure that `classify_failure` maps to None propagates unchanged. Any other is logged
    (`RETRYING`, or `STALLED` at error once a persistent failure repeats `stall_after` times),
    handed to `on_failure` and retried after `pause(delay)` (a caller that can be stopped
    passes a pause that raises). Success after failures calls `on_recovery`, logs `RECOVERED`
    and resets `backoff`. `context` adds fields to every log line (e.g. the group read).
    """
    while True:
        try:
            result = await trio.to_thread.run_sync(call)
        except Exception as exc:
            failure = classify_failure(exc)
            if failure is None:
                raise
        else:
            if backoff.attempts:
                on_recovery()
                log.info(
                    RECOVERED,
                    **(context or {}),
                    operation=operation,
                    after_attempts=backoff.attempts,
                )
                backoff.reset()
            return result
        delay = backoff.next_delay()
        on_failure(failure)
        fields = {
            **(context or {}),
            "operation": operation,
            "attempt": backoff.attempts,
            "error": failure.error,
            "retry_in_s": round(delay, 2),
        }
        if failure.persistent and stall_after is not None and backoff.attempts >= stall_after:
            log.error(STALLED, **fields)
        else:
            log.warning(RETRYING, **fields)
        await pause(delay)


async def connect_with_retry(
    what: str,
    attempt: Callable[[], object],
    errors: tuple[type[Exception], ...],
    *,
    deadline_s: float,
) -> None:
    """Run the blocking `attempt` until it succeeds (each failure logged as `RETRYING` with
    `operation="<what> connect"`), then log `CONNECTED`.

    At start-up every error of `errors` is worth another try (a wrong password too: the
    operator may be fixing it); past `deadline_s` raise Unavailable naming the last error.
    """
    last_error = "no attempt finished"

    def failed(exc: Exception) -> Failure | None:
        return Failure(" ".join(str(exc).split())[:200]) if isinstance(exc, errors) else None

    def remember(failure: Failure) -> None:
        nonlocal last_error
        last_error = failure.error

    with trio.move_on_after(deadline_s):
        await retry_in_thread(
            f"{what} connect",
            attempt,
            backoff=Backoff(initial_s=0.2, max_s=5.0),
            classify_failure=failed,
            on_failure=remember,
        )
        log.info(CONNECTED, server=what)
        return
    raise Unavailable(f"{what} not reachable within {deadline_s:g} s: {last_error}")
