"""The stopped-car rule: has an entry been standing still long enough to alert race control?

Judged on fix times, never arrival order: the window is the entry's stored fixes since its last
*moving* fix (speed above `ALERT_STOPPED_KMH`); it is a stop once those fixes span
`ALERT_STOPPED_S`. The SQL that reads the window and raises the alert is in `domain.alerts`.
"""

from __future__ import annotations

from datetime import datetime

import attrs

STOPPED, NO_SIGNAL = "stopped", "no_signal"


@attrs.frozen
class AlertRules:
    stopped_kmh: float = 5.0  # ALERT_STOPPED_KMH
    stopped_s: float = 180.0  # ALERT_STOPPED_S
    no_signal_s: float = 120.0  # ALERT_NO_SIGNAL_S


@attrs.frozen
class StopWindow:
    """The entry's fixes since its last moving fix (None: no such fix)."""

    last_moving: datetime | None
    first_slow: datetime | None
    last_slow: datetime | None


def stopped_since(window: StopWindow, rules: AlertRules) -> datetime | None:
    """When the ongoing stop began, if it has lasted ALERT_STOPPED_S."""
    if window.first_slow is None or window.last_slow is None:
        return None
    if (window.last_slow - window.first_slow).total_seconds() >= rules.stopped_s:
        return window.first_slow
    return None
