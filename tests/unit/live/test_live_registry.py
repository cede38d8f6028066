"""The live registry's byte budget: positions held for a subscription whose snapshot is being
read count against the connection's queue in bytes, so a big event cannot close healthy clients
(nor let a stalled one grow without bound)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from processor.live.registry import Grants, Registry
from processor.observability.metrics import Metrics


class FakeOutlet:
    """An outlet with a byte budget, as `Connection` has (for the registry's unit tests)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0
        self.sent: list[str] = []
        self.overflowed = False

    def enqueue(self, frame: str, kind: str, entry_ms: int | None) -> None:
        self.sent.append(frame)

    def overflow(self) -> None:
        self.overflowed = True

    def hold(self, size: int) -> bool:
        if self.held + size > self.budget:
            self.overflow()
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size


def test_positions_held_during_a_snapshot_count_bytes_not_frames() -> None:
    """An event of 3,000 devices sends thousands of positions while its snapshot is read: they
    are held against the byte budget (a frame cap closed healthy clients), released on
    activation, and only what is newer than the snapshot is sent."""
    registry = Registry(Metrics())
    outlet = FakeOutlet(budget=1_000_000)
    topic = "event:x"
    subscription = registry.subscribe(outlet, topic, Grants())
    base = datetime(2026, 5, 12, tzinfo=UTC)
    for i in range(3000):
        subscription.offer(f"d{i}", base + timedelta(seconds=i % 2), f"frame-{i}", None)
    assert not outlet.overflowed and outlet.held > 0
    # the snapshot saw every device at second 0: only the positions at second 1 are newer
    subscription.activate_floors({f"d{i}": base for i in range(3000)})
    assert outlet.held == 0
    assert len(outlet.sent) == 1500
    # over the byte budget: the connection is closed as a slow consumer
    small = FakeOutlet(budget=10_000)
    pending = registry.subscribe(small, topic, Grants())
    for i in range(1000):
        pending.offer(f"d{i}", base, "x" * 100, None)
    assert small.overflowed
    registry.unsubscribe(small, topic)
    assert small.held == 0
