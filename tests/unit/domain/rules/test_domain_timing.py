"""The timing core on hand-made tracks: each rule of docs/racing-domain.md, and each decision where
it is silent.

Conventions of these scenarios (tests/support/tracks.py `Plane`): x east, y north, metres; the
cars drive east at 20 m/s (72 km/h) with a fix each second unless said otherwise, so a car at
x = 20·k at second k crosses x = 110 at 5.5 s. A line from (x, -50) to (x, 50) points north: its
right is east, so driving east is a forward pass.
"""

from __future__ import annotations

import itertools
import math

import pytest

from processor.domain.rules.course import StageError, course_of
from processor.domain.rules.model import Control, ControlKind, Fix, Pass, Stage, Status
from processor.domain.rules.passes import first_crossing
from processor.domain.rules.timing import NOT_STARTED, evaluate_entry, settled_prefix, to_ms
from processor.domain.rules.track import build_track
from tests.support.tracks import T_BASE, Plane, stage_of

P = Plane()
START, FINISH, CHECKPOINT = ControlKind.START, ControlKind.FINISH, ControlKind.CHECKPOINT


def vline(
    cid: str, ordinal: int, kind: ControlKind, x: float, half: float = 50.0, **kw: int
) -> Control:
    return P.line(cid, ordinal, kind, (x, -half), (x, half), **kw)


def east(count: int, *, y: float = 0.0, speed: float | None = 72.0, t0: float = 0.0) -> list[Fix]:
    return [P.fix(t0 + k, 20.0 * k, y, speed) for k in range(count)]


def at(seconds: float) -> float:
    return T_BASE + seconds


def close(a: float | None, b: float, tol: float = 1e-6) -> bool:
    return a is not None and abs(a - b) <= tol


def test_constant_speed_stage_start_to_finish() -> None:
    stage = stage_of(vline("S", 1, START, 110.0), vline("F", 2, FINISH, 1010.0))
    result = evaluate_entry(stage, east(60))
    assert result.status is Status.FINISHED
    start, finish = result.passes
    assert close(start.passed_at, at(5.5)) and close(finish.passed_at, at(50.5))
    assert (start.fix_before, start.fix_after) == (at(5), at(6))
    assert start.speed_kmh == 72.0 and start.distance_m == 0.0
    assert result.elapsed_ms == 45_000 and result.total_ms == 45_000 and result.penalty_ms == 0
    assert (result.controls_passed, result.controls_missed) == (2, 0)
    assert result.started_at == start.passed_at and result.finished_at == finish.passed_at


def test_a_reverse_crossing_first_is_ignored() -> None:
    """Backing over the start line (right to left) is no start; the forward crossing after is."""
    fixes = [
        P.fix(0, 150, 0),
        P.fix(1, 130, 0),
        P.fix(2, 110, 0),
        P.fix(3, 90, 0),  # reverse crossing between 2 s and 3 s
        P.fix(4, 70, 0),
        P.fix(5, 70, 10),
        P.fix(6, 90, 10),
        P.fix(7, 110, 10),  # forward at 6.5 s
        *[P.fix(7 + k, 110 + 20 * k, 10) for k in range(1, 15)],
    ]
    stage = stage_of(vline("S", 1, START, 100.0), vline("F", 2, FINISH, 301.0))
    result = evaluate_entry(stage, fixes)
    start, finish = result.passes
    assert close(start.passed_at, at(6.5))
    assert (start.fix_before, start.fix_after) == (at(6), at(7))
    assert start.speed_kmh is None  # no speeds reported
    assert close(finish.passed_at, at(6 + 211 / 20))


def test_a_missed_waypoint_adds_its_penalty() -> None:
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W", 2, (500.0, 200.0), 50.0, penalty_s=300),
        vline("C", 3, CHECKPOINT, 710.0, penalty_s=60),
        vline("F", 4, FINISH, 1010.0),
    )
    result = evaluate_entry(stage, east(60))
    assert [p.control_id for p in result.passes] == ["S", "C", "F"]
    assert result.status is Status.FINISHED
    assert (result.controls_passed, result.controls_missed) == (3, 1)
    assert result.elapsed_ms == 45_000
    assert result.penalty_ms == 300_000 and result.total_ms == 345_000


def test_the_waypoint_is_validated_by_the_segment_between_fixes() -> None:
    """Both fixes are 22 m from the centre, the segment between them passes at 10 m."""
    stage = stage_of(
        vline("S", 1, START, 30.0),
        P.waypoint("W", 2, (100.0, 10.0), 15.0),
        vline("F", 3, FINISH, 190.0),
    )
    fixes = [P.fix(k, 40.0 * k, 0.0, 144.0) for k in range(8)]
    result = evaluate_entry(stage, fixes)
    waypoint = result.passes[1]
    assert waypoint.control_id == "W"
    assert close(waypoint.passed_at, at(2.5))
    assert abs(waypoint.distance_m - 10.0) < 1e-3
    assert (waypoint.fix_before, waypoint.fix_after) == (at(2), at(3))
    assert waypoint.speed_kmh == 144.0


def test_a_waypoint_visit_spans_several_segments() -> None:
    stage = stage_of(
        vline("S", 1, START, 10.0),
        P.waypoint("W", 2, (205.0, 3.0), 50.0),
        vline("F", 3, FINISH, 610.0),
    )
    result = evaluate_entry(stage, east(40))
    waypoint = result.passes[1]
    # enters between 7 s (140 m: 65 m away) and 8 s (160 m: 45 m away); leaves between 12 s
    # (240 m) and 13 s (260 m: 55 m away); closest at x = 205 m, 10.25 s, 3 m away
    assert (waypoint.fix_before, waypoint.fix_after) == (at(7), at(13))
    assert close(waypoint.passed_at, at(10.25))
    assert abs(waypoint.distance_m - 3.0) < 1e-3


def test_an_accelerating_entry_is_timed_by_constant_acceleration() -> None:
    """From rest at 2 m/s²: x = t², v = 2t. The start at x = 30.25 m is at exactly 5.5 s;
    linear interpolation between 5 s (25 m) and 6 s (36 m) would say 5.477 s."""
    fixes = [P.fix(k, float(k * k), 0.0, 7.2 * k) for k in range(21)]
    stage = stage_of(vline("S", 1, START, 30.25), vline("F", 2, FINISH, 300.0))
    result = evaluate_entry(stage, fixes)
    start, finish = result.passes
    assert close(start.passed_at, at(5.5))
    assert close(start.speed_kmh, 7.2 * 5.5, 1e-6)
    assert close(finish.passed_at, at(math.sqrt(300.0)))
    assert result.elapsed_ms == round((math.sqrt(300.0) - 5.5) * 1000)


def test_implausible_speeds_fall_back_to_linear_by_distance() -> None:
    """The same track, but the device says 0 km/h while moving: speeds are not believed."""
    fixes = [P.fix(k, float(k * k), 0.0, 0.0) for k in range(21)]
    stage = stage_of(vline("S", 1, START, 30.25), vline("F", 2, FINISH, 300.0))
    start = evaluate_entry(stage, fixes).passes[0]
    assert close(start.passed_at, at(5 + 5.25 / 11))
    assert start.speed_kmh == 0.0  # what the device said, interpolated


def test_a_finish_before_the_waypoint_stands_and_the_waypoint_is_missed() -> None:
    """The waypoint lies beyond the finish line: reaching it after finishing does not count,
    and the finish is not moved to a later crossing either."""
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W", 2, (1200.0, 0.0), 30.0, penalty_s=600),
        vline("F", 3, FINISH, 1010.0),
    )
    result = evaluate_entry(stage, east(70))  # to x = 1380, through the waypoint
    assert [p.control_id for p in result.passes] == ["S", "F"]
    assert result.status is Status.FINISHED
    assert close(result.finished_at, at(50.5))
    assert result.controls_missed == 1 and result.penalty_ms == 600_000
    assert result.total_ms == 45_000 + 600_000


def test_a_second_finish_crossing_does_not_replace_the_first() -> None:
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W", 2, (1200.0, 0.0), 30.0),
        P.line("F", 3, FINISH, (1010.0, -50.0), (1010.0, 250.0)),
    )
    fixes = [
        *east(70),  # start, finish (50.5 s), waypoint (60 s)
        *[P.fix(70 + k, 1380.0, 100.0 * k) for k in range(1, 3)],
        *[P.fix(72 + k, 500.0 + 20.0 * k, 200.0) for k in range(1, 40)],  # finish again
    ]
    result = evaluate_entry(stage, fixes)
    assert [p.control_id for p in result.passes] == ["S", "F"]
    assert close(result.finished_at, at(50.5))


def test_a_running_entry_has_missed_and_pending_controls() -> None:
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W1", 2, (400.0, 300.0), 30.0, penalty_s=120),
        vline("C", 3, CHECKPOINT, 610.0, penalty_s=60),
        P.waypoint("W2", 4, (800.0, 0.0), 30.0, penalty_s=120),
        vline("F", 5, FINISH, 1010.0),
    )
    result = evaluate_entry(stage, east(36))  # up to x = 700
    assert [p.control_id for p in result.passes] == ["S", "C"]
    assert result.status is Status.RUNNING
    assert result.finished_at is None and result.elapsed_ms is None and result.total_ms is None
    assert result.controls_missed == 1  # W1: C was passed after it; W2 is pending
    assert result.penalty_ms == 120_000


def test_not_started_without_a_forward_start_crossing() -> None:
    stage = stage_of(vline("S", 1, START, 110.0), vline("F", 2, FINISH, 1010.0))
    westwards = [P.fix(k, 500.0 - 20.0 * k, 0.0) for k in range(20)]
    assert evaluate_entry(stage, westwards) == NOT_STARTED
    assert evaluate_entry(stage, []) == NOT_STARTED
    assert evaluate_entry(stage, east(1)) == NOT_STARTED


def test_the_stage_window_filters_fixes() -> None:
    """Out east at y=0 (start at 5.5 s), back west at y=100 (outside the 100 m line), east again
    at y=0 (start at 27.5 s). Fixes before opens_at and at or after closes_at do not count."""
    fixes = [
        *east(11),
        *[P.fix(11 + k, 200.0 - 20.0 * k, 100.0) for k in range(11)],
        *[P.fix(22 + k, 20.0 * k, 0.0) for k in range(60)],
    ]
    controls = (vline("S", 1, START, 110.0), vline("F", 2, FINISH, 1010.0))
    whole = evaluate_entry(stage_of(*controls), fixes)
    assert close(whole.started_at, at(5.5))
    windowed = evaluate_entry(stage_of(*controls, opens_at=at(20.0)), fixes)
    assert close(windowed.started_at, at(27.5)) and close(windowed.finished_at, at(72.5))
    # the finish crossing's later fix (73 s) at closes_at: excluded, so not finished yet
    early = evaluate_entry(stage_of(*controls, opens_at=at(20.0), closes_at=at(73.0)), fixes)
    assert early.status is Status.RUNNING and close(early.started_at, at(27.5))
    late = evaluate_entry(stage_of(*controls, opens_at=at(20.0), closes_at=at(73.001)), fixes)
    assert late.status is Status.FINISHED


def test_a_fix_exactly_on_the_line_is_one_crossing_at_that_fix() -> None:
    stage = stage_of(vline("S", 1, START, 100.0), vline("F", 2, FINISH, 1010.0))
    result = evaluate_entry(stage, east(60))
    start = result.passes[0]
    assert start.passed_at == at(5)  # the fix at x = 100 is on the line
    assert (start.fix_before, start.fix_after) == (at(4), at(5))
    course = course_of(stage)
    track = build_track(east(60))
    assert first_crossing(track, course.start, start.passed_at, math.inf) is None


def test_touching_the_line_from_the_left_counts_touching_from_the_right_does_not() -> None:
    """The line belongs to its right side: reaching it is a pass (like a timing beam)."""
    line = vline("S", 1, START, 100.0)
    course = course_of(stage_of(line, vline("F", 2, FINISH, 1010.0)))
    from_left = build_track([P.fix(0, 80, 0), P.fix(1, 100, 0), P.fix(2, 80, 0)])
    found = first_crossing(from_left, course.start, -math.inf, math.inf)
    assert found is not None and found.passed_at == at(1)
    from_right = build_track([P.fix(0, 120, 0), P.fix(1, 100, 0), P.fix(2, 120, 0)])
    assert first_crossing(from_right, course.start, -math.inf, math.inf) is None


def test_crossing_beyond_the_end_of_the_line_does_not_count() -> None:
    stage = stage_of(vline("S", 1, START, 110.0, half=50.0), vline("F", 2, FINISH, 1010.0))
    assert evaluate_entry(stage, east(60, y=50.5)) == NOT_STARTED
    assert evaluate_entry(stage, east(60, y=50.0)).status is Status.FINISHED  # endpoint included


def test_fixes_sharing_a_time_keep_the_smallest_by_position() -> None:
    stage = stage_of(vline("S", 1, START, 110.0), vline("F", 2, FINISH, 1010.0))
    base = east(60)
    twin = P.fix(6, 120.0, 30.0, 36.0)  # same second as (120, 0): larger latitude, dropped
    assert evaluate_entry(stage, [*base, twin]) == evaluate_entry(stage, base)
    south = P.fix(6, 120.0, -30.0, 36.0)  # smaller latitude: it replaces (120, 0)
    moved = evaluate_entry(stage, [south, *base])
    assert moved == evaluate_entry(stage, [*base[:6], south, *base[7:]])
    assert moved.passes[0].speed_kmh == 54.0  # (72 + 36) / 2: the south twin's speed was used


def test_a_waypoint_still_being_visited_has_no_fix_after() -> None:
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W", 2, (400.0, 0.0), 50.0),
        vline("F", 3, FINISH, 1010.0),
    )
    result = evaluate_entry(stage, east(21))  # ends at x = 400, inside
    waypoint = result.passes[1]
    assert waypoint.fix_after is None and waypoint.fix_before == at(17)
    assert close(waypoint.passed_at, at(20)) and waypoint.distance_m < 1e-3
    assert result.status is Status.RUNNING
    # not settled: the engine must not keep it
    assert settled_prefix(stage, result.passes, at(100)) == result.passes[:1]


def test_a_waypoint_already_inside_at_the_previous_pass_is_visited_from_there() -> None:
    """The start line is inside the waypoint's radius: the closest approach before the start
    does not count; the visit is taken from the start on, where the car only moves away."""
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W", 2, (100.0, 0.0), 30.0),
        vline("F", 3, FINISH, 1010.0),
    )
    result = evaluate_entry(stage, east(60))
    start, waypoint, _ = result.passes
    assert waypoint.passed_at == start.passed_at
    assert abs(waypoint.distance_m - 10.0) < 1e-3
    assert (waypoint.fix_before, waypoint.fix_after) == (at(5), at(7))


def test_a_stage_across_the_antimeridian() -> None:
    def run(plane: Plane) -> tuple[float | None, float | None]:
        stage = stage_of(
            plane.line("S", 1, START, (110.0, -50.0), (110.0, 50.0)),
            plane.waypoint("W", 2, (500.0, 5.0), 30.0),
            plane.line("F", 3, FINISH, (1010.0, -50.0), (1010.0, 50.0)),
        )
        fixes = [plane.fix(k, 20.0 * k - 300.0, 0.0, 72.0) for k in range(80)]
        result = evaluate_entry(stage, fixes)
        assert result.controls_passed == 3
        return result.started_at, result.finished_at

    across = run(Plane(lat0=-17.0, lon0=179.999))
    assert across == pytest.approx(run(Plane(lat0=-17.0, lon0=10.0)), abs=1e-6)


def test_elapsed_is_rounded_from_microseconds_halves_up() -> None:
    assert to_ms(at(0.0), at(1.000499)) == 1000
    assert to_ms(at(0.0), at(1.0004996)) == 1001  # 1000499.6 µs -> 1000500 µs -> 1001 ms
    assert to_ms(at(0.0), at(1.0005)) == 1001
    assert to_ms(at(0.25), at(0.25)) == 0


# --- malformed stages and kept passes ---------------------------------------------------------


def _good() -> list[Control]:
    return [
        vline("S", 1, START, 110.0),
        P.waypoint("W", 2, (400.0, 0.0), 50.0),
        vline("F", 3, FINISH, 1010.0),
    ]


def _replace(controls: list[Control], index: int, **changes: object) -> tuple[Control, ...]:
    import attrs

    out = list(controls)
    out[index] = attrs.evolve(out[index], **changes)  # type: ignore[arg-type]
    return tuple(out)


MALFORMED: dict[str, tuple[tuple[Control, ...], str]] = {
    "no controls": ((), "start and a finish"),
    "no finish": ((_good()[0], _good()[1]), "finish"),
    "no start": (tuple(_good()[1:]), "start"),
    "two starts": ((*_good(), vline("S2", 0, START, 50.0)), "exactly one start"),
    "finish not last": (_replace(_good(), 2, ordinal=0), "start must have the lowest"),
    "waypoint after finish": (_replace(_good(), 1, ordinal=9), "finish must have the highest"),
    "shared ordinal": (_replace(_good(), 1, ordinal=1), "share an ordinal"),
    "line without lat2": (_replace(_good(), 0, lat2=None), "has no lat2"),
    "line of zero length": (
        _replace(_good(), 2, lat2=_good()[2].lat1, lon2=_good()[2].lon1),
        "same place",
    ),
    "nan longitude": (_replace(_good(), 0, lon1=math.nan), "out of range"),
    "latitude out of range": (_replace(_good(), 0, lat1=91.0), "out of range"),
    "waypoint without radius": (_replace(_good(), 1, validate_radius_m=None), "validate_radius_m"),
    "waypoint radius 0": (_replace(_good(), 1, validate_radius_m=0.0), "validate_radius_m"),
    "waypoint without centre": (_replace(_good(), 1, latitude=None), "has no latitude"),
    "negative penalty": (_replace(_good(), 1, penalty_s=-5), "penalty_s -5; expected 0 to"),
    # beyond the integer columns penalties are stored in: could never be written
    "penalty beyond its column": (
        _replace(_good(), 1, penalty_s=3_000_000_000),
        "penalty_s 3000000000; expected 0 to 2147483647",
    ),
    "unknown kind": (_replace(_good(), 1, kind="gate"), "unknown kind"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_stage_raises_a_stage_error_naming_the_problem(case: str) -> None:
    controls, message = MALFORMED[case]
    with pytest.raises(StageError, match=message):
        evaluate_entry(Stage("broken", controls), east(60))


def test_an_empty_window_is_a_stage_error() -> None:
    with pytest.raises(StageError, match="closes_at"):
        evaluate_entry(stage_of(*_good(), opens_at=at(10), closes_at=at(10)), east(60))


def test_a_kind_given_as_text_is_accepted() -> None:
    controls = tuple(_replace(_good(), 1, kind="waypoint"))
    assert evaluate_entry(Stage("s", controls), east(60)).controls_passed == 3


def test_kept_passes_must_be_a_course_order_prefix() -> None:
    stage = stage_of(*_good())
    full = evaluate_entry(stage, east(60))
    start, waypoint, _ = full.passes
    with pytest.raises(ValueError, match="prefix"):
        evaluate_entry(stage, east(60), kept=(waypoint,))
    with pytest.raises(ValueError, match="prefix"):
        evaluate_entry(stage, east(60), kept=(start, start))
    stranger = Pass("X", 0.0, None, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="not on this stage"):
        evaluate_entry(stage, east(60), kept=(start, stranger))


# --- resuming ---------------------------------------------------------------------------------


def drive(*corners: tuple[float, float], speed: float = 20.0) -> list[Fix]:
    """A fix each second along the polyline through `corners` at `speed` m/s (72 km/h)."""
    legs = list(itertools.pairwise(corners))
    total = sum(math.dist(a, b) for a, b in legs)
    fixes = []
    for k in range(int(total / speed) + 1):
        s = k * speed
        for a, b in legs:
            length = math.dist(a, b)
            if s <= length:
                g = s / length
                fixes.append(P.fix(k, a[0] + g * (b[0] - a[0]), a[1] + g * (b[1] - a[1]), 72.0))
                break
            s -= length
    return fixes


def test_a_skipped_control_may_still_be_passed_later_so_resuming_stops_before_it() -> None:
    """W2 is visited first (W1 skipped, so it counts as missed while the car drives on), then W1,
    then W2 again, then the finish. Course order is greedy over the whole track: W1 then W2's
    second visit. A resume that kept the first W2 pass would never look for W1 again."""
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W1", 2, (600.0, 300.0), 30.0, penalty_s=100),
        P.waypoint("W2", 3, (400.0, 0.0), 30.0, penalty_s=100),
        vline("F", 4, FINISH, 1010.0),
    )
    fixes = drive(
        (0.0, 0.0), (500.0, 0.0), (500.0, 300.0), (600.0, 300.0), (400.0, 0.0), (1100.0, 0.0)
    )
    full = evaluate_entry(stage, fixes)
    assert [p.control_id for p in full.passes] == ["S", "W1", "W2", "F"]
    assert full.controls_missed == 0 and full.penalty_ms == 0
    t = at(30)  # after the first W2 visit, before W1
    before = evaluate_entry(stage, [f for f in fixes if f.t < t])
    assert [p.control_id for p in before.passes] == ["S", "W2"] and before.controls_missed == 1
    kept = settled_prefix(stage, before.passes, t)
    assert [p.control_id for p in kept] == ["S"]  # cut at the gap, though W2 is settled
    resumed = evaluate_entry(stage, [f for f in fixes if f.t >= kept[-1].fix_before], kept)
    assert resumed == full
    # what keeping across the gap would have given: W1 never found again
    wrong = evaluate_entry(stage, fixes, before.passes)
    assert [p.control_id for p in wrong.passes] == ["S", "W2", "F"]


def test_kept_passes_with_a_gap_count_the_gap_as_missed() -> None:
    """The engine may pass any course-order prefix; controls skipped inside it are missed."""
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W1", 2, (600.0, 300.0), 30.0, penalty_s=100),
        P.waypoint("W2", 3, (400.0, 0.0), 30.0, penalty_s=70),
        vline("F", 4, FINISH, 1010.0),
    )
    fixes = east(60)
    full = evaluate_entry(stage, fixes)
    assert [p.control_id for p in full.passes] == ["S", "W2", "F"] and full.penalty_ms == 100_000
    kept = full.passes[:2]
    assert evaluate_entry(stage, [f for f in fixes if f.t >= kept[-1].fix_before], kept) == full
    assert evaluate_entry(stage, fixes, full.passes) == full  # everything kept, finish included


def test_a_waypoint_reaching_over_the_finish_is_validated_up_to_the_finish() -> None:
    """The car enters the radius (x = 950 m, 47.5 s) before the finish (x = 1010 m, 50.5 s); its
    closest approach (x = 1050 m, 52.5 s) comes after. It was within the radius before finishing:
    the waypoint counts, at the finish instant, the closest it had come by then (40 m)."""
    stage = stage_of(
        vline("S", 1, START, 110.0),
        P.waypoint("W", 2, (1050.0, 0.0), 100.0, penalty_s=600),
        vline("F", 3, FINISH, 1010.0),
    )
    result = evaluate_entry(stage, east(70))
    _, waypoint, finish = result.passes
    assert waypoint.control_id == "W" and result.penalty_ms == 0
    assert waypoint.passed_at == finish.passed_at
    assert abs(waypoint.distance_m - 40.0) < 1e-3
    assert (waypoint.fix_before, waypoint.fix_after) == (at(47), finish.fix_after)
