"""One set of rules for the text of a value in a CSV cell, shared by REST tables and stream sections.

The rules (why: an agent reads both kinds of answer, and pays per token):
- None is an empty cell; booleans are `true` / `false` (JSON's words, not Python's).
- An int is its digits. A float is its shortest round-trip form (Python's repr) without a trailing `.0`: `100`,
  `230.04`, `1e+20`, `nan`. Whole numbers are common (volumes, round prices) and the `.0` tells a reader nothing.
- A list of scalars is its items joined by `|`; an item that is itself a list of scalars (a book level
  [price, size]) has its items joined by `:`. `|` never occurs in a number, needs no CSV quoting, and keeps strings
  with spaces apart.
- Anything else (objects, lists of objects, deeper nesting) is compact JSON, non-ASCII kept.
- A field is quoted, with `"` doubled, when its text holds `,`, `"`, CR or LF (RFC 4180, as the csv module does).

`csv_field` is the rule. `csv_column` formats a whole column, taking C-speed paths for the usual columns of a stream
answer (numbers, plain strings, lists of numbers); each path yields exactly what `csv_field` would, or declines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import chain
from typing import Any

import orjson

Scalar = str | int | float | bool | None
_SCALARS = (str, int, float, bool, type(None))
_LISTS = (list, tuple)


def _float_text(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _scalar_text(value: Scalar) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _float_text(value)


def _is_scalar_list(items: Sequence[object]) -> bool:
    return all(isinstance(item, _SCALARS) for item in items)


def _is_joinable(items: Sequence[object]) -> bool:
    """Scalars, or lists of scalars one level deep: what `|` and `:` show without losing structure."""
    return all(isinstance(item, _SCALARS) or (isinstance(item, _LISTS) and _is_scalar_list(item)) for item in items)


def _item_text(item: object) -> str:
    if isinstance(item, _LISTS):
        return ":".join(map(_scalar_text, item))
    return _scalar_text(item)  # type: ignore[arg-type]  # _is_joinable checked it is a scalar


def _json_text(value: object) -> str:
    # The json module, not orjson: it writes integers of any size, and `default=str` covers what JSON lacks.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def cell_text(value: object) -> str:
    """The text of `value` by the rules above, before CSV quoting."""
    if isinstance(value, _SCALARS):
        return _scalar_text(value)
    if isinstance(value, _LISTS) and _is_joinable(value):
        return "|".join(map(_item_text, value))
    return _json_text(value)


def quoted(text: str) -> str:
    """`text` as a CSV field: quoted, `"` doubled, when it holds a comma, a quote or a line break."""
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_field(value: object) -> str:
    """`value` as one CSV field: its text by the rules above, quoted where CSV needs it."""
    return quoted(cell_text(value))


def csv_line(fields: Sequence[str]) -> str:
    """Fields (from csv_field) as one CSV line, without its newline. A line of one empty field is written `""`, as
    the csv module does, so that a row is not mistaken for a blank line."""
    if len(fields) == 1 and not fields[0]:
        return '""'
    return ",".join(fields)


# -- whole columns -------------------------------------------------------------------------------------------------
# A stream answer is up to 1,000 rows of ~10 columns, and one Python call per cell would be most of its cost
# (bench/reads.py: the cold read of a full 1,000-event buffer must stay under 1 ms). These paths format the usual
# columns in a few C-level passes; tests/test_cells.py checks them against csv_field on random columns.

_NUMBERS = frozenset({int, float})
_INTS_OR_NONE = frozenset({int, type(None)})
_PLAIN_TEXT = frozenset({str, int})
# repr writes a float with an exponent from 1e16 up and below 1e-4; orjson's text can differ from repr's there
# (`1e-7` vs `1e-07`, `0.00001` vs `1e-05`), and for NaN and infinity (`null`). A column holding such a number
# takes the exact path: a false alarm (`10.00001` holds `.0000`) costs time, never text.
_REPR_FIXED_BELOW = 1e16
_MAYBE_NOT_REPR = (b"e", b"n", b".0000")


def _orjson_numbers(values: Sequence[object], floats: Sequence[float] | None) -> str | None:
    """orjson's text of `values` (numbers, or lists of numbers) where it is sure to be repr's, else None.
    `floats`: the numbers inside, when any is a float (None when all are ints, whose text always agrees)."""
    try:
        raw = orjson.dumps(values)  # the shortest round-trip digits of every number, in one C call
    except orjson.JSONEncodeError:  # an int beyond 64 bits
        return None
    if floats is not None:
        if any(mark in raw for mark in _MAYBE_NOT_REPR):
            return None
        if max(floats) >= _REPR_FIXED_BELOW or min(floats) <= -_REPR_FIXED_BELOW:
            return None
    return raw.decode()


def _numbers_column(values: Sequence[float], has_float: bool) -> list[str] | None:
    text = _orjson_numbers(values, values if has_float else None)
    if text is None:
        return None
    if not has_float:
        return text[1:-1].split(",")
    # A trailing `.0` only ever ends a whole float (the shortest form of any other number ends in a non-zero digit).
    return (text[1:-1] + ",").replace(".0,", ",")[:-1].split(",")


def _number_lists_column(values: Sequence[list[float]], numbers: list[float], has_float: bool) -> list[str] | None:
    text = _orjson_numbers(values, numbers if has_float else None)  # e.g. [[0],[14,41.0],[]]
    if text is None:
        return None
    if has_float:
        text = text.replace(".0,", ",").replace(".0]", "]")
    return text[2:-2].replace("],[", "\x00").replace(",", "|").split("\x00")


def _text_column(values: Sequence[object]) -> list[str] | None:
    strings = list(map(str, values))
    joined = "\x1f".join(strings)
    if "," in joined or '"' in joined or "\n" in joined or "\r" in joined:
        return None
    return strings


def _fast_column(values: Sequence[Any]) -> list[str] | None:
    types = set(map(type, values))
    if types <= _NUMBERS:
        return _numbers_column(values, float in types)
    if types <= _PLAIN_TEXT:
        return _text_column(values)
    if types <= _INTS_OR_NONE:
        return ["" if v is None else str(v) for v in values]
    if types == {list}:
        numbers = list(chain.from_iterable(values))
        inner = set(map(type, numbers))
        if inner <= _NUMBERS:
            return _number_lists_column(values, numbers, float in inner)
    return None


def csv_column(values: Sequence[object]) -> list[str]:
    """The same as [csv_field(v) for v in values], faster for the columns a stream answer is made of."""
    if not values:
        return []
    fast = _fast_column(values)
    return fast if fast is not None else list(map(csv_field, values))
