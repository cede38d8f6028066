"""deploy/compose.yaml run for real by Debian's podman-compose (1.0.3), on images built from the
local base: the processor image, Redis from Debian's redis-server and PostgreSQL 15 with
TimescaleDB from ../shared/timescaledb (deploy/local/). The services talk over the project's
bridge network by name; nothing is published on the host, so the machine's 5432/6379 are not
touched. Each run is its own compose project (containers, network and volumes removed after).

Two instances share the stream (each fix stored once); then one is removed the hard way (SIGKILL,
as when its host dies or a scale-down does not wait for the drain) while it holds entries, and
the survivor reclaims them: every fix ends up stored, nothing stays pending, and the removed
instance's consumer, holding nothing any more, is deleted from the group by the survivor.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.container.engine import ROOT, Container, build, podman

COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
LOCAL = ROOT / "deploy" / "local"
TIMESCALEDB = Path(os.environ.get("TIMESCALEDB_DIR", ROOT.parent / "shared" / "timescaledb"))
FIXES = 30_000
RATE = 2_000  # fixes per second: 15 s of load, so a replica is removed while it still runs
NO_QUIRKS = ["--late", "0", "--duplicate", "0", "--zero-satellites", "0", "--event", "0"]
NO_QUIRKS += ["--sentinels", "0"]

# Test-only settings, merged over the compose file's (podman-compose merges `-f` files): a dead
# replica's entries are reclaimed within ~2.5 s, and each replica holds up to a second of reads
# in a batch, so the one removed under load certainly holds entries.
# Dead consumers are removed once idle 5 s (swept every second), so the removed replica's
# consumer is gone by the end of the test.
_INSTANCE_OVERRIDE = """\
    environment:
      RECLAIM_MIN_IDLE_MS: "2000"
      RECLAIM_INTERVAL_S: "0.5"
      WRITE_FLUSH_MS: "1000"
      WRITE_BATCH_SIZE: "5000"
      CONSUMER_MAX_IDLE_S: "5"
      CONSUMER_CLEANUP_INTERVAL_S: "1"
      LOG_LEVEL: info
"""
OVERRIDE = "services:\n" + "".join(f"  processor-{n}:\n{_INSTANCE_OVERRIDE}" for n in (1, 2))


@pytest.fixture(scope="session")
def stack_images(image: str) -> dict[str, str]:
    """The compose file's image variables, pointing at images built from the local base."""
    redis_image, timescaledb_image = "localhost/redis:ci", "localhost/timescaledb:ci"
    build(redis_image, LOCAL, containerfile=LOCAL / "redis.Containerfile")
    if not (TIMESCALEDB / "lib").is_dir():
        pytest.fail(f"TimescaleDB build not found in {TIMESCALEDB} (set TIMESCALEDB_DIR)")
    with tempfile.TemporaryDirectory() as context:
        # The binaries are copied into a throwaway context, never into the repository.
        shutil.copy(LOCAL / "timescaledb-entrypoint.sh", context)
        shutil.copytree(TIMESCALEDB / "lib", Path(context) / "lib")
        shutil.copytree(TIMESCALEDB / "extension", Path(context) / "extension")
        build(timescaledb_image, Path(context), containerfile=LOCAL / "timescaledb.Containerfile")
    return {
        "PROCESSOR_IMAGE": image,
        "REDIS_IMAGE": redis_image,
        "TIMESCALEDB_IMAGE": timescaledb_image,
    }


class Stack:
    def __init__(self, project: str, files: list[Path], env: Mapping[str, str]) -> None:
        self.project = project
        self.files = files
        self.env = dict(env)

    async def compose(
        self,
        *args: str,
        timeout: float = 300,  # noqa: ASYNC109 - every call is bounded
    ) -> subprocess.CompletedProcess[bytes]:
        command = ["podman-compose", "-p", self.project]
        for file in self.files:
            command += ["-f", str(file)]
        with trio.fail_after(timeout):
            result = await trio.run_process(
                [*command, *args], env=self.env, capture_stdout=True, capture_stderr=True,
                check=False,
            )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    def container(self, service: str, number: int = 1) -> Container:
        return Container(f"{self.project}_{service}_{number}")

    async def sql(self, query: str) -> str:
        db = self.container("timescaledb")
        return (await db.exec("psql", "-U", "processor", "-d", "processor", "-Atc", query)).stdout

    async def redis(self, *args: str) -> str:
        return (await self.container("redis").exec("redis-cli", *args)).stdout

    async def rows(self) -> int:
        return int((await self.sql("SELECT count(*) FROM positions")).strip() or 0)

    async def pending(self, consumer: str | None = None) -> int:
        stream = "telemetry:teltonika"
        if consumer is None:
            return int((await self.redis("XPENDING", stream, "processor")).split()[0])
        listed = await self.redis("XPENDING", stream, "processor", "-", "+", "1000000", consumer)
        return len(listed.split()) // 4  # id, consumer, idle ms, deliveries per entry


@asynccontextmanager
async def compose_stack(
    images: Mapping[str, str], tmp_path: Path, replicas: int
) -> AsyncIterator[Stack]:
    if shutil.which("podman-compose") is None:
        pytest.fail("podman-compose is not installed: apt-get install podman-compose")
    override = tmp_path / "ci.override.yaml"
    override.write_text(OVERRIDE)
    env = {**os.environ, **images}
    env |= {"POSTGRES_PASSWORD": secrets.token_hex(12)}
    stack = Stack(f"ptest{uuid.uuid4().hex[:8]}", [COMPOSE_FILE, override], env)
    services = ["redis", "timescaledb", *(f"processor-{n}" for n in range(1, replicas + 1))]
    try:
        await stack.compose("up", "-d", *services)
        yield stack
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(120):
                await stack.compose("down", "-v", "-t", "20")
            # podman-compose 1.0.3 leaves the project's network behind.
            await podman("network", "rm", "-f", f"{stack.project}_default", check=False)


async def acks(container: Container) -> float:
    """processor_acks_total of one replica (its /metrics, read from inside its container)."""
    script = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:9090/metrics', timeout=5).read().decode())"
    )
    metrics = (await container.exec("python", "-c", script)).stdout
    match = re.search(r"^processor_acks_total (\S+)$", metrics, re.MULTILINE)
    return float(match[1]) if match else 0.0


async def test_two_replicas_share_the_work_and_a_removed_replicas_entries_are_reclaimed(
    stack_images: dict[str, str], tmp_path: Path
) -> None:
    async with compose_stack(stack_images, tmp_path, replicas=2) as stack:
        first, second = stack.container("processor-1"), stack.container("processor-2")
        for replica in (first, second):
            await replica.wait_for("ready", within=180)
            await replica.wait_healthy()
        # TimescaleDB from ../shared/timescaledb is in use: the migration made a hypertable.
        hypertables = "SELECT count(*) FROM timescaledb_information.hypertables"
        assert (
            await stack.sql(f"{hypertables} WHERE hypertable_name = 'positions'")
        ).strip() == "1"
        gone = "processor-2"  # its consumer name: INSTANCE_ID, fixed in the compose file

        async with trio.open_nursery() as nursery:
            publisher = nursery.start_soon
            publisher(
                first.exec,
                "processor", "simulate", "--count", str(FIXES), "--rate", str(RATE), *NO_QUIRKS,
            )  # fmt: skip

            seen: list[float] = []  # the last acks of both replicas, for the failure message

            async def both_working() -> bool:
                seen[:] = [await acks(first), await acks(second)]
                return min(seen) > 500

            with trio.move_on_after(60):
                while not await both_working():  # noqa: ASYNC110 - metrics cannot notify
                    await trio.sleep(0.3)
            assert min(seen, default=0) > 500, f"acks of the two replicas after 60 s: {seen}"
            # Scale down by one, the hard way: SIGKILL while it holds read, un-acked entries.
            await podman("rm", "-f", "-t", "0", second.name)
            held = await stack.pending(gone)
            assert held > 0, "the removed replica should have held entries"

        async def settled() -> bool:
            return await stack.rows() == FIXES and await stack.pending() == 0

        with trio.fail_after(90):
            while not await settled():  # noqa: ASYNC110 - state lives in the containers
                await trio.sleep(0.5)
        assert int((await stack.redis("XLEN", "telemetry:teltonika")).strip()) == FIXES
        assert await stack.pending(gone) == 0
        # The survivor claimed them (an owner the reclaimer could not look up is logged "?").
        claims = await first.events("reclaimed idle entries")
        owners = [line["from_consumers"] for line in claims]
        assert any(gone in owner for owner in owners), owners
        assert sum(line["count"] for line in claims) >= held, (held, owners)
        keys = await stack.sql("SELECT count(DISTINCT (device_id, ts)) FROM positions")
        assert int(keys.strip()) == FIXES  # each fix once

        # The removed replica's consumer, holding nothing now, is deleted by the survivor.
        removal = await first.wait_for("removed dead consumer", within=60)
        assert (removal["group"], removal["consumer"]) == ("processor", gone), removal
        consumers = await stack.redis("XINFO", "CONSUMERS", "telemetry:teltonika", "processor")
        assert gone not in consumers.split() and "processor-1" in consumers.split()

        # The survivor drains and exits 0 within SHUTDOWN_TIMEOUT_S (15) + 5 s.
        took = await first.stop(20)
        print(f"compose: the surviving replica drained and exited in {took:.2f}s")
        assert await first.exit_code() == 0
        assert took < 15
