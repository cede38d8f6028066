"""The liveness probe every attack test ends with: a fix published now is stored."""

from __future__ import annotations

import itertools
import uuid

import psycopg
import redis

from tests.support.fixes import fix, publish
from tests.support.service import wait_until

_seconds = itertools.count(1)


async def assert_ingesting(
    client: redis.Redis, stream: str, database_url: str, *, within: float = 30
) -> None:
    """Publish one fix of a fresh device and wait until its row is committed."""
    device = f"probe-{uuid.uuid4().hex[:10]}"
    publish(client, stream, [fix(device, next(_seconds))])

    def stored() -> bool:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM positions WHERE device_id = %s", (device,)
            ).fetchone()
        return bool(row and row[0] == 1)

    await wait_until(stored, timeout=within)
