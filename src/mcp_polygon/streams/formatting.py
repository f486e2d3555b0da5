"""Text for agents: timestamps in, compact CSV / JSON out. Pure functions, no I/O."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import orjson

from mcp_polygon.cells import csv_column, csv_line, quoted
from mcp_polygon.streams.markets import Market


class TimeFormatError(ValueError):
    pass


_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$")
_RELATIVE = re.compile(r"^(?:now)?\s*-\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|m|min|mins|h|hr|hrs|d|days?)$", re.IGNORECASE)
_UNIT_S = {"ms": 1e-3, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600}
_UNIT_S |= {"hrs": 3600, "d": 86400, "day": 86400, "days": 86400}
# Times beyond what a calendar can show (year 1 to 9999) are typing mistakes; refusing them early keeps every
# later step (formatting, JSON's 64-bit integers) from failing on them.
_MIN_NS = -62_135_596_800 * 1_000_000_000  # 0001-01-01T00:00:00Z
_MAX_NS = 253_402_300_799 * 1_000_000_000  # 9999-12-31T23:59:59Z
_ECHO_CHARS = 60


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked with '...': for echoing agent input or upstream text."""
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def epoch_to_ns(value: float | int) -> int:
    """Unix time in s, ms, us or ns (told apart by magnitude) -> ns."""
    if isinstance(value, float) and not math.isfinite(value):
        raise TimeFormatError("not a finite number")
    mag = abs(value)
    if mag < 1e11:  # seconds (until the year 5138)
        return round(value * 1e9)
    if mag < 1e14:  # milliseconds
        return int(value) * 1_000_000 if isinstance(value, int) else round(value * 1e6)
    if mag < 1e17:  # microseconds
        return int(value) * 1_000 if isinstance(value, int) else round(value * 1e3)
    return int(value)


def parse_time_ns(value: str | int | float, name: str = "timestamp", now_ns: int | None = None) -> int:
    """ISO 8601, Unix seconds/ms/us/ns (by magnitude), 'now', or relative '-5m' / 'now-30s' / '-2h' -> Unix ns."""
    ns = _parse_time_ns(value, name, now_ns)
    if not _MIN_NS <= ns <= _MAX_NS:
        raise TimeFormatError(
            f"{name} {clip(repr(value), _ECHO_CHARS)} is not between the years 1 and 9999; pass a time such as "
            "2025-01-02T14:30:00Z, Unix seconds like 1735828200, or -5m."
        )
    return ns


def _parse_time_ns(value: str | int | float, name: str, now_ns: int | None) -> int:
    hint = (
        f"{name} {clip(repr(value), _ECHO_CHARS)} is not a time; use ISO 8601 (2025-01-02T14:30:00Z; no zone means "
        "UTC), Unix seconds, ms or ns (e.g. 1735828200), or relative to now like -5m, -30s, -2h, now."
    )
    if isinstance(value, bool):
        raise TimeFormatError(hint)
    now = time.time_ns() if now_ns is None else now_ns
    if isinstance(value, int | float):
        try:
            return epoch_to_ns(value)
        except (TimeFormatError, OverflowError, ValueError):
            raise TimeFormatError(hint) from None
    text = str(value).strip()
    if not text:
        raise TimeFormatError(hint)
    if text.lower() == "now":
        return now
    if _NUMBER.match(text):
        try:
            number = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
            return epoch_to_ns(number)
        except (TimeFormatError, OverflowError, ValueError):
            raise TimeFormatError(hint) from None
    rel = _RELATIVE.match(text)
    if rel:
        unit = rel.group(2).lower()
        try:
            return now - int(float(rel.group(1)) * _UNIT_S[unit] * 1e9)
        except OverflowError:  # hundreds of digits: float infinity
            raise TimeFormatError(hint) from None
    iso = text.replace(" ", "T", 1) if re.match(r"^\d{4}-\d{2}-\d{2} \d", text) else text
    if iso.endswith(("z", "Z")):
        iso = iso[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise TimeFormatError(hint) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # Exact integer arithmetic: float seconds would lose sub-microsecond precision.
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def iso(ts_s: float | None, ms: bool = True) -> str:
    """Unix seconds -> '2025-01-02T14:30:00.123Z'."""
    if ts_s is None:
        return "-"
    try:
        dt = datetime.fromtimestamp(ts_s, UTC)
    except (OverflowError, ValueError, OSError):  # beyond the calendar: show the number rather than fail
        return f"{ts_s} (Unix s)"
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ms:
        text += f".{dt.microsecond // 1000:03d}"
    return text + "Z"


def iso_ns(ns: int | None) -> str:
    if ns is None:
        return "-"
    return iso(ns / 1e9)


def ago(ts_s: float | None, now: float | None = None) -> str:
    if ts_s is None:
        return "never"
    d = (time.time() if now is None else now) - ts_s
    if d < 0:
        return f"in {-d:.0f}s"
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}min ago"
    return f"{d / 3600:.1f}h ago"


# -- CSV ---------------------------------------------------------------------------------------------------------


# One row of a CSV answer: (its lead value, e.g. the seq, or None; the event).
Row = tuple[object, dict[str, Any]]
_second: Callable[[Row], dict[str, Any]] = itemgetter(1)


def _values(events: list[dict[str, Any]], key: str) -> list[object]:
    return list(map(dict.get, events, repeat(key)))  # C speed, None where an event lacks the field


def _event_keys(rows: Sequence[Row]) -> list[object]:
    """Each row's section key: its `ev` (the repr of a value that is not a string)."""
    evs = list(map(dict.get, map(_second, rows), repeat("ev")))
    if evs and type(evs[0]) is str and evs.count(evs[0]) == len(evs):
        return evs  # the usual answer to a filtered read: one event type, no per-row loop
    return [ev if isinstance(ev, str) else repr(ev) for ev in evs]


def _by_event_type(rows: Sequence[Row]) -> dict[object, Sequence[Row]]:
    """Rows grouped by `ev` (repr of non-string values), in order of first appearance."""
    keys = _event_keys(rows)
    if keys and keys.count(keys[0]) == len(keys):
        return {keys[0]: rows}
    groups: dict[object, list[Row]] = {}
    for key, row in zip(keys, rows, strict=True):
        group = groups.get(key)
        if group is None:
            groups[key] = [row]
        else:
            group.append(row)
    return dict(groups)


@dataclass(frozen=True)
class _Section:
    """One event type's CSV: its title line, its header line and one line per row, in row order."""

    key: object
    title: str
    header: str
    rows: list[str]

    @property
    def lines(self) -> list[str]:
        return [self.title, self.header, *self.rows]


def _lines(columns: list[list[str]], count: int) -> list[str]:
    """The CSV line of each of `count` rows, from its formatted columns."""
    if len(columns) == 1:  # a lone empty field is written `""`, which only csv_line knows
        return list(map(csv_line, zip(columns[0])))
    if not columns:  # events with nothing but `ev`: one (empty) line each, so lines and rows stay aligned
        return [""] * count
    return list(map(",".join, zip(*columns, strict=True)))  # csv_line's rule for 2+ fields, at C speed


def _sections(market: Market, rows: Sequence[Row], lead: str | None) -> list[_Section]:
    sections: list[_Section] = []
    for ev, items in _by_event_type(rows).items():
        et = market.events.get(ev) if isinstance(ev, str) else None
        events = list(map(_second, items))
        present: set[str] = set().union(*events)
        present.discard("ev")
        cols: list[tuple[str, str]] = []
        known: set[str] = set()
        if et is not None:
            for wire, name in et.columns:
                if wire in present:
                    cols.append((wire, name))
                    known.add(wire)
        extras = present - known
        if extras:  # fields the table does not know: keep them, in the order they first appear
            cols.extend((k, k) for k in dict.fromkeys(chain.from_iterable(events)) if k in extras)
        title = f"{ev} {et.title}" if et else f"{ev} (event type not in the {market.name} table)"
        header = [name for _, name in cols]
        columns = [csv_column(_values(events, wire)) for wire, _ in cols]
        if lead:
            header.insert(0, lead)
            columns.insert(0, csv_column([lv for lv, _ in items]))
        sections.append(
            _Section(
                key=ev,
                title=f"# {title}: {len(items)} event{'s' if len(items) != 1 else ''}",
                header=csv_line(list(map(quoted, header))),
                rows=_lines(columns, len(items)),
            )
        )
    return sections


def csv_sections(market: Market, rows: Sequence[Row], lead: str | None) -> list[str]:
    """One CSV section per event type, in order of first appearance.

    rows: (lead value, event) pairs; `lead` names the first column (e.g. 'seq') or None for no lead column.
    A section keeps only columns that have a value in at least one of its rows; fields the table does not know
    are kept under their wire names, so nothing is lost. Cells follow mcp_polygon/cells.py (the rules REST answers
    use too), formatted column by column: a 1,000-row answer costs a few C-level passes per column.
    """
    return [line for section in _sections(market, rows, lead) for line in section.lines]


def joined_length(lines: list[str]) -> int:
    """len("\n".join(lines)) without building the string."""
    return sum(map(len, lines)) + max(0, len(lines) - 1)


def csv_sections_within(market: Market, rows: Sequence[Row], lead: str | None, budget: int) -> tuple[list[str], int]:
    """The CSV sections of the longest prefix of `rows` that fits in `budget` characters once its lines are
    joined by newlines, and the length of that prefix (0 when not even the first row fits).

    A prefix, not a sample: the caller can then continue exactly after the last row shown. One render when
    everything fits; otherwise the full render prices every row, and the prefix is rendered once more (its
    sections may lose columns, so it can only be shorter than priced; a check covers formatting quirks).
    """
    sections = _sections(market, rows, lead)
    lines = [line for section in sections for line in section.lines]
    if joined_length(lines) <= budget:
        return lines, len(rows)
    shown = _rows_within(sections, _event_keys(rows), budget)
    while shown > 0:
        lines = csv_sections(market, rows[:shown], lead)
        length = joined_length(lines)
        if length <= budget:
            return lines, shown
        shown -= max(1, -(-(length - budget) * shown // length))  # drop about as many rows as the overshoot
    return [], 0


def _rows_within(sections: list[_Section], keys: list[object], budget: int) -> int:
    """How many leading rows fit in `budget`, priced by their lines in the full render (plus the title and
    header of each section the moment its first row is taken)."""
    by_key = {section.key: section for section in sections}
    taken: dict[object, int] = {}
    used = -1  # n lines are joined by n - 1 newlines
    for i, key in enumerate(keys):
        section = by_key[key]
        n = taken.get(key)
        if n is None:
            n = 0
            used += len(section.title) + len(section.header) + 2
        used += len(section.rows[n]) + 1
        taken[key] = n + 1
        if used > budget:
            return i
    return len(keys)


def json_items_within(items: Sequence[object], budget: int) -> int:
    """How many leading `items` fit in `budget` characters as the elements of a JSON array (commas included).

    Priced by their UTF-8 size, which is never less than their length in characters.
    """
    used = -1
    for i, item in enumerate(items):
        used += len(orjson.dumps(item)) + 1
        if used > budget:
            return i
    return len(items)


def json_events(value: object) -> str:
    return orjson.dumps(value).decode()
