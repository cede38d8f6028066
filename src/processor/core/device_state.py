"""Bounded per-device hot state, moved only forward in time.

An OrderedDict is the LRU: every touch moves the device to the end, eviction pops the front.
A device absent from state (new, or evicted) is rehydrated from its latest stored non-faulty
position before its next record is judged, so fix-quality checks survive restarts and evictions.

The last good fix is kept as the plain values the writer already has (a `StoredRow`), not as a
Position: judging a batch builds no object per fix. `last_position` gives the Position form
(without IO attributes, which neither the rules nor rehydration carry).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs

from processor.codecs.position import Position
from processor.codecs.quality import fix_fault


@attrs.define(slots=True)
class DeviceState:
    last_fix: tuple[Any, ...] | None  # the newest non-faulty fix, docs/storage.md column order
    last_seen: datetime | None  # when this processor last saw any record of the device
    positions_this_session: int = 0

    @property
    def last_position(self) -> Position | None:
        """The newest non-faulty fix (None: none known yet)."""
        return None if self.last_fix is None else Position(*self.last_fix[:9])


def position_values(position: Position) -> tuple[Any, ...]:
    p = position
    return (
        p.device_id, p.ts, p.latitude, p.longitude, p.altitude, p.angle, p.speed, p.satellites,
        p.priority,
    )  # fmt: skip


class DeviceStates:
    """LRU-capped map device_id -> DeviceState."""

    def __init__(self, cap: int, on_evict: Callable[[], None] = lambda: None) -> None:
        self.cap = cap
        self._states: OrderedDict[str, DeviceState] = OrderedDict()
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._states

    def get(self, device_id: str) -> DeviceState | None:
        state = self._states.get(device_id)
        if state is not None:
            self._states.move_to_end(device_id)
        return state

    def missing(self, device_ids: Iterable[str]) -> list[str]:
        """Devices not in state: the ones to rehydrate from the database."""
        return [device_id for device_id in set(device_ids) if device_id not in self._states]

    def hydrate(self, device_id: str, last_good: Position | None) -> DeviceState:
        """Insert a device's state from its latest stored good fix (or None for a new device)."""
        fix = None if last_good is None else position_values(last_good)
        state = DeviceState(last_fix=fix, last_seen=None)
        self._put(device_id, state)
        return state

    def observe(self, position: Position, *, good: bool, seen_at: datetime) -> DeviceState:
        """Account a record; a good fix newer than the last one becomes `last_position`."""
        state = self.get(position.device_id)
        if state is None:
            state = self.hydrate(position.device_id, None)
        state.last_seen = seen_at
        state.positions_this_session += 1
        if good and (state.last_fix is None or position.ts > state.last_fix[1]):
            state.last_fix = position_values(position)
        return state

    def judge(
        self,
        rows: Sequence[tuple[Any, ...]],
        *,
        now: datetime,
        latest_ts: datetime,
        max_speed_kmh: float,
    ) -> list[str | None]:
        """Each fix's fault (None: good), judged in order, with state advanced as it goes.

        `observe` + `quality.faulty_reason` for a whole batch of `StoredRow`s, in one loop with
        no object per fix. Devices must have been hydrated (`missing`) first.
        """
        faults: list[str | None] = []
        states = self._states
        for row in rows:
            device_id = row[0]
            state = states.get(device_id)
            if state is None:  # evicted by this batch's own hydration (more devices than cap)
                state = self.hydrate(device_id, None)
            else:
                states.move_to_end(device_id)
            last = state.last_fix
            fault = fix_fault(row, last, latest_ts, max_speed_kmh)
            faults.append(fault)
            state.last_seen = now
            state.positions_this_session += 1
            if fault is None and (last is None or row[1] > last[1]):
                state.last_fix = row
        return faults

    def _put(self, device_id: str, state: DeviceState) -> None:
        self._states[device_id] = state
        self._states.move_to_end(device_id)
        while len(self._states) > self.cap:
            self._states.popitem(last=False)
            self._on_evict()
