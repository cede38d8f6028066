"""When, between two fixes, the entry was at a given point of the segment joining them.

A segment is travelled from fix A (time 0) to fix B (time `dt`); `g` is the fraction of its
length already covered. Constant acceleration when both speeds are plausible (v(g) =
sqrt((1-g)·v0² + g·v1²), τ(g) = g·dt·(v0+v1)/(v0+v(g)), scaled to the measured length),
otherwise linear by distance (τ = g·dt). Speeds are km/h throughout. The models, the
plausibility test and the speed at a pass: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

import math

PLAUSIBLE_REL = 0.25
PLAUSIBLE_ABS_M = 2.0
_KMH = 1.0 / 3.6


def accelerating(dt: float, length_m: float, v0: float | None, v1: float | None) -> bool:
    """Whether the constant-acceleration model applies (see the module docstring)."""
    if v0 is None or v1 is None:
        return False
    if not (v0 >= 0.0 and v1 >= 0.0) or v0 + v1 <= 0.0 or v0 == v1:
        # v0 == v1: constant speed is exactly the linear model; take the exact path.
        return False
    implied = (v0 + v1) * 0.5 * _KMH * dt
    return abs(implied - length_m) <= PLAUSIBLE_REL * length_m + PLAUSIBLE_ABS_M


def time_at(g: float, dt: float, v0: float | None, v1: float | None, accel: bool) -> float:
    """Seconds after fix A at which fraction `g` of the segment is reached."""
    if not accel:
        return g * dt
    assert v0 is not None
    assert v1 is not None
    vg = math.sqrt((1.0 - g) * v0 * v0 + g * v1 * v1)
    denominator = v0 + vg
    if denominator <= 0.0:  # v0 = 0 and g = 0: the very start
        return 0.0
    return min(dt, g * dt * (v0 + v1) / denominator)


def speed_at(g: float, v0: float | None, v1: float | None, accel: bool) -> float | None:
    """The interpolated speed (km/h) at fraction `g`."""
    if accel:
        assert v0 is not None
        assert v1 is not None
        return math.sqrt((1.0 - g) * v0 * v0 + g * v1 * v1)
    if v0 is None:
        return v1
    if v1 is None:
        return v0
    if v0 == v1:
        return v0
    return v0 + (v1 - v0) * g


def fraction_at(tau: float, dt: float, v0: float | None, v1: float | None, accel: bool) -> float:
    """The inverse of `time_at`: the fraction covered `tau` seconds after fix A, in [0, 1]."""
    if tau <= 0.0:
        return 0.0
    if tau >= dt:
        return 1.0
    if not accel:
        return tau / dt
    assert v0 is not None
    assert v1 is not None
    a = (v1 - v0) / dt
    covered = v0 * tau + 0.5 * a * tau * tau
    total = (v0 + v1) * 0.5 * dt
    return min(1.0, max(0.0, covered / total))
