"""The snapshot sent on subscribe: the latest non-faulty stored fix of every device of an event.

One worker-thread hop: the event's devices straight from the Directus tables (not the refreshed
map, so a device linked a moment ago is included), then each device's latest good fix through the
`positions` primary key (a backward index scan per device, `store.positions.latest_good_positions`).
The caller registers the subscription *before* calling `read` (see `registry.Subscription`).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import structlog

from processor.live.device_events import event_devices
from processor.observability.metrics import Metrics
from processor.position import Position
from processor.store.positions import latest_good_positions
from processor.store.postgres import TRANSIENT_ERRORS, Database

log = structlog.get_logger("processor.live.snapshot")


class SnapshotError(Exception):
    """The snapshot could not be read; `code` is the protocol error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Snapshots:
    def __init__(self, database: Database, metrics: Metrics) -> None:
        self._database = database
        self._metrics = metrics

    async def read(self, event_id: str) -> list[Position]:
        started = time.perf_counter()
        try:
            return await self._database.run(lambda conn: _read(conn, event_id))
        except TRANSIENT_ERRORS as exc:
            log.warning("snapshot unavailable", event_id=event_id, error=str(exc).strip()[:200])
            raise SnapshotError("unavailable", "snapshot unavailable, retry later") from exc
        except psycopg.Error as exc:
            log.error("snapshot query failed", event_id=event_id, error=str(exc).strip()[:200])
            raise SnapshotError("internal", "snapshot query failed") from exc
        finally:
            self._metrics.live_snapshot_duration.observe(time.perf_counter() - started)


def _read(conn: psycopg.Connection[Any], event_id: str) -> list[Position]:
    latest = latest_good_positions(conn, event_devices(conn, event_id))
    return [latest[device_id] for device_id in sorted(latest)]
