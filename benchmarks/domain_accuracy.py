"""Measure the timing core's errors on many exact tracks (docs/racing-domain.md): a one-off, not a
test.

    .venv/bin/python -m benchmarks.domain_accuracy [--tracks 10000] [--seed 1]

Draws the same scenarios as `tests/unit/domain/rules/test_domain_accuracy.py` (a start line, a
waypoint, a checkpoint and a finish on a great circle, 1 Hz fixes with random phase, exact speeds)
with `random` instead of hypothesis, half at constant speed and half accelerating, and prints the
maximum and 99th-percentile errors of each kind. `--linear` turns the constant-acceleration
model off (to see what it buys).
"""

from __future__ import annotations

import argparse
import random

from tests.support.tracks import Errors, Motion, Scenario, errors_of

import processor.domain.rules.passes as passes_module


def scenario(rng: random.Random, accelerating: bool) -> Scenario:
    v0 = rng.uniform(5.0, 60.0)
    radius = rng.uniform(10.0, 200.0)
    offset = rng.uniform(-0.95, 0.95) * radius
    s_start = 2.0 * v0 + rng.uniform(5.0, 30.0)
    s_waypoint = s_start + radius + rng.uniform(10.0, 80.0)
    s_checkpoint = s_waypoint + radius + rng.uniform(10.0, 80.0)
    s_finish = s_checkpoint + rng.uniform(10.0, 80.0)
    accel = 0.0
    if accelerating:
        accel = rng.uniform(0.3, 3.0) * rng.choice((-1.0, 1.0))
        accel = max(accel, (4.0 - v0 * v0) / (2.0 * (s_finish + 100.0)))
    motion = Motion(
        origin_lat=rng.uniform(-70.0, 70.0),
        origin_lon=rng.uniform(-180.0, 180.0),
        bearing=rng.uniform(0.0, 360.0),
        v0=v0,
        accel=accel,
    )
    return Scenario(
        motion,
        rng.random(),
        s_start,
        s_waypoint,
        s_checkpoint,
        s_finish,
        offset,
        radius,
        (rng.uniform(15.0, 165.0), rng.uniform(15.0, 165.0), rng.uniform(15.0, 165.0)),
        tuple(rng.uniform(3.0, 40.0) for _ in range(6)),
    )


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, errors: list[Errors]) -> None:
    columns = {
        "line crossing (s)": [e.line for e in errors],
        "waypoint time (s)": [e.waypoint_s for e in errors],
        "waypoint distance (m)": [e.waypoint_m for e in errors],
    }
    print(f"{name}: {len(errors)} tracks")
    for label, values in columns.items():
        print(
            f"  {label:22} max {max(values):.3g}  p99 {_quantile(values, 0.99):.3g}  "
            f"median {_quantile(values, 0.5):.3g}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--linear", action="store_true", help="interpolate linearly only")
    args = parser.parse_args()
    if args.linear:
        passes_module.accelerating = lambda *_: False  # type: ignore[attr-defined]
    rng = random.Random(args.seed)
    half = args.tracks // 2
    report("constant speed", [errors_of(scenario(rng, False)) for _ in range(half)])
    report("constant acceleration", [errors_of(scenario(rng, True)) for _ in range(half)])


if __name__ == "__main__":
    main()
