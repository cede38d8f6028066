"""The processor under test: `processor run` as a real subprocess, observed from outside.

A subprocess (not an in-process Service) so that the figures are the daemon's own: its CPU
competes with Redis and PostgreSQL exactly as in production, its RSS is its own, and SIGTERM
drains it the way an orchestrator would. Its JSON log lines on stderr tell when it is ready and
which HTTP port it bound (HTTP_PORT=0).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

READY_EVENT = "ready"
HTTP_EVENT_PREFIX = "http listening"
LIVE_EVENT = "live broadcast listening"


class Daemon:
    """One `processor run` subprocess (or another contender's, `module`) and what its log says."""

    def __init__(
        self,
        env: Mapping[str, str],
        module: Sequence[str] = ("processor.cli", "run"),
        prefix: Sequence[str] = (),  # e.g. valgrind and its options (benchmarks/instructions.py)
    ) -> None:
        child_env = {k: v for k, v in os.environ.items() if k != "DIRECTUS_URL"}
        child_env.update(env)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", *module],
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.ready_at: float | None = None  # epoch seconds, from the log line's own timestamp
        self.http_port: int | None = None
        self.live_port: int | None = None  # when DIRECTUS_URL is set (LIVE_WS_PORT=0)
        self.log_tail: list[str] = []
        self.events: dict[str, float] = {}  # first time each log message was seen (epoch s)
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log_tail = [*self.log_tail[-49:], line]
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            message = str(event.get("event", ""))
            if message not in self.events and "timestamp" in event:
                self.events[message] = datetime.fromisoformat(event["timestamp"]).timestamp()
            if message.startswith(HTTP_EVENT_PREFIX):
                self.http_port = int(event["port"])
            elif message == LIVE_EVENT:
                self.live_port = int(event["port"])
            elif message == READY_EVENT:
                self.ready_at = datetime.fromisoformat(event["timestamp"]).timestamp()
                self._ready.set()

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("processor did not start:\n" + "\n".join(self.log_tail))
        assert self.ready_at is not None
        return self.ready_at

    def wait_readyz(self, timeout_s: float = 60.0, interval_s: float = 0.005) -> float:
        """Epoch time at which `/readyz` first answered 200, polled every `interval_s` from the
        moment the log names the HTTP port (a poll costs the daemon one request)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("processor did not get ready:\n" + "\n".join(self.log_tail))
            if self.http_port is not None:
                url = f"http://127.0.0.1:{self.http_port}/readyz"
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        if response.status == 200:
                            return time.time()
                except urllib.error.HTTPError as refused:  # 503 while starting
                    refused.close()
            time.sleep(interval_s)

    def wait_event(self, message: str, timeout_s: float = 600.0) -> float:
        """Epoch time of the first log line whose event is `message` (waits for it)."""
        deadline = time.monotonic() + timeout_s
        while message not in self.events:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no {message!r} in the log:\n" + "\n".join(self.log_tail))
            time.sleep(0.05)
        return self.events[message]

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """The daemon's /metrics, as {sample name: [(labels, value), ...]}."""
        if self.http_port is None:
            raise RuntimeError("the processor did not log its HTTP port")
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples

    def status(self, field: str) -> int:
        """A /proc/<pid>/status field in kB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the daemon has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def terminate(self, timeout_s: float = 30.0) -> tuple[float, int]:
        """SIGTERM; returns (seconds until the process exited, exit code)."""
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        return time.perf_counter() - started, code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
