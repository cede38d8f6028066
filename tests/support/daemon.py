"""`processor run` as a real subprocess whose JSON log goes to a file.

A file, not a pipe: a daemon that logs more than a pipe buffer (retry warnings during an outage)
while nobody reads the pipe would block on `write` and look hung. The file can be read at any
time, which is how tests learn the HTTP port (`HTTP_PORT=0`) and watch lifecycle events.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio


class Daemon:
    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.env = {**os.environ, **env, "LOG_FORMAT": "json"}
        self.env.setdefault("LOG_LEVEL", "info")
        if self.env["LOG_LEVEL"] not in ("debug", "info"):
            self.env["LOG_LEVEL"] = "info"  # lifecycle lines are how tests follow the daemon
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> Iterator[dict[str, Any]]:
        """The JSON log lines written so far (other output, e.g. tracebacks, is skipped)."""
        for raw in self.log_path.read_bytes().splitlines():
            if raw.startswith(b"{"):
                try:
                    yield orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """The lines whose event starts with `name` and that carry all of `fields`."""
        return [
            line
            for line in self.lines()
            if str(line.get("event", "")).startswith(name)
            and all(line.get(key) == value for key, value in fields.items())
        ]

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_bytes()[-chars:].decode("utf-8", "replace")

    async def wait_for(self, event: str, *, within: float = 30) -> dict[str, Any]:
        """Wait for the first log line whose event starts with `event`."""
        with trio.fail_after(within):
            while True:
                found = self.events(event)
                if found:
                    return found[0]
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"daemon exited with {self.process.returncode} before {event!r}:\n"
                        + self.tail()
                    )
                await trio.sleep(0.02)

    async def http_port(self, *, within: float = 30) -> int:
        line = await self.wait_for("http listening", within=within)
        return int(line["port"])

    async def get(self, path: str) -> httpx.Response:
        port = await self.http_port()
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.get(f"http://127.0.0.1:{port}{path}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()

    def terminate(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, within: float) -> int:
        """The exit code, or AssertionError (and a kill) when it takes longer than `within`."""
        try:
            code = await trio.to_thread.run_sync(lambda: self.process.wait(timeout=within))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon still running after {within}s:\n{self.tail()}") from None
        self._log.close()
        return code

    def close(self) -> None:
        """Make sure nothing outlives the test."""
        self.kill()
