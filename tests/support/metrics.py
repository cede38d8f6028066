"""Reading an in-process service's metrics as Prometheus would, through the public registry.

Tests wait on what an operator can see (a gauge, a counter) rather than on counters or private
attributes kept only for them; `registry.get_sample_value` is prometheus-client's public reading.
"""

from __future__ import annotations

from typing import Any

from processor.app import Service


def sample(service: Service, name: str, **labels: str) -> float:
    """The value of the sample `name` (as exposed: `_total` for counters) with these labels."""
    value = service.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def live_quiet(service: Service) -> bool:
    """No socket of the live server is left in its upgrade or being served."""
    return (
        sample(service, "processor_live_pending_upgrades") == 0
        and sample(service, "processor_live_connections") == 0
    )


def live_connections(service: Service) -> float:
    return sample(service, "processor_live_connections")


def live_subscriptions(service: Service) -> float:
    return sample(service, "processor_live_subscriptions")


def value(metric: Any) -> float:
    """The one value of a counter or gauge (unlabelled, or one labelled child) through its public
    `collect()`: a counter's `_total` sample, a gauge's sample; a histogram gives its `_sum`."""
    [family] = metric.collect()
    samples = [
        s for s in family.samples if s.name.endswith(("_total", "_sum")) or s.name == family.name
    ]
    [one] = samples
    return float(one.value)


def live_broadcasts(service: Service) -> float:
    """Positions the live broadcaster judged fit and handed out."""
    return sample(service, "processor_live_positions_broadcast_total")
