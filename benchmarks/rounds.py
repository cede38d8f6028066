"""The order of interleaved contenders within a benchmark's rounds."""

from __future__ import annotations

from collections.abc import Sequence


def round_order(names: Sequence[str], attempt: int) -> list[str]:
    """`names` forward in even rounds, backward in odd ones: a drift in the machine's speed
    during a run (host steal, the database's background writes) then does not always fall on
    whoever comes later in a round."""
    return list(names) if attempt % 2 == 0 else list(reversed(names))
