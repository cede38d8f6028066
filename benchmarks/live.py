"""Phase live: does a resubscribe storm slow ingestion?

    python -m benchmarks.run --phases live

One `processor run` with live broadcast on (`benchmarks.directus_standin`), an event of 3,000
devices each with a stored fix, and the steady load of the latency phase (cars not in the
event, so the clients get snapshots and no fan-out: the figure isolates the cost of
subscribes). p99 stream -> commit of a quiet window, then of a window while 8 clients
(`benchmarks/live_clients.py`) resubscribe to the event in a loop, each from the difference of
two scrapes of the daemon's histogram; `live_p99_ratio` = storm / quiet. Also reported: how
many resubscribes completed and how many snapshot reads they cost.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from benchmarks.daemon import Daemon
from benchmarks.directus_standin import DirectusStandIn, create_event
from benchmarks.harness import SEED, Bench, say
from benchmarks.quantiles import e2e_histogram, histogram_quantile
from processor_dev.simulate import Scenario, Simulator

HERE = Path(__file__).resolve().parent
CLIENTS = 8
EVENT_DEVICES = 3000


def run(runner: Bench) -> None:
    s = runner.sizes
    url, stream = runner.schema("live"), runner.stream("live")
    imeis = [f"ev{i:05d}" for i in range(EVENT_DEVICES)]
    event_id = create_event(url, imeis)
    directus = DirectusStandIn()
    daemon = runner.daemon(url, stream, live_env(directus.url))
    try:
        daemon.wait_ready()
        now = datetime.now(UTC) - timedelta(minutes=1)
        fixes = [
            orjson.dumps(
                {"device_id": imei, "timestamp": now.isoformat(), "latitude": 41.3,
                 "longitude": 19.8, "speed": 50.0, "satellites": 9}
            )
            for imei in imeis
        ]  # fmt: skip
        runner.preload(stream, fixes)
        runner.wait_caught_up(stream, timeout_s=120)
        assert daemon.live_port is not None
        say(f"live: quiet window, {s.steady_rate:,.0f} fixes/s for {s.live_window_s:g} s ...")
        quiet, quiet_cpu = steady_window(runner, daemon, stream, SEED + 4)
        reads_before = snapshot_reads(daemon)
        say(f"live: storm window, {CLIENTS} clients resubscribing ...")
        clients = start_clients(daemon.live_port, event_id, s.live_window_s + 3)
        try:
            time.sleep(1.5)  # the storm is on before the window starts
            storm, storm_cpu = steady_window(runner, daemon, stream, SEED + 5)
            out, _ = clients.communicate(timeout=120)
        finally:
            if clients.poll() is None:
                clients.kill()
        counts = orjson.loads(out.splitlines()[-1])["resubscribes"]
        reads = snapshot_reads(daemon) - reads_before
    finally:
        daemon.kill()
        directus.close()
    runner.results.update(
        live_quiet_p99_ms=round(quiet * 1000, 1),
        live_storm_p99_ms=round(storm * 1000, 1),
        live_p99_ratio=round(storm / quiet, 2),
        live_quiet_cpu_s=round(quiet_cpu, 2),
        live_storm_cpu_s=round(storm_cpu, 2),
        live_resubscribes=sum(counts),
        live_snapshot_reads=int(reads),
    )
    say(
        "live: p99 quiet {live_quiet_p99_ms} ms, storm {live_storm_p99_ms} ms, ratio "
        "{live_p99_ratio}; {live_resubscribes} resubscribes cost {live_snapshot_reads} "
        "snapshot reads; daemon CPU {live_quiet_cpu_s} s / {live_storm_cpu_s} s".format(
            **runner.results
        )
    )


def steady_window(runner: Bench, daemon: Daemon, stream: str, seed: int) -> tuple[float, float]:
    """p99 stream -> commit (s) of what is published at the steady rate for one live window,
    and the daemon's CPU seconds meanwhile."""
    s = runner.sizes
    scenario = Scenario(devices=s.devices, rate=s.steady_rate, seed=seed, start=datetime.now(UTC))
    before = dict(e2e_histogram(daemon.metrics()))
    cpu = daemon.cpu_s()
    runner.publish(stream, Simulator(scenario), s.steady_rate, s.live_window_s)
    runner.wait_caught_up(stream, timeout_s=120)
    after = e2e_histogram(daemon.metrics())
    cpu = daemon.cpu_s() - cpu
    window = [(le, count - before[le]) for le, count in after]
    return histogram_quantile(window, 0.99), cpu


def live_env(directus_url: str) -> dict[str, str]:
    return {
        "DIRECTUS_URL": directus_url,
        "LIVE_WS_HOST": "127.0.0.1",
        "LIVE_WS_PORT": "0",
        "LIVE_DEVICE_EVENT_REFRESH_MS": "60000",
    }


def snapshot_reads(daemon: Daemon) -> float:
    samples = daemon.metrics().get("processor_live_snapshot_duration_seconds_count", [])
    return sum(value for _labels, value in samples)


def start_clients(port: int, event_id: str, seconds: float) -> subprocess.Popen[bytes]:
    """The clients in a process of their own (their CPU is not the daemon's, their GIL either)."""
    script = HERE / "live_clients.py"
    return subprocess.Popen(
        [sys.executable, str(script), str(port), event_id, str(CLIENTS), str(seconds)],
        stdout=subprocess.PIPE,
    )
