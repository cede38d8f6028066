"""The racing domain's vocabulary: plain immutable values shared by the pure core and the engine.

Times are float seconds since the Unix epoch (UTC) inside the pure core: arithmetic on them is
cheap and exact enough (a double near 1.8e9 s resolves ~0.2 µs, far below the 1 µs the database
stores). The engine converts to and from `datetime` at the database boundary.
"""

from __future__ import annotations

import enum

import attrs

# Penalties are stored in `integer` columns (controls.penalty_s, speed_violations.penalty_s): a
# definition beyond it could never be written, so it is refused when the stage is read.
MAX_PENALTY_S = 2_147_483_647


class ControlKind(enum.StrEnum):
    START = "start"
    FINISH = "finish"
    CHECKPOINT = "checkpoint"  # a line, like start and finish
    WAYPOINT = "waypoint"  # a circle: centre and validate_radius_m

    @property
    def is_line(self) -> bool:
        return self is not ControlKind.WAYPOINT


class Status(enum.StrEnum):
    RUNNING = "running"
    FINISHED = "finished"


@attrs.frozen(slots=True)
class Fix:
    """One non-faulty stored fix of an entry's track."""

    t: float  # fix time, seconds since the epoch (UTC)
    latitude: float
    longitude: float
    speed_kmh: float | None = None  # as reported by the device; None when absent


# cache_hash: the core keys its per-stage caches by the Stage (and so its Controls), so a
# stage is hashed on every evaluated entry (docs/decisions.md).
@attrs.frozen(slots=True, cache_hash=True)
class Control:
    """One control of a stage's course. A line uses (lat1, lon1) -> (lat2, lon2); a waypoint uses
    (latitude, longitude, validate_radius_m). A forward pass of a line goes from its left to its
    right as seen looking from point 1 to point 2."""

    id: str
    ordinal: int
    kind: ControlKind
    lat1: float | None = None
    lon1: float | None = None
    lat2: float | None = None
    lon2: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    validate_radius_m: float | None = None
    penalty_s: int = 0


@attrs.frozen(slots=True, cache_hash=True)
class Stage:
    """A stage and its course, controls sorted by ordinal. Fixes outside [opens_at, closes_at)
    do not count (None = unbounded)."""

    id: str
    controls: tuple[Control, ...]
    opens_at: float | None = None
    closes_at: float | None = None


@attrs.frozen(slots=True)
class Pass:
    """When an entry passed a control, with its evidence.

    Line: `fix_before`/`fix_after` are the two fixes of the crossing segment, `distance_m` 0.
    Waypoint: `fix_before` is the last fix before the visit entered the radius (the start of the
    entering segment), `fix_after` the first fix after it left (None while the visit is still
    open, i.e. the track's last fix is inside the radius: the pass may still move). `passed_at`
    is the closest approach and `distance_m` its distance to the centre. The visit is clipped to
    the track between the previous control's pass and the finish pass (`rules.passes`):
    if the entry is already inside at the previous pass, `fix_before` is the last fix at or before
    that pass; if still inside at the finish, `fix_after` is the finish pass's `fix_after`.
    `passed_at` is on the microsecond grid, as stored.

    A pass is *settled* for a later-arriving fix at time t when `fix_after` is not None and
    `fix_after < t`: no fix after `fix_after` can change it. The engine uses that to resume.
    """

    control_id: str
    passed_at: float
    speed_kmh: float | None
    distance_m: float
    fix_before: float
    fix_after: float | None


@attrs.frozen(slots=True)
class EntryResult:
    """One entry's evaluation on one stage (docs/racing-domain.md).

    `passes` holds the course-order passes found (at most one per control), ordered by ordinal.
    Not started (no start pass): status RUNNING, everything None/0 and no passes.
    `controls_missed`/`penalty_ms` count only controls already decided: a waypoint/checkpoint
    with no pass before the next passed control (or, once finished, before the finish pass).
    Controls after the latest pass of a running entry are pending, neither passed nor missed.
    """

    status: Status
    started_at: float | None
    finished_at: float | None
    elapsed_ms: int | None
    penalty_ms: int
    total_ms: int | None
    controls_passed: int
    controls_missed: int
    passes: tuple[Pass, ...]


@attrs.frozen(slots=True)
class Ranking:
    """Finished entries only (others: all None). Equal totals share a position (1, 1, 3)."""

    position: int | None
    class_position: int | None
    gap_ms: int | None
