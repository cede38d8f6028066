"""Percentiles from the daemon's latency histogram and from raw samples.

The histogram's quantile is interpolated within the bucket that holds it, as Prometheus'
`histogram_quantile` does, so the benchmark reads the figure an operator's dashboard would.
"""

from __future__ import annotations

Samples = dict[str, list[tuple[dict[str, str], float]]]


def e2e_histogram(samples: Samples) -> list[tuple[float, float]]:
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
