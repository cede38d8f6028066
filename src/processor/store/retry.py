"""Capped exponential backoff with jitter, shared by every retry loop."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
import structlog
import trio

log = structlog.get_logger("processor.store")


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
        jitter: float = random.uniform(0.8, 1.2)
        return base * jitter

    def reset(self) -> None:
        self.attempts = 0


class Unavailable(RuntimeError):
    """A server did not answer within the start-up deadline (one line for the operator)."""


async def connect_with_retry(
    what: str,
    attempt: Callable[[], object],
    errors: tuple[type[Exception], ...],
    *,
    deadline_s: float,
) -> None:
    """Run the blocking `attempt` in a thread until it succeeds, logging each failure.

    Capped exponential backoff; past `deadline_s` raise Unavailable naming the last error.
    """
    backoff = Backoff(initial_s=0.2, max_s=5.0)
    last_error = "no attempt finished"
    with trio.move_on_after(deadline_s):
        while True:
            try:
                await trio.to_thread.run_sync(attempt)
            except errors as exc:
                last_error = " ".join(str(exc).split())[:200]
                delay = backoff.next_delay()
                log.warning(
                    f"{what} connect failed",
                    attempt=backoff.attempts,
                    error=last_error,
                    retry_in_s=round(delay, 2),
                )
                await trio.sleep(delay)
            else:
                log.info(f"{what} connected")
                return
    raise Unavailable(f"{what} not reachable within {deadline_s:g} s: {last_error}")
