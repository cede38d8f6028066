"""The history endpoint's two formats: GeoJSON (RFC 7946) and GPX 1.1. Pure code.

GeoJSON: one Feature per device with fixes in the window (a LineString, a Point for a single
fix), per-point values as arrays parallel to the coordinates, the request and the
simplification as foreign members. GPX 1.1: one `trk` per device, the speed in Garmin's
TrackPointExtension v2. Text is escaped and characters XML 1.0 cannot carry are replaced, so
any stored device id makes a well-formed file. The shapes: docs/history.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

import attrs
import orjson

GPX_NAMESPACE = "http://www.topografix.com/GPX/1/1"
TPX_NAMESPACE = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@attrs.define(slots=True)
class Track:
    """One device's fixes in the window, in time order (parallel lists)."""

    device_id: str
    times: list[str] = attrs.field(factory=list)  # RFC 3339, microseconds, Z
    latitudes: list[float] = attrs.field(factory=list)
    longitudes: list[float] = attrs.field(factory=list)
    altitudes: list[float | None] = attrs.field(factory=list)
    speeds: list[float | None] = attrs.field(factory=list)
    faulty: list[bool] = attrs.field(factory=list)
    fixes: int = 0  # fixes in the window, before simplification

    def select(self, indices: Sequence[int]) -> Track:
        if len(indices) == len(self.times):
            return self
        return Track(
            self.device_id,
            [self.times[i] for i in indices],
            [self.latitudes[i] for i in indices],
            [self.longitudes[i] for i in indices],
            [self.altitudes[i] for i in indices],
            [self.speeds[i] for i in indices],
            [self.faulty[i] for i in indices],
            self.fixes,
        )


@attrs.frozen
class Simplification:
    """What was dropped, and by which rule (docs/history.md)."""

    max_points: int
    tolerance_m: float | None  # None: only the pinned fixes fit
    fixes: int
    points: int

    def describe(self) -> str:
        tolerance = "" if self.tolerance_m is None else f", tolerance {self.tolerance_m:.1f} m"
        return (
            f"simplified: {self.points} of {self.fixes} fixes (Douglas-Peucker{tolerance}; "
            "first, last and control-pass fixes kept)"
        )

    def document(self) -> dict[str, Any]:
        return {
            "algorithm": "douglas-peucker",
            "tolerance_m": None if self.tolerance_m is None else round(self.tolerance_m, 3),
            "max_points": self.max_points,
            "fixes": self.fixes,
            "points": self.points,
            "kept": ["first", "last", "control_passes"],
        }


def geojson(
    tracks: Sequence[Track],
    *,
    request: dict[str, Any],
    include_faulty: bool,
    simplification: Simplification | None,
) -> bytes:
    features = []
    for track in tracks:
        if not track.times:
            continue
        coordinates = [
            [lon, lat] for lon, lat in zip(track.longitudes, track.latitudes, strict=True)
        ]
        geometry: dict[str, Any] = (
            {"type": "LineString", "coordinates": coordinates}
            if len(coordinates) > 1
            else {"type": "Point", "coordinates": coordinates[0]}
        )
        properties: dict[str, Any] = {
            "device_id": track.device_id,
            "times": track.times,
            "speeds": track.speeds,
            "fixes": track.fixes,
            "simplified": len(track.times) < track.fixes,
        }
        if include_faulty:
            properties["faulty"] = track.faulty
        features.append(
            {
                "type": "Feature",
                "id": track.device_id,
                "geometry": geometry,
                "properties": properties,
            }
        )
    document: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": features,
        "request": request,
        "simplification": None if simplification is None else simplification.document(),
    }
    return orjson.dumps(document)


def gpx(
    tracks: Sequence[Track],
    *,
    name: str,
    generated_at: str,
    simplification: Simplification | None,
) -> bytes:
    out = [
        (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<gpx version="1.1" creator="processor" xmlns="{GPX_NAMESPACE}" '
            f'xmlns:gpxtpx="{TPX_NAMESPACE}" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xsi:schemaLocation="{GPX_NAMESPACE} http://www.topografix.com/GPX/1/1/gpx.xsd">\n'
            f"<metadata><name>{_text(name)}</name>"
        )
    ]
    if simplification is not None:
        out.append(f"<desc>{_text(simplification.describe())}</desc>")
    out.append(f"<time>{generated_at}</time></metadata>\n")
    for track in tracks:
        if not track.times:
            continue
        out.append(f"<trk><name>{_text(track.device_id)}</name>")
        if len(track.times) < track.fixes:
            out.append(f"<desc>{len(track.times)} of {track.fixes} fixes</desc>")
        out.append("<trkseg>\n")
        out.extend(
            _trkpt(point)
            for point in zip(
                track.latitudes,
                track.longitudes,
                track.altitudes,
                track.times,
                track.speeds,
                track.faulty,
                strict=True,
            )
        )
        out.append("</trkseg></trk>\n")
    out.append("</gpx>\n")
    return "".join(out).encode()


def _trkpt(point: tuple[float, float, float | None, str, float | None, bool]) -> str:
    lat, lon, alt, time, speed, faulty = point
    ele = "" if alt is None else f"<ele>{_decimal(alt)}</ele>"
    kind = "<type>faulty</type>" if faulty else ""
    extension = (
        ""
        if speed is None
        else "<extensions><gpxtpx:TrackPointExtension><gpxtpx:speed>"
        f"{_decimal(round(speed / 3.6, 3))}</gpxtpx:speed>"
        "</gpxtpx:TrackPointExtension></extensions>"
    )
    return (
        f'<trkpt lat="{_decimal(lat)}" lon="{_decimal(lon)}">{ele}<time>{time}</time>'
        f"{kind}{extension}</trkpt>\n"
    )


def _decimal(value: float) -> str:
    """xsd:decimal: no exponent (repr writes 1e-05)."""
    text = repr(value)
    return text if "e" not in text else format(value, ".9f")


def _text(value: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", value))
