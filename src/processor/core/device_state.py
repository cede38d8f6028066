"""Bounded per-device hot state, moved only forward in time.

An OrderedDict is the LRU: every touch moves the device to the end, eviction pops the front.
A device absent from state (new, or evicted) is rehydrated from its latest stored non-faulty
position before its next record is judged, so fix-quality checks survive restarts and evictions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime

import attrs

from processor.position import Position


@attrs.define(slots=True)
class DeviceState:
    last_position: Position | None  # the newest non-faulty fix (None: none known yet)
    last_seen: datetime | None  # when this processor last saw any record of the device
    positions_this_session: int = 0


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
        state = DeviceState(last_position=last_good, last_seen=None)
        self._put(device_id, state)
        return state

    def observe(self, position: Position, *, good: bool, seen_at: datetime) -> DeviceState:
        """Account a record; a good fix newer than the last one becomes `last_position`."""
        state = self.get(position.device_id)
        if state is None:
            state = self.hydrate(position.device_id, None)
        state.last_seen = seen_at
        state.positions_this_session += 1
        if good and (state.last_position is None or position.ts > state.last_position.ts):
            state.last_position = position
        return state

    def _put(self, device_id: str, state: DeviceState) -> None:
        self._states[device_id] = state
        self._states.move_to_end(device_id)
        while len(self._states) > self.cap:
            self._states.popitem(last=False)
            self._on_evict()
