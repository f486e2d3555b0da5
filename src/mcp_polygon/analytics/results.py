"""Query results and their CSV: the answer an agent reads, within the same character budget as every other answer."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from mcp_polygon.cells import cell_text as format_cell
from mcp_polygon.cells import csv_column, csv_line, quoted


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    types: tuple[str, ...]  # DuckDB type names, e.g. "DOUBLE", "TIMESTAMP"
    rows: tuple[tuple[object, ...], ...]  # at most max_rows
    total_rows: int | None  # rows the query produced; None when counting them was not possible in time
    truncated: bool  # more rows exist than `rows` holds
    seconds: float = 0.0

    def without_empty_columns(self) -> QueryResult:
        """The same rows without the columns that are NULL in every row (the stream summary's rule)."""
        keep = [i for i in range(len(self.columns)) if any(row[i] is not None for row in self.rows)]
        if len(keep) == len(self.columns):
            return self
        return QueryResult(
            columns=tuple(self.columns[i] for i in keep),
            types=tuple(self.types[i] for i in keep),
            rows=tuple(tuple(row[i] for i in keep) for row in self.rows),
            total_rows=self.total_rows,
            truncated=self.truncated,
            seconds=self.seconds,
        )


def _timestamp(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def _plain(value: object) -> object:
    """A DuckDB value as the scalars, lists and dicts the shared cell rules know: times in ISO 8601 UTC."""
    if isinstance(value, dt.datetime):
        return _timestamp(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.timedelta | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def cell_text(value: object) -> str:
    """One value as CSV cell text, by the same rules as every other answer (rest/tables.format_cell: lists joined
    with '|', whole floats without '.0'); times in ISO 8601 UTC, structs and maps as JSON."""
    plain = _plain(value)
    if isinstance(plain, dict):
        return orjson.dumps(plain, default=str).decode()
    return format_cell(plain)


# Values _plain leaves as they are and cells.cell_text formats alone: a column of only these takes csv_column's
# whole-column paths (an aggregate's answer is numbers and symbols), where a cell at a time costs ~1.5 us.
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _column_fields(values: Sequence[object]) -> list[str]:
    if set(map(type, values)) <= _SCALAR_TYPES:
        return csv_column(values)
    return [quoted(cell_text(v)) for v in values]


def _csv_lines(result: QueryResult) -> list[str]:
    """Each row as one CSV line with its newline, formatted a column at a time."""
    columns = [_column_fields([row[i] for row in result.rows]) for i in range(len(result.columns))]
    return [csv_line(fields) + "\n" for fields in zip(*columns, strict=True)]


def _count_text(result: QueryResult) -> str:
    shown = len(result.rows)
    if not result.truncated:
        return f"{shown} row{'s' if shown != 1 else ''}"
    total = f"{result.total_rows:,}" if result.total_rows is not None else f"more than {shown:,}"
    return f"{total} rows, first {shown:,} shown (max_rows); aggregate, filter or add LIMIT for the rest"


def render_csv(
    result: QueryResult,
    max_chars: int,
    *,
    header: Sequence[str] = (),
    footer: Sequence[str] = (),
    narrow_hint: str = "a narrower WHERE, fewer columns, an aggregate or a LIMIT",
) -> str:
    """The result as CSV between '#' comment lines, never longer than max_chars.

    First line: the row count (and that rows were cut at max_rows); `header` lines before it and `footer` lines
    after the rows survive truncation. When the budget runs out, a '# truncated: N more rows not shown' line says
    so and how to narrow the query.
    """
    head = "".join(line + "\n" for line in header)
    head += f"# {_count_text(result)} ({result.seconds * 1000:.0f} ms)\n"
    tail = "".join(line + "\n" for line in footer)
    marker_room = len(_marker(len(result.rows), max_chars, narrow_hint))
    budget = max_chars - len(head) - len(tail) - marker_room
    parts: list[str] = []
    used = 0
    header_line = csv_line([quoted(c) for c in result.columns]) + "\n"
    written = 0
    if len(header_line) <= budget:
        parts.append(header_line)
        used = len(header_line)
        for line in _csv_lines(result):
            if used + len(line) > budget:
                break
            parts.append(line)
            used += len(line)
            written += 1
    if written < len(result.rows):
        parts.append(_marker(len(result.rows) - written, max_chars, narrow_hint))
    return (head + "".join(parts) + tail).rstrip("\n")


def _marker(dropped: int, max_chars: int, narrow_hint: str) -> str:
    return (
        f"# truncated: {dropped} more rows not shown (output capped at {max_chars} characters); "
        f"narrow the query with {narrow_hint}\n"
    )
