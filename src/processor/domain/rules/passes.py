"""Finding one control's first pass on a track after a given time (docs/racing-domain.md).

Invariants: a forward line pass goes from strictly left to on-or-right of the line (counted once,
never in reverse); a waypoint visit is clipped to the stretch between the previous control's
pass and the finish; each pass depends only on the track from the previous pass on, and its
time is rounded to the microsecond as stored, so resuming from stored passes equals a full
evaluation. The exact rules: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

import math

from processor.domain.rules.course import Circle, Line
from processor.domain.rules.instants import on_microsecond
from processor.domain.rules.kinematics import (
    accelerating,
    fraction_at,
    speed_at,
    time_at,
)
from processor.domain.rules.model import Pass
from processor.domain.rules.track import BLOCK, Track


def first_crossing(track: Track, line: Line, after: float, before: float) -> Pass | None:
    """The first forward crossing of `line` at a time in (after, before), or None."""
    ts, lats, lons, speeds = track.t, track.lat, track.lon, track.speed
    n = len(ts)
    k = track.segment_at(after)
    if k >= n - 1:
        return None
    frame = line.frame
    lat0, lon0, kx, ky = frame.lat0, frame.lon0, frame.kx, frame.ky
    x1, y1, dx, dy, length2 = line.x1, line.y1, line.dx, line.dy, line.length2

    box = line.box
    ax = ay = sa = 0.0
    restart = True  # (ax, ay, sa) must be computed for fix k
    while k < n - 1:
        if restart or k % BLOCK == 0:
            near = track.next_near(k, box)
            if near != k:
                k, restart = near, True
                continue
            if restart:
                dl = lons[k] - lon0
                if dl > 180.0:
                    dl -= 360.0
                elif dl < -180.0:
                    dl += 360.0
                ax = dl * kx
                ay = (lats[k] - lat0) * ky
                sa = dx * (ay - y1) - dy * (ax - x1)
                restart = False
        t0 = ts[k]
        if t0 >= before:
            return None
        dl = lons[k + 1] - lon0
        if dl > 180.0:
            dl -= 360.0
        elif dl < -180.0:
            dl += 360.0
        bx = dl * kx
        by = (lats[k + 1] - lat0) * ky
        sb = dx * (by - y1) - dy * (bx - x1)
        if sa > 0.0 and sb <= 0.0:
            f = sa / (sa - sb)
            cx = ax + f * (bx - ax) - x1
            cy = ay + f * (by - ay) - y1
            u = (cx * dx + cy * dy) / length2
            if 0.0 <= u <= 1.0:
                t1 = ts[k + 1]
                dt = t1 - t0
                v0, v1 = speeds[k], speeds[k + 1]
                accel = accelerating(dt, math.hypot(bx - ax, by - ay), v0, v1)
                when = t1 if f >= 1.0 else on_microsecond(t0 + time_at(f, dt, v0, v1, accel))
                if when > after:
                    if when >= before:
                        return None
                    return Pass(line.control.id, when, speed_at(f, v0, v1, accel), 0.0, t0, t1)
        ax, ay, sa = bx, by, sb
        k += 1
    return None


def first_visit(track: Track, circle: Circle, after: float, before: float) -> Pass | None:
    """The first visit of `circle` on the track between `after` and `before` (both included)."""
    ts, lats, lons, speeds = track.t, track.lat, track.lon, track.speed
    n = len(ts)
    k0 = track.segment_at(after)
    if k0 >= n - 1:
        return None
    frame = circle.frame
    lat0, lon0, kx, ky = frame.lat0, frame.lon0, frame.kx, frame.ky
    r = circle.radius_m
    r2 = r * r

    def project(i: int) -> tuple[float, float]:
        dl = lons[i] - lon0
        if dl > 180.0:
            dl -= 360.0
        elif dl < -180.0:
            dl += 360.0
        return dl * kx, (lats[i] - lat0) * ky

    def visit(fix_after: float | None) -> Pass | None:
        """The pass of the visit found, at its closest point (segment best_k, fraction best_g)."""
        t0, t1 = ts[best_k], ts[best_k + 1]
        v0, v1 = speeds[best_k], speeds[best_k + 1]
        (ax, ay), (bx, by) = project(best_k), project(best_k + 1)
        accel = accelerating(t1 - t0, math.hypot(bx - ax, by - ay), v0, v1)
        if best_clip is not None:
            when = best_clip
        elif best_g >= 1.0:
            when = t1
        else:  # within [after, before], also by rounding
            when = min(
                before, max(after, on_microsecond(t0 + time_at(best_g, t1 - t0, v0, v1, accel)))
            )
        speed = speed_at(best_g, v0, v1, accel)
        return Pass(circle.control.id, when, speed, math.sqrt(best_d2), fix_before, fix_after)

    box = circle.box
    ax = ay = 0.0
    restart = True  # (ax, ay) must be computed for fix k
    in_visit = False
    fix_before = 0.0
    best_d2 = math.inf
    best_k = k0
    best_g = 0.0
    best_clip: float | None = None  # the closest point is a clip point: exactly after/before
    k = k0
    while k < n - 1:
        if not in_visit and (restart or k % BLOCK == 0):
            near = track.next_near(k, box)
            if near != k:
                k, restart = near, True
                continue
            if restart:
                ax, ay = project(k)
                restart = False
        t0 = ts[k]
        if not in_visit and t0 >= before:
            return None
        bx, by = project(k + 1)
        if not in_visit and (
            (ax > r and bx > r)
            or (ax < -r and bx < -r)
            or (ay > r and by > r)
            or (ay < -r and by < -r)
        ):
            ax, ay = bx, by
            k += 1
            continue
        t1 = ts[k + 1]
        # the part of this segment that counts: from `after` (first segment) to `before`
        g_lo = 0.0
        g_hi = 1.0
        ends = t1 >= before  # the segment holding `before` ends any visit
        if (k == k0 and after > t0) or (ends and before < t1):
            v0, v1 = speeds[k], speeds[k + 1]
            accel = accelerating(t1 - t0, math.hypot(bx - ax, by - ay), v0, v1)
            if k == k0 and after > t0:
                g_lo = fraction_at(after - t0, t1 - t0, v0, v1, accel)
            if ends and before < t1:
                g_hi = max(g_lo, fraction_at(before - t0, t1 - t0, v0, v1, accel))
        ex, ey = bx - ax, by - ay
        e2 = ex * ex + ey * ey
        g = g_lo
        if e2 > 0.0:
            g = -(ax * ex + ay * ey) / e2
            g = g_lo if g < g_lo else (min(g, g_hi))
        px, py = ax + g * ex, ay + g * ey
        d2 = px * px + py * py
        if not in_visit and d2 <= r2:
            in_visit = True
            fix_before = t0
        if in_visit:
            if d2 < best_d2:
                best_d2, best_k, best_g = d2, k, g
                best_clip = (
                    after if g_lo > 0.0 and g == g_lo else before if ends and g == g_hi else None
                )
            if ends or bx * bx + by * by > r2:
                return visit(t1)
        elif ends:
            return None
        ax, ay = bx, by
        k += 1
    return visit(None) if in_visit else None
