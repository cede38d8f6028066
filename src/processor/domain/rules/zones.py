"""Speed zones: violations from an entry's track between two controls (pure code).

A zone is in force from the entry's pass of its start control to its pass of its end control
(before that pass, up to the newest fix, so a violation shows as it happens). A violation is a
maximal run of fixes above `limit + tolerance` lasting at least `min_duration_s`; `excess_kmh`
is measured from the limit and picks the penalty bracket. The definitions: docs/racing-domain.md
(Speed zones); the exact rules: Engine internals.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, TypeGuard

import attrs

from processor.domain.rules.geometry import haversine_m
from processor.domain.rules.model import MAX_PENALTY_S, Fix


class ZoneError(ValueError):
    """A zone definition the processor refuses (logged; the zone is ignored)."""


@attrs.frozen(slots=True)
class Bracket:
    up_to_kmh: float | None  # None: open-ended
    penalty_s: int


@attrs.frozen(slots=True)
class Zone:
    id: str
    start_control_id: str
    end_control_id: str
    limit_kmh: float
    tolerance_kmh: float
    min_duration_s: float
    brackets: tuple[Bracket, ...]

    def penalty_for(self, excess_kmh: float) -> int:
        for bracket in self.brackets:
            if bracket.up_to_kmh is None or excess_kmh <= bracket.up_to_kmh:
                return bracket.penalty_s
        return self.brackets[-1].penalty_s


@attrs.frozen(slots=True)
class Violation:
    zone_id: str
    started_at: float
    ended_at: float
    max_speed_kmh: float
    excess_kmh: float
    distance_m: float
    penalty_s: int


def parse_brackets(value: Any) -> tuple[Bracket, ...]:
    """`[{"up_to_kmh": 20, "penalty_s": 60}, ..., {"penalty_s": 180}]` -> brackets (raises
    ZoneError): at least one, penalties >= 0, `up_to_kmh` strictly increasing, only the last
    may omit it."""
    if not isinstance(value, list) or not value:
        raise ZoneError("penalties must be a non-empty list of brackets")
    brackets: list[Bracket] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ZoneError(f"penalty bracket {i} is not an object")
        penalty = item.get("penalty_s")
        if not _number(penalty) or not 0 <= round(penalty) <= MAX_PENALTY_S:
            raise ZoneError(
                f"penalty bracket {i}: penalty_s must be a number from 0 to {MAX_PENALTY_S}, "
                f"is {penalty!r}"
            )
        up_to = item.get("up_to_kmh")
        if up_to is None:
            if i != len(value) - 1:
                raise ZoneError(f"penalty bracket {i}: only the last may omit up_to_kmh")
        elif not _number(up_to) or up_to <= 0:
            raise ZoneError(f"penalty bracket {i}: up_to_kmh must be a finite number > 0")
        elif brackets and (brackets[-1].up_to_kmh or 0) >= up_to:
            raise ZoneError(f"penalty bracket {i}: up_to_kmh must increase")
        brackets.append(Bracket(None if up_to is None else float(up_to), round(penalty)))
    return tuple(brackets)


def _number(value: Any) -> TypeGuard[float]:
    """A finite JSON number (a boolean is not one)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_zone(zone: Zone, control_ordinals: dict[str, int]) -> None:
    """Raise ZoneError unless the zone's controls belong to the stage, in course order."""
    start = control_ordinals.get(zone.start_control_id)
    end = control_ordinals.get(zone.end_control_id)
    if start is None or end is None:
        raise ZoneError(f"zone {zone.id}: its controls are not controls of its stage")
    if start >= end:
        raise ZoneError(f"zone {zone.id}: the start control must come before the end control")
    if not math.isfinite(zone.limit_kmh) or zone.limit_kmh <= 0:
        raise ZoneError(f"zone {zone.id}: limit_kmh must be > 0")
    for name, value in (
        ("tolerance_kmh", zone.tolerance_kmh),
        ("min_duration_s", zone.min_duration_s),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ZoneError(f"zone {zone.id}: {name} must be a finite number >= 0, is {value!r}")


def violations(zone: Zone, fixes: Sequence[Fix], entered: float, left: float) -> list[Violation]:
    """The zone's violations among `fixes` (sorted by time) with entered <= t <= left."""
    threshold = zone.limit_kmh + zone.tolerance_kmh
    found: list[Violation] = []
    run: list[Fix] = []

    def close() -> None:
        if not run:
            return
        if run[-1].t - run[0].t >= zone.min_duration_s:
            peak = max(f.speed_kmh or 0.0 for f in run)
            excess = peak - zone.limit_kmh
            length = sum(
                haversine_m(a.latitude, a.longitude, b.latitude, b.longitude)
                for a, b in itertools.pairwise(run)
            )
            found.append(
                Violation(
                    zone_id=zone.id,
                    started_at=run[0].t,
                    ended_at=run[-1].t,
                    max_speed_kmh=peak,
                    excess_kmh=excess,
                    distance_m=length,
                    penalty_s=zone.penalty_for(excess),
                )
            )
        run.clear()

    for fix in fixes:
        if fix.t < entered or fix.t > left:
            continue
        if fix.speed_kmh is not None and fix.speed_kmh > threshold:
            run.append(fix)
        else:
            close()
    close()
    return found
