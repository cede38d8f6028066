"""Driving podman from the container tests: build the image, run containers, read their state.

Every call is bounded (`trio.fail_after`), and every container a test starts is removed when
the test ends (`podman rm -f`), whatever happened; the images stay, so the next build reuses
the layer cache.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio

ROOT = Path(__file__).resolve().parents[2]
SETUP = "sudo ../shared/podman/setup.sh"
BASE_IMAGE = os.environ.get("PYTHON_IMAGE", "localhost/python:3.11-slim-bookworm")
IMAGE = os.environ.get("PROCESSOR_IMAGE", "localhost/processor:ci")


def podman_sync(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` (blocking), output captured; a failure raises with podman's stderr."""
    if shutil.which("podman") is None:
        raise AssertionError(f"podman is not installed; set it up with: {SETUP}")
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


async def podman(
    *args: str,
    check: bool = True,
    timeout: float = 120,  # noqa: ASYNC109 - every podman call is bounded
) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` without blocking the Trio loop (the tests run a TCP proxy in it)."""
    with trio.fail_after(timeout):
        result = await trio.run_process(
            ["podman", *args], capture_stdout=True, capture_stderr=True, check=False
        )
    completed = subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {completed.returncode}:\n"
            f"{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
        )
    return completed


def build(
    tag: str, context: Path, *, containerfile: Path | None = None, timeout: float = 1200
) -> float:
    """Build `tag` from `context` on the local base image; returns the seconds it took."""
    podman_sync("image", "exists", BASE_IMAGE, timeout=30)
    args = ["build", "--network", "host", "--format", "docker"]
    args += ["--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "-t", tag]
    if containerfile is not None:
        args += ["-f", str(containerfile)]
    started = time.monotonic()
    podman_sync(*args, str(context), timeout=timeout)
    return time.monotonic() - started


def free_port() -> int:
    """A TCP port nobody listens on right now (the containers share the host's network)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Container:
    """One `podman run -d` container, addressed by name."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def logs(self) -> str:
        """Everything the container wrote (the processor logs JSON lines to stderr)."""
        result = await podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    async def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for raw in (await self.logs()).splitlines():
            if raw.startswith("{"):
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if str(line.get("event", "")).startswith(name):
                    found.append(line)
        return found

    async def wait_for(self, event: str, *, within: float = 60) -> dict[str, Any]:
        """The first log line whose event starts with `event` (fails early if it exited)."""
        with trio.fail_after(within):
            while True:
                found = await self.events(event)
                if found:
                    return found[0]
                if not await self.running():
                    raise AssertionError(
                        f"{self.name} exited ({await self.exit_code()}) before {event!r}:\n"
                        + (await self.logs())[-3000:]
                    )
                await trio.sleep(0.2)

    async def inspect(self) -> dict[str, Any]:
        result = await podman("inspect", "--type", "container", self.name)
        data: list[dict[str, Any]] = orjson.loads(result.stdout)
        return data[0]

    async def running(self) -> bool:
        return bool((await self.inspect())["State"]["Running"])

    async def exit_code(self) -> int:
        return int((await self.inspect())["State"]["ExitCode"])

    async def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """`podman healthcheck run`: exit 0 when the image's HEALTHCHECK passes."""
        return await podman("healthcheck", "run", self.name, check=False, timeout=30)

    async def wait_healthy(self, *, within: float = 60) -> None:
        with trio.fail_after(within):
            # Polling is the only way: the health state lives in podman, which cannot notify.
            while (await self.healthcheck()).returncode != 0:  # noqa: ASYNC110
                await trio.sleep(0.5)

    async def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return await podman("exec", self.name, *command, check=check, timeout=120)

    async def stop(self, timeout_s: float) -> float:
        """`podman stop -t`: SIGTERM, SIGKILL after `timeout_s`. Returns the seconds it took."""
        started = time.monotonic()
        await podman("stop", "-t", str(int(timeout_s)), self.name, timeout=timeout_s + 60)
        return time.monotonic() - started

    async def signal(self, name: str) -> None:
        await podman("kill", "--signal", name, self.name)

    async def wait_exit(self, *, within: float) -> float:
        """Seconds until the container exits (fails when it runs longer than `within`)."""
        started = time.monotonic()
        await podman("wait", self.name, timeout=within)
        return time.monotonic() - started

    async def start(self) -> None:
        await podman("start", self.name)


def run_args(name: str, image: str, env: Mapping[str, str], extra: Sequence[str] = ()) -> list[str]:
    args = ["run", "-d", "--name", name, "--network", "host", *extra]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return [*args, image]


@asynccontextmanager
async def running(
    name: str, image: str, env: Mapping[str, str], extra: Sequence[str] = ()
) -> AsyncIterator[Container]:
    """A detached container on the host's network; removed (with `-f`) when the block ends."""
    await podman(*run_args(name, image, env, extra))
    try:
        yield Container(name)
    finally:
        with trio.CancelScope(shield=True):
            await podman("rm", "-f", "-t", "0", name, check=False, timeout=60)
