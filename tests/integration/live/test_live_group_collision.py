"""The live broadcaster never reads, resets or destroys a group it did not create (item 3).

`REDIS_GROUP=live-x` with `INSTANCE_ID=x` made the broadcaster read the durable group with NOACK
and reset it to `$`: records were lost with nothing pending. The plain collision is refused by
the configuration (exit 2, one line); a group of that name created by anything else (another
deployment's durable group) is refused at start, untouched. A leftover of this broadcaster's own
crashed predecessor is still reset to `$`, so browsers are not sent history.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from processor.config import ConfigError, load_config
from tests.support.daemon import Daemon
from tests.support.directus import DirectusStandIn
from tests.support.fixes import fix, publish, row_count
from tests.support.metrics import sample
from tests.support.service import running_service, spawn_processor, wait_until


def group_info(client: redis.Redis, stream: str, group: str) -> dict[str, object]:
    info = next(g for g in client.xinfo_groups(stream) if g["name"] == group.encode())
    return {k: info[k] for k in ("consumers", "pending", "last-delivered-id")}


def test_config_refuses_a_live_group_named_like_the_durable_group() -> None:
    env = {"REDIS_GROUP": "live-x", "INSTANCE_ID": "x", "DIRECTUS_URL": "http://directus:8055"}
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert str(caught.value) == (
        "invalid LIVE_GROUP_PREFIX='live': the live group LIVE_GROUP_PREFIX-INSTANCE_ID='live-x'"
        " is the durable group REDIS_GROUP='live-x'; expected a prefix that makes them differ"
    )
    # Without live broadcast there is no live group, hence nothing to collide with.
    load_config({k: v for k, v in env.items() if k != "DIRECTUS_URL"})
    # Another prefix separates them.
    assert load_config(env | {"LIVE_GROUP_PREFIX": "browsers"}).live_group == "browsers-x"


def test_cli_refuses_the_collision_with_exit_2_and_one_line() -> None:
    process = spawn_processor(
        {"REDIS_GROUP": "live-x", "INSTANCE_ID": "x", "DIRECTUS_URL": "http://directus:8055"}
    )
    stdout, stderr = process.communicate(timeout=30)
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert process.returncode == 2, stderr.decode()
    assert len(lines) == 1 and lines[0].startswith(
        "processor: configuration error: invalid LIVE_GROUP_PREFIX='live'"
    ), lines
    assert stdout == b""


async def test_a_foreign_group_with_the_live_name_is_refused_untouched(
    live_env: dict[str, str],
    directus: DirectusStandIn,
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Another deployment's durable group happens to be called `live-<our id>`."""
    instance = live_env["INSTANCE_ID"]
    foreign = f"live-{instance}"
    publish(redis_client, stream_key, [fix("a1", i) for i in range(10)])
    redis_client.xgroup_create(stream_key, foreign, id="0")
    redis_client.xreadgroup(foreign, "their-worker", {stream_key: ">"}, count=4)
    publish(redis_client, stream_key, [fix("a1", 10 + i) for i in range(5)])
    before = group_info(redis_client, stream_key, foreign)

    daemon = Daemon(live_env, tmp_path / "processor.log")
    try:
        code = await daemon.wait_exit(within=30)
    finally:
        daemon.close()
    assert code == 2, daemon.tail()
    lines = [line for line in daemon.tail().splitlines() if line.startswith("processor:")]
    assert len(lines) == 1 and foreign in lines[0] and "is not this instance's" in lines[0]
    assert group_info(redis_client, stream_key, foreign) == before  # neither reset nor destroyed
    assert redis_client.xpending(stream_key, foreign)["pending"] == 4


async def test_a_crashed_predecessors_live_group_is_reset_to_now(
    live_env: dict[str, str],
    directus: DirectusStandIn,
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
) -> None:
    """This broadcaster's own leftover (its consumer only, nothing pending) is taken over at
    `$`: the history since the crash is stored, not replayed to browsers."""
    from processor.store.live_group import take_live_group

    instance = live_env["INSTANCE_ID"]
    group = f"live-{instance}"
    assert take_live_group(redis_client, stream_key, group, instance) == "created"
    publish(redis_client, stream_key, [fix("a1", i) for i in range(20)])  # while "crashed"
    async with running_service(live_env) as service:
        assert service.live is not None
        await wait_until(lambda: row_count(database_url) == 20)
        info = group_info(redis_client, stream_key, group)
        assert info["last-delivered-id"] == redis_client.xinfo_stream(stream_key)["last-entry"][0]
        assert sample(service, "processor_live_entries_read_total") == 0
