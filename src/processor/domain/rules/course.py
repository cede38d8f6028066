"""A stage's course checked and prepared for evaluation, or a `StageError` saying what is wrong.

A stage is edited by people in Directus, so a malformed one is an expected state, not a bug: the
engine catches `StageError`, logs its message and skips that stage until it is fixed. Checked:
at least a start and a finish; exactly one start, at the lowest ordinal; exactly one finish, at the
highest; distinct ordinals (course order must be unambiguous); every line with both points,
finite, in range and at least 1 cm long; every waypoint with a finite centre and a radius > 0;
penalties >= 0; a window that is not empty.
"""

from __future__ import annotations

import functools
import math
import weakref

import attrs

from processor.domain.rules.geometry import LocalFrame, midpoint
from processor.domain.rules.model import MAX_PENALTY_S, Control, ControlKind, Stage

MIN_LINE_M = 0.01
_BOX_PAD_DEG = 1e-9  # ~0.1 mm: rounding between degrees and metres never loses a pass

Box = tuple[float, float, float, float]  # lat_lo, lat_hi, lon_lo, lon_hi (degrees)


class StageError(ValueError):
    """The stage cannot be evaluated as defined; the message names the stage, control and field."""


@attrs.frozen(slots=True)
class Line:
    """A line control in its own frame: point 1 at (x1, y1), direction (dx, dy) to point 2."""

    control: Control
    frame: LocalFrame
    x1: float
    y1: float
    dx: float
    dy: float
    length2: float  # |d|², squared metres
    box: Box | None  # where a segment must reach to cross it (None: across the antimeridian)


@attrs.frozen(slots=True)
class Circle:
    """A waypoint in the frame centred on it."""

    control: Control
    frame: LocalFrame
    radius_m: float
    box: Box | None  # the circle's bounding box (None: across the antimeridian)


Target = Line | Circle


@attrs.frozen(slots=True)
class Course:
    """The stage ready to evaluate: `targets` in course order (start first, finish last)."""

    stage: Stage
    targets: tuple[Target, ...]
    index: dict[str, int]  # control id -> position in `targets`

    @property
    def start(self) -> Line:
        first = self.targets[0]
        assert isinstance(first, Line)
        return first

    @property
    def finish(self) -> Line:
        last = self.targets[-1]
        assert isinstance(last, Line)
        return last


def _coordinate(stage: Stage, control: Control, name: str, limit: float) -> float:
    value = getattr(control, name)
    if value is None:
        raise StageError(
            f"stage {stage.id}: {control.kind} control {control.id} "
            f"(ordinal {control.ordinal}) has no {name}"
        )
    if not math.isfinite(value) or abs(value) > limit:
        raise StageError(
            f"stage {stage.id}: control {control.id} (ordinal {control.ordinal}) "
            f"has {name} {value!r} out of range"
        )
    return float(value)


def _line(stage: Stage, control: Control) -> Line:
    lat1 = _coordinate(stage, control, "lat1", 90.0)
    lon1 = _coordinate(stage, control, "lon1", 180.0)
    lat2 = _coordinate(stage, control, "lat2", 90.0)
    lon2 = _coordinate(stage, control, "lon2", 180.0)
    frame = LocalFrame.at(*midpoint(lat1, lon1, lat2, lon2))
    x1, y1 = frame.project(lat1, lon1)
    x2, y2 = frame.project(lat2, lon2)
    dx, dy = x2 - x1, y2 - y1
    length2 = dx * dx + dy * dy
    if not length2 >= MIN_LINE_M * MIN_LINE_M:
        raise StageError(
            f"stage {stage.id}: line control {control.id} (ordinal {control.ordinal}) "
            "has its two points at the same place"
        )
    box = None
    if abs(lon2 - lon1) <= 180.0:
        box = (
            min(lat1, lat2) - _BOX_PAD_DEG,
            max(lat1, lat2) + _BOX_PAD_DEG,
            min(lon1, lon2) - _BOX_PAD_DEG,
            max(lon1, lon2) + _BOX_PAD_DEG,
        )
    return Line(control, frame, x1, y1, dx, dy, length2, box)


def _circle(stage: Stage, control: Control) -> Circle:
    lat = _coordinate(stage, control, "latitude", 90.0)
    lon = _coordinate(stage, control, "longitude", 180.0)
    radius = control.validate_radius_m
    if radius is None or not math.isfinite(radius) or radius <= 0.0:
        raise StageError(
            f"stage {stage.id}: waypoint {control.id} (ordinal {control.ordinal}) "
            f"needs validate_radius_m > 0, has {radius!r}"
        )
    frame = LocalFrame.at(lat, lon)
    dlat = radius / frame.ky * 1.000001 + _BOX_PAD_DEG
    dlon = radius / frame.kx * 1.000001 + _BOX_PAD_DEG if frame.kx > 0.0 else math.inf
    box = None
    if lon - dlon >= -180.0 and lon + dlon <= 180.0:
        box = (lat - dlat, lat + dlat, lon - dlon, lon + dlon)
    return Circle(control, frame, float(radius), box)


def _check_order(stage: Stage, controls: list[Control]) -> None:
    if len(controls) < 2:
        raise StageError(f"stage {stage.id}: a course needs a start and a finish")
    ordinals = [c.ordinal for c in controls]
    if len(set(ordinals)) != len(ordinals):
        raise StageError(
            f"stage {stage.id}: two controls share an ordinal; course order is ambiguous"
        )
    starts = [c for c in controls if c.kind is ControlKind.START]
    finishes = [c for c in controls if c.kind is ControlKind.FINISH]
    if len(starts) != 1:
        raise StageError(f"stage {stage.id}: needs exactly one start control, has {len(starts)}")
    if len(finishes) != 1:
        raise StageError(f"stage {stage.id}: needs exactly one finish control, has {len(finishes)}")
    if controls[0].kind is not ControlKind.START:
        raise StageError(f"stage {stage.id}: the start must have the lowest ordinal")
    if controls[-1].kind is not ControlKind.FINISH:
        raise StageError(f"stage {stage.id}: the finish must have the highest ordinal")
    for c in controls:
        if not 0 <= c.penalty_s <= MAX_PENALTY_S:
            raise StageError(
                f"stage {stage.id}: control {c.id} has penalty_s {c.penalty_s}; "
                f"expected 0 to {MAX_PENALTY_S}"
            )
    if (
        stage.opens_at is not None
        and stage.closes_at is not None
        and not stage.opens_at < stage.closes_at
    ):
        raise StageError(f"stage {stage.id}: closes_at is not after opens_at")


def _with_kind(stage: Stage, control: Control) -> Control:
    if isinstance(control.kind, ControlKind):
        return control
    try:
        return attrs.evolve(control, kind=ControlKind(control.kind))
    except ValueError:
        raise StageError(
            f"stage {stage.id}: control {control.id} has an unknown kind {control.kind!r}"
        ) from None


_BY_IDENTITY_CAP = 256
_by_identity: dict[int, tuple[weakref.ref[Stage], Course]] = {}


def course_of(stage: Stage) -> Course:
    """Check and prepare a stage, cached: the engine evaluates the same stage many times.

    First by identity (hashing a 40-control stage costs more than evaluating a short tail of
    fixes), then by value. Both caches are bounded."""
    entry = _by_identity.get(id(stage))
    if entry is not None and entry[0]() is stage:
        return entry[1]
    course = _course_by_value(stage)
    if len(_by_identity) >= _BY_IDENTITY_CAP:
        _by_identity.clear()
    _by_identity[id(stage)] = (weakref.ref(stage), course)
    return course


@functools.lru_cache(maxsize=256)
def _course_by_value(stage: Stage) -> Course:
    controls = sorted((_with_kind(stage, c) for c in stage.controls), key=lambda c: c.ordinal)
    _check_order(stage, controls)
    targets = tuple(_line(stage, c) if c.kind.is_line else _circle(stage, c) for c in controls)
    return Course(stage, targets, {c.id: i for i, c in enumerate(controls)})


def check_stage(stage: Stage) -> None:
    """Raise `StageError` if the stage cannot be evaluated (the engine may call it up front)."""
    course_of(stage)
