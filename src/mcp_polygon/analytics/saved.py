"""Saved REST results: tables in <data_dir>/saved.duckdb that survive restarts and join with the stream views.

The file is written here, by a short-lived connection of its own (opened, written, closed: DuckDB checkpoints on
close), and read by the query engine, which attaches it READ_ONLY: queries stay read-only whatever they say.
Column types come from the values (whole numbers BIGINT, other numbers DOUBLE, true/false BOOLEAN, the ISO times
REST answers carry (rest/columns.py writes them `2021-04-08T17:02:22.969834Z` or `2021-04-08`) TIMESTAMP_NS or DATE,
other text VARCHAR, lists and objects JSON); the rows reach DuckDB as one JSON document, parsed there in one call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson

from mcp_polygon.analytics.errors import InvalidName
from mcp_polygon.analytics.eventsql import literal, quote
from mcp_polygon.cells import cell_text as format_cell

SAVED_FILE = "saved.duckdb"
NAME_RULE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_SYSTEM_PREFIXES = ("duckdb_", "pg_", "sqlite_", "information_schema")
_INT64 = (-(1 << 63), (1 << 63) - 1)
# The times rest/columns.iso_time writes: UTC, down to the nanosecond (TIMESTAMP_NS keeps every digit), or a day.
_ISO_MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z")
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class WrittenTable:
    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: int
    renamed: tuple[tuple[str, str], ...]  # (given column name, saved name) where they differ


def check_table_name(name: str, taken: Collection[str], reserved: Collection[str]) -> str:
    """`name` when it can name a saved table, else InvalidName saying what would.

    taken: the view names (a saved table may not hide one); reserved: SQL keywords DuckDB reserves."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise InvalidName(
            f"store_as {name!r} is not a valid table name; use 1-63 lower-case letters, digits or _, starting with a "
            "letter (e.g. aapl_daily)."
        )
    if name in taken:
        raise InvalidName(f"store_as '{name}' is the name of a stream view; pick another name (e.g. {name}_saved).")
    if name in reserved or name.startswith(_SYSTEM_PREFIXES):
        raise InvalidName(f"store_as '{name}' is reserved in SQL; pick another name (e.g. {name}_t).")
    return name


def _unique_columns(columns: Sequence[str]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Column names DuckDB accepts: non-empty and distinct ignoring case (identifiers are case-insensitive, and
    REST rows have both `T` and `t`). A repeat gets _2, _3, ..."""
    out: list[str] = []
    seen: set[str] = set()
    renamed: list[tuple[str, str]] = []
    for i, given in enumerate(columns):
        base = str(given) if str(given).strip() else f"column_{i + 1}"
        name, n = base, 1
        while name.lower() in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name.lower())
        out.append(name)
        if name != given:
            renamed.append((str(given), name))
    return tuple(out), tuple(renamed)


def _column_type(values: Sequence[object]) -> str:
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return "VARCHAR"
    if kinds == {bool}:
        return "BOOLEAN"
    if kinds == {int}:
        fits = all(_INT64[0] <= v <= _INT64[1] for v in values if isinstance(v, int))
        return "BIGINT" if fits else "DOUBLE"
    if kinds <= {int, float}:
        return "DOUBLE"
    if kinds == {str}:
        texts = [v for v in values if isinstance(v, str)]
        if all(map(_ISO_MOMENT.fullmatch, texts)):
            return "TIMESTAMP_NS"  # so a saved table compares and joins by time with the stream views
        if all(map(_ISO_DAY.fullmatch, texts)):
            return "DATE"
        return "VARCHAR"
    if kinds <= {list, tuple, dict}:
        return "JSON"
    return "VARCHAR"


def _transfer_value(value: object, sql_type: str) -> object:
    """The value as it travels in the JSON document for a column of `sql_type`."""
    if value is None:
        return None
    if sql_type == "DOUBLE":
        return float(value)  # type: ignore[arg-type]
    if sql_type == "VARCHAR" and not isinstance(value, str):
        return format_cell(value)
    return value


def write_table(path: Path, name: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> WrittenTable:
    """Create or replace table `name` in the DuckDB file at `path` with these rows. The name must already have
    passed check_table_name; rows shorter than `columns` are padded with NULLs."""
    names, renamed = _unique_columns(columns)
    width = len(names)
    padded = [list(row[:width]) + [None] * (width - len(row)) for row in rows]
    types = tuple(_column_type([row[i] for row in padded]) for i in range(width))
    keys = [f"c{i}" for i in range(width)]
    document = orjson.dumps(
        [{k: _transfer_value(v, t) for k, v, t in zip(keys, row, types, strict=True)} for row in padded]
    ).decode()
    structure = json.dumps([dict(zip(keys, types, strict=True))] if width else ["JSON"])
    select = ", ".join(f"{quote(k)} AS {quote(n)}" for k, n in zip(keys, names, strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute(
            f"CREATE OR REPLACE TABLE {quote(name)} AS SELECT {select} FROM "
            f"(SELECT unnest(from_json($rows, {literal(structure)}), recursive := true))",
            {"rows": document},
        )
    finally:
        con.close()
    return WrittenTable(name, names, types, len(padded), renamed)
