"""Track history helpers: fixes stored straight into `positions`, requests to the endpoint, the
response checks (RFC 7946's structure, the OpenAPI contract's schemas, the GPX 1.1 XSD)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import httpx
import jsonschema
import orjson
import psycopg
import xmlschema

from processor.store.migrations import apply_migrations, default_directory, load_migrations
from tests.support.directus import COOKIE_NAME
from tests.support.live import TOKEN

ROOT = Path(__file__).resolve().parent.parent.parent
CONTRACT = ROOT / "docs" / "history.openapi.json"
GPX_XSD = ROOT / "tests" / "fixtures" / "gpx" / "gpx-1.1.xsd"
T0 = datetime(2026, 5, 12, 10, 0, tzinfo=UTC)

Fix = tuple[str, datetime, float, float, float | None, float | None, bool]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def straight(device: str, count: int, *, start_s: float = 0, every_s: float = 1) -> list[Fix]:
    """A car driving north-east at 72 km/h (20 m/s), one fix every `every_s` seconds."""
    fixes = []
    for i in range(count):
        metres = 20.0 * every_s * i
        fixes.append(
            (
                device,
                at(start_s + i * every_s),
                41.0 + metres / 111_320,
                19.0 + metres / (111_320 * math.cos(math.radians(41))),
                100.0 + i % 7,
                72.0,
                False,
            )
        )
    return fixes


def store(database_url: str, fixes: Iterable[Fix]) -> None:
    """Fixes written as the writer would have stored them (the schema migrated first)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn, load_migrations(default_directory()))
    with (
        psycopg.connect(database_url) as conn,
        conn.cursor().copy(
            "COPY positions (device_id, ts, latitude, longitude, altitude, speed, faulty,"
            " satellites) FROM STDIN"
        ) as copy,
    ):
        for fix in fixes:
            copy.write_row((*fix, 9))


async def get(
    port: int | None,
    params: dict[str, Any] | str,
    *,
    token: str | None = TOKEN,
    cookie: str | None = None,
    origin: str | None = None,
    method: str = "GET",
    path: str = "/live/history",
) -> httpx.Response:
    assert port
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE_NAME}={cookie}"
    if origin is not None:
        headers["Origin"] = origin
    query = params if isinstance(params, str) else urlencode(params)
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        return await client.request(
            method, f"http://127.0.0.1:{port}{path}?{query}", headers=headers
        )


@cache
def contract() -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(CONTRACT.read_bytes())
    return document


def check_contract(document: Any, schema: str) -> None:
    """`document` against `components/schemas/<schema>` of docs/history.openapi.json."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": contract()["components"]}
    jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(document)


def check_rfc7946(document: Any) -> None:
    """The structure RFC 7946 requires of a FeatureCollection of LineStrings (and Points)."""
    assert document["type"] == "FeatureCollection"  # 3.3
    assert isinstance(document["features"], list)
    for name in ("geometry", "properties", "coordinates", "geometries"):  # 7.1
        assert name not in document
    for feature in document["features"]:
        assert feature["type"] == "Feature"  # 3.2
        assert "geometry" in feature and "properties" in feature
        assert isinstance(feature.get("id", ""), str | int | float)
        geometry = feature["geometry"]
        if geometry["type"] == "LineString":  # 3.1.4: two or more positions
            positions = geometry["coordinates"]
            assert len(positions) >= 2
        else:
            assert geometry["type"] == "Point"  # 3.1.2
            positions = [geometry["coordinates"]]
        for position in positions:  # 3.1.1: longitude, latitude [, altitude], decimal degrees
            assert 2 <= len(position) <= 3
            assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)
            assert -180 <= position[0] <= 180 and -90 <= position[1] <= 90
        for name in ("coordinates", "geometries", "features"):  # 7.1: not a Feature's
            assert name not in feature


def check_gpx(body: bytes) -> ET.Element:
    """Valid against the GPX 1.1 XSD (offline: the vendored copy); returns the parsed tree."""
    _gpx_schema().validate(body.decode())
    return ET.fromstring(body)


@cache
def _gpx_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(GPX_XSD))


def coordinates(feature: dict[str, Any]) -> Sequence[Sequence[float]]:
    geometry = feature["geometry"]
    return (
        geometry["coordinates"] if geometry["type"] == "LineString" else [geometry["coordinates"]]
    )
