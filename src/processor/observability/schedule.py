"""A fixed-rate schedule that does not drift.

`sleep(interval)` after each sample would drift by the sample's own duration every round (a 5 s
interval with 200 ms samples ticks every 5.2 s), so dashboards would see a sawtooth of sampling
gaps. Here every tick is at `start + k * interval` on Trio's clock; a round that overruns skips
the ticks it missed instead of bunching samples up.
"""

from __future__ import annotations

import math

import trio


class FixedRate:
    """`await wait()` returns at `start + k * interval` for k = 0, 1, 2, ... (missed ticks are
    skipped; `skipped` counts them)."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval must be positive")
        self.interval_s = interval_s
        self.skipped = 0
        self._next: float | None = None

    async def wait(self) -> None:
        now = trio.current_time()
        if self._next is None:
            self._next = now
        else:
            self._next += self.interval_s
            if self._next < now:
                missed = math.ceil((now - self._next) / self.interval_s)
                self._next += missed * self.interval_s
                self.skipped += missed
        await trio.sleep_until(self._next)
