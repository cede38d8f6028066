"""Steady load for fault tests: a workload with duplicates, published at a fixed pace."""

from __future__ import annotations

import random
from typing import Any

import redis
import trio

from tests.support.fixes import fix, key_of, publish


def workload(
    total: int, *, devices: int = 200, duplicate_share: float = 0.04, seed: int = 1
) -> list[dict[str, Any]]:
    """`total` fixes of `devices` devices, about `duplicate_share` of them exact redeliveries."""
    rng = random.Random(seed)
    documents: list[dict[str, Any]] = []
    second = 0
    while len(documents) < total:
        if documents and rng.random() < duplicate_share:
            documents.append(dict(rng.choice(documents[-5000:])))
            continue
        documents.append(fix(f"dev{second % devices:04d}", second, lat=41.3, lon=19.8))
        second += 1
    return documents


def distinct_keys(documents: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {key_of(d) for d in documents}


class Publisher:
    """Publishes documents in chunks every `interval_s`; `published` maps entry id -> document.

    The last chunk is held back until `release()`: a fault test that needs the load to outlast
    its faults says when they are over, instead of hoping the pace outlasts them on a busy
    machine (a slow start-up under load once let the whole load finish before the last kill).
    """

    def __init__(
        self, client: redis.Redis, stream: str, documents: list[dict[str, Any]], *, chunk: int,
        interval_s: float,
    ) -> None:  # fmt: skip
        self.client = client
        self.stream = stream
        self.documents = documents
        self.chunk = chunk
        self.interval_s = interval_s
        self.published: dict[str, dict[str, Any]] = {}
        self.done = trio.Event()
        self._released = trio.Event()

    def release(self) -> None:
        """Let the last chunk go (the faults are over)."""
        self._released.set()

    async def run(self) -> None:
        starts = range(0, len(self.documents), self.chunk)
        for start in starts:
            if start == starts[-1]:
                await self._released.wait()
            part = self.documents[start : start + self.chunk]
            ids = await trio.to_thread.run_sync(publish, self.client, self.stream, part)
            self.published.update(zip(ids, part, strict=True))
            await trio.sleep(self.interval_s)
        self.done.set()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.published)
