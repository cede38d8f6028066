"""Redis clients with explicit bounds.

redis-py's defaults (a 5 s socket timeout plus internal retries) would either cut a long `BLOCK`
read short or hide an outage behind silent retries. Every client here has its own socket timeout
above the longest blocking call it makes and no internal retries: our own loops own retrying.
"""

from __future__ import annotations

from typing import Any

import redis
import structlog
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from processor.store.retry import REDIS_TRANSIENT_ERRORS, connect_with_retry

log = structlog.get_logger("processor.redis")

COMMAND_TIMEOUT_S = 5.0
TRANSIENT_ERRORS = REDIS_TRANSIENT_ERRORS  # the classification lives in store/retry.py


def make_client(url: str, *, socket_timeout_s: float = COMMAND_TIMEOUT_S) -> redis.Redis:
    """A client (with its own small pool) whose calls return or fail within `socket_timeout_s`."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=3.0,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=False,
    )


async def wait_for_redis(client: redis.Redis, *, deadline_s: float) -> None:
    """PING with capped backoff until Redis answers (each attempt logged) or the deadline."""
    await connect_with_retry("redis", client.ping, TRANSIENT_ERRORS, deadline_s=deadline_s)


async def call(client: redis.Redis, method: str, *args: Any, **kwargs: Any) -> Any:
    """Run one redis-py command in a worker thread."""
    return await trio.to_thread.run_sync(lambda: getattr(client, method)(*args, **kwargs))


async def ensure_group(client: redis.Redis, stream: str, group: str, start_id: str = "0") -> None:
    """Create the consumer group with MKSTREAM; an existing group is fine (BUSYGROUP)."""
    try:
        await call(client, "xgroup_create", stream, group, id=start_id, mkstream=True)
        log.info("consumer group created", stream=stream, group=group, start=start_id)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def unblock(control: redis.Redis, client_id: int | None) -> None:
    """Make a `BLOCK` read on connection `client_id` return now (`CLIENT UNBLOCK`), so stopping
    a reader does not wait out its block time. Best effort and bounded: on failure the read
    still returns within its own block time."""
    if client_id is None:
        return
    try:
        with trio.move_on_after(2):
            await call(control, "execute_command", "CLIENT", "UNBLOCK", client_id)
    except TRANSIENT_ERRORS as exc:
        log.warning("could not unblock a stream read", error=str(exc)[:200])
