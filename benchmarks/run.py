"""The benchmark: how fast the processor stores fixes, against what one could write oneself.

    python -m benchmarks.run [--quick] [--output bench-results.json] [--set NAME=VALUE ...]
                             [--phases NAME,...] [--repeat N] [--keep]

The command line only: it runs the phases in order (`throughput`: raw, baseline, processor,
minimal; `startup`; `steady`: latency, memory, drain; `live`; `domain`; `history`), each a
module that shares `benchmarks.harness` and never imports this one; then it compares the
figures with their targets, writes the JSON and prints the table. What each figure means:
benchmarks/README.md. Without REDIS_URL / DATABASE_URL throwaway servers are started (as
`just demo` does). Speed is reported, never asserted; a run of every phase checks that it has
every figure, each sane (`benchmarks.sanity`), and exits 1 when one is missing or insane.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis

from benchmarks import domain, history, live, sanity, startup, steady, throughput
from benchmarks.harness import FULL, QUICK, SEED, START, bench
from processor.observability.logging import configure_logging
from processor_dev.demo import servers

PHASES = (*throughput.CONTENDERS, "startup", *steady.PHASES, "live", "domain", "history")
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
        ("startup_ready_s", f"launch -> /readyz 200 (median of {startup.LAUNCHES})", " s"),
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
            if phases & set(throughput.CONTENDERS):
                throughput.run(runner, phases)
            if "startup" in phases:
                startup.run(runner)
            if phases & set(steady.PHASES):
                steady.run(runner, phases)
            if "live" in phases:
                live.run(runner)
            if "domain" in phases:
                domain.run(runner, SEED, START)
            if "history" in phases:
                history.run(runner)
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
