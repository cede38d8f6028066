"""A stage's ranking from its entries' results (docs/racing-domain.md).

Finished entries are ranked by `total_ms` (elapsed + penalties); equal totals share a position and
the next one skips (1, 1, 3: "standard competition ranking", as timekeepers publish). The same
within each class for `class_position`. An entry without a class (`entries.class` null) is
ranked overall but belongs to no class, so its `class_position` is None — inventing an "unclassed"
class would publish a podium nobody competes for. `gap_ms` is the difference to the overall
leader's total (0 for the leader and those tied with it). Running (or not started) entries get
all None. The result does not depend on the mapping's order.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from processor.domain.rules.model import EntryResult, Ranking, Status

UNRANKED = Ranking(position=None, class_position=None, gap_ms=None)


def rank(results: Mapping[str, tuple[EntryResult, str | None]]) -> dict[str, Ranking]:
    """entry id -> (result, class) to entry id -> Ranking, for every entry given."""
    finished: dict[str, tuple[int, str | None]] = {}
    for entry, (result, klass) in results.items():
        if result.status is Status.FINISHED and result.total_ms is not None:
            finished[entry] = (result.total_ms, klass)

    overall = sorted(total for total, _ in finished.values())
    by_class: dict[str, list[int]] = {}
    for total, klass in finished.values():
        if klass is not None:
            by_class.setdefault(klass, []).append(total)
    for totals in by_class.values():
        totals.sort()

    leader = overall[0] if overall else 0
    ranking: dict[str, Ranking] = {}
    for entry in results:
        if entry not in finished:
            ranking[entry] = UNRANKED
            continue
        total, klass = finished[entry]
        # position = 1 + how many finished strictly faster: ties share, the next one skips.
        position = bisect.bisect_left(overall, total) + 1
        class_position = None if klass is None else bisect.bisect_left(by_class[klass], total) + 1
        ranking[entry] = Ranking(
            position=position, class_position=class_position, gap_ms=total - leader
        )
    return ranking
