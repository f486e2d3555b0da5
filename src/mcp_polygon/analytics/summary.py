"""get_stream_summary: one row per symbol over a window, computed in SQL over the stream views.

Prices come from trades (stocks, options, futures, crypto) or index values (indices); a symbol with neither in the
window (subscribed to bars only, or forex, which has no trades) takes them from its bars: second bars when it has
any, else minute bars (open of the first, high and low over all, close of the last, volume summed, vwap weighted
by volume). bid, ask and spread come from the last quote (stocks, options, futures, forex, crypto). events_per_s
counts every event of the symbol in the window, all event types, over the window's length (from `since` to now;
without `since`, from the symbol's first event to its last, at least one second). "Last" means last received.
Columns no row has a value for are left out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mcp_polygon.analytics.errors import QueryRejected
from mcp_polygon.analytics.eventsql import literal, quote
from mcp_polygon.analytics.schema import QUOTE_PREFIXES, SCHEMAS, TRADE_PREFIXES, VALUE_PREFIXES, EventSchema
from mcp_polygon.streams.formatting import TimeFormatError, parse_time_ns

SUMMARY_COLUMNS = (
    "symbol",
    "last_price",
    "last_size",
    "last_time",
    "bid",
    "ask",
    "spread",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trades",
    "events",
    "events_per_s",
)
MAX_SYMBOLS = 1000


@dataclass(frozen=True)
class SummaryQuery:
    sql: str
    views: tuple[str, ...]  # the views it reads


def parse_window(since: str | int | float | None, now_ns: int | None = None) -> int | None:
    """`since` as Unix ns: ISO 8601, Unix s/ms/ns, or relative to now ('-5m', '-30s', 'now-2h'); None = everything.

    Raises QueryRejected with the accepted forms when it is none of them."""
    if since is None or (isinstance(since, str) and not since.strip()):
        return None
    try:
        return parse_time_ns(since, "since", now_ns)
    except TimeFormatError as exc:
        raise QueryRejected(str(exc)) from None


def _first(events: Sequence[EventSchema], prefixes: frozenset[str]) -> EventSchema | None:
    return next((e for e in events if e.ev in prefixes), None)


def _bars_cte(events: Sequence[EventSchema], where: str) -> str | None:
    """SQL of CTE `b`: one row per symbol from its finest bars in the window (second bars if it has any, else
    minute bars), each window counted once (a bar sent again for the same window, revised, replaces the earlier
    one); None when the market has no bars."""
    grains = [e for suffix in ("_second_aggs", "_minute_aggs") for e in events if e.view.endswith(suffix)]
    if not grains:
        return None
    have = set.intersection(*(set(e.view_columns) for e in grains))
    volume = "volume" if "volume" in have else "NULL"
    vwap = "vwap" if "vwap" in have and "volume" in have else "NULL"
    parts = " UNION ALL ".join(
        f"SELECT symbol, received, {rank} AS grain, coalesce(start_time, received) AS opened, "
        f"coalesce(end_time, received) AS closed, open, high, low, close, {volume} AS volume, {vwap} AS vwap "
        f"FROM {quote(e.view)} {where}"
        for rank, e in enumerate(grains)
    )
    latest = (
        f"SELECT * FROM ({parts}) WHERE symbol IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY symbol, grain, opened ORDER BY received DESC) = 1"
    )
    return (
        "b AS (SELECT symbol, arg_max(close, closed) AS last_price, max(closed) AS last_time, "
        "arg_min(open, opened) AS open, max(high) AS high, min(low) AS low, arg_max(close, closed) AS close, "
        "sum(volume) AS volume, sum(vwap * volume) / nullif(sum(volume), 0) AS vwap, count(*) AS bars "
        f"FROM (SELECT *, min(grain) OVER (PARTITION BY symbol) AS finest FROM ({latest})) "
        "WHERE grain = finest GROUP BY symbol)"
    )


def _symbols_sql(symbols: Sequence[str] | None) -> str:
    if not symbols:
        return "TRUE"
    return f"symbol IN ({', '.join(literal(s) for s in symbols)})"


def normalize_symbols(symbols: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """'AAPL, msft' or ['AAPL', 'MSFT'] -> ('AAPL', 'MSFT'); tickers are upper case, as in channels."""
    if symbols is None:
        return None
    parts = [symbols] if isinstance(symbols, str) else list(symbols)
    out = tuple(dict.fromkeys(x.strip().upper() for p in parts for x in str(p).split(",") if x.strip()))
    if len(out) > MAX_SYMBOLS:
        raise QueryRejected(f"symbols lists {len(out)} tickers; ask for at most {MAX_SYMBOLS} at a time.")
    return out or None


def summary_query(
    market: str, symbols: Sequence[str] | None = None, since_ns: int | None = None, now_ns: int | None = None
) -> SummaryQuery:
    """The SQL of one market's summary. Raises QueryRejected for an unknown market."""
    schema = SCHEMAS.get(market)
    if schema is None:
        raise QueryRejected(f"market must be one of {', '.join(SCHEMAS)}, got {market!r}.")
    now = time.time_ns() if now_ns is None else now_ns
    window = "TRUE" if since_ns is None else f"received >= make_timestamp({since_ns // 1000})"
    where = f"WHERE {window} AND {_symbols_sql(symbols)}"
    trades = _first(schema.events, TRADE_PREFIXES)
    quotes = _first(schema.events, QUOTE_PREFIXES)
    values = _first(schema.events, VALUE_PREFIXES)
    ctes: list[str] = []
    joins: list[str] = []
    size = None
    if trades is not None:
        ctes.append(
            f"t AS (SELECT symbol, arg_max(price, received) AS last_price, arg_max(size, received) AS last_size, "
            "coalesce(arg_max(timestamp, received), max(received)) AS last_time, arg_min(price, received) AS open, "
            "max(price) AS high, min(price) AS low, arg_max(price, received) AS close, sum(size) AS volume, "
            "sum(price * size) / nullif(sum(size), 0) AS vwap, count(*) AS trades "
            f"FROM {quote(trades.view)} {where} GROUP BY symbol)"
        )
        joins.append("t")
        size = "t.last_size"
    if values is not None:
        ctes.append(
            "v AS (SELECT symbol, arg_max(value, received) AS last_price, "
            "coalesce(arg_max(timestamp, received), max(received)) AS last_time, arg_min(value, received) AS open, "
            "max(value) AS high, min(value) AS low, arg_max(value, received) AS close, count(*) AS n "
            f"FROM {quote(values.view)} {where} GROUP BY symbol)"
        )
        joins.append("v")
    if quotes is not None:
        ctes.append(
            "q AS (SELECT symbol, arg_max(bid_price, received) AS bid, arg_max(ask_price, received) AS ask "
            f"FROM {quote(quotes.view)} {where} GROUP BY symbol)"
        )
        joins.append("q")
    bars = _bars_cte(schema.events, where)
    if bars is not None:
        ctes.append(bars)
        joins.append("b")
    every = " UNION ALL ".join(f"SELECT symbol, received FROM {quote(e.view)} {where}" for e in schema.events)
    span = (
        f"greatest(1.0, ({now // 1000} - epoch_us(make_timestamp({since_ns // 1000}))) / 1e6)"
        if since_ns is not None
        else "greatest(1.0, epoch_us(max(received) - min(received)) / 1e6)"
    )
    ctes.append(
        f"e AS (SELECT symbol, count(*) AS events, round(count(*) / {span}, 3) AS events_per_s FROM ({every}) "
        "WHERE symbol IS NOT NULL GROUP BY symbol)"
    )
    # Which source a symbol's prices come from, first that has rows for it: one source per symbol, never a mix.
    present = {"t": "t.trades", "v": "v.n", "b": "b.bars"}

    def pick(name: str, *sources: str) -> str:
        held = [s for s in sources if s in joins]
        if not held:
            return f"NULL AS {name}"
        if len(held) == 1:
            return f"{held[0]}.{name} AS {name}"
        cases = " ".join(f"WHEN {present[s]} IS NOT NULL THEN {s}.{name}" for s in held)
        return f"CASE {cases} END AS {name}"

    prices = ("t", "v", "b")
    select = [
        "e.symbol",
        pick("last_price", *prices),
        f"{size} AS last_size" if size else "NULL AS last_size",
        pick("last_time", *prices),
        pick("bid", "q"),
        pick("ask", "q"),
        "round(q.ask - q.bid, 10) AS spread" if "q" in joins else "NULL AS spread",
        pick("open", *prices),
        pick("high", *prices),
        pick("low", *prices),
        pick("close", *prices),
        pick("volume", "t", "b"),
        pick("vwap", "t", "b"),
        pick("trades", "t"),
        "e.events",
        "e.events_per_s",
    ]
    join_sql = " ".join(f"LEFT JOIN {j} USING (symbol)" for j in joins)
    sql = f"WITH {', '.join(ctes)} SELECT {', '.join(select)} FROM e {join_sql} ORDER BY e.symbol"
    return SummaryQuery(sql=sql, views=tuple(e.view for e in schema.events))
