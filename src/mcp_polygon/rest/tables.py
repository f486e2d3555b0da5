"""Vendor JSON -> rows -> compact CSV, with explicit markers when anything is left out.

Agents pay per token: CSV states each column name once, where JSON repeats every key on every row. The envelope
(status, request_id, count, next_url, ...) is dropped; nested objects become `parent_child` columns. Columns read
as the vendor means them (rest/columns.py: `c` -> `close`, epoch times -> ISO 8601 UTC), the same in CSV answers and
in saved tables (`readable_table`). A value's text in its cell follows the rules in mcp_polygon/cells.py, the same
as stream answers.

Shapes handled (all seen in the vendor OpenAPI examples):
- a `results`, `tickers` or `data` list           -> one row per item
- a bare JSON array (/v1/marketstatus/upcoming)     -> one row per item
- a `results`/`data`/`ticker` object                 -> one row; lists of objects inside it (order book bids/asks,
                                                       ticker events) become sections of their own
- a flat object (/v1/open-close, /v1/marketstatus/now), `last` objects (/v1/last/crypto) -> one row
- indicators (`results.values` + `results.underlying`) -> the values; underlying aggregates as a second section
- per-item errors inside a 200 (/v3/snapshot)        -> rows whose `error`/`message` columns say what failed
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from mcp_polygon.cells import cell_text, csv_field, csv_line, quoted
from mcp_polygon.rest.columns import UNCHANGED, ColumnView

# Top-level keys that describe the response rather than the data.
ENVELOPE_KEYS = frozenset({"status", "request_id", "count", "next_url", "resultsCount", "queryCount", "adjusted"})
_LIST_KEYS = ("results", "tickers", "data")
_OBJECT_KEYS = ("results", "data", "ticker")
# Financial statement data points ({"value": 1.2e9, "unit": "USD", "label": "Assets", "order": 100}) collapse to
# their value: the column name already says what it is, and four columns per line item would swamp the table.
_DATAPOINT_KEYS = frozenset({"value", "unit", "label", "order", "source", "derived_from", "formula", "xpath"})


@dataclass
class Section:
    """A block of rows: the main table (title None) or a named sub-table such as an order book side.

    `items` are the vendor's objects, flattened (and made readable by `view`) only when written: a whole-market
    answer has 10,000+ rows of which a few dozen are shown, and flattening them all would stall the event loop
    for a noticeable time.
    """

    title: str | None
    items: Sequence[Any]
    view: ColumnView = field(default=UNCHANGED, compare=False)

    def row(self, item: Any) -> dict[str, Any]:
        return self.view.readable_row(_row(item))

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [self.row(item) for item in self.items]


# ---------------------------------------------------------------------------------------------------------------
# JSON -> rows


def _is_datapoint(value: Mapping[str, Any]) -> bool:
    return "value" in value and len(value) > 1 and set(value) <= _DATAPOINT_KEYS


def flatten(obj: Mapping[str, Any], prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"day": {"o": 1}} -> {"day_o": 1}. Lists stay as they are: their text is the cell formatter's business."""
    out = {} if out is None else out
    for key, value in obj.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            if _is_datapoint(value):
                out[name] = value.get("value")
            elif value:
                flatten(value, name, out)
        else:
            out[name] = value
    return out


def _row(item: Any) -> dict[str, Any]:
    return flatten(item) if isinstance(item, Mapping) else {"value": item}


def _is_object_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _object_sections(obj: Mapping[str, Any]) -> list[Section]:
    values = obj.get("values")
    if isinstance(values, list):  # technical indicators
        sections = [Section(None, values)]
        underlying = obj.get("underlying")
        aggregates = underlying.get("aggregates") if isinstance(underlying, Mapping) else None
        if aggregates:
            sections.append(Section("underlying aggregates", aggregates))
        return sections
    nested = [key for key, value in obj.items() if _is_object_list(value)]
    if not nested:
        return [Section(None, [flatten(obj)])]
    summary = flatten({k: v for k, v in obj.items() if k not in nested})
    sections = [Section(None, [summary])] if summary else []
    sections += [Section(key, obj[key]) for key in nested]
    return sections


def extract_sections(body: Any, view: ColumnView = UNCHANGED) -> list[Section]:
    """Turn any vendor response body into sections of flat rows (envelope dropped), read through `view`."""
    return [Section(s.title, s.items, view) for s in _vendor_sections(body)]


def _vendor_sections(body: Any) -> list[Section]:
    if isinstance(body, list):
        return [Section(None, body)]
    if not isinstance(body, Mapping):
        return [Section(None, [{"value": body}])] if body is not None else [Section(None, [])]
    for key in _LIST_KEYS:
        if isinstance(body.get(key), list):
            return [Section(None, body[key])]
    for key in _OBJECT_KEYS:
        if isinstance(body.get(key), Mapping):
            return _object_sections(body[key])
    # A flat object; a `last` object (last trade/quote) is inlined so its columns read `price`, not `last_price`.
    obj: dict[str, Any] = {}
    for key, value in body.items():
        if key in ENVELOPE_KEYS:
            continue
        if key == "last" and isinstance(value, Mapping):
            obj.update(value)
        else:
            obj[key] = value
    return _object_sections(obj)


# ---------------------------------------------------------------------------------------------------------------
# rows -> CSV


# The text of one value before CSV quoting, under the name analytics/ imports it by.
format_cell = cell_text


def columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Union of keys in first-seen order, so columns are stable and no row loses a field."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


@dataclass
class Rendered:
    text: str
    shown: int  # data rows written
    dropped_by_cap: int  # rows left out because of max_rows
    dropped_by_size: int  # rows left out because of max_chars


def _truncation_marker(dropped: int, max_chars: int, narrow_hint: str) -> str:
    return (
        f"# truncated: {dropped} more rows not shown (output capped at {max_chars} characters); "
        f"narrow the request with {narrow_hint}\n"
    )


def render(
    sections: Sequence[Section],
    *,
    max_chars: int,
    max_rows: int | None = None,
    header: Sequence[str] = (),
    footer: Sequence[str] = (),
    narrow_hint: str = "a smaller limit or narrower filters",
    more_rows_hint: str = "",
) -> Rendered:
    """Write sections as CSV between comment lines, never exceeding max_chars.

    `header` lines come first, `footer` lines (e.g. the next-page hint) last; both always survive truncation.
    max_rows caps the rows of each section; a '# showing N of M rows' line says so, with `more_rows_hint`.
    """
    head = "".join(line + "\n" for line in header)
    tail = "".join(line + "\n" for line in footer)
    total_rows = sum(len(s.items) for s in sections)
    more = f"; {more_rows_hint}" if more_rows_hint else ""
    notes = [
        f"# showing {max_rows} of {len(s.items)} rows{more}\n"
        if max_rows is not None and len(s.items) > max_rows
        else ""
        for s in sections
    ]
    # Room is kept for every line that must appear whatever happens: header, footer, cap notes, the marker.
    budget = max_chars - len(head) - len(tail) - sum(map(len, notes))
    budget -= len(_truncation_marker(total_rows, max_chars, narrow_hint))
    parts: list[str] = []
    used = shown = dropped_cap = dropped_size = 0
    if total_rows == 0:
        parts.append("# no rows returned for these arguments\n")
    truncated = False
    for section, note in zip(sections, notes, strict=True):
        visible = len(section.items) if max_rows is None else min(max_rows, len(section.items))
        dropped_cap += len(section.items) - visible
        if truncated or not visible:
            dropped_size += visible
            continue
        # Flatten only as many rows as can fit: each cell costs at least its text and a comma.
        rows: list[dict[str, Any]] = []
        estimate = used
        for item in islice(section.items, visible):
            row = section.row(item)
            rows.append(row)
            estimate += sum(len(cell_text(v)) + 1 for v in row.values())
            if estimate > budget:
                break
        cols = columns_of(rows)
        block = (f"# {section.title}\n" if section.title else "") + csv_line(list(map(quoted, cols))) + "\n"
        if used + len(block) > budget:
            truncated = True
            dropped_size += visible
            continue
        parts.append(block)
        used += len(block)
        written = 0
        for row in rows:
            line = csv_line([csv_field(row.get(c)) for c in cols]) + "\n"
            if used + len(line) > budget:
                break
            parts.append(line)
            used += len(line)
            written += 1
        shown += written
        if written < visible:
            truncated = True
            dropped_size += visible - written
        elif note:
            parts.append(note)
    if truncated:
        parts.append(_truncation_marker(dropped_size, max_chars, narrow_hint))
    text = head + "".join(parts) + tail
    return Rendered(text=text.rstrip("\n"), shown=shown, dropped_by_cap=dropped_cap, dropped_by_size=dropped_size)


@dataclass(frozen=True)
class ReadableTable:
    """The main rows of a response as a table: readable column names, values as the CSV answer shows them."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


def readable_table(body: Any, view: ColumnView = UNCHANGED) -> ReadableTable:
    """(columns, rows) of a vendor body's main section, through `view` (columns.view_for(path, arguments)): the
    same names and ISO times as the CSV answer, for a saved table. Every row, not only the shown ones."""
    sections = extract_sections(body, view)
    rows = sections[0].rows if sections else []
    columns = columns_of(rows)
    return ReadableTable(tuple(columns), tuple(tuple(row.get(c) for c in columns) for row in rows))


# ---------------------------------------------------------------------------------------------------------------
# Paging: the vendor's next_url -> a cursor the agent passes back

_ENCODED_QUERY = "~"  # marks a cursor that carries a whole query string, not the vendor's own cursor value
# Query parameters that carry credentials (compared case-folded, without - _ .): never put into a cursor the
# agent sees, never sent on from one. The vendor's own parameter names include none of these.
_CREDENTIAL_NAMES = frozenset(
    {"apikey", "key", "token", "auth", "authorization", "bearer", "secret", "password", "passwd", "pwd"}
    | {"sig", "signature", "session", "sessionid", "jwt", "credential", "credentials", "xapikey"}
)
_CREDENTIAL_ENDINGS = ("token", "apikey", "secret", "password", "signature")


def is_credential_param(name: str) -> bool:
    """apiKey, api_key, token, access_token, X-Api-Key, client_secret ... : a query parameter that carries a secret."""
    folded = re.sub(r"[-_.\s]", "", name.lower())
    return folded in _CREDENTIAL_NAMES or folded.endswith(_CREDENTIAL_ENDINGS)


def _unchanged(text: str) -> str:
    return text


def _safe_params(pairs: Iterable[tuple[str, str]], redact: Callable[[str], str]) -> list[tuple[str, str]]:
    """The pairs without credential parameters, and without any pair in which `redact` finds the key."""
    return [(k, v) for k, v in pairs if not is_credential_param(k) and redact(k) == k and redact(v) == v]


def page_token(next_url: str, redact: Callable[[str], str] = _unchanged) -> tuple[str, str] | None:
    """(path, token) for a vendor next_url, or None when it carries no way to the next page.

    Only the path and query are kept: whatever scheme and host next_url names, the next request goes to
    POLYGON_REST_URL. The token is the vendor's `cursor` when that is all the URL carries; otherwise the whole
    query string, encoded. A token is shown to the agent, so credential parameters (apiKey, token, ...) and any
    parameter holding the key (as `redact` recognises it) are dropped before encoding, where masking could no
    longer see them.
    """
    parts = urlsplit(next_url)
    query = _safe_params(parse_qsl(parts.query, keep_blank_values=True), redact)
    if not query:
        return None
    if len(query) == 1 and query[0][0] == "cursor":
        return parts.path, query[0][1]
    encoded = base64.urlsafe_b64encode(urlencode(query).encode()).decode().rstrip("=")
    return parts.path, _ENCODED_QUERY + encoded


def params_from_token(token: str) -> dict[str, str]:
    """The query parameters to send for a cursor made by page_token (credential parameters never pass)."""
    if not token.startswith(_ENCODED_QUERY):
        return {"cursor": token}
    raw = token[len(_ENCODED_QUERY) :]
    try:
        query = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("cursor is not a page token from this server") from None
    params = dict(_safe_params(parse_qsl(query, keep_blank_values=True), _unchanged))
    if not params:
        raise ValueError("cursor is not a page token from this server")
    return params


def call_hint(tool: str, args: Mapping[str, Any]) -> str:
    """`call list_trades with ticker="AAPL", cursor="abc"`, ready to copy."""
    rendered = ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else cell_text(v)}" for k, v in args.items())
    return f"call {tool} with {rendered}"
