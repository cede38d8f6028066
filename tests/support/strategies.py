"""Hypothesis strategies for the codec: valid Positions, arbitrary JSON, and strict comparison.

`strict` exists because Python's `==` hides exactly the bugs a codec makes: `True == 1` and
`1 == 1.0`, so a boolean turned into a number (or an int into a float) would pass a plain
equality check.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from hypothesis import strategies as st

from processor.codecs.position import Position

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
# Integers around every boundary the codec and JSONB care about (2^53: exact doubles; 64 bits:
# orjson's limit and the sentinel's reason to exist; beyond: the stdlib fallback).
EDGE_INTEGERS = (
    0,
    -1,
    2**53,
    2**53 + 1,
    -(2**53) - 1,
    2**63 - 1,
    I64_MIN,
    I64_MIN - 1,
    U64_MAX,
    -U64_MAX,
    2**64,
    2**70,
    -(2**70),
    10**120,
)

# Text as PostgreSQL can store it: any Unicode scalar value but NUL (surrogates are excluded by
# hypothesis' text() already).
storable_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)

attribute_values: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-U64_MAX, max_value=U64_MAX),
    st.integers(),
    st.sampled_from(EDGE_INTEGERS),
    finite_floats,
    storable_text,
    st.binary(max_size=40),
)

attribute_bags = st.dictionaries(
    keys=st.one_of(st.integers(0, 100_000).map(str), storable_text),
    values=attribute_values,
    max_size=8,
)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


positions: st.SearchStrategy[Position] = st.builds(
    Position,
    device_id=st.text(
        alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
        min_size=1,
        max_size=64,
    ),
    ts=st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999)
    ).map(lambda naive: naive.replace(tzinfo=UTC)),
    latitude=st.floats(min_value=-90, max_value=90),
    longitude=st.floats(min_value=-180, max_value=180),
    altitude=optional(finite_floats),
    angle=optional(st.floats(min_value=0, max_value=360)),
    speed=optional(st.floats(min_value=0, allow_infinity=False)),
    satellites=optional(st.integers(min_value=0, max_value=2**31 - 1)),
    priority=optional(st.sampled_from((0, 1, 2))),
    attributes=attribute_bags,
)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), finite_floats, st.text())
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def strict(value: Any) -> Any:
    """`value` with every leaf tagged by its type, so that equality is type-exact."""
    if isinstance(value, Position):
        return {f.name: strict(getattr(value, f.name)) for f in attrs.fields(Position)}
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict(item) for item in value]
    return (type(value).__name__, value)


def json_number_equal(expected: Any, actual: Any) -> bool:
    """JSON-value equality, type-exact except that a float may read back as an equal int.

    JSONB stores a number's decimal value: 1e300 is written "1e300" and read back as the int
    10**300 (see `stored_attributes`). Booleans never compare equal to numbers here.
    """
    if isinstance(expected, float):
        return (type(actual) is float or (type(actual) is int and expected.is_integer())) and float(
            actual
        ) == expected
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(json_number_equal(expected[k], actual[k]) for k in expected)
        )
    return type(expected) is type(actual) and expected == actual


# --- timestamps (docs/stream-input.md: RFC 3339 only) ---------------------------

_utc_datetimes = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31, 23, 59, 59, 999_999)
)


@st.composite
def rfc3339_timestamps(draw: st.DrawFn) -> tuple[str, datetime]:
    """(an RFC 3339 `date-time` in any of its spellings, the UTC instant it names, truncated to
    microseconds): fractions of 0-9 digits, `Z`/`z`/`-00:00`/any `±hh:mm`, `T` or `t`."""
    instant = draw(_utc_datetimes).replace(tzinfo=UTC)
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    local = instant + timedelta(minutes=minutes)
    digits = draw(st.integers(0, 9))
    extra = draw(st.integers(0, 999))  # sub-microsecond digits: truncated, never rounded
    fraction = f"{local.microsecond:06d}{extra:03d}"[:digits]
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
        f"T{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    )
    if digits:
        text += "." + fraction
    if minutes == 0:
        zone = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00"]))
    else:
        sign, size = ("+" if minutes > 0 else "-"), abs(minutes)
        zone = f"{sign}{size // 60:02d}:{size % 60:02d}"
    if draw(st.booleans()):
        text = text[:10] + "t" + text[11:]
    expected = instant.replace(microsecond=int((fraction + "000000")[:6]) if digits else 0)
    return text + zone, expected


_NON_ASCII_DIGITS = "٠١٢٣٤٥٦٧٨٩"  # Arabic-Indic: str.isdigit() and int() take them


@st.composite
def non_rfc3339_timestamps(draw: st.DrawFn) -> str:
    """ISO 8601 spellings (and near misses) that are not RFC 3339 `date-time`s, most of which
    `datetime.fromisoformat` accepts: each must be refused."""
    t = draw(_utc_datetimes)
    date, time_ = f"{t.year:04d}-{t.month:02d}-{t.day:02d}", f"{t:%H:%M:%S}"
    year, week, weekday = t.isocalendar()
    shapes = [
        f"{date}{draw(st.sampled_from('x_/ -:'))}{time_}Z",  # another separator
        f"{year:04d}-W{week:02d}-{weekday}T{time_}Z",  # week date
        f"{year:04d}W{week:02d}{weekday}T{time_}Z",
        f"{t.year:04d}-{t.timetuple().tm_yday:03d}T{time_}Z",  # ordinal date
        f"{date.replace('-', '')}T{time_.replace(':', '')}Z",  # basic format
        f"{date}T{time_}+01:00:30",  # offset with seconds
        f"{date}T{time_}+0100",  # offset without colon
        f"{date}T{time_}+01",
        f"{date}T{time_[:5]}Z",  # no seconds
        f"{date}T{time_[:2]}Z",
        f"{date}T{time_},5Z",  # comma fraction
        f"{date}T{time_}.Z",
        f"{date}T{time_}.1234567890Z",  # beyond nanoseconds
        f"{date}T24:00:00Z",
        f"{date}T{time_[:6]}60Z",  # leap second
        f"{date}T{time_}Z ",
        f" {date}T{time_}Z",
        f"{date}T{time_}UTC",
    ]
    if draw(st.booleans()):
        text: str = draw(st.sampled_from(shapes))
    else:  # a valid one with one ASCII digit swapped for a non-ASCII one
        text = f"{date}T{time_}Z"
        where = draw(st.sampled_from([i for i, c in enumerate(text) if c.isdigit()]))
        text = text[:where] + _NON_ASCII_DIGITS[int(text[where])] + text[where + 1 :]
    return text
