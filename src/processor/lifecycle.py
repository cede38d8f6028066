"""A request to stop, shared by a loop and whoever stops it.

Every long-lived loop needs the same three things: a flag to test between steps, a way to wait
for the request, and pauses (between refreshes, between retries) that the request cuts short so
a drain never waits out a timer. `Stopper` is those three, and nothing else.
"""

from __future__ import annotations

import trio


class StopRequested(Exception):
    """A stop was requested while a loop waited (`Stopper.pause_or_raise`)."""


class Stopper:
    def __init__(self) -> None:
        self._requested = trio.Event()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def request(self) -> None:
        """Ask the loop to stop (idempotent; returns at once)."""
        self._requested.set()

    async def wait(self) -> None:
        await self._requested.wait()

    async def pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`, less if a stop is requested; True when one was."""
        with trio.move_on_after(seconds):
            await self._requested.wait()
        return self.requested

    async def pause_or_raise(self, seconds: float) -> None:
        """`pause`, raising StopRequested when a stop was requested: the pause to hand to a
        retry helper, so that a stop ends the retrying."""
        if await self.pause(seconds):
            raise StopRequested
