"""The entries this process has read and not yet settled (acked or dead-lettered).

During a long database outage our own entries wait in the writer far longer than
`RECLAIM_MIN_IDLE_MS`. They must not be sent through the pipeline a second time (a wasted
write) nor, worse, counted towards `MAX_DELIVERIES` and dead-lettered while they are merely
waiting: the reclaimer renews this instance's hold on every entry in this set, atomically
before each claim and periodically in between (see deliveries.py). Its size is bounded by the
pipeline's bounded channels.
"""

from __future__ import annotations

from collections.abc import Iterable


class InFlight:
    def __init__(self) -> None:
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._ids

    def ids(self) -> list[str]:
        """A snapshot (safe to hand to a worker thread while the set changes)."""
        return list(self._ids)

    def add(self, entry_ids: Iterable[str]) -> None:
        self._ids.update(entry_ids)

    def settle(self, entry_ids: Iterable[str]) -> None:
        self._ids.difference_update(entry_ids)
