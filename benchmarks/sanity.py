"""Whether a benchmark run produced every figure, each sane: what `just bench` checks of itself.

Speed is reported, never asserted (CI machines are shared and noisy). What is asserted is that a
full run measured everything: every figure present and positive, the percentiles in order, the
ratios computed from their own figures, the sizes the seeded scenario fixes. A run that lost a
figure exits non-zero, so CI's `just bench --quick` fails instead of printing a table with a hole.
"""

from __future__ import annotations

import math
from typing import Any

# Present and > 0 after a run of every phase.
FIGURES = (
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
# Every target judged (`targets_met` names the ones met or missed alike).
TARGETS = {
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
STARTUP_LAUNCHES = 5
QUICK_DEVICES = 10_000  # the quick memory phase: all of them in state
QUICK_ROWS = 19_186  # the seeded quick scenario: the same rows every run


def problems(results: dict[str, Any], *, quick: bool) -> list[str]:
    """What is missing or insane in the results of a run of every phase (empty: all good)."""
    missing = [key for key in FIGURES if key not in results]
    if missing:
        return [f"missing figures: {', '.join(missing)}"]
    found = [
        f"{key} = {results[key]!r} (not a positive number)"
        for key in FIGURES
        if not (isinstance(results[key], int | float) and math.isfinite(results[key]))
        or results[key] <= 0
    ]

    def check(ok: bool, what: str) -> None:
        if not ok:
            found.append(what)

    r = results
    check(
        math.isclose(r["ratio_vs_raw"], r["processor_rate"] / r["raw_rate"], abs_tol=0.001),
        "ratio_vs_raw is not processor_rate / raw_rate",
    )
    check(r["p50_e2e_ms"] <= r["p95_e2e_ms"] <= r["p99_e2e_ms"], "e2e percentiles out of order")
    check(
        len(r.get("startup_ready_s_samples", ())) == STARTUP_LAUNCHES
        and len(r.get("startup_import_s_samples", ())) == STARTUP_LAUNCHES,
        f"startup: not {STARTUP_LAUNCHES} launches and {STARTUP_LAUNCHES} bare imports",
    )
    check(
        math.isclose(
            r["startup_ratio"], r["startup_ready_s"] / r["startup_import_s"], abs_tol=0.001
        ),
        "startup_ratio is not startup_ready_s / startup_import_s",
    )
    check(set(r.get("targets_met", ())) == TARGETS, "targets_met does not judge every target")
    # resubscribes to one event share snapshot reads (at most one per event and second)
    check(r["live_snapshot_reads"] < r["live_resubscribes"], "snapshot reads are not shared")
    check(r.get("domain_controls") == 40, "the domain stage does not have 40 controls")
    check(
        r.get("domain_lag_median", math.inf) <= r.get("domain_lag_max", -math.inf),
        "domain lag: median above max",
    )
    check(r.get("domain_timing_records", 0) > 0, "the domain timed no car")
    # a finished entry's later fixes are never read again
    check(r.get("domain_finished_fixes_loaded_last") == 0, "a finished entry's fixes were read")
    # 21,600 and 120,000 fixes, each simplified to the default 20,000 points at most
    check(r.get("history_6h_car_fixes") == 21_600, "history: not a 6 h track at 1 Hz")
    check(r.get("history_10min_200_cars_fixes") == 120_000, "history: not 10 min of 200 cars")
    check(r.get("history_10min_200_cars_points", math.inf) <= 20_000, "history: not simplified")
    if quick:
        check(r.get("state_devices") == QUICK_DEVICES, f"state_devices is not {QUICK_DEVICES}")
        check(r.get("rows") == QUICK_ROWS, f"rows is not {QUICK_ROWS} (the seeded scenario)")
    return found
