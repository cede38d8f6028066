"""`just bench --quick`: the benchmark runs end to end and writes every figure.

Only that the figures exist and are sane: speed is reported by the benchmark, not asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import psycopg
import pytest
from benchmarks.rounds import round_order

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "processor_rate",
    "raw_rate",
    "baseline_rate",
    "minimal_rate",
    "ratio_vs_raw",
    "ratio_vs_baseline",
    "ratio_vs_minimal",
    "processor_cpu_us_per_fix",
    "minimal_cpu_us_per_fix",
    "raw_cpu_us_per_fix",
    "cpu_vs_minimal",
    "startup_ready_s",
    "startup_import_s",
    "startup_ratio",
    "p50_e2e_ms",
    "p95_e2e_ms",
    "p99_e2e_ms",
    "rss_mb_100k_devices",
    "drain_s",
    "live_quiet_p99_ms",
    "live_storm_p99_ms",
    "live_p99_ratio",
    "live_resubscribes",
    "live_snapshot_reads",
    "history_6h_car_ratio",
    "history_10min_200_cars_ratio",
    "domain_rate",
    "ingest_domain_on_rate",
    "ingest_domain_off_rate",
    "domain_ingest_ratio",
)


CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_writes_every_figure(
    redis_server_url: str, postgres_server_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "bench-results.json"
    proc = subprocess.run(
        # what `just bench --quick` runs: the benchmark from the checkout, not a CLI command
        [sys.executable, "-m", "benchmarks.run", "--quick", "--output", str(output)],
        env={**os.environ, "REDIS_URL": redis_server_url, "DATABASE_URL": postgres_server_url},
        cwd=CHECKOUT,
        capture_output=True,
        check=False,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    results = orjson.loads(output.read_bytes())
    missing = [key for key in KEYS if key not in results]
    assert not missing
    assert all(results[key] > 0 for key in KEYS)
    assert results["ratio_vs_raw"] == pytest.approx(
        results["processor_rate"] / results["raw_rate"], abs=0.001
    )
    assert results["p50_e2e_ms"] <= results["p95_e2e_ms"] <= results["p99_e2e_ms"]
    assert results["state_devices"] == 10_000  # the quick size, all of them in state
    assert results["rows"] == 19_186  # the seeded scenario: the same rows every run
    # five launches and five bare imports, medians reported, and their ratio
    assert len(results["startup_ready_s_samples"]) == len(results["startup_import_s_samples"]) == 5
    assert results["startup_ratio"] == pytest.approx(
        results["startup_ready_s"] / results["startup_import_s"], abs=0.001
    )
    assert set(results["targets_met"]) == {
        "ratio_vs_raw",
        "ratio_vs_minimal",
        "cpu_vs_minimal",
        "ratio_vs_baseline",
        "startup_ratio",
        "p99_e2e_ms",
        "rss_mb_100k_devices",
        "drain_s",
        "live_p99_ratio",
        "domain_ingest_ratio",
        "domain_finished_fixes_loaded_last",
    }
    # resubscribes to one event share snapshot reads (at most one per event and second)
    assert results["live_snapshot_reads"] < results["live_resubscribes"]
    assert results["domain_controls"] == 40
    assert results["domain_lag_median"] <= results["domain_lag_max"]
    assert results["domain_timing_records"] > 0  # the cars really were timed
    # the history figures: 21,600 and 120,000 fixes, each simplified to the default 20,000 points
    assert results["history_6h_car_fixes"] == 21_600
    assert results["history_10min_200_cars_fixes"] == 120_000
    assert results["history_10min_200_cars_points"] <= 20_000
    # a finished entry's later fixes are never read again
    assert results["domain_finished_fixes_loaded_last"] == 0
    assert "ratio_vs_raw" in proc.stdout.decode() or "processor / raw" in proc.stdout.decode()
    # nothing left behind: this run's schemas were dropped
    with psycopg.connect(postgres_server_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE %s", (f"bench%{results['run']}",)
        ).fetchone()
    assert left == (0,)


def test_rounds_alternate_the_order_of_the_contenders() -> None:
    """A drift during a run must not always fall on the same contender (benchmarks/rounds.py)."""
    names = ("raw", "processor", "minimal")
    orders = [round_order(names, attempt) for attempt in range(3)]
    assert orders == [list(names), list(reversed(names)), list(names)]
