"""The benchmark: how fast the processor stores fixes, against what one could write oneself.

    python -m benchmarks.run [--quick] [--output bench-results.json] [--set NAME=VALUE ...]

One run, one machine, the same rows for every contender (the simulator's, seeded), each
contender into its own fresh PostgreSQL schema:

1. raw:       one plain Python process, COPY -> staging -> INSERT ON CONFLICT DO NOTHING in
              batches, no Redis, no Trio (`benchmarks.writers.write_raw`): the write limit;
2. baseline:  the seed design's multi-row INSERT ... VALUES ... ON CONFLICT DO NOTHING RETURNING
              per batch (`benchmarks.writers.write_baseline`);
3. processor: the fixes pre-loaded into a stream, then `processor run` as a subprocess, timed
              from its "ready" log line to the moment the group has no lag and nothing pending
              (every row committed and every entry acked);
4. minimal:   the same, with `benchmarks.minimal` (stream -> decode -> COPY/merge -> XACK and
              nothing else) instead of the processor: `processor / minimal` is the price of the
              processor's features (fix quality, device state, metrics, dead letters, drain).

Each contender's CPU time per fix is reported too (the writing process: the benchmark itself
for 1-2, the subprocess for 3-4, from /proc/<pid>/stat): on a shared machine it is far steadier
than a rate.

Then:

5. startup:   five rounds, each timing a bare `python -c "import trio, redis, psycopg, orjson"`
              (the libraries the daemon cannot do without) and `processor run` from its launch
              to the first 200 from `/readyz` (migrations already applied), both importing from
              bytecode as installed software does; medians of both and their ratio: what
              start-up costs beyond the unavoidable imports.

Then, on another `processor run`:

6. latency:   the simulator publishes at a steady rate; p50/p95/p99 of stream entry -> commit,
              read from the daemon's `processor_e2e_latency_seconds` histogram on /metrics
              (observed at commit; percentiles interpolated within buckets, as Prometheus'
              `histogram_quantile` does). Exact percentiles of `ingested_at - entry time` from
              the table are reported too (`db_p*_e2e_ms`; `ingested_at` is the transaction's
              start, so those read a few ms low).
7. memory:    fixes from N distinct devices (one each), then VmRSS of the daemon (N = 100,000:
              the default DEVICE_STATE_CAP, so every device is in state).
8. drain:     SIGTERM while the simulator keeps publishing at the steady rate: seconds until
              the process has exited (it must exit 0 with nothing pending).

Then, on yet another `processor run` with live broadcast on (`benchmarks/live.py`):

9. live:      stream -> commit p99 under the steady load, alone and while 8 clients resubscribe
              in a loop to an event of 3,000 devices; `live_p99_ratio` = storm / quiet
              (`--phases live` runs it alone).
10. domain:   the racing-domain engine on a 40-control stage: its evaluation rate, its lag
              behind ingestion at 2,000 fixes/s, and ingestion's rate with it on vs off
              (`benchmarks.domain`).
11. history:  the live port's track history: a 6-hour 1 Hz track of one car and 10 minutes of
              200 cars, each as time to serve / the bare SQL read, medians (`benchmarks.history`).

Without REDIS_URL / DATABASE_URL, throwaway servers are started (as `just demo` does).
Speed is reported here, never asserted. A run of every phase checks that it has every figure, each
sane (`benchmarks.sanity`), and exits 1 when one is missing or insane.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import psycopg
import redis
import trio

import processor
from benchmarks import domain, sanity
from benchmarks import history as history_bench
from benchmarks import live as live_bench
from benchmarks.daemon import Daemon
from benchmarks.rounds import round_order
from benchmarks.writers import timed_write, write_baseline, write_raw
from processor.codecs.position import decode_payload
from processor.config import load_config
from processor.observability.logging import configure_logging
from processor.store.migrations import apply_migrations, default_directory, load_migrations
from processor.store.postgres import with_search_path
from processor_dev.demo import servers
from processor_dev.publisher import MAX_CHUNK, publish, xadd_chunk
from processor_dev.simulate import Quirks, Scenario, Simulator

CHECKOUT = Path(__file__).resolve().parents[1]
SEED = 20260512
START = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
NO_QUIRKS = Quirks(late=0, duplicate=0, zero_satellites=0, event=0, sentinels=0)
CONTENDERS = ("raw", "baseline", "processor", "minimal")
PHASES = (*CONTENDERS, "startup", "latency", "memory", "drain", "live", "domain", "history")
STARTUP_LAUNCHES = 5
# What any daemon doing this job must import: the baseline `processor run` is measured against.
UNAVOIDABLE_IMPORTS = "import trio, redis, psycopg, orjson"
IN_PROCESS = {"raw": write_raw, "baseline": write_baseline}
STREAM_CONTENDERS = {
    "processor": ("processor.cli", "run"),
    "minimal": ("benchmarks.minimal",),
}
TARGETS: dict[str, tuple[str, float]] = {
    "ratio_vs_raw": (">=", 0.85),
    "ratio_vs_minimal": (">=", 0.9),
    "cpu_vs_minimal": ("<=", 1.15),
    "ratio_vs_baseline": (">=", 1.5),
    "startup_ratio": ("<=", 1.3),
    "p99_e2e_ms": ("<=", 250.0),
    "rss_mb_100k_devices": ("<=", 200.0),
    "drain_s": ("<=", 2.0),
    "live_p99_ratio": ("<=", 1.5),
    "domain_ingest_ratio": (">=", 0.9),
    "domain_finished_fixes_loaded_last": ("<=", 0),
}


@attrs.frozen
class Sizes:
    fixes: int  # pre-generated fixes written by every contender
    devices: int  # cars producing them
    steady_rate: float  # fixes/s of the latency phase (and the load during the drain)
    steady_s: float
    state_devices: int  # distinct devices of the memory phase
    drain_after_s: float  # load before SIGTERM
    live_window_s: float  # each window of the live phase


FULL = Sizes(200_000, 1_000, 2_000.0, 60.0, 100_000, 5.0, 30.0)
QUICK = Sizes(20_000, 100, 2_000.0, 10.0, 10_000, 2.0, 10.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="processor setting for this run (e.g. WRITE_CONCURRENCY=3); repeatable",
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the schemas and streams")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="rounds of the throughput contenders, medians reported (default 3; --quick: 1)",
    )
    return parser.parse_args(argv)


class Bench:
    def __init__(
        self, redis_url: str, database_url: str, sizes: Sizes, settings: dict[str, str]
    ) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.sizes = sizes
        self.settings = settings
        self.config = load_config({"INSTANCE_ID": "bench", **settings})
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=30)
        self.tag = uuid.uuid4().hex[:8]
        self.schemas: list[str] = []
        self.streams: list[str] = []
        self.results: dict[str, Any] = {}
        self.keep = False
        self.repeat = 1

    # --- fixtures ----------------------------------------------------------------------------

    def schema(self, name: str) -> str:
        """A fresh schema with the processor's migrations applied; returns its URL."""
        schema = f"bench_{name}_{self.tag}"
        url = with_search_path(self.database_url, schema)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        with psycopg.connect(url) as conn:
            apply_migrations(conn, load_migrations(default_directory()))
        return url

    def stream(self, name: str) -> str:
        key = f"bench:{self.tag}:{name}"
        self.streams.append(key)
        return key

    def daemon(
        self,
        url: str,
        stream: str,
        extra: dict[str, str] | None = None,
        module: Sequence[str] = ("processor.cli", "run"),
        prefix: Sequence[str] = (),
    ) -> Daemon:
        env = {
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": url,
            "REDIS_STREAM": stream,
            "INSTANCE_ID": f"bench-{self.tag}",
            "HTTP_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            # `benchmarks.minimal` runs from the checkout, wherever the benchmark was started
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p
            ),
            **self.settings,
            **(extra or {}),
        }
        return Daemon(env, module, prefix)

    def caught_up(self, stream: str, group: str = "processor") -> bool:
        for info in self.redis.xinfo_groups(stream):
            if info["name"].decode() == group:
                return int(info["pending"]) == 0 and int(info.get("lag") or 0) == 0
        return False

    def wait_caught_up(
        self,
        stream: str,
        timeout_s: float,
        interval_s: float = 0.01,
        daemon: Daemon | None = None,
    ) -> float:
        """Poll until the group has read and acked everything; returns the epoch time seen."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up(stream):
            if daemon is not None and daemon.proc.poll() is not None:
                raise RuntimeError("the contender died:\n" + "\n".join(daemon.log_tail))
            if time.monotonic() > deadline:
                raise RuntimeError(f"the processor did not catch up on {stream} in {timeout_s}s")
            time.sleep(interval_s)
        return time.time()

    def rows(self, url: str) -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM positions").fetchone()
            return int(row[0]) if row else 0

    def cleanup(self) -> None:
        if self.keep:
            say(f"kept schemas {', '.join(self.schemas)} and streams {', '.join(self.streams)}")
            return
        if self.streams:
            derived = [k for s in self.streams for k in self.redis.scan_iter(match=f"{s}:*")]
            self.redis.delete(*self.streams, *derived)  # e.g. the race feed
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.redis.close()

    # --- phases ------------------------------------------------------------------------------

    def contenders(self, phases: set[str]) -> None:
        s = self.sizes
        say(f"generating {s.fixes:,} fixes from {s.devices:,} devices (seed {SEED}) ...")
        scenario = Scenario(devices=s.devices, rate=s.steady_rate, seed=SEED, start=START)
        payloads = [e.payload for e in itertools.islice(Simulator(scenario), s.fixes)]
        keys = {(p.device_id, p.ts) for p in map(decode_payload, payloads)}
        self.results.update(fixes=len(payloads), devices=s.devices, rows=len(keys))
        batch = self.config.write_batch_size
        rates: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        # Rounds interleave the contenders, so a drift in the machine's background load touches
        # them alike; each figure is the median of its rounds (all kept in the JSON).
        for attempt in range(self.repeat):
            for name in round_order(CONTENDERS, attempt):
                if name not in phases:
                    continue
                if name in IN_PROCESS:
                    url = self.schema(f"{name}{attempt}")
                    seconds, cpu_s = timed_write(url, payloads, IN_PROCESS[name], batch_size=batch)
                    self.check_rows(name, url, len(keys))
                else:
                    seconds, cpu_s = self.pipeline_throughput(name, payloads, len(keys), attempt)
                rates.setdefault(name, []).append(len(payloads) / seconds)
                cpu.setdefault(name, []).append(cpu_s / len(payloads) * 1e6)
                say(
                    f"{name}: {len(payloads) / seconds:,.0f} fixes/s ({seconds:.2f} s), "
                    f"{cpu_s / len(payloads) * 1e6:.1f} CPU µs/fix"
                )
        for name, samples in rates.items():
            self.results[f"{name}_rate"] = round(statistics.median(samples))
            self.results[f"{name}_rates"] = [round(rate) for rate in samples]
            self.results[f"{name}_cpu_us_per_fix"] = round(statistics.median(cpu[name]), 1)
            self.results[f"{name}_cpu_us_per_fix_samples"] = [round(c, 1) for c in cpu[name]]

    def pipeline_throughput(
        self, name: str, payloads: list[bytes], expected_rows: int, attempt: int
    ) -> tuple[float, float]:
        """(seconds, CPU seconds) of a stream contender (a subprocess) from its "ready" log line
        to every entry acked and every row committed; the fixes are in the stream before."""
        url, stream = self.schema(f"{name}{attempt}"), self.stream(f"{name}{attempt}")
        for offset in range(0, len(payloads), MAX_CHUNK):
            xadd_chunk(self.redis, stream, payloads[offset : offset + MAX_CHUNK])
        daemon = self.daemon(url, stream, module=STREAM_CONTENDERS[name])
        try:
            started = daemon.wait_ready()
            cpu = daemon.cpu_s()
            finished = self.wait_caught_up(stream, timeout_s=600, daemon=daemon)
            cpu = daemon.cpu_s() - cpu
            if name == "processor":
                daemon.terminate()
        finally:
            daemon.kill()
        self.check_rows(name, url, expected_rows)
        return finished - started, cpu

    def startup(self) -> None:
        """Launch -> `/readyz` 200 of `processor run` against the bare import of the libraries it
        cannot avoid, interleaved round by round (`round_order`) so both see the same machine.

        Both sides import from bytecode, as installed software does (pip compiles on install;
        this machine's PYTHONDONTWRITEBYTECODE=1 would otherwise have every launch compile every
        module): the daemon's package is compiled first, and one uncounted launch of each writes
        the libraries' caches (and creates the group, and fills the page cache)."""
        url, stream = self.schema("startup"), self.stream("startup")
        compileall.compile_dir(Path(processor.__file__).parent, quiet=1)
        writing = {"PYTHONDONTWRITEBYTECODE": ""}  # empty: Python writes bytecode
        self.bare_import_s(writing)
        self.ready_s(url, stream, writing)
        samples: dict[str, list[float]] = {"import": [], "ready": []}
        measure: dict[str, Callable[[], float]] = {
            "import": self.bare_import_s,
            "ready": lambda: self.ready_s(url, stream),
        }
        for attempt in range(STARTUP_LAUNCHES):
            for name in round_order(list(samples), attempt):
                samples[name].append(measure[name]())
        for name, values in samples.items():
            self.results[f"startup_{name}_s"] = round(statistics.median(values), 3)
            self.results[f"startup_{name}_s_samples"] = [round(v, 3) for v in values]
        ratio = self.results["startup_ready_s"] / self.results["startup_import_s"]
        self.results["startup_ratio"] = round(ratio, 3)
        say(
            "startup: /readyz 200 after {startup_ready_s} s, bare imports {startup_import_s} s "
            "(medians), ratio {startup_ratio}".format(**self.results)
        )

    def ready_s(self, url: str, stream: str, extra: dict[str, str] | None = None) -> float:
        launched = time.time()
        daemon = self.daemon(url, stream, extra)
        try:
            return daemon.wait_readyz() - launched
        finally:
            daemon.kill()

    @staticmethod
    def bare_import_s(extra: dict[str, str] | None = None) -> float:
        started = time.perf_counter()
        env = {**os.environ, **(extra or {})}
        subprocess.run([sys.executable, "-c", UNAVOIDABLE_IMPORTS], check=True, env=env)
        return time.perf_counter() - started

    def daemon_phases(self, phases: set[str]) -> None:
        url, stream = self.schema("daemon"), self.stream("steady")
        daemon = self.daemon(url, stream)
        try:
            daemon.wait_ready()
            if "latency" in phases:
                self.latency(daemon, url, stream)
            if "memory" in phases:
                self.memory(daemon, stream)
            if "drain" in phases:
                self.drain(daemon, stream)
        finally:
            daemon.kill()

    def latency(self, daemon: Daemon, url: str, stream: str) -> None:
        s = self.sizes
        say(f"latency: {s.steady_rate:,.0f} fixes/s for {s.steady_s:g} s ...")
        scenario = Scenario(
            devices=s.devices, rate=s.steady_rate, seed=SEED + 1, start=datetime.now(UTC)
        )
        client = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        published = trio.run(
            lambda: publish(
                client, stream, Simulator(scenario), rate=s.steady_rate, duration_s=s.steady_s
            )
        )
        client.close()
        self.wait_caught_up(stream, timeout_s=120)
        histogram = e2e_histogram(daemon.metrics())
        for q in (50, 95, 99):
            self.results[f"p{q}_e2e_ms"] = round(histogram_quantile(histogram, q / 100) * 1000, 1)
        exact = self.db_latencies(url, stream)
        for q in (50, 95, 99):
            self.results[f"db_p{q}_e2e_ms"] = round(percentile(exact, q / 100) * 1000, 1)
        self.results["steady_rate"] = round(published.sent / published.elapsed_s)
        self.results["latency_source"] = "processor_e2e_latency_seconds histogram on /metrics"
        say(
            "latency: p50 {p50_e2e_ms} ms, p95 {p95_e2e_ms} ms, p99 {p99_e2e_ms} ms "
            "(table: p50 {db_p50_e2e_ms}, p99 {db_p99_e2e_ms})".format(**self.results)
        )

    def db_latencies(self, url: str, stream: str) -> list[float]:
        """ingested_at - entry time for every row, from the first entry carrying its key."""
        first: dict[tuple[str, datetime], float] = {}
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.redis.xrange(stream)  # type: ignore[assignment]
        for entry_id, fields in entries:
            document = orjson.loads(fields[b"payload"])
            key = (document["device_id"], datetime.fromisoformat(document["timestamp"]))
            first.setdefault(key, int(entry_id.split(b"-")[0]) / 1000)
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT device_id, ts, ingested_at FROM positions").fetchall()
        return [ingested.timestamp() - first[(device, ts)] for device, ts, ingested in rows]

    def memory(self, daemon: Daemon, stream: str) -> None:
        n = self.sizes.state_devices
        say(f"memory: fixes from {n:,} distinct devices ...")
        scenario = Scenario(
            devices=n,
            rate=self.sizes.steady_rate,
            seed=SEED + 2,
            start=datetime.now(UTC) - timedelta(seconds=n / self.sizes.steady_rate),
            quirks=NO_QUIRKS,
        )
        payloads = [e.payload for e in itertools.islice(Simulator(scenario), n)]
        for offset in range(0, n, MAX_CHUNK):
            xadd_chunk(self.redis, stream, payloads[offset : offset + MAX_CHUNK])
        self.wait_caught_up(stream, timeout_s=600)
        state = daemon.metrics()["processor_device_state_size"][0][1]
        rss_mb, peak_mb = daemon.status("VmRSS") / 1024, daemon.status("VmHWM") / 1024
        self.results.update(
            rss_mb_100k_devices=round(rss_mb, 1),
            rss_peak_mb=round(peak_mb, 1),
            state_devices=int(state),
        )
        say(f"memory: RSS {rss_mb:.0f} MB (peak {peak_mb:.0f} MB), {state:,.0f} in state")

    def drain(self, daemon: Daemon, stream: str) -> None:
        s = self.sizes
        say(f"drain: SIGTERM after {s.drain_after_s:g} s at {s.steady_rate:,.0f} fixes/s ...")
        scenario = Scenario(
            devices=s.devices, rate=s.steady_rate, seed=SEED + 3, start=datetime.now(UTC)
        )
        client = redis.Redis.from_url(self.redis_url, socket_timeout=30)

        async def load_then_terminate() -> tuple[float, int]:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: publish(client, stream, Simulator(scenario), rate=s.steady_rate)
                )
                await trio.sleep(s.drain_after_s)
                outcome = await trio.to_thread.run_sync(daemon.terminate)
                nursery.cancel_scope.cancel()
            return outcome

        seconds, code = trio.run(load_then_terminate)
        client.close()
        pending = int(self.redis.xpending(stream, "processor")["pending"])
        if code != 0 or pending:
            raise RuntimeError(f"drain: exit code {code}, {pending} entries left pending")
        self.results["drain_s"] = round(seconds, 3)
        say(f"drain: exited 0 after {seconds:.2f} s, nothing pending")

    def live(self) -> None:
        """Stream -> commit p99 alone and during a resubscribe storm (benchmarks/live.py)."""
        s = self.sizes
        url, stream = self.schema("live"), self.stream("live")
        imeis = [f"ev{i:05d}" for i in range(live_bench.EVENT_DEVICES)]
        event_id = live_bench.create_event(url, imeis)
        directus = live_bench.DirectusStandIn()
        daemon = self.daemon(url, stream, live_env(directus.url))
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
            xadd_chunk(self.redis, stream, fixes)
            self.wait_caught_up(stream, timeout_s=120)
            assert daemon.live_port is not None
            say(f"live: quiet window, {s.steady_rate:,.0f} fixes/s for {s.live_window_s:g} s ...")
            quiet, quiet_cpu = self.steady_window(daemon, stream, SEED + 4, s.live_window_s)
            reads_before = snapshot_reads(daemon)
            say(f"live: storm window, {live_bench.CLIENTS} clients resubscribing ...")
            clients = live_bench.start_clients(daemon.live_port, event_id, s.live_window_s + 3)
            try:
                time.sleep(1.5)  # the storm is on before the window starts
                storm, storm_cpu = self.steady_window(daemon, stream, SEED + 5, s.live_window_s)
                out, _ = clients.communicate(timeout=120)
            finally:
                if clients.poll() is None:
                    clients.kill()
            counts = orjson.loads(out.splitlines()[-1])["resubscribes"]
            reads = snapshot_reads(daemon) - reads_before
        finally:
            daemon.kill()
            directus.close()
        self.results.update(
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
                **self.results
            )
        )

    def steady_window(
        self, daemon: Daemon, stream: str, seed: int, seconds: float
    ) -> tuple[float, float]:
        """p99 stream -> commit (s) of what is published at the steady rate for `seconds`,
        and the daemon's CPU seconds meanwhile."""
        rate = self.sizes.steady_rate
        scenario = Scenario(
            devices=self.sizes.devices, rate=rate, seed=seed, start=datetime.now(UTC)
        )
        before = e2e_histogram(daemon.metrics())
        cpu = daemon.cpu_s()
        client = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        trio.run(
            lambda: publish(client, stream, Simulator(scenario), rate=rate, duration_s=seconds)
        )
        client.close()
        self.wait_caught_up(stream, timeout_s=120)
        after = e2e_histogram(daemon.metrics())
        cpu = daemon.cpu_s() - cpu
        window = [(le, count - dict(before)[le]) for le, count in after]
        return histogram_quantile(window, 0.99), cpu

    def check_rows(self, name: str, url: str, expected: int) -> None:
        stored = self.rows(url)
        if stored != expected:
            raise RuntimeError(f"{name} stored {stored} rows, expected {expected}")


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


# --- statistics ------------------------------------------------------------------------------


def e2e_histogram(
    samples: dict[str, list[tuple[dict[str, str], float]]],
) -> list[tuple[float, float]]:
    """[(upper bound, cumulative count), ...] of processor_e2e_latency_seconds."""
    buckets = samples["processor_e2e_latency_seconds_bucket"]
    return sorted((float(labels["le"]), value) for labels, value in buckets)


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding q."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below or 1)
        lower, below = upper, count
    return lower


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- report ----------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def add_ratios(results: dict[str, Any]) -> None:
    rate = results.get("processor_rate")
    for other in ("raw", "minimal", "baseline"):
        if rate and results.get(f"{other}_rate"):
            results[f"ratio_vs_{other}"] = round(rate / results[f"{other}_rate"], 3)
    cpu, minimal_cpu = (
        results.get("processor_cpu_us_per_fix"),
        results.get("minimal_cpu_us_per_fix"),
    )
    if cpu and minimal_cpu:
        results["cpu_vs_minimal"] = round(cpu / minimal_cpu, 3)


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    checks: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
    }
    return {
        key: checks[op](results[key], bound)
        for key, (op, bound) in TARGETS.items()
        if key in results
    }


def table(results: dict[str, Any]) -> str:
    r = results
    lines = [
        (
            f"benchmark: {r.get('fixes', 0):,} fixes from {r.get('devices', 0):,} devices "
            f"({r.get('rows', 0):,} rows), {r['machine']['cpus']} CPUs, "
            f"PostgreSQL {r['machine']['postgres']}, Redis {r['machine']['redis']}"
        ),
        "",
        (
            f"(median of {r.get('repeat', 1)} rounds; the machine is shared, so trust CPU µs/fix "
            "over rates)"
        ),
        "",
        f"{'contender':<52}{'fixes/s':>12}{'CPU µs/fix':>12}",
    ]
    for name, label in (
        ("raw", "raw (COPY -> staging -> INSERT, 1 process)"),
        ("baseline", "seed design (multi-row INSERT ... RETURNING)"),
        ("minimal", "minimal pipeline (stream -> COPY/merge -> XACK)"),
        ("processor", "processor (stream -> commit -> XACK)"),
    ):
        if f"{name}_rate" in r:
            lines.append(
                f"{label:<52}{r[f'{name}_rate']:>12,}{r.get(f'{name}_cpu_us_per_fix', 0):>12}"
            )
    lines.append("")
    for key, label, unit in (
        ("ratio_vs_raw", "processor / raw", ""),
        ("ratio_vs_minimal", "processor / minimal", ""),
        ("cpu_vs_minimal", "processor CPU / minimal CPU (per fix)", ""),
        ("ratio_vs_baseline", "processor / seed design", ""),
        ("startup_ready_s", f"launch -> /readyz 200 (median of {STARTUP_LAUNCHES})", " s"),
        ("startup_import_s", "bare import of trio, redis, psycopg, orjson", " s"),
        ("startup_ratio", "start-up: ready / bare import", ""),
        ("p50_e2e_ms", "e2e latency p50", " ms"),
        ("p95_e2e_ms", "e2e latency p95", " ms"),
        ("p99_e2e_ms", "e2e latency p99", " ms"),
        ("rss_mb_100k_devices", f"RSS with {r.get('state_devices', 0):,} devices in state", " MB"),
        ("drain_s", "SIGTERM drain under load", " s"),
        ("live_quiet_p99_ms", "e2e p99, live clients quiet", " ms"),
        ("live_storm_p99_ms", "e2e p99, 8 clients resubscribing (3k devices)", " ms"),
        ("live_p99_ratio", "e2e p99 storm / quiet", ""),
        ("domain_rate", f"domain, {r.get('domain_controls', 0)} controls (fixes/s)", ""),
        ("domain_lag_median", "domain lag at 2,000 fixes/s, median (entries)", ""),
        ("domain_lag_max", "domain lag at 2,000 fixes/s, max (entries)", ""),
        ("domain_finished_fixes_loaded_last", "domain, finished entry after 1 h: fixes read", ""),
        ("domain_finished_batch_ms_last", "domain, finished entry after 1 h: ms per batch", " ms"),
        ("ingest_domain_off_rate", "ingestion, domain off (fixes/s)", ""),
        ("ingest_domain_on_rate", "ingestion, domain on (fixes/s)", ""),
        ("domain_ingest_ratio", "ingestion domain on / off", ""),
        ("history_6h_car_ms", "history, 1 car x 6 h at 1 Hz: served", " ms"),
        ("history_6h_car_sql_ms", "history, 1 car x 6 h at 1 Hz: bare SQL", " ms"),
        ("history_6h_car_ratio", "history, 1 car x 6 h: served / SQL", ""),
        ("history_10min_200_cars_ms", "history, 200 cars x 10 min: served", " ms"),
        ("history_10min_200_cars_sql_ms", "history, 200 cars x 10 min: bare SQL", " ms"),
        ("history_10min_200_cars_ratio", "history, 200 cars x 10 min: served / SQL", ""),
    ):
        if key in r:
            target = TARGETS.get(key)
            mark = ""
            if target:
                ok = r["targets_met"][key]
                mark = f"   target {target[0]} {target[1]:g}{unit}: {'met' if ok else 'MISSED'}"
            lines.append(f"{label:<52}{r[key]:>12}{unit}{mark}")
    return "\n".join(lines)


def machine(database_url: str, client: redis.Redis) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": row[0] if row else "?",
        "redis": client.info("server").get("redis_version", "?"),
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def bench(
    redis_url: str, database_url: str, sizes: Sizes, settings: dict[str, str]
) -> Iterator[Bench]:
    runner = Bench(redis_url, database_url, sizes, settings)
    try:
        yield runner
    finally:
        runner.cleanup()


def left_behind(database_url: str, tag: str) -> list[str]:
    """This run's schemas still in the database after its clean-up (a problem each)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"bench%{tag}",)
        ).fetchall()
    return [f"schema {name} left behind" for (name,) in rows]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("warning", "console")
    sizes = QUICK if args.quick else FULL
    settings = dict(item.split("=", 1) for item in args.set)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = phases - set(PHASES)
    if unknown:
        print(f"unknown phases: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    everything = phases == set(PHASES)  # only a run of every phase has every figure
    with servers(os.environ) as (redis_url, database_url):
        with bench(redis_url, database_url, sizes, settings) as runner:
            runner.keep = args.keep
            runner.repeat = max(1, args.repeat or (1 if args.quick else 3))
            results = runner.results
            results["machine"] = machine(database_url, runner.redis)
            results["quick"] = args.quick
            results["repeat"] = runner.repeat
            results["run"] = runner.tag
            c = runner.config
            results["settings"] = {
                "WRITE_BATCH_SIZE": c.write_batch_size,
                "WRITE_CONCURRENCY": c.write_concurrency,
                "WRITE_FLUSH_MS": c.write_flush_ms,
                "READ_COUNT": c.read_count,
                "PIPELINE_BUFFER_BATCHES": c.pipeline_buffer_batches,
                "DB_POOL_SIZE": c.db_pool_size,
            }
            started = time.monotonic()
            if phases & set(CONTENDERS):
                runner.contenders(phases)
            if "startup" in phases:
                runner.startup()
            if phases & {"latency", "memory", "drain"}:
                runner.daemon_phases(phases)
            if "live" in phases:
                runner.live()
            if "domain" in phases:
                domain.run(runner, SEED, START)
            if "history" in phases:
                history_bench.run(runner)
            results["bench_s"] = round(time.monotonic() - started, 1)
        # nothing left behind: this run's schemas were dropped (unless asked to keep them)
        leftovers = [] if args.keep else left_behind(database_url, runner.tag)
    add_ratios(results)
    results["targets_met"] = verdicts(results)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(results))
    print(f"\nwritten to {args.output}")
    found = [*leftovers, *(sanity.problems(results, quick=args.quick) if everything else [])]
    for problem in found:
        print(f"benchmark figure problem: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
