"""Derive the readable REST columns from the vendor spec into src/mcp_polygon/rest/columns_data.json.

For every vendor path a REST tool calls, the 200 response schema is walked the way rest/tables.py turns a body
into rows (list items, a results object and its nested lists, an inlined `last` object, nested objects joined by
`_`), so each CSV column is paired with the vendor's own description of it. Then:

- a column whose vendor key is terse (`c`, `vw`, `P`, `ds`) gets the readable name whose keywords its description
  contains (columns.MEANINGS: "The close price ..." -> close, "The volume weighted ..." -> vwap); a terse key that
  no meaning matches stops the script, so no column is renamed to something the vendor did not say;
- a whole-number time column (`t`, `sip_timestamp`, `updated`, ...) gets its unit from its description
  ("nanosecond", "Msec"); where the description states none, from the magnitude of the spec's example value,
  and the file records which.

Run after updating the spec (tests/test_rest_columns.py fails when the committed file is out of date):

    .venv/bin/python scripts/build_columns.py
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "mcp_polygon" / "rest" / "columns_data.json"
EXAMPLES = ROOT / "src" / "mcp_polygon" / "simulator" / "data" / "rest_examples.json"

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
import spec_derived  # noqa: E402
from mcp_polygon.rest import tables  # noqa: E402
from mcp_polygon.rest.columns import KEEP_SHORT, MEANINGS, TimeUnit, meaning_for  # noqa: E402
from mcp_polygon.rest.endpoints import all_vendor_paths  # noqa: E402

# Paths whose bars are always daily, so their bar times read as dates (the others take the call's `timespan`).
_DAILY_PATHS = ("/v2/aggs/grouped/", "/prev")
# A time column's description states its unit in one of these ways.
_UNIT_WORDS = (
    (re.compile(r"nanosecond", re.I), TimeUnit.NANOSECONDS),
    (re.compile(r"milli ?second|msec", re.I), TimeUnit.MILLISECONDS),
)
# Whole-number columns that hold a time: the vendor's time keys, and names that end like one.
_TIME_KEYS = frozenset({"t", "y", "f", "updated", "timestamp", "window_start", "window_end"})
_TIME_SUFFIXES = ("_timestamp", "last_updated")
# Where the description is silent, the example's digit count tells the unit (a 2020s time).
_DIGITS_UNIT = {10: TimeUnit.SECONDS, 13: TimeUnit.MILLISECONDS, 19: TimeUnit.NANOSECONDS}


@dataclass(frozen=True)
class Leaf:
    column: str  # the CSV column as tables.flatten names it
    key: str  # the vendor's own key (the last part of the column)
    description: str
    type: str
    is_map: bool  # an object keyed by data (exchange id -> size): its columns are `<column>_<key>`
    siblings: frozenset[str]  # the keys of the object that holds it


def _resolve(node: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    while isinstance(node, Mapping) and "$ref" in node:
        section, name = str(node["$ref"]).split("/")[-2:]
        node = spec["components"][section][name]
    return dict(node) if isinstance(node, Mapping) else {}


def _merged(node: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """allOf/anyOf/oneOf folded into one schema: the union of their properties."""
    schema = _resolve(node, spec)
    parts = [schema] + [_merged(s, spec) for key in ("allOf", "anyOf", "oneOf") for s in schema.get(key, [])]
    merged: dict[str, Any] = {}
    props: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "properties":
                props.update(value)
            elif key not in ("allOf", "anyOf", "oneOf"):
                merged.setdefault(key, value)
    if props:
        merged["properties"] = props
    if "items" in merged:
        merged["items"] = _merged(merged["items"], spec)
    return merged


def _props(schema: Mapping[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    return dict(props) if isinstance(props, Mapping) else {}


def _is_object_list(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "array" and bool(_props(schema.get("items") or {}))


def _leaves(schema: Mapping[str, Any], spec: Mapping[str, Any], prefix: str = "") -> Iterator[Leaf]:
    """The columns tables.flatten makes from an object of this schema."""
    props = {key: _merged(value, spec) for key, value in _props(schema).items()}
    siblings = frozenset(props)
    for key, value in props.items():
        column = f"{prefix}_{key}" if prefix else key
        description = re.sub(r"\s+", " ", str(value.get("description") or "")).strip()
        if _props(value):
            yield from _leaves(value, spec, column)
        elif value.get("type") == "object":  # no properties: keyed by data (exchange id -> size)
            yield Leaf(column, key, description, "object", True, siblings)
        else:
            yield Leaf(column, key, description, str(value.get("type") or ""), False, siblings)


def _row_leaves(schema: Mapping[str, Any], spec: Mapping[str, Any]) -> Iterator[Leaf]:
    """The columns of every section tables.extract_sections makes from a body of this schema."""
    if schema.get("type") == "array":
        yield from _leaves(schema.get("items") or {}, spec)
        return
    props = {key: _merged(value, spec) for key, value in _props(schema).items()}
    for key in ("results", "tickers", "data"):
        if props.get(key, {}).get("type") == "array":
            yield from _leaves(props[key].get("items") or {}, spec)
            return
    for key in ("results", "data", "ticker"):
        if _props(props.get(key, {})):
            yield from _object_leaves(props[key], spec)
            return
    body: dict[str, Any] = {}
    for key, value in props.items():
        if key in tables.ENVELOPE_KEYS:
            continue
        body.update(_props(value) if key == "last" else {key: value})
    yield from _object_leaves({"properties": body}, spec)


def _object_leaves(schema: Mapping[str, Any], spec: Mapping[str, Any]) -> Iterator[Leaf]:
    props = {key: _merged(value, spec) for key, value in _props(schema).items()}
    if props.get("values", {}).get("type") == "array":  # technical indicators
        yield from _leaves(props["values"].get("items") or {}, spec)
        underlying = _props(props.get("underlying", {})).get("aggregates")
        if underlying:
            yield from _leaves(_merged(underlying, spec).get("items") or {}, spec)
        return
    nested = {key for key, value in props.items() if _is_object_list(value)}
    yield from _leaves({"properties": {k: v for k, v in props.items() if k not in nested}}, spec)
    for key in nested:
        yield from _leaves(props[key]["items"], spec)


def _example_values(path: str, examples: Mapping[str, Any]) -> dict[str, Any]:
    """column -> the first whole-number value the spec's example body has for it."""
    found: dict[str, Any] = {}
    entry = examples.get(path)
    if not entry:
        return found
    for section in tables.extract_sections(entry["body"]):
        for row in section.rows:
            for column, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    found.setdefault(column, value)
    return found


def _time_unit(leaf: Leaf, example: Any) -> tuple[TimeUnit, str] | None:
    """(unit, where it was read) for a whole-number time column, else None."""
    if leaf.type not in ("integer", "number") or leaf.is_map:
        return None
    if leaf.key not in _TIME_KEYS and not leaf.key.endswith(_TIME_SUFFIXES):
        return None
    for pattern, unit in _UNIT_WORDS:
        if pattern.search(leaf.description):
            return unit, "description"
    if isinstance(example, int | float) and example > 0:
        unit = _DIGITS_UNIT.get(len(str(int(example))))
        if unit:
            return unit, "example"
    raise SystemExit(f"no unit for time column {leaf.column!r} ({leaf.description!r}): add it to the description rules")


def _bar_time(leaf: Leaf) -> bool:
    """A bar's time (its window's start or end, an indicator's bar): a date alone for daily and coarser bars."""
    text = leaf.description.lower()
    return "of the aggregate window" in text or (leaf.key == "timestamp" and "aggregate" in text)


def _response_schema(path: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    operation = spec["paths"][path]["get"]
    return _merged(operation["responses"]["200"]["content"]["application/json"]["schema"], spec)


def _readable(leaf: Leaf, path: str) -> str:
    meaning = meaning_for(leaf.key, leaf.description, leaf.siblings)
    if meaning is None and len(leaf.key) <= 3 and leaf.key not in KEEP_SHORT:
        raise SystemExit(f"{path}: terse column {leaf.column!r} ({leaf.description!r}) has no readable name")
    return leaf.column if meaning is None else leaf.column[: -len(leaf.key)] + meaning.readable


def _undocumented(
    path: str, leaves: list[Leaf], examples: Mapping[str, Any], elsewhere: Mapping[str, set[str]]
) -> Iterator[tuple[str, str | None]]:
    """Terse columns the example body has but the path's schema does not describe (/prev has `T`): named as the
    same column is wherever the spec does describe it, when that is one name; else kept as sent, and marked so
    (the spec does not say what it is, so no name would be the vendor's)."""
    documented = {leaf.column for leaf in leaves}
    entry = examples.get(path)
    seen: dict[str, None] = {}
    for section in tables.extract_sections(entry["body"]) if entry else []:
        for row in section.rows:
            seen.update(dict.fromkeys(row))
    for column in seen:
        key = column.rsplit("_", 1)[-1]
        if column in documented or len(key) > 3 or key in KEEP_SHORT or key.isdigit():
            continue
        names = elsewhere.get(column, set())
        yield column, next(iter(names)) if len(names) == 1 else None


def _path_rules(
    path: str, spec: Mapping[str, Any], examples: Mapping[str, Any], elsewhere: Mapping[str, set[str]]
) -> dict[str, Any]:
    operation = spec["paths"][path]["get"]
    leaves = list(_row_leaves(_response_schema(path, spec), spec))
    values = _example_values(path, examples)
    columns: dict[str, dict[str, Any]] = {}
    maps: dict[str, str] = {}
    for leaf in leaves:
        readable = _readable(leaf, path)
        if leaf.is_map:
            if readable != leaf.column:
                maps[leaf.column + "_"] = readable + "_"
            continue
        rule: dict[str, Any] = {}
        if readable != leaf.column:
            rule["name"] = readable
        unit = _time_unit(leaf, values.get(leaf.column))
        if unit:
            rule["unit"], rule["unit_from"] = unit[0].value, unit[1]
            if _bar_time(leaf):
                rule["bar"] = True
        if not rule:
            continue
        if columns.get(leaf.column, rule) != rule:
            raise SystemExit(f"{path}: column {leaf.column!r} means two things in one response")
        columns[leaf.column] = rule
    for column, readable in _undocumented(path, leaves, examples, elsewhere):
        if readable is None:
            columns[column] = {"kept": "not described by the spec"}
        else:
            columns[column] = {"name": readable, "name_from": "the same column in other responses"}
    names = [rule.get("name", column) for column, rule in columns.items()]
    taken = {leaf.column for leaf in leaves} - set(columns)
    clashes = (set(names) & taken) | {n for n in names if names.count(n) > 1}
    if clashes:
        raise SystemExit(f"{path}: readable names {sorted(clashes)} would clash with other columns")
    entry: dict[str, Any] = {"columns": columns}
    if maps:
        entry["maps"] = maps
    # How long this response's bars are: always a day, or the call's `timespan` (with the vendor's default).
    timespan = next((p for p in operation.get("parameters", []) if _resolve(p, spec).get("name") == "timespan"), None)
    if any(marker in path for marker in _DAILY_PATHS):
        entry["bars"] = "day"
    elif timespan is not None:
        entry["bars"] = "timespan"
        default = _resolve(timespan, spec).get("schema", {}).get("default")
        if default:
            entry["timespan_default"] = default
    return entry


def _names_everywhere(paths: list[str], spec: Mapping[str, Any]) -> dict[str, set[str]]:
    """column -> every readable name the spec's descriptions give it, over all paths."""
    names: dict[str, set[str]] = {}
    for path in paths:
        for leaf in _row_leaves(_response_schema(path, spec), spec):
            names.setdefault(leaf.column, set()).add(_readable(leaf, path))
    return names


def build(spec: dict[str, Any], sha256: str) -> dict[str, Any]:
    examples = json.loads(EXAMPLES.read_text("utf-8"))["paths"]
    assert MEANINGS, "columns.MEANINGS is empty"
    paths = sorted(all_vendor_paths())
    elsewhere = _names_everywhere(paths, spec)
    rules = {path: _path_rules(path, spec, examples, elsewhere) for path in paths}
    note = "readable names and time units per REST column; see scripts/build_columns.py"
    return {"_provenance": spec_derived.provenance("build_columns.py", note, sha256), "paths": rules}


def main() -> None:
    spec_derived.write(OUT, spec_derived.generate(build))
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
