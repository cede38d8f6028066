"""Phases raw, baseline, processor and minimal: the same fixes written by each contender.

Every contender writes the same seeded corpus into a fresh schema and must store exactly its
distinct keys. In-process contenders (`benchmarks.writers`) are timed around the write; stream
contenders (a subprocess) from their "ready" log line until their group has read and acked
everything, the fixes being in the stream before they start. Rounds interleave the contenders
(`benchmarks.rounds`) and each figure is the median of its rounds.
"""

from __future__ import annotations

import itertools
import statistics

from benchmarks.harness import SEED, START, Bench, say
from benchmarks.rounds import round_order
from benchmarks.writers import timed_write, write_baseline, write_raw
from processor.codecs.position import decode_payload
from processor_dev.simulate import Scenario, Simulator

CONTENDERS = ("raw", "baseline", "processor", "minimal")
IN_PROCESS = {"raw": write_raw, "baseline": write_baseline}
STREAM_CONTENDERS = {
    "processor": ("processor.cli", "run"),
    "minimal": ("benchmarks.minimal",),
}


def run(runner: Bench, phases: set[str]) -> None:
    s = runner.sizes
    say(f"generating {s.fixes:,} fixes from {s.devices:,} devices (seed {SEED}) ...")
    scenario = Scenario(devices=s.devices, rate=s.steady_rate, seed=SEED, start=START)
    payloads = [e.payload for e in itertools.islice(Simulator(scenario), s.fixes)]
    keys = {(p.device_id, p.ts) for p in map(decode_payload, payloads)}
    runner.results.update(fixes=len(payloads), devices=s.devices, rows=len(keys))
    batch = runner.config.write_batch_size
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    # Rounds interleave the contenders, so a drift in the machine's background load touches
    # them alike; each figure is the median of its rounds (all kept in the JSON).
    for attempt in range(runner.repeat):
        for name in round_order(CONTENDERS, attempt):
            if name not in phases:
                continue
            if name in IN_PROCESS:
                url = runner.schema(f"{name}{attempt}")
                seconds, cpu_s = timed_write(url, payloads, IN_PROCESS[name], batch_size=batch)
                runner.check_rows(name, url, len(keys))
            else:
                seconds, cpu_s = stream_contender(runner, name, payloads, len(keys), attempt)
            rates.setdefault(name, []).append(len(payloads) / seconds)
            cpu.setdefault(name, []).append(cpu_s / len(payloads) * 1e6)
            say(
                f"{name}: {len(payloads) / seconds:,.0f} fixes/s ({seconds:.2f} s), "
                f"{cpu_s / len(payloads) * 1e6:.1f} CPU µs/fix"
            )
    for name, samples in rates.items():
        runner.results[f"{name}_rate"] = round(statistics.median(samples))
        runner.results[f"{name}_rates"] = [round(rate) for rate in samples]
        runner.results[f"{name}_cpu_us_per_fix"] = round(statistics.median(cpu[name]), 1)
        runner.results[f"{name}_cpu_us_per_fix_samples"] = [round(c, 1) for c in cpu[name]]


def stream_contender(
    runner: Bench, name: str, payloads: list[bytes], expected_rows: int, attempt: int
) -> tuple[float, float]:
    """(seconds, CPU seconds) of a stream contender (a subprocess) from its "ready" log line
    to every entry acked and every row committed; the fixes are in the stream before."""
    url, stream = runner.schema(f"{name}{attempt}"), runner.stream(f"{name}{attempt}")
    runner.preload(stream, payloads)
    daemon = runner.daemon(url, stream, module=STREAM_CONTENDERS[name])
    try:
        started = daemon.wait_ready()
        cpu = daemon.cpu_s()
        finished = runner.wait_caught_up(stream, timeout_s=600, daemon=daemon)
        cpu = daemon.cpu_s() - cpu
        if name == "processor":
            daemon.terminate()
    finally:
        daemon.kill()
    runner.check_rows(name, url, expected_rows)
    return finished - started, cpu
