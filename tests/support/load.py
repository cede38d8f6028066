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
    """Publishes documents in chunks every `interval_s`; `published` maps entry id -> document."""

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

    async def run(self) -> None:
        for start in range(0, len(self.documents), self.chunk):
            part = self.documents[start : start + self.chunk]
            ids = await trio.to_thread.run_sync(publish, self.client, self.stream, part)
            self.published.update(zip(ids, part, strict=True))
            await trio.sleep(self.interval_s)
        self.done.set()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.published)
