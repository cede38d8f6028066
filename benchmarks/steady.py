"""Phases latency, memory and drain, in that order on one `processor run`.

- latency: the simulator publishes at the steady rate; p50/p95/p99 of stream entry -> commit
  from the daemon's `processor_e2e_latency_seconds` histogram, and exact percentiles of
  `ingested_at - entry time` from the table (`db_p*_e2e_ms`, a few ms low: `ingested_at` is
  the transaction's start);
- memory: one fix from each of N new devices, then the daemon's VmRSS;
- drain: SIGTERM while the load goes on; the daemon must exit 0 with nothing pending.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import trio

from benchmarks.daemon import Daemon
from benchmarks.harness import NO_QUIRKS, SEED, Bench, say
from benchmarks.quantiles import e2e_histogram, histogram_quantile, percentile
from processor_dev.simulate import Scenario, Simulator

PHASES = ("latency", "memory", "drain")


def run(runner: Bench, phases: set[str]) -> None:
    url, stream = runner.schema("daemon"), runner.stream("steady")
    daemon = runner.daemon(url, stream)
    try:
        daemon.wait_ready()
        if "latency" in phases:
            latency(runner, daemon, url, stream)
        if "memory" in phases:
            memory(runner, daemon, stream)
        if "drain" in phases:
            drain(runner, daemon, stream)
    finally:
        daemon.kill()


def latency(runner: Bench, daemon: Daemon, url: str, stream: str) -> None:
    s, results = runner.sizes, runner.results
    say(f"latency: {s.steady_rate:,.0f} fixes/s for {s.steady_s:g} s ...")
    scenario = Scenario(
        devices=s.devices, rate=s.steady_rate, seed=SEED + 1, start=datetime.now(UTC)
    )
    published = runner.publish(stream, Simulator(scenario), s.steady_rate, s.steady_s)
    runner.wait_caught_up(stream, timeout_s=120)
    histogram = e2e_histogram(daemon.metrics())
    for q in (50, 95, 99):
        results[f"p{q}_e2e_ms"] = round(histogram_quantile(histogram, q / 100) * 1000, 1)
    exact = db_latencies(runner, url, stream)
    for q in (50, 95, 99):
        results[f"db_p{q}_e2e_ms"] = round(percentile(exact, q / 100) * 1000, 1)
    results["steady_rate"] = round(published.sent / published.elapsed_s)
    results["latency_source"] = "processor_e2e_latency_seconds histogram on /metrics"
    say(
        "latency: p50 {p50_e2e_ms} ms, p95 {p95_e2e_ms} ms, p99 {p99_e2e_ms} ms "
        "(table: p50 {db_p50_e2e_ms}, p99 {db_p99_e2e_ms})".format(**results)
    )


def db_latencies(runner: Bench, url: str, stream: str) -> list[float]:
    """ingested_at - entry time for every row, from the first entry carrying its key."""
    first: dict[tuple[str, datetime], float] = {}
    entries: list[tuple[bytes, dict[bytes, bytes]]] = runner.redis.xrange(stream)  # type: ignore[assignment]
    for entry_id, fields in entries:
        document = orjson.loads(fields[b"payload"])
        key = (document["device_id"], datetime.fromisoformat(document["timestamp"]))
        first.setdefault(key, int(entry_id.split(b"-")[0]) / 1000)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT device_id, ts, ingested_at FROM positions").fetchall()
    return [ingested.timestamp() - first[(device, ts)] for device, ts, ingested in rows]


def memory(runner: Bench, daemon: Daemon, stream: str) -> None:
    n, rate = runner.sizes.state_devices, runner.sizes.steady_rate
    say(f"memory: fixes from {n:,} distinct devices ...")
    scenario = Scenario(
        devices=n,
        rate=rate,
        seed=SEED + 2,
        start=datetime.now(UTC) - timedelta(seconds=n / rate),
        quirks=NO_QUIRKS,
    )
    runner.preload(stream, [e.payload for e in itertools.islice(Simulator(scenario), n)])
    runner.wait_caught_up(stream, timeout_s=600)
    state = daemon.metrics()["processor_device_state_size"][0][1]
    rss_mb, peak_mb = daemon.status("VmRSS") / 1024, daemon.status("VmHWM") / 1024
    runner.results.update(
        rss_mb_100k_devices=round(rss_mb, 1),
        rss_peak_mb=round(peak_mb, 1),
        state_devices=int(state),
    )
    say(f"memory: RSS {rss_mb:.0f} MB (peak {peak_mb:.0f} MB), {state:,.0f} in state")


def drain(runner: Bench, daemon: Daemon, stream: str) -> None:
    s = runner.sizes
    say(f"drain: SIGTERM after {s.drain_after_s:g} s at {s.steady_rate:,.0f} fixes/s ...")
    scenario = Scenario(
        devices=s.devices, rate=s.steady_rate, seed=SEED + 3, start=datetime.now(UTC)
    )

    async def load_then_terminate() -> tuple[float, int]:
        async with runner.publishing(stream, Simulator(scenario), s.steady_rate):
            await trio.sleep(s.drain_after_s)
            return await trio.to_thread.run_sync(daemon.terminate)

    seconds, code = trio.run(load_then_terminate)
    pending = int(runner.redis.xpending(stream, "processor")["pending"])
    if code != 0 or pending:
        raise RuntimeError(f"drain: exit code {code}, {pending} entries left pending")
    runner.results["drain_s"] = round(seconds, 3)
    say(f"drain: exited 0 after {seconds:.2f} s, nothing pending")
