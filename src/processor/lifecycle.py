"""Stopping loops and reading what ended them: the two lifecycle idioms every task shares.

`Stopper` is a request to stop, shared by a loop and whoever stops it: a flag to test between
steps, a way to wait for the request, and pauses (between refreshes, between retries) that the
request cuts short, so a drain never waits out a timer. By convention `request_stop()` asks and
returns at once; an `async stop()` asks *and waits* until the component has stopped.

`leaves` flattens what a nursery raised (exception groups, nested) into the exceptions inside.
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

    async def wait_for(self, event: trio.Event) -> bool:
        """Wait for `event` or a stop request, whichever comes first; True when `event` is
        set."""
        async with trio.open_nursery() as nursery:

            async def give_up_on_stop() -> None:
                await self._requested.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(give_up_on_stop)
            await event.wait()
            nursery.cancel_scope.cancel()
        return event.is_set()

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


def leaves(failure: BaseException) -> list[BaseException]:
    """The exceptions inside `failure`, exception groups flattened, in order."""
    if isinstance(failure, BaseExceptionGroup):
        return [leaf for inner in failure.exceptions for leaf in leaves(inner)]
    return [failure]


def leaf_types(failure: BaseException) -> list[str]:
    """The sorted, distinct type names of `failure`'s leaves (never their messages, which may
    carry credentials or data)."""
    return sorted({type(leaf).__name__ for leaf in leaves(failure)})
