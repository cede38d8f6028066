"""Running a processor in-process (a Service in a nursery) or as a `processor run` subprocess,
and the `rig` fixture: what such a processor runs against."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import pytest
import redis
import trio

from processor.app import Service
from processor.config import load_config
from processor.observability.logging import configure_logging
from tests.support.fixes import assert_acked_have_rows, pending_count, publish, row_count


@asynccontextmanager
async def running_service(env: Mapping[str, str], *, drain: bool = True) -> AsyncIterator[Service]:
    """A Service started in a child nursery; drained when the block ends, or with `drain=False`
    cancelled instead: like SIGKILL, whatever it holds stays pending in Redis."""
    config = load_config(env)
    configure_logging(config.log_level, config.log_format)
    service = Service(config)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await nursery.start(service.run)
        try:
            yield service
        finally:
            if drain:
                service.request_stop()
            else:
                nursery.cancel_scope.cancel()


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


@attrs.frozen
class Rig:
    """What an end-to-end test runs a processor against: its environment, its own stream in
    Redis and its own schema in PostgreSQL. One fixture, because nearly every such test needs
    all four and spelled them out in its signature."""

    env: dict[str, str]
    redis: redis.Redis
    stream_key: str
    database_url: str

    def service(self, **settings: str) -> AbstractAsyncContextManager[Service]:
        """`running_service` on this rig's environment with `settings` on top."""
        return running_service({**self.env, **settings})

    def publish(self, documents: Iterable[Any]) -> list[str]:
        return publish(self.redis, self.stream_key, documents)

    def rows(self) -> int:
        return row_count(self.database_url)

    def pending(self) -> int:
        return pending_count(self.redis, self.stream_key)

    def assert_acked_have_rows(self, published: dict[str, dict[str, Any]]) -> int:
        """`fixes.assert_acked_have_rows` on this rig's stream and schema."""
        return assert_acked_have_rows(self.redis, self.stream_key, self.database_url, published)


@pytest.fixture(name="rig")
def rig_fixture(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> Rig:
    """Imported by the test modules that use it (conftest.py does not list it)."""
    return Rig(env, redis_client, stream_key, database_url)
