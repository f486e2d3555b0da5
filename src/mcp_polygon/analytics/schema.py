"""The one table of SQL views: per (market, event type) its view name and typed columns, derived from markets.py.

Every event column of markets.py (the stream CSV's readable names) gets a Kind: how the vendor field is stored in
Parquet and in the engine's tables, how a view shows it, and how it is written back to the vendor's JSON for
replay. The kind comes from the column's readable name, with the few per-market exceptions the vendor's WebSocket
document states (crypto sizes are fractional, crypto trade ids are numbers); tests/test_analytics_schema.py checks
every field against specs/massive_websocket_openapi.json, so a column added to markets.py without a kind fails
there instead of at a customer's query.

Names in the views: the instrument column is `symbol` in every market; `received` is when this server got the
event (UTC TIMESTAMP); vendor times in ms or ns become TIMESTAMP columns without their unit suffix
(`timestamp_ms` -> `timestamp`, `trf_timestamp_ms` -> `trf_timestamp`, `start_ms` / `end_ms` -> `start_time` /
`end_time`, since END is reserved in SQL); crypto's `received_ms` (when the vendor got the tick) is
`vendor_received`, so it cannot be mistaken for ours.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mcp_polygon.streams.markets import MARKETS


class Kind(enum.Enum):
    """How one vendor field is stored, shown and written back. Values: (name, stored SQL type, view SQL type)."""

    TEXT = ("text", "VARCHAR", "VARCHAR")
    NUMBER = ("number", "DOUBLE", "DOUBLE")  # the vendor sends a JSON number (prices, fractional sizes)
    WHOLE = ("whole", "DOUBLE", "DOUBLE")  # the vendor sends a JSON integer, the view shows a DOUBLE (sizes)
    INTEGER = ("integer", "BIGINT", "BIGINT")  # codes, counts, sequence numbers
    INTEGER_LIST = ("integer_list", "BIGINT[]", "BIGINT[]")  # conditions, indicators
    FLAG = ("flag", "BOOLEAN", "BOOLEAN")
    DECIMAL_TEXT = ("decimal_text", "VARCHAR", "DOUBLE")  # a decimal number sent as a string ("100.25")
    TIME_MS = ("time_ms", "BIGINT", "TIMESTAMP")  # Unix ms on the wire and on disk
    TIME_NS = ("time_ns", "BIGINT", "TIMESTAMP")  # Unix ns on the wire and on disk
    BOOK = ("book", "DOUBLE[][]", "DOUBLE[][]")  # [[price, size], ...]

    @property
    def stored_type(self) -> str:
        return self.value[1]

    @property
    def view_type(self) -> str:
        return self.value[2]


# The kind of every readable column name in markets.py.
_KIND_BY_NAME: dict[str, Kind] = {
    "symbol": Kind.TEXT,
    "pair": Kind.TEXT,
    "price": Kind.NUMBER,
    "size": Kind.WHOLE,
    "exchange": Kind.INTEGER,
    "conditions": Kind.INTEGER_LIST,
    "condition": Kind.INTEGER,
    "indicators": Kind.INTEGER_LIST,
    "tape": Kind.INTEGER,
    "trade_id": Kind.TEXT,
    "sequence": Kind.INTEGER,
    "trf_id": Kind.INTEGER,
    "trf_timestamp_ms": Kind.TIME_MS,
    "timestamp_ms": Kind.TIME_MS,
    "timestamp_ns": Kind.TIME_NS,
    "timestamp": Kind.TIME_NS,  # FMV: "The nanosecond timestamp."
    "received_ms": Kind.TIME_MS,
    "bid_price": Kind.NUMBER,
    "bid_size": Kind.WHOLE,
    "bid_exchange": Kind.INTEGER,
    "bid_timestamp_ms": Kind.TIME_MS,
    "ask_price": Kind.NUMBER,
    "ask_size": Kind.WHOLE,
    "ask_exchange": Kind.INTEGER,
    "ask_timestamp_ms": Kind.TIME_MS,
    "open": Kind.NUMBER,
    "high": Kind.NUMBER,
    "low": Kind.NUMBER,
    "close": Kind.NUMBER,
    "volume": Kind.WHOLE,
    "volume_decimal": Kind.DECIMAL_TEXT,
    "dollar_volume": Kind.NUMBER,
    "transactions": Kind.INTEGER,
    "vwap": Kind.NUMBER,
    "day_volume": Kind.WHOLE,
    "day_volume_decimal": Kind.DECIMAL_TEXT,
    "day_open": Kind.NUMBER,
    "day_vwap": Kind.NUMBER,
    "avg_trade_size": Kind.WHOLE,
    "otc": Kind.FLAG,
    "start_ms": Kind.TIME_MS,
    "end_ms": Kind.TIME_MS,
    "high_limit": Kind.NUMBER,
    "low_limit": Kind.NUMBER,
    "imbalance_qty": Kind.WHOLE,
    "paired_qty": Kind.WHOLE,
    "book_clearing_price": Kind.NUMBER,
    "auction_type": Kind.TEXT,
    "auction_time": Kind.INTEGER,  # 930 or 1600: a clock time code, not a timestamp
    "symbol_sequence": Kind.INTEGER,
    "fair_market_value": Kind.NUMBER,
    "value": Kind.NUMBER,
    "bids": Kind.BOOK,
    "asks": Kind.BOOK,
}

# Where a market's vendor type differs from the name's default (the WebSocket document's types).
_KIND_BY_MARKET: dict[tuple[str, str], Kind] = {
    ("crypto", "size"): Kind.NUMBER,
    ("crypto", "bid_size"): Kind.NUMBER,
    ("crypto", "ask_size"): Kind.NUMBER,
    ("crypto", "trade_id"): Kind.INTEGER,
}

# Readable names that change in the views (and in storage, for the instrument).
_VIEW_NAME: dict[str, str] = {
    "pair": "symbol",
    "timestamp_ms": "timestamp",
    "timestamp_ns": "timestamp",
    "trf_timestamp_ms": "trf_timestamp",
    "bid_timestamp_ms": "bid_timestamp",
    "ask_timestamp_ms": "ask_timestamp",
    "start_ms": "start_time",
    "end_ms": "end_time",
    "received_ms": "vendor_received",
}

# View name suffix per event type prefix (the same prefix means the same kind of event in every market).
_VIEW_SUFFIX: dict[str, str] = {
    "T": "trades",
    "Q": "quotes",
    "A": "second_aggs",
    "AM": "minute_aggs",
    "LULD": "luld",
    "NOI": "imbalances",
    "FMV": "fmv",
    "V": "values",
    "C": "quotes",
    "CA": "minute_aggs",
    "CAS": "second_aggs",
    "XT": "trades",
    "XQ": "quotes",
    "XA": "minute_aggs",
    "XAS": "second_aggs",
    "XL2": "l2",
}

# Event kinds whose rows are trades / quotes / index values: what the stream summary reads.
TRADE_PREFIXES = frozenset({"T", "XT"})
QUOTE_PREFIXES = frozenset({"Q", "C", "XQ"})
VALUE_PREFIXES = frozenset({"V"})


@dataclass(frozen=True)
class Column:
    """One vendor field of one event type."""

    wire: str  # the vendor's JSON key, e.g. "p"
    stored: str  # its column in Parquet and the engine's tables: the CSV name, the instrument always `symbol`
    view: str  # its column in the view
    kind: Kind


@dataclass(frozen=True)
class EventSchema:
    """One view: a market's event type and its typed columns, in the stream CSV's order."""

    market: str
    ev: str  # the vendor's `ev` value, equal to the channel prefix
    view: str  # e.g. "stocks_trades"
    title: str
    columns: tuple[Column, ...]

    def column(self, wire: str) -> Column | None:
        return next((c for c in self.columns if c.wire == wire), None)

    @property
    def view_columns(self) -> tuple[str, ...]:
        """The view's column names, in order: `received` first."""
        return ("received", *(c.view for c in self.columns))


@dataclass(frozen=True)
class MarketSchema:
    """A market's event types and the union of their stored columns (one Parquet file per segment holds them all)."""

    market: str
    events: tuple[EventSchema, ...]
    stored: tuple[tuple[str, Kind], ...]  # (stored column, kind), first seen first; `received_ns`, `ev`, `extra` aside

    def event(self, ev: str) -> EventSchema | None:
        return next((e for e in self.events if e.ev == ev), None)


def _kind(market: str, readable: str) -> Kind:
    kind = _KIND_BY_MARKET.get((market, readable)) or _KIND_BY_NAME.get(readable)
    if kind is None:
        raise KeyError(f"analytics/schema.py has no kind for the {market} column {readable!r}; add it to _KIND_BY_NAME")
    return kind


def _stored_name(readable: str) -> str:
    return "symbol" if readable == "pair" else readable


def _build() -> dict[str, MarketSchema]:
    out: dict[str, MarketSchema] = {}
    for name, market in MARKETS.items():
        events: list[EventSchema] = []
        stored: dict[str, Kind] = {}
        for prefix, et in market.events.items():
            columns = tuple(
                Column(wire, _stored_name(readable), _VIEW_NAME.get(readable, readable), _kind(name, readable))
                for wire, readable in et.columns
            )
            for col in columns:
                seen = stored.setdefault(col.stored, col.kind)
                if seen.stored_type != col.kind.stored_type:  # one union table per market needs one type per name
                    raise TypeError(f"{name} column {col.stored} is stored as {seen.stored_type} and {col.kind}")
            events.append(EventSchema(name, prefix, f"{name}_{_VIEW_SUFFIX[prefix]}", et.title, columns))
        out[name] = MarketSchema(name, tuple(events), tuple(stored.items()))
    return out


SCHEMAS: dict[str, MarketSchema] = _build()
VIEWS: dict[str, EventSchema] = {e.view: e for m in SCHEMAS.values() for e in m.events}


def view_names() -> tuple[str, ...]:
    return tuple(VIEWS)
