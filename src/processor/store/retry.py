"""Capped exponential backoff with jitter, shared by every retry loop."""

from __future__ import annotations

import random

import attrs


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
