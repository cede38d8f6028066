"""Properties of the timing core on random messy tracks and courses (hypothesis).

The tracks wander (sharp turns, loops, stops, gaps, fixes half a second or seven seconds apart,
speeds true, absent or nonsense, twins sharing a time at different places); the controls are
dropped on and around the track with random angles, so lines are crossed forward, backward,
several times or not at all, and waypoints visited, grazed, revisited or missed.

* Order-free: the result does not depend on the order of the fixes nor on duplicates.
* Every pass is consistent with its evidence; a waypoint pass is never farther than the radius.
* Resuming from `settled_prefix` gives exactly the full evaluation, wherever the new fixes start.
* The result's figures add up (passed + missed + pending, penalties, totals).
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import processor.domain.rules.passes as passes_module
import processor.domain.rules.track as track_module
from processor.domain.rules.course import Circle, course_of
from processor.domain.rules.model import Control, ControlKind, Fix, Stage, Status
from processor.domain.rules.timing import evaluate_entry, settled_prefix
from tests.support.tracks import T_BASE, Plane


@attrs.frozen
class World:
    stage: Stage
    fixes: tuple[Fix, ...]


steps = st.tuples(
    st.sampled_from((1.0, 1.0, 1.0, 1.0, 0.5, 2.0, 7.0)),  # dt
    st.floats(1.0, 40.0) | st.just(0.0),  # speed, m/s (sometimes standing still)
    st.floats(-150.0, 150.0),  # turn, degrees
    st.sampled_from(("true", "true", "true", "none", "nonsense")),  # reported speed
    st.floats(0.0, 200.0),  # the nonsense speed, km/h
    st.booleans() | st.just(False) | st.just(False),  # a twin at the same time elsewhere
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    plane = Plane(lat0=draw(st.floats(-60.0, 60.0)), lon0=draw(st.floats(-180.0, 180.0)))
    heading = draw(st.floats(0.0, 360.0))
    x = y = 0.0
    walk = draw(st.lists(steps, min_size=2, max_size=40))
    points: list[tuple[float, float]] = []
    for dt, speed, turn, *_ in walk:
        points.append((x, y))
        heading += turn
        x += speed * dt * math.sin(math.radians(heading))
        y += speed * dt * math.cos(math.radians(heading))
    # Sometimes the car drives the route back and then again: controls are met out of course
    # order, lines backwards, waypoints several times (what greedy course order is about).
    shape = draw(st.sampled_from(("once", "once", "there and back", "there, back and again")))
    route = {
        "once": points,
        "there and back": points + points[-2::-1],
        "there, back and again": points + points[-2::-1] + points[1:],
    }[shape]
    t = 0.0
    fixes: list[Fix] = []
    for n, (px, py) in enumerate(route):
        dt, speed, _, kind, nonsense, twin = walk[n % len(walk)]
        reported = {"true": speed * 3.6, "none": None, "nonsense": nonsense}[kind]
        fixes.append(plane.fix(t, px, py, reported))
        if twin:
            fixes.append(plane.fix(t, px + 7.0, py - 3.0, reported))
        t += dt

    count = 2 + draw(st.integers(0, 5))  # controls
    # Mostly a course-like layout (anchors along the track in course order, lines facing the
    # way the track goes), sometimes anything anywhere.
    course_like = draw(st.integers(0, 9)) < 7
    spots = sorted(draw(st.floats(0.0, len(points) - 1.0)) for _ in range(count))
    if not course_like:
        spots = [draw(st.floats(0.0, len(points) - 1.0)) for _ in range(count)]
    elif count > 3 and draw(st.booleans()):  # two intermediate controls met in reverse order
        i = draw(st.integers(1, count - 3))
        spots[i], spots[i + 1] = spots[i + 1], spots[i]

    def anchor(n: int) -> tuple[float, float, float]:
        """A point of the track and the track's heading there (radians)."""
        i = min(int(spots[n]), len(points) - 2) if len(points) > 1 else 0
        g = spots[n] - i
        (ax, ay), (bx, by) = points[i], points[min(i + 1, len(points) - 1)]
        heading = math.atan2(bx - ax, by - ay) if (ax, ay) != (bx, by) else 0.0
        return ax + g * (bx - ax), ay + g * (by - ay), heading

    def line(cid: str, n: int, ordinal: int, kind: ControlKind) -> Control:
        cx, cy, heading = anchor(n)
        if course_like and draw(st.integers(0, 9)) < 8:
            # point 1 -> point 2 is the heading turned left by ~90°: crossed forward
            angle = heading - math.pi / 2 + math.radians(draw(st.floats(-70.0, 70.0)))
        else:
            angle = math.radians(draw(st.floats(0.0, 360.0)))
        left, right = draw(st.floats(2.0, 60.0)), draw(st.floats(2.0, 60.0))
        ux, uy = math.sin(angle), math.cos(angle)
        p1 = (cx - left * ux, cy - left * uy)
        p2 = (cx + right * ux, cy + right * uy)
        return plane.line(cid, ordinal, kind, p1, p2, penalty_s=draw(st.integers(0, 600)))

    def waypoint(cid: str, n: int, ordinal: int) -> Control:
        cx, cy, _ = anchor(n)
        centre = (cx + draw(st.floats(-30.0, 30.0)), cy + draw(st.floats(-30.0, 30.0)))
        return plane.waypoint(
            cid, ordinal, centre, draw(st.floats(3.0, 60.0)), penalty_s=draw(st.integers(0, 600))
        )

    controls = [line("start", 0, 1, ControlKind.START)]
    for n in range(1, count - 1):
        if draw(st.booleans()):
            controls.append(waypoint(f"w{n}", n, 10 + n))
        else:
            controls.append(line(f"c{n}", n, 10 + n, ControlKind.CHECKPOINT))
    controls.append(line("finish", count - 1, 99, ControlKind.FINISH))
    opens_at = closes_at = None
    if draw(st.integers(0, 3)) == 0:
        opens_at = T_BASE + draw(st.floats(-1.0, t / 4))
        closes_at = T_BASE + draw(st.floats(3 * t / 4 + 0.5, t + 1.0))
    # the course is given in any order: it is sorted by ordinal
    order = draw(st.permutations(controls))
    return World(Stage("s", tuple(order), opens_at, closes_at), tuple(fixes))


@settings(max_examples=400, deadline=None)
@given(worlds(), st.randoms(use_true_random=False), st.integers(0, 30))
def test_order_and_duplicates_do_not_matter(w: World, rnd: random.Random, extra: int) -> None:
    expected = evaluate_entry(w.stage, w.fixes)
    messy = list(w.fixes) + [rnd.choice(w.fixes) for _ in range(extra)]
    rnd.shuffle(messy)
    assert evaluate_entry(w.stage, messy) == expected
    assert evaluate_entry(w.stage, reversed(messy)) == expected


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_passes_are_consistent_with_their_evidence(w: World) -> None:
    result = evaluate_entry(w.stage, w.fixes)
    course = course_of(w.stage)
    indexes = [course.index[p.control_id] for p in result.passes]
    assert indexes == sorted(set(indexes)), "one pass per control, in course order"
    times = {f.t for f in w.fixes}
    previous = -math.inf
    for p, i in zip(result.passes, indexes, strict=True):
        target = course.targets[i]
        assert p.fix_before in times and (p.fix_after is None or p.fix_after in times)
        if isinstance(target, Circle):
            assert 0.0 <= p.distance_m <= target.radius_m
            assert p.passed_at >= previous
            assert p.fix_before <= p.passed_at
            assert p.fix_after is None or p.passed_at <= p.fix_after
        else:
            assert p.distance_m == 0.0 and p.fix_after is not None
            if p.control_id == "finish":  # a waypoint before it may be clipped to its instant
                assert p.passed_at >= previous and p.passed_at > result.passes[0].passed_at
            else:
                assert p.passed_at > previous
            # in (fix_before, fix_after], up to rounding when the line is a hair past fix_before
            assert p.fix_before <= p.passed_at <= p.fix_after
        if p.speed_kmh is not None:
            assert p.speed_kmh >= 0.0
        previous = p.passed_at
    if w.stage.opens_at is not None and result.passes:
        assert result.passes[0].fix_before >= w.stage.opens_at


@settings(max_examples=800, deadline=None)
@given(worlds(), st.floats(0.0, 1.0), st.booleans())
def test_resuming_from_the_settled_prefix_equals_a_full_evaluation(
    w: World, cut: float, give_all: bool
) -> None:
    """The engine's situation: fixes before `t` were evaluated; fixes from `t` on arrive (late
    ones included: `t` is anywhere). Keep what `settled_prefix` allows, reload fixes from the
    last kept pass's fix_before, resume: the result is the full evaluation."""
    full = evaluate_entry(w.stage, w.fixes)
    times = sorted({f.t for f in w.fixes})
    t = times[min(len(times) - 1, int(cut * len(times)))]
    before = evaluate_entry(w.stage, [f for f in w.fixes if f.t < t])
    kept = settled_prefix(w.stage, before.passes, t)
    if kept:
        given = w.fixes if give_all else tuple(f for f in w.fixes if f.t >= kept[-1].fix_before)
    else:
        given = w.fixes
    assert evaluate_entry(w.stage, given, kept) == full
    # what is kept is indeed part of the full result
    assert full.passes[: len(kept)] == kept
    # and as the engine has them: read back from timestamptz columns, bit for bit the same
    stored = tuple(
        attrs.evolve(p, **{n: _via_database(getattr(p, n)) for n in TIMES}) for p in kept
    )
    assert stored == kept
    assert evaluate_entry(w.stage, given, stored) == full


TIMES = ("passed_at", "fix_before", "fix_after")


def _via_database(t: float | None) -> float | None:
    """A time written to and read from a timestamptz column (microseconds), as the engine does."""
    return None if t is None else datetime.fromtimestamp(t, UTC).timestamp()


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_the_figures_add_up(w: World) -> None:
    result = evaluate_entry(w.stage, w.fixes)
    course = course_of(w.stage)
    assert result.controls_passed == len(result.passes)
    assert result.controls_passed + result.controls_missed <= len(course.targets)
    passed = {p.control_id for p in result.passes}
    if not result.passes:
        assert result.status is Status.RUNNING and result.started_at is None
        assert result.penalty_ms == 0 and result.controls_missed == 0
        return
    assert result.passes[0].control_id == "start"
    assert result.started_at == result.passes[0].passed_at
    finished = result.passes[-1].control_id == "finish"
    assert (result.status is Status.FINISHED) == finished
    intermediates = [tg.control for tg in course.targets[1:-1]]
    if finished:
        missed = [c for c in intermediates if c.id not in passed]
        assert result.finished_at == result.passes[-1].passed_at
        assert result.elapsed_ms is not None and result.elapsed_ms >= 0
        assert result.total_ms == result.elapsed_ms + result.penalty_ms
        assert result.controls_passed + result.controls_missed == len(course.targets)
    else:
        last = max(course.index[p.control_id] for p in result.passes)
        missed = [c for c in intermediates[: max(0, last - 1)] if c.id not in passed]
        assert result.finished_at is None and result.elapsed_ms is None
        assert result.total_ms is None
    assert result.controls_missed == len(missed)
    assert result.penalty_ms == 1000 * sum(c.penalty_s for c in missed)


@settings(max_examples=300, deadline=None)
@given(worlds(), st.integers(1, 6))
def test_skipping_far_blocks_changes_nothing(w: World, block: int) -> None:
    """The bounding-box skip is an optimisation only: with tiny blocks (many skips) and with no
    skipping at all, the result is the same."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(track_module, "BLOCK", block)
        patch.setattr(passes_module, "BLOCK", block)
        skipping = evaluate_entry(w.stage, w.fixes)
        patch.setattr(track_module.Track, "next_near", lambda self, k, box: k)
        scanning = evaluate_entry(w.stage, w.fixes)
    assert skipping == scanning == evaluate_entry(w.stage, w.fixes)
