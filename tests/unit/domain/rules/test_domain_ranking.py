"""Ranking (docs/racing-domain.md): ties share a position (1, 1, 3), class positions, gap to the
leader, unranked entries all None; properties over random fields of results."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain.rules.model import EntryResult, Ranking, Status
from processor.domain.rules.ranking import UNRANKED, rank


def finished(total_ms: int) -> EntryResult:
    return EntryResult(
        status=Status.FINISHED,
        started_at=1.0,
        finished_at=2.0,
        elapsed_ms=max(0, total_ms - 60_000),
        penalty_ms=min(total_ms, 60_000),
        total_ms=total_ms,
        controls_passed=2,
        controls_missed=0,
        passes=(),
    )


RUNNING = EntryResult(
    status=Status.RUNNING,
    started_at=1.0,
    finished_at=None,
    elapsed_ms=None,
    penalty_ms=60_000,
    total_ms=None,
    controls_passed=3,
    controls_missed=1,
    passes=(),
)


def test_ties_share_a_position_and_the_next_skips() -> None:
    ranking = rank(
        {
            "a": (finished(100_000), "T1"),
            "b": (finished(100_000), "T2"),
            "c": (finished(100_500), "T1"),
            "d": (finished(99_000), "T1"),
        }
    )
    assert ranking["d"] == Ranking(position=1, class_position=1, gap_ms=0)
    assert ranking["a"] == Ranking(position=2, class_position=2, gap_ms=1_000)
    assert ranking["b"] == Ranking(position=2, class_position=1, gap_ms=1_000)
    assert ranking["c"] == Ranking(position=4, class_position=3, gap_ms=1_500)


def test_unfinished_entries_and_entries_without_class() -> None:
    ranking = rank(
        {
            "running": (RUNNING, "T1"),
            "nobody": (finished(50_000), None),
            "t1": (finished(60_000), "T1"),
        }
    )
    assert ranking["running"] == UNRANKED == Ranking(None, None, None)
    assert ranking["nobody"] == Ranking(position=1, class_position=None, gap_ms=0)
    assert ranking["t1"] == Ranking(position=2, class_position=1, gap_ms=10_000)
    assert rank({}) == {}


fields = st.dictionaries(
    st.text(min_size=1, max_size=4),
    st.tuples(
        st.one_of(st.integers(0, 20).map(lambda n: finished(1_000 * n)), st.just(RUNNING)),
        st.sampled_from(("T1", "T2", "T3", None)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(fields, st.randoms(use_true_random=False))
def test_ranking_invariants(
    field: dict[str, tuple[EntryResult, str | None]], rnd: random.Random
) -> None:
    ranking = rank(field)
    assert set(ranking) == set(field)
    items = list(field.items())
    rnd.shuffle(items)
    assert rank(dict(items)) == ranking, "independent of the order given"
    done = {e: r.total_ms for e, (r, _) in field.items() if r.status is Status.FINISHED}
    for entry, (_result, klass) in field.items():
        got = ranking[entry]
        if entry not in done:
            assert got == UNRANKED
            continue
        total = done[entry]
        assert got.position == 1 + sum(1 for other in done.values() if other < total)
        assert got.gap_ms == total - min(done.values())
        assert (got.gap_ms == 0) == (got.position == 1)
        if klass is None:
            assert got.class_position is None
        else:
            mates = [done[e] for e, (_, k) in field.items() if e in done and k == klass]
            assert got.class_position == 1 + sum(1 for other in mates if other < total)
            assert got.position is not None and got.class_position <= got.position
    # positions follow totals: a strictly smaller total has a strictly smaller position
    for a, total_a in done.items():
        for b, total_b in done.items():
            pa, pb = ranking[a].position, ranking[b].position
            assert pa is not None and pb is not None and total_a is not None
            assert total_b is not None
            if total_a < total_b:
                assert pa < pb
            elif total_a == total_b:
                assert pa == pb
