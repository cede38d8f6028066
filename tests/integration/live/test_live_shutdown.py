"""Live broadcast lifecycle: off without DIRECTUS_URL, 1001 on SIGTERM, several instances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import redis
import trio

from tests.support.daemon import Daemon
from tests.support.directus import add_event
from tests.support.fixes import fix
from tests.support.live import (
    ORIGIN,
    TOKEN,
    LiveRig,
    close_code,
    live_client,
    receive,
    rejection_status,
    subscribe,
)
from tests.support.metrics import value
from tests.support.service import running_service, wait_until


def live_groups(client: redis.Redis, stream: str) -> set[str]:
    return {
        g["name"].decode()
        for g in client.xinfo_groups(stream)
        if g["name"].decode().startswith("live-")
    }


async def test_without_directus_url_live_is_off(env: dict[str, str]) -> None:
    async with running_service(env) as service:
        assert service.live is None
        assert service.live_port is None


async def test_sigterm_closes_clients_with_1001_and_exits_zero(
    live_rig: LiveRig,
    tmp_path: Path,
) -> None:
    event_id = add_event(live_rig.database_url, ["a1"])
    live_rig.directus.user(TOKEN, events={event_id})
    live_rig.directus.user("secret-cookie-value", events={event_id})
    env = {**live_rig.env, "LOG_LEVEL": "debug", "SHUTDOWN_TIMEOUT_S": "10"}
    daemon = Daemon(env, tmp_path / "processor.log")
    try:
        port = int((await daemon.wait_for("live broadcast listening"))["port"])
        await daemon.wait_for("ready")
        instance_group = f"live-{env['INSTANCE_ID']}"
        assert live_groups(live_rig.redis, live_rig.stream_key) == {instance_group}
        assert await rejection_status(port, token="secret-expired-token") == 401
        async with (
            live_client(port) as first,
            live_client(port, token=None, cookie="secret-cookie-value", origin=ORIGIN) as second,
        ):
            await subscribe(first, event_id)
            live_rig.publish([fix("a1", 1)])
            assert (await receive(first))["position"]["device_id"] == "a1"
            started = trio.current_time()
            daemon.terminate()
            async with trio.open_nursery() as nursery:
                codes: list[int] = []

                async def closed(ws: Any) -> None:
                    codes.append((await close_code(ws))[0])

                nursery.start_soon(closed, first)
                nursery.start_soon(closed, second)
            assert codes == [1001, 1001]
            assert await daemon.wait_exit(within=10) == 0
            assert trio.current_time() - started < 10
        assert live_rig.rows() == 1
        # A clean stop removes the instance's live group.
        assert live_groups(live_rig.redis, live_rig.stream_key) == set()
        log = (tmp_path / "processor.log").read_text()
        assert "live clients closed" in log
        for secret in (TOKEN, "secret-cookie-value", "secret-expired-token"):
            assert secret not in log
    finally:
        daemon.close()


async def test_each_instance_serves_every_position_to_its_clients(live_rig: LiveRig) -> None:
    """Two processors share the durable group (each fix stored once) but each broadcasts all."""
    event_id = add_event(live_rig.database_url, ["a1", "a2"])
    live_rig.directus.user(TOKEN, events={event_id})
    count = 300
    async with (
        running_service({**live_rig.env, "INSTANCE_ID": "alpha"}) as alpha,
        running_service({**live_rig.env, "INSTANCE_ID": "beta"}) as beta,
        live_client(alpha.live_port) as on_alpha,
        live_client(beta.live_port) as on_beta,
    ):
        assert live_groups(live_rig.redis, live_rig.stream_key) == {"live-alpha", "live-beta"}
        await subscribe(on_alpha, event_id)
        await subscribe(on_beta, event_id)
        live_rig.publish([fix(f"a{1 + i % 2}", i) for i in range(count)])
        for ws in (on_alpha, on_beta):
            with trio.fail_after(20):
                seen = [
                    (m["position"]["device_id"], m["position"]["ts"])
                    for m in [orjson.loads(await ws.get_message()) for _ in range(count)]
                ]
            assert len(set(seen)) == count
        await wait_until(lambda: live_rig.rows() == count)
    # Read once both have drained: a writer counts a batch's outcomes after the commit (and
    # the ack), so right after the last row became visible the counter could still lack it
    # (this read 299 once, with 300 rows stored and no fix processed twice).
    written = sum(value(s.metrics.position_writes.labels("inserted")) for s in (alpha, beta))
    assert written == count
    duplicates = sum(value(s.metrics.position_writes.labels("duplicate")) for s in (alpha, beta))
    assert duplicates == 0  # no fix was processed by both instances
