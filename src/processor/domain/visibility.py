"""Has the durable pipeline stored these fixes yet? (The domain group's race with the writer.)

The engine evaluates a batch only once its (device_id, ts) keys are visible in `positions`,
else it would time a track lacking the very fix that triggered it. An entry the durable group
acked without a row was dead-lettered and is skipped at once; only when the durable group cannot
answer does `DOMAIN_VISIBILITY_TIMEOUT_MS` apply (past it the fix is skipped and counted). The
reasoning: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
import redis

PENDING_PAGE = 10_000

VISIBLE = """
SELECT p.device_id, p.ts, p.faulty
FROM unnest(%s::text[], %s::timestamptz[]) AS k(device_id, ts)
JOIN positions p ON p.device_id = k.device_id AND p.ts = k.ts
"""


def visible(
    conn: psycopg.Connection[Any], keys: Sequence[tuple[str, datetime]]
) -> dict[tuple[str, datetime], bool]:
    """(device_id, ts) -> faulty, for the keys whose rows are committed."""
    if not keys:
        return {}
    with conn.transaction():
        rows = conn.execute(VISIBLE, ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    return {(device_id, ts): bool(faulty) for device_id, ts, faulty in rows}


def _id_key(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def acked_by_durable(
    client: redis.Redis, stream: str, group: str, entry_ids: Sequence[str]
) -> set[str]:
    """The entries of `entry_ids` that the durable group has delivered and acknowledged.

    One pipelined round trip: XINFO GROUPS (last-delivered-id) and XPENDING over the ids'
    range. A missing group answers "none" (the caller falls back to its timeout).
    """
    if not entry_ids:
        return set()
    ordered = sorted(entry_ids, key=_id_key)
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_groups(stream)
    pipe.xpending_range(stream, group, min=ordered[0], max=ordered[-1], count=PENDING_PAGE)
    try:
        groups, pending = pipe.execute()
    except redis.ResponseError:
        return set()
    info: Any = next((g for g in groups if g.get("name") in (group, group.encode())), None)
    if info is None:
        return set()
    last = _id_key(info["last-delivered-id"])
    if len(pending) >= PENDING_PAGE:
        return set()  # cannot tell from one page: leave it to the timeout
    still = {_decode(p["message_id"]) for p in pending}
    return {i for i in ordered if _id_key(i) <= last and i not in still}


def _decode(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
