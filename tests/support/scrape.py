"""Reading a running processor's HTTP endpoints the way Prometheus and an orchestrator do."""

from __future__ import annotations

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One `/metrics` exposition, parsed by prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families: dict[str, Metric] = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample_name: str, **labels: str) -> float:
        """The value of the one sample called `sample_name` with exactly these labels."""
        found = [
            s.value
            for family in self.families.values()
            for s in family.samples
            if s.name == sample_name and s.labels == labels
        ]
        assert len(found) == 1, f"{sample_name}{labels}: {len(found)} samples in\n{self.text}"
        return found[0]

    def total(self, sample_name: str) -> float:
        """The sum of `sample_name` over all its label values."""
        return sum(
            s.value
            for family in self.families.values()
            for s in family.samples
            if s.name == sample_name
        )


def base_url(port: int | None) -> str:
    assert port, "the service has no HTTP port yet"
    return f"http://127.0.0.1:{port}"


def scrape_sync(port: int | None) -> Scrape:
    """For `wait_until` predicates (they run in a worker thread)."""
    response = httpx.get(base_url(port) + "/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return Scrape(response.text)


async def scrape(port: int | None) -> Scrape:
    async with httpx.AsyncClient(base_url=base_url(port), timeout=5) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


async def get(port: int | None, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url(port), timeout=5) as client:
        return await client.get(path)
