"""Running a processor in-process (a Service in a nursery) or as a `processor run` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import trio

from processor.app import Service
from processor.config import load_config
from processor.observability.logging import configure_logging


@asynccontextmanager
async def running_service(env: Mapping[str, str]) -> AsyncIterator[Service]:
    """A Service started in a child nursery; drained (not cancelled) when the block ends."""
    config = load_config(env)
    configure_logging(config.log_level, config.log_format)
    service = Service(config)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await nursery.start(service.run)
        try:
            yield service
        finally:
            await service.stop()


async def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float = 30,  # noqa: ASYNC109 - a deadline is this helper's whole point
    interval: float = 0.05,
) -> None:
    """Poll a sync predicate (run in a thread: it may do blocking I/O) until it is true.

    Polling is deliberate: the state lives in Redis and PostgreSQL, which cannot notify us.
    """
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(predicate):  # noqa: ASYNC110
            await trio.sleep(interval)


def spawn_processor(env: Mapping[str, str], *args: str) -> subprocess.Popen[bytes]:
    """`processor run` (or another command) as a real subprocess with `env` on top of ours."""
    full_env = {**os.environ, **env}
    return subprocess.Popen(
        [sys.executable, "-m", "processor.cli", *(args or ("run",))],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
