"""The benchmark's own checks, without running it: `just bench` (CI: `just bench --quick`)
exits non-zero when a figure is missing or insane (benchmarks/sanity.py); these tests pin that
judgement, and the order of the contenders within its rounds."""

from __future__ import annotations

from typing import Any

from benchmarks.rounds import round_order
from benchmarks.sanity import FIGURES, QUICK_DEVICES, QUICK_ROWS, TARGETS, problems


def a_good_quick_run() -> dict[str, Any]:
    results: dict[str, Any] = dict.fromkeys(FIGURES, 2.0)
    results.update(
        processor_rate=50_000.0,
        raw_rate=100_000.0,
        ratio_vs_raw=0.5,
        startup_ready_s=0.6,
        startup_import_s=0.2,
        startup_ratio=3.0,
        p50_e2e_ms=10.0,
        p95_e2e_ms=20.0,
        p99_e2e_ms=30.0,
        startup_ready_s_samples=[0.6] * 5,
        startup_import_s_samples=[0.2] * 5,
        targets_met=sorted(TARGETS),
        live_snapshot_reads=10,
        live_resubscribes=400,
        domain_controls=40,
        domain_lag_median=0.1,
        domain_lag_max=0.5,
        domain_timing_records=80,
        domain_finished_fixes_loaded_last=0,
        history_6h_car_fixes=21_600,
        history_10min_200_cars_fixes=120_000,
        history_10min_200_cars_points=20_000,
        state_devices=QUICK_DEVICES,
        rows=QUICK_ROWS,
    )
    return results


def test_a_complete_sane_run_has_no_problem() -> None:
    assert problems(a_good_quick_run(), quick=True) == []


def test_a_missing_figure_is_a_problem() -> None:
    results = a_good_quick_run()
    del results["drain_s"]
    assert problems(results, quick=True) == ["missing figures: drain_s"]


def test_insane_figures_are_problems() -> None:
    results = a_good_quick_run()
    results.update(live_p99_ratio=0.0, p50_e2e_ms=40.0, ratio_vs_raw=0.7, rows=19_000)
    assert problems(results, quick=True) == [
        "live_p99_ratio = 0.0 (not a positive number)",
        "ratio_vs_raw is not processor_rate / raw_rate",
        "e2e percentiles out of order",
        f"rows is not {QUICK_ROWS} (the seeded scenario)",
    ]
    # the quick sizes are not a full run's
    assert len(problems(results, quick=False)) == 3


def test_rounds_alternate_the_order_of_the_contenders() -> None:
    """A drift during a run must not always fall on the same contender (benchmarks/rounds.py)."""
    names = ("raw", "processor", "minimal")
    orders = [round_order(names, attempt) for attempt in range(3)]
    assert orders == [list(names), list(reversed(names)), list(names)]
