"""Micro-benchmark of the timing core: fixes evaluated per second on a 40-control stage, one core.

    .venv/bin/python -m benchmarks.domain_eval [--fixes 3600] [--repeat 7]

A car drives a winding 1 Hz route (about 90 km/h, speeds varying, so the constant-acceleration
model is in play) through a start, 38 intermediate controls (waypoints and checkpoint lines,
alternating) and a finish. Three figures, medians of `--repeat` runs:

* `full`: `evaluate_entry` from scratch over the whole track (what `timing rebuild` does);
* `missed`: the same with every other intermediate control moved 300 m off the route (each missed
  control scans the track up to the finish: the expensive case);
* `resume`: the engine's steady state: fixes arrive in batches of 10 and each batch is evaluated
  from `settled_prefix` of the previous result, with the fixes from its last `fix_before` on;
  reported as new fixes per second.
"""

from __future__ import annotations

import argparse
import bisect
import math
import statistics
import time

from processor.domain.rules.geometry import LocalFrame
from processor.domain.rules.model import Control, ControlKind, Fix, Pass, Stage
from processor.domain.rules.timing import evaluate_entry, settled_prefix

T0 = 1_767_225_600.0
CONTROLS = 40


def route(count: int) -> tuple[list[tuple[float, float, float]], list[Fix]]:
    """Points (x, y, heading) and fixes of a winding drive at varying speed."""
    frame = LocalFrame.at(41.3, 19.8)
    x = y = 0.0
    heading = 60.0
    points = []
    fixes = []
    for k in range(count):
        speed = 25.0 + 6.0 * math.sin(k / 45.0)  # m/s
        lat, lon = frame.unproject(x, y)
        fixes.append(Fix(T0 + k, lat, lon, speed * 3.6))
        points.append((x, y, heading))
        heading += 3.0 * math.sin(k / 70.0)
        x += speed * math.sin(math.radians(heading))
        y += speed * math.cos(math.radians(heading))
    return points, fixes


def stage(points: list[tuple[float, float, float]], miss_every_other: bool) -> Stage:
    frame = LocalFrame.at(41.3, 19.8)
    step = len(points) // CONTROLS
    controls = []
    for n in range(CONTROLS):
        x, y, heading = points[n * step + step // 2]
        kind = ControlKind.START if n == 0 else ControlKind.FINISH if n == CONTROLS - 1 else None
        if kind is None and n % 2 == 1:
            off = 300.0 if miss_every_other and n % 4 == 1 else 10.0
            lat, lon = frame.unproject(x + off, y)
            controls.append(
                Control(
                    f"w{n}",
                    n,
                    ControlKind.WAYPOINT,
                    latitude=lat,
                    longitude=lon,
                    validate_radius_m=50.0,
                    penalty_s=60,
                )
            )
            continue
        left = math.radians(heading - 90.0)
        off = 300.0 if miss_every_other and n % 4 == 2 and kind is None else 0.0
        lat1, lon1 = frame.unproject(x + off - 30.0 * math.sin(left), y - 30.0 * math.cos(left))
        lat2, lon2 = frame.unproject(x + off + 30.0 * math.sin(left), y + 30.0 * math.cos(left))
        controls.append(
            Control(
                f"c{n}",
                n,
                kind or ControlKind.CHECKPOINT,
                lat1=lat1,
                lon1=lon1,
                lat2=lat2,
                lon2=lon2,
                penalty_s=60,
            )
        )
    return Stage("bench", tuple(controls))


def full_rate(st: Stage, fixes: list[Fix], repeat: int) -> tuple[float, int, int]:
    rates = []
    result = evaluate_entry(st, fixes)
    for _ in range(repeat):
        started = time.perf_counter()
        result = evaluate_entry(st, fixes)
        rates.append(len(fixes) / (time.perf_counter() - started))
    return statistics.median(rates), result.controls_passed, result.controls_missed


def resume_rate(st: Stage, fixes: list[Fix], repeat: int, batch: int = 10) -> float:
    rates = []
    times = [f.t for f in fixes]
    for _ in range(repeat):
        passes: tuple[Pass, ...] = ()
        started = time.perf_counter()
        for end in range(batch, len(fixes) + 1, batch):
            t = fixes[end - batch].t
            kept = settled_prefix(st, passes, t)
            # what the engine's query returns: the fixes from the last kept pass's fix_before on
            first = bisect.bisect_left(times, kept[-1].fix_before) if kept else 0
            passes = evaluate_entry(st, fixes[first:end], kept).passes
        rates.append(len(fixes) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixes", type=int, default=3600)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    points, fixes = route(args.fixes)
    normal = stage(points, miss_every_other=False)
    missing = stage(points, miss_every_other=True)
    rate, passed, missed = full_rate(normal, fixes, args.repeat)
    print(f"full:   {rate:10,.0f} fixes/s  ({len(fixes)} fixes, {passed} passes, {missed} missed)")
    rate, passed, missed = full_rate(missing, fixes, args.repeat)
    print(f"missed: {rate:10,.0f} fixes/s  ({len(fixes)} fixes, {passed} passes, {missed} missed)")
    print(
        f"resume: {resume_rate(normal, fixes, max(1, args.repeat // 3)):10,.0f} new fixes/s "
        "(batches of 10, resumed from the settled prefix)"
    )


if __name__ == "__main__":
    main()
