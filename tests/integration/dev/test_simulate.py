"""The simulator's publisher and command against a real Redis (the simulation itself:
tests/unit/dev/test_simulate.py)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import orjson
import redis
import trio

from processor_dev.publisher import publish
from processor_dev.simulate import Quirks, Scenario, Simulator
from tests.support.proxy import tcp_proxy
from tests.unit.dev.test_simulate import START, entries


async def test_publish_adds_every_entry_to_a_real_stream(
    redis_client: redis.Redis, stream_key: str
) -> None:
    sample = entries(500)
    with trio.fail_after(20):
        result = await publish(redis_client, stream_key, sample, rate=None, count=300)
    assert result.sent == 300
    stored = redis_client.xrange(stream_key)
    assert [fields[b"payload"] for _id, fields in stored] == [e.payload for e in sample[:300]]


async def test_publish_keeps_the_rate(redis_client: redis.Redis, stream_key: str) -> None:
    scenario = Scenario(devices=10, rate=500.0, seed=1, start=START)
    with trio.fail_after(20):
        result = await publish(redis_client, stream_key, Simulator(scenario), rate=500.0, count=400)
    assert result.sent == 400
    assert redis_client.xlen(stream_key) == 400
    assert 0.7 <= result.elapsed_s <= 1.2  # 400 at 500/s: the last one is due at 0.8 s


def _simulate(redis_url: str, stream: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "processor.cli", "simulate", "--stream", stream, *args],
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_simulate_command_publishes_count_entries(
    redis_server_url: str, redis_client: redis.Redis, stream_key: str
) -> None:
    proc = _simulate(redis_server_url, stream_key, "--count", "250", "--unpaced", "--seed", "3")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert redis_client.xlen(stream_key) == 250
    first = redis_client.xrange(stream_key, count=1)[0][1][b"payload"]
    assert orjson.loads(first)["device_id"].isdigit()
    assert b"published 250 fixes" in err
    # 250 fixes at the default 100/s span 2.5 simulated seconds; published unpaced, they must
    # end about now, not in the future (where FUTURE_TOLERANCE_S would flag them faulty).
    latest = max(
        datetime.fromisoformat(orjson.loads(fields[b"payload"])["timestamp"])
        for _id, fields in redis_client.xrange(stream_key)
    )
    assert latest <= datetime.now(UTC) + timedelta(seconds=1)


def test_simulate_command_stops_cleanly_on_ctrl_c(
    redis_server_url: str, redis_client: redis.Redis, stream_key: str
) -> None:
    proc = _simulate(redis_server_url, stream_key, "--rate", "200", "--devices", "5")
    try:
        deadline = time.monotonic() + 20
        while redis_client.xlen(stream_key) == 0:
            assert time.monotonic() < deadline, "the simulator published nothing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    published = int(err.decode().rsplit("published ", 1)[1].split(" ", 1)[0].replace(",", ""))
    assert published == redis_client.xlen(stream_key)


async def test_a_chunk_whose_connection_was_refused_is_sent_again_exactly_once(
    redis_server_url: str, redis_client: redis.Redis, stream_key: str
) -> None:
    """Upstream keeps publishing through a moment with no server (here refused; in the compose
    test, DNS failing while a removed container's network is reconfigured): every entry
    arrives, none twice, because only a chunk that cannot have been sent is sent again."""
    scenario = Scenario(
        devices=5,
        rate=5.0,
        seed=7,
        start=START,
        quirks=Quirks(late=0, duplicate=0, zero_satellites=0, event=0, sentinels=0),
    )
    count = 40
    async with tcp_proxy(redis_server_url) as proxy:
        client = redis.Redis.from_url(proxy.url(redis_server_url), socket_timeout=5)
        await proxy.cut()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(publish, client, stream_key, Simulator(scenario), rate=None, count=count)
            )
            await trio.sleep(0.5)  # attempts refused meanwhile
            assert redis_client.xlen(stream_key) == 0
            await proxy.restore()
        client.close()
    payloads = [fields[b"payload"] for _, fields in redis_client.xrange(stream_key)]
    expected = [entry.payload for entry in itertools.islice(Simulator(scenario), count)]
    assert payloads == expected
