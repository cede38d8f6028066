"""Derived IO attributes: a device model's raw IO element ids mapped to named values.

Pure code shared by the live layer (position frames carry `"io"`) and the racing domain (the
`stopped` alert says whether the ignition was off). Directus holds the mappings:
`io_mappings (model, io_id, name, multiplier, unit)` and `devices.model`.

Rules: a raw attribute whose key is the decimal id of a mapped element becomes `name: value *
multiplier`; with unit `bool` it becomes `name: value != 0` (Teltonika's digital inputs,
ignition 239 and movement 240, are 0/1). Values that are not numbers (bytes sentinels, text)
keep their raw value under the name. Unmapped ids stay as they are, under their raw key. A
device without a model, or whose model has no mapping, gets no `io` at all (its frames are
unchanged). The stored row always keeps the raw IO: mapping is display, not data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

BOOL_UNIT = "bool"


@attrs.frozen(slots=True)
class IoElement:
    name: str
    multiplier: float = 1.0
    unit: str | None = None


ModelMap = Mapping[str, IoElement]  # raw key ("239") -> element


def build(rows: Iterable[tuple[Any, ...]]) -> dict[str, dict[str, IoElement]]:
    """(model, io_id, name, multiplier, unit) rows -> model -> raw key -> element; rows with
    no model, id or name are ignored."""
    models: dict[str, dict[str, IoElement]] = {}
    for model, io_id, name, multiplier, unit in rows:
        if not model or io_id is None or not name:
            continue
        element = IoElement(str(name), 1.0 if multiplier is None else float(multiplier), unit)
        models.setdefault(str(model), {})[str(int(io_id))] = element
    return models


def derive(attributes: Mapping[str, Any], mapping: ModelMap) -> dict[str, Any]:
    """The `io` object of one fix."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        element = mapping.get(key)
        if element is None:
            out[key] = value.hex() if isinstance(value, bytes) else value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out[element.name] = value.hex() if isinstance(value, bytes) else value
        elif element.unit == BOOL_UNIT:
            out[element.name] = value != 0
        else:
            scaled = value * element.multiplier
            out[element.name] = round(scaled, 9) if isinstance(scaled, float) else scaled
    return out


def value_of(attributes: Mapping[str, Any], mapping: ModelMap, name: str) -> Any:
    """One named value of a fix (None when the device does not report it)."""
    return derive(attributes, mapping).get(name) if mapping else None
