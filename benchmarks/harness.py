"""What every phase of the benchmark shares: the corpus's seed and sizes, fresh schemas and
streams, the daemon under test as a subprocess, and waiting for a consumer group to catch up.

A phase module imports this one and never `benchmarks.run` (the CLI that orders the phases):
import-linter enforces it. Everything a run creates is named after its tag and dropped at the
end unless `--keep`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import psycopg
import redis
import trio

from benchmarks.daemon import Daemon
from processor.config import load_config
from processor.store.migrations import apply_migrations, default_directory, load_migrations
from processor.store.postgres import with_search_path
from processor_dev.publisher import MAX_CHUNK, Published, publish, xadd_chunk
from processor_dev.simulate import Entry, Quirks

CHECKOUT = Path(__file__).resolve().parents[1]
SEED = 20260512
START = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
NO_QUIRKS = Quirks(late=0, duplicate=0, zero_satellites=0, event=0, sentinels=0)


@attrs.frozen
class Sizes:
    fixes: int  # pre-generated fixes written by every contender
    devices: int  # cars producing them
    steady_rate: float  # fixes/s of the latency phase (and the load during the drain)
    steady_s: float
    state_devices: int  # distinct devices of the memory phase
    drain_after_s: float  # load before SIGTERM
    live_window_s: float  # each window of the live phase


FULL = Sizes(200_000, 1_000, 2_000.0, 60.0, 100_000, 5.0, 30.0)
QUICK = Sizes(20_000, 100, 2_000.0, 10.0, 10_000, 2.0, 10.0)


def say(message: str) -> None:
    """Progress on stderr: stdout carries only the final table."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def caught_up(client: redis.Redis, stream: str, group: str) -> bool:
    """The group has read every entry of the stream and acked every one it read."""
    for info in client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return int(info["pending"]) == 0 and int(info.get("lag") or 0) == 0
    return False


def behind(client: redis.Redis, stream: str, group: str) -> int:
    """Entries the group has not finished with: not yet read plus read and not acked."""
    for info in client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return int(info.get("lag") or 0) + int(info["pending"])
    return 0


class Bench:
    """One run's servers, settings and results, and the fixtures it created (to drop them)."""

    def __init__(
        self, redis_url: str, database_url: str, sizes: Sizes, settings: dict[str, str]
    ) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.sizes = sizes
        self.settings = settings
        self.config = load_config({"INSTANCE_ID": "bench", **settings})
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=30)
        self.tag = uuid.uuid4().hex[:8]
        self.schemas: list[str] = []
        self.streams: list[str] = []
        self.results: dict[str, Any] = {}
        self.keep = False
        self.repeat = 1

    def schema(self, name: str) -> str:
        """A fresh schema with the processor's migrations applied; returns its URL."""
        schema = f"bench_{name}_{self.tag}"
        url = with_search_path(self.database_url, schema)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        with psycopg.connect(url) as conn:
            apply_migrations(conn, load_migrations(default_directory()))
        return url

    def stream(self, name: str) -> str:
        key = f"bench:{self.tag}:{name}"
        self.streams.append(key)
        return key

    def preload(self, stream: str, payloads: Sequence[bytes]) -> None:
        """Every payload into the stream before the contender starts: a full backlog."""
        for offset in range(0, len(payloads), MAX_CHUNK):
            xadd_chunk(self.redis, stream, payloads[offset : offset + MAX_CHUNK])

    def publish(
        self, stream: str, source: Iterable[Entry], rate: float, duration_s: float | None = None
    ) -> Published:
        """Publish the simulator's fixes at `rate` (for `duration_s`, or until cancelled), on a
        client of its own."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        try:
            return trio.run(
                lambda: publish(client, stream, source, rate=rate, duration_s=duration_s)
            )
        finally:
            client.close()

    @contextlib.asynccontextmanager
    async def publishing(
        self, stream: str, source: Iterable[Entry], rate: float
    ) -> AsyncIterator[None]:
        """Publish at `rate` in the background for as long as the block runs (within trio.run)."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: publish(client, stream, source, rate=rate))
                yield
                nursery.cancel_scope.cancel()
        finally:
            client.close()

    def daemon(
        self,
        url: str,
        stream: str,
        extra: dict[str, str] | None = None,
        module: Sequence[str] = ("processor.cli", "run"),
        prefix: Sequence[str] = (),
    ) -> Daemon:
        env = {
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": url,
            "REDIS_STREAM": stream,
            "INSTANCE_ID": f"bench-{self.tag}",
            "HTTP_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            # `benchmarks.minimal` runs from the checkout, wherever the benchmark was started
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p
            ),
            **self.settings,
            **(extra or {}),
        }
        return Daemon(env, module, prefix)

    def wait_caught_up(
        self,
        stream: str,
        timeout_s: float,
        *,
        group: str = "processor",
        interval_s: float = 0.01,
        daemon: Daemon | None = None,
    ) -> float:
        """Poll until the group has read and acked everything; returns the epoch time seen."""
        deadline = time.monotonic() + timeout_s
        while not caught_up(self.redis, stream, group):
            if daemon is not None and daemon.proc.poll() is not None:
                raise RuntimeError("the contender died:\n" + "\n".join(daemon.log_tail))
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {group} did not catch up on {stream} in {timeout_s}s")
            time.sleep(interval_s)
        return time.time()

    def rows(self, url: str) -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM positions").fetchone()
            return int(row[0]) if row else 0

    def check_rows(self, name: str, url: str, expected: int) -> None:
        stored = self.rows(url)
        if stored != expected:
            raise RuntimeError(f"{name} stored {stored} rows, expected {expected}")

    def cleanup(self) -> None:
        if self.keep:
            say(f"kept schemas {', '.join(self.schemas)} and streams {', '.join(self.streams)}")
            return
        if self.streams:
            derived = [k for s in self.streams for k in self.redis.scan_iter(match=f"{s}:*")]
            self.redis.delete(*self.streams, *derived)  # e.g. the race feed
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.redis.close()


@contextlib.contextmanager
def bench(
    redis_url: str, database_url: str, sizes: Sizes, settings: dict[str, str]
) -> Iterator[Bench]:
    runner = Bench(redis_url, database_url, sizes, settings)
    try:
        yield runner
    finally:
        runner.cleanup()
