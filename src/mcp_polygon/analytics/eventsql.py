"""SQL that turns recorder lines into typed rows, and typed rows back into the vendor's JSON.

Every source of events goes through one statement over recorder lines (`<receive ns> <JSON array>\\n`, the
segment format of streams/recorder.py), bound as two list parameters (split_lines). Closed segments (compaction),
the open segment's new lines and the buffered frames (queries) all use it, so an event looks the same wherever it
is held.
DuckDB does the JSON work in C++ with the GIL released: a worker thread running it does not hold the event loop up.

A line's events are numbered among its JSON objects only, and event k is stamped receive ns + k, exactly as
recorder.replay does; the lines replay would skip (see split_lines) are skipped here too.

Rows have the market's union columns (schema.MarketSchema.stored) plus `received_ns`, `ev` and `extra`:
- known event types get typed columns (json_transform: a value of the wrong type becomes NULL, never an error);
- `extra` holds the event's JSON text when the typed columns cannot give it back exactly (an unknown field, a key
  order of its own, an integer where the vendor documents a decimal, ...), and always for event types the market
  table does not know; it is NULL for the ordinary event, so it costs next to nothing on disk.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence

from mcp_polygon.analytics.schema import Column, EventSchema, Kind, MarketSchema
from mcp_polygon.streams import recorder

# Where the lines come from: by default the statement's parameters $ns (BIGINT[]) and $arr (VARCHAR[]), one entry
# per recorder line, its receive time and its JSON array text (see split_lines); or a table with columns ns, arr.
PARAMETERS = "(SELECT unnest($ns) AS ns, unnest($arr) AS arr)"
# try(): a line that is not valid JSON gives no events, never an error.
_EVENTS = """
frames AS (SELECT ns, arr FROM {source}),
objects AS (
    SELECT ns, list_filter(try(from_json(arr, '["JSON"]')), lambda x: starts_with(CAST(x AS VARCHAR), '{')) AS objs
    FROM frames
),
events AS (
    SELECT ns + k - 1 AS received_ns, json_extract_string(e, '$.ev') AS ev, e
    FROM (SELECT ns, unnest(objs) AS e, generate_subscripts(objs, 1) AS k FROM objects)
)"""


_MAX_NS = (1 << 63) - (1 << 32)  # room for + k
# (lines, low, high) -> (stamp, JSON) per complete line, stamp < 0 for a line replay does not trust.
Judge = Callable[[Iterable[bytes], int, "int | None"], Iterator[tuple[int, bytes]]]


def _recorder_judge() -> Judge | None:
    """The recorder's own rule for the lines replay trusts (time present, inside the segment's named range, in
    order, not a damaged future time), when streams/recorder.py has one: Parquet and views then hold exactly the
    events replay returns. Looked up at call time, since that module is changing under other work."""
    judge = getattr(recorder, "judged_lines", None) or getattr(recorder, "_judged_lines", None)
    return judge if callable(judge) else None


def _plain_judge(lines: Iterable[bytes], low: int, high: int | None) -> Iterator[tuple[int, bytes]]:
    for line in lines:
        ns_text, _, raw = line.partition(b" ")
        yield (int(ns_text) if ns_text.isdigit() else -1), raw


def split_lines(data: bytes, low: int = 0, high: int | None = None) -> tuple[list[int], list[str]]:
    """The complete recorder lines of `data` as ($ns, $arr), keeping the lines recorder.replay keeps: `low` and
    `high` are the segment's named range (high None while it is open). A line whose bytes are not UTF-8 is left
    out too (orjson refuses those, so replay skips them)."""
    ns: list[int] = []
    arr: list[str] = []
    end = data.rfind(b"\n")
    if end < 0:
        return ns, arr
    judge = _recorder_judge() or _plain_judge
    for stamp, raw in judge(data[: end + 1].splitlines(keepends=True), low, high):
        if not 0 <= stamp < _MAX_NS:  # untrusted (negative), or beyond what DuckDB's BIGINT can hold
            continue
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            continue
        ns.append(stamp)
        arr.append(text)
    return ns, arr


def quote(name: str) -> str:
    """A SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _structures(event: EventSchema) -> list[tuple[Column, ...]]:
    """The event's columns in groups for json_transform, whose structure keys must differ case-insensitively
    (LULD, NOI and index values have both `T` and `t`)."""
    groups: list[list[Column]] = []
    for column in event.columns:
        key = column.wire.casefold()
        group = next((g for g in groups if all(c.wire.casefold() != key for c in g)), None)
        if group is None:
            groups.append([column])
        else:
            group.append(column)
    return [tuple(g) for g in groups]


def _structure(columns: Sequence[Column]) -> str:
    return json.dumps({c.wire: c.kind.stored_type for c in columns}, separators=(",", ":"))


def _json_text(column: Column) -> str:
    """SQL for the JSON text of a stored value, written the way the vendor writes that field."""
    ref = quote(column.stored)
    kind = column.kind
    if kind in (Kind.INTEGER, Kind.TIME_MS, Kind.TIME_NS):
        return f"CAST({ref} AS VARCHAR)"
    if kind is Kind.WHOLE:  # documented as an integer: whole values go back without a decimal point
        return (
            f"CASE WHEN {ref} = trunc({ref}) AND abs({ref}) < 1e15 THEN CAST(CAST({ref} AS BIGINT) AS VARCHAR) "
            f"ELSE CAST(to_json({ref}) AS VARCHAR) END"
        )
    return f"CAST(to_json({ref}) AS VARCHAR)"


def rebuild_sql(event: EventSchema, key_order: Sequence[str]) -> str:
    """SQL for an event's JSON text from its stored columns, keys in `key_order`, absent (NULL) fields left out.

    Compaction compares it with the event's own text to decide whether `extra` is needed; replay uses it to give
    the event back. DuckDB writes both texts with the same JSON writer, so equal text means equal values and types.
    """
    parts = []
    for key in key_order:
        if key == "ev":
            parts.append("'\"ev\":' || CAST(to_json(ev) AS VARCHAR)")
            continue
        column = event.column(key)
        if column is None:
            continue
        prefix = literal(json.dumps(key) + ":")
        parts.append(f"CASE WHEN {quote(column.stored)} IS NOT NULL THEN {prefix} || {_json_text(column)} END")
    return "'{' || concat_ws(','" + "".join(", " + p for p in parts) + ") || '}'"


def _struct_alias(event: EventSchema, group: int) -> str:
    return quote(f"s_{event.ev}_{group}")


def present_events(
    market: MarketSchema, data: bytes, among: Sequence[EventSchema] | None = None
) -> tuple[EventSchema, ...]:
    """The market's event types that occur in `data` (recorder lines), found by their bytes: json_transform costs
    milliseconds to plan per event type, so the few types a feed carries are worth picking out. Whitespace after
    the key (never seen from the vendor) makes every type count."""
    candidates = tuple(market.events if among is None else among)
    if b'"ev" ' in data or b'"ev": ' in data or b'"ev":\t' in data:
        return candidates
    return tuple(e for e in candidates if b'"ev":"' + e.ev.encode() + b'"' in data)


def stored_columns(market: MarketSchema, events: Sequence[EventSchema]) -> tuple[tuple[str, Kind], ...]:
    """The stored columns `events` have, in the market's union order."""
    names = {c.stored for e in events for c in e.columns}
    return tuple((n, k) for n, k in market.stored if n in names)


def rows_sql(
    market: MarketSchema,
    events: Sequence[EventSchema] | None = None,
    *,
    keep_raw: bool = False,
    all_columns: bool = False,
    source: str = PARAMETERS,
) -> str:
    """A query over `$ns`/`$arr`: one row per event of `events` (default: every type of the market), in time order,
    with received_ns, ev and the events' stored columns.

    keep_raw (compaction) adds `raw`, the event's JSON text, and keeps the events of the other types (their
    typed columns NULL); all_columns gives every union column of the market whatever `events` are; `source` is
    where the lines come from (PARAMETERS, or a table of ns, arr in file order). One pass, no
    UNION: each event type's json_transform runs only on its own rows (CASE), and the rows keep the order of the
    lines, which is time order.
    """
    chosen = tuple(market.events if events is None else events)
    transforms: list[str] = []
    sources: dict[str, list[str]] = {}
    for event in chosen:
        for i, group in enumerate(_structures(event)):
            alias = _struct_alias(event, i)
            transform = f"json_transform(e, {literal(_structure(group))})"
            transforms.append(f"CASE WHEN ev = {literal(event.ev)} THEN {transform} END AS {alias}")
            for column in group:
                sources.setdefault(column.stored, []).append(f"{alias}.{quote(column.wire)}")
    columns = []
    for name, kind in market.stored if all_columns else stored_columns(market, chosen):
        fields = sources.get(name, ["NULL"])
        value = fields[0] if len(fields) == 1 else f"coalesce({', '.join(fields)})"
        columns.append(f"CAST({value} AS {kind.stored_type}) AS {quote(name)}")
    where = "" if keep_raw else f" WHERE ev IN ({', '.join(literal(e.ev) for e in chosen)})"
    raw = ", CAST(e AS VARCHAR) AS raw" if keep_raw else ""
    typed = f"typed AS (SELECT received_ns, ev, e, {', '.join(transforms)} FROM events{where})"
    lines = _EVENTS.replace("{source}", source)
    return f"WITH {lines},\n{typed}\nSELECT received_ns, ev, {', '.join(columns)}{raw} FROM typed"


@functools.cache  # one text per view, built once: it is the same for every query over the buffer
def frame_rows_sql(market: MarketSchema, event: EventSchema) -> str:
    """rows_sql(market, [event]) for the buffer's frames ($ns, $arr), in about 60% of its time.

    A buffered frame is an array of vendor objects each with one string `ev` (the protocol stores nothing else:
    its fast path proves it on the bytes, its slow path re-encodes only such objects). So one json_transform per
    frame can type every object at once, where rows_sql, made for recorder lines that may hold anything, splits
    each line into JSON values, keeps the objects, reads each one's `ev` and transforms the event on its own:
    three more passes, each with a fixed cost that dominates a query over a small buffer (bench/analytics.py).
    The same json_transform does the typing, so the rows are those rows_sql gives (tests/test_analytics_eventsql.py).
    """
    groups = _structures(event)
    # `ev` joins the first group: no vendor key is `ev` in another case.
    shapes = [{"ev": "VARCHAR"} if i == 0 else {} for i in range(len(groups))]
    for shape, group in zip(shapes, groups, strict=True):
        shape.update({c.wire: c.kind.stored_type for c in group})
    lists = ", ".join(
        f"try(json_transform(arr, {literal(json.dumps([shape], separators=(',', ':')))})) AS l{i}"
        for i, shape in enumerate(shapes)
    )
    structs = ", ".join(f"unnest(l{i}) AS s{i}" for i in range(len(groups)))
    columns = ", ".join(
        f"CAST(s{i}.{quote(c.wire)} AS {c.kind.stored_type}) AS {quote(c.stored)}"
        for i, group in enumerate(groups)
        for c in group
    )
    return (
        f"SELECT received_ns, s0.ev AS ev, {columns} FROM ("
        f"SELECT ns + generate_subscripts(l0, 1) - 1 AS received_ns, {structs} FROM ("
        f"SELECT ns, {lists} FROM {PARAMETERS})) WHERE s0.ev = {literal(event.ev)}"
    )


def merge_key_orders(orders: Sequence[Sequence[str]], known: Sequence[str]) -> tuple[str, ...]:
    """One key order that contains every known key of `orders` (most frequent first), each order's keys keeping
    their relative places where they can: a key new to the merge goes right after its predecessor."""
    allowed = set(known) | {"ev"}
    merged: list[str] = []
    for order in orders:
        previous: str | None = None
        for key in order:
            if key not in allowed:
                continue
            if key not in merged:
                merged.insert(merged.index(previous) + 1 if previous is not None else 0, key)
            previous = key
    return tuple(merged)


def view_expression(column: Column) -> str:
    """SQL for a view column from its stored column."""
    ref = quote(column.stored)
    kind = column.kind
    if kind is Kind.TIME_MS:  # out-of-range garbage becomes NULL instead of failing the whole query
        return f"CASE WHEN abs({ref}) < 9000000000000000 THEN epoch_ms({ref}) END"
    if kind is Kind.TIME_NS:
        return f"make_timestamp({ref} // 1000)"
    if kind is Kind.DECIMAL_TEXT:
        return f"TRY_CAST({ref} AS DOUBLE)"
    return ref


def view_select(event: EventSchema) -> str:
    """The view's select list over stored columns: `received` first, then the event's columns."""
    parts = ["make_timestamp(received_ns // 1000) AS received"]
    parts += [f"{view_expression(c)} AS {quote(c.view)}" for c in event.columns]
    return ", ".join(parts)
