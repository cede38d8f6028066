"""Which events a device belongs to, read from the Directus tables (docs/storage.md).

A device belongs to an event when `devices.imei` equals the position's `device_id` and an
`entry_devices` row links it to an entry of that event. The broadcaster needs that answer for
every position, so the whole mapping is held in memory and rebuilt every
`LIVE_DEVICE_EVENT_REFRESH_MS`: the query runs in a worker thread and the new dict replaces the
old one in a single assignment, so broadcasting never waits for a refresh (it keeps using the
previous map). A failed refresh is logged and the previous map kept; the next interval retries.

Consequence an operator should know: a device linked to an event in Directus starts appearing in
live data within one refresh interval (snapshots read the tables directly and see it at once).
The map is bounded by the Directus tables themselves (one entry per linked device).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import structlog
import trio
from trio import TaskStatus

from processor.codecs import io_map
from processor.codecs.io_map import IoElement, ModelMap
from processor.observability.metrics import Metrics
from processor.store.postgres import Database

log = structlog.get_logger("processor.live.device_events")

DEVICE_EVENTS = """
SELECT DISTINCT d.imei, en.event_id::text
FROM devices d
JOIN entry_devices ed ON ed.device_id = d.id
JOIN entries en ON en.id = ed.entry_id
WHERE d.imei IS NOT NULL AND en.event_id IS NOT NULL
"""

EVENT_DEVICES = """
SELECT DISTINCT d.imei
FROM devices d
JOIN entry_devices ed ON ed.device_id = d.id
JOIN entries en ON en.id = ed.entry_id
WHERE en.event_id = %s::uuid AND d.imei IS NOT NULL
"""


DEVICE_IO_READY = """
SELECT to_regclass('io_mappings') IS NOT NULL AND EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = to_regclass('devices') AND attname = 'model' AND NOT attisdropped)
"""

DEVICE_IO = """
SELECT d.imei, m.model, m.io_id, m.name, m.multiplier, m.unit
FROM devices d JOIN io_mappings m ON m.model = d.model
WHERE d.imei IS NOT NULL
"""


def read_device_io(conn: psycopg.Connection[Any]) -> dict[str, dict[str, IoElement]]:
    """device_id (IMEI) -> its model's IO mapping (devices of a mapped model only); empty
    when the `io_mappings` table or `devices.model` does not exist."""
    with conn.transaction():
        row = conn.execute(DEVICE_IO_READY).fetchone()
        if not row or not row[0]:
            return {}
        rows = conn.execute(DEVICE_IO).fetchall()
    models = io_map.build(r[1:] for r in rows)
    return {r[0]: models[r[1]] for r in rows if r[1] in models}


def read_device_events(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, ...]]:
    """device_id (IMEI) -> the ids of the events it belongs to."""
    mapping: dict[str, list[str]] = {}
    with conn.transaction():
        for imei, event_id in conn.execute(DEVICE_EVENTS):
            mapping.setdefault(imei, []).append(event_id)
    return {imei: tuple(sorted(events)) for imei, events in mapping.items()}


def event_devices(conn: psycopg.Connection[Any], event_id: str) -> list[str]:
    """The device ids (IMEIs) of one event, read directly (snapshots must not be stale)."""
    with conn.transaction():
        return [imei for (imei,) in conn.execute(EVENT_DEVICES, (event_id,))]


class DeviceEventMap:
    def __init__(
        self,
        database: Database,
        *,
        refresh_s: float,
        metrics: Metrics,
        on_refresh: Callable[[Mapping[str, tuple[str, ...]]], None] = lambda _m: None,
    ) -> None:
        self._database = database
        self._refresh_s = refresh_s
        self._metrics = metrics
        self._on_refresh = on_refresh
        self._map: dict[str, tuple[str, ...]] = {}
        self._io: dict[str, dict[str, IoElement]] = {}

    def events_of(self, device_id: str) -> tuple[str, ...]:
        return self._map.get(device_id, ())

    def io_of(self, device_id: str) -> ModelMap | None:
        """The device's IO mapping (None: no mapped model: frames carry no `io`)."""
        return self._io.get(device_id)

    def __len__(self) -> int:
        return len(self._map)

    async def refresh(self) -> bool:
        """Rebuild the map; on failure keep the previous one (returns False)."""
        try:
            fresh = await self._database.run(read_device_events)
            io = await self._database.run(read_device_io)
        except psycopg.Error as exc:
            log.error(
                "device -> events refresh failed; keeping the previous map",
                error=str(exc).strip()[:200],
                devices=len(self._map),
            )
            return False
        self._map = fresh
        self._io = io
        self._metrics.live_device_event_map_size.set(len(fresh))
        self._on_refresh(fresh)
        log.debug("device -> events map refreshed", devices=len(fresh))
        return True

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load once (so the first subscribers see live data at once), then refresh forever."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self._refresh_s)
            await self.refresh()
