"""The single source of truth per market: WebSocket path, channel prefixes, event fields and readable columns.

Every event type's fields come from the vendor's WebSocket OpenAPI document (specs/massive_websocket_openapi.json),
except futures, which that document does not cover; their fields are listed here (see FUTURES_* below).
A channel prefix equals the `ev` value of the events it delivers (`T.AAPL` -> events with `"ev": "T"`).

Data, plus the checks that are about channels (a subscription's form, its ticker alphabet, the vendor's per-prefix
limits). Reading events by channel (filters, the read plan) is query.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EventType:
    """One channel prefix of a market and the events it delivers."""

    prefix: str  # subscription prefix == the `ev` field of its events
    title: str  # human description, e.g. "trades"
    ticker_key: str  # the event field that holds the ticker
    columns: tuple[tuple[str, str], ...]  # (wire field, readable CSV column), in display order
    wildcard: bool = True  # whether `<prefix>.*` is allowed
    max_tickers: int | None = None  # vendor limit on tickers subscribed at once, when there is one
    deprecated: bool = False


@dataclass(frozen=True)
class TickerForm:
    """The vendor's symbol alphabet for one market: what a ticker may look like, and how to say so."""

    pattern: re.Pattern[str]  # matched against the upper-cased ticker, whole
    description: str  # "letters, digits and '.' (e.g. AAPL, BRK.A)": ends an error sentence


@dataclass(frozen=True)
class Market:
    name: str
    path: str  # appended to the feed host: wss://socket.massive.com/<path>
    ticker_example: str
    ticker_form: TickerForm
    events: dict[str, EventType] = field(default_factory=dict)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(self.events)

    def ticker_key(self, ev: str) -> str:
        et = self.events.get(ev)
        return et.ticker_key if et else "sym"


# Shared column sets -------------------------------------------------------------------------------------------------

# The SIP quote fields that stock and option quotes share; each adds its own tail.
_SIP_QUOTE = (
    ("sym", "symbol"),
    ("bp", "bid_price"),
    ("bs", "bid_size"),
    ("bx", "bid_exchange"),
    ("ap", "ask_price"),
    ("as", "ask_size"),
    ("ax", "ask_exchange"),
)

_STOCK_AGG = (
    ("sym", "symbol"),
    ("o", "open"),
    ("h", "high"),
    ("l", "low"),
    ("c", "close"),
    ("v", "volume"),
    ("dv", "volume_decimal"),
    ("vw", "vwap"),
    ("av", "day_volume"),
    ("dav", "day_volume_decimal"),
    ("op", "day_open"),
    ("a", "day_vwap"),
    ("z", "avg_trade_size"),
    ("otc", "otc"),
    ("s", "start_ms"),
    ("e", "end_ms"),
)

_FMV = (("sym", "symbol"), ("fmv", "fair_market_value"), ("t", "timestamp"))

_FX_AGG = (
    ("pair", "symbol"),
    ("o", "open"),
    ("h", "high"),
    ("l", "low"),
    ("c", "close"),
    ("v", "volume"),
    ("s", "start_ms"),
    ("e", "end_ms"),
)

_CRYPTO_AGG = (
    ("pair", "symbol"),
    ("o", "open"),
    ("h", "high"),
    ("l", "low"),
    ("c", "close"),
    ("v", "volume"),
    ("vw", "vwap"),
    ("z", "avg_trade_size"),
    ("s", "start_ms"),
    ("e", "end_ms"),
)

_INDEX_AGG = (
    ("sym", "symbol"),
    ("o", "open"),
    ("h", "high"),
    ("l", "low"),
    ("c", "close"),
    ("op", "day_open"),
    ("s", "start_ms"),
    ("e", "end_ms"),
)

# Futures events are not in the vendor's WebSocket OpenAPI document; these are their fields.
FUTURES_TRADE = (("sym", "symbol"), ("p", "price"), ("s", "size"), ("t", "timestamp_ms"), ("q", "sequence"))
FUTURES_QUOTE = (
    ("sym", "symbol"),
    ("bp", "bid_price"),
    ("bs", "bid_size"),
    ("bt", "bid_timestamp_ms"),
    ("ap", "ask_price"),
    ("as", "ask_size"),
    ("at", "ask_timestamp_ms"),
    ("t", "timestamp_ms"),
)
FUTURES_AGG = (
    ("sym", "symbol"),
    ("o", "open"),
    ("h", "high"),
    ("l", "low"),
    ("c", "close"),
    ("v", "volume"),
    ("dv", "dollar_volume"),
    ("n", "transactions"),
    ("s", "start_ms"),
    ("e", "end_ms"),
)


# Ticker forms per market, from the vendor's WebSocket document (specs/massive_websocket_openapi.json: the `ticker`
# parameter's pattern and examples of every channel) and widened only where real symbols need it: share classes
# (BRK.A), the "O:"/"I:" prefixes the document's examples carry, the REST spellings FMV events use (C:EURUSD,
# X:BTC-USD), and futures contracts (ESZ5), which the document does not cover. Nothing else reaches the vendor: a
# quote, brace, space or non-ASCII letter in a channel is an agent's mistake, never a symbol.
MAX_TICKER_LENGTH = 40  # the longest real symbol (an option contract, O: + 6 + 15) has 23 characters
TICKER_FORMS: dict[str, TickerForm] = {
    "stocks": TickerForm(
        re.compile(r"[A-Z][A-Z0-9]*(?:\.[A-Z0-9]+)*"),
        "letters and digits, with '.' before a share class (e.g. AAPL, BRK.A)",
    ),
    "options": TickerForm(
        re.compile(r"O:[A-Z0-9]{1,6}[0-9]{6}[CP][0-9]{8}"),
        "O:<underlying><YYMMDD><C or P><strike x 1000 as 8 digits> (e.g. O:SPY251219C00650000)",
    ),
    "futures": TickerForm(re.compile(r"[A-Z][A-Z0-9]*"), "letters and digits starting with a letter (e.g. ESZ5, ES)"),
    "indices": TickerForm(re.compile(r"I:[A-Z0-9][A-Z0-9._-]*"), "I: then letters and digits (e.g. I:SPX)"),
    "forex": TickerForm(
        re.compile(r"(?:C:)?[A-Z]{3}[/-]?[A-Z]{3}"), "two 3-letter currency codes as BASE/QUOTE (e.g. EUR/USD, EUR-USD)"
    ),
    "crypto": TickerForm(
        re.compile(r"(?:X:)?[A-Z0-9]+-[A-Z0-9]+"), "two currency codes as BASE-QUOTE (e.g. BTC-USD, ETH-USDT)"
    ),
}


def _market(name: str, example: str, *events: EventType, path: str | None = None) -> Market:
    return Market(
        name=name,
        path=path or name,
        ticker_example=example,
        ticker_form=TICKER_FORMS[name],
        events={e.prefix: e for e in events},
    )


MARKETS: dict[str, Market] = {
    m.name: m
    for m in (
        _market(
            "stocks",
            "AAPL",
            EventType(
                "T",
                "trades",
                "sym",
                (
                    ("sym", "symbol"),
                    ("p", "price"),
                    ("s", "size"),
                    ("x", "exchange"),
                    ("c", "conditions"),
                    ("z", "tape"),
                    ("i", "trade_id"),
                    ("q", "sequence"),
                    ("trfi", "trf_id"),
                    ("trft", "trf_timestamp_ms"),
                    ("t", "timestamp_ms"),
                ),
            ),
            EventType(
                "Q",
                "quotes",
                "sym",
                (
                    *_SIP_QUOTE,
                    ("c", "condition"),
                    ("i", "indicators"),
                    ("z", "tape"),
                    ("q", "sequence"),
                    ("t", "timestamp_ms"),
                ),
            ),
            EventType("A", "second aggregates", "sym", _STOCK_AGG),
            EventType("AM", "minute aggregates", "sym", _STOCK_AGG),
            EventType(
                "LULD",
                "limit up/limit down bands",
                "T",
                (
                    ("T", "symbol"),
                    ("h", "high_limit"),
                    ("l", "low_limit"),
                    ("i", "indicators"),
                    ("z", "tape"),
                    ("q", "sequence"),
                    ("t", "timestamp_ns"),
                ),
            ),
            EventType(
                "NOI",
                "net order imbalances",
                "T",
                (
                    ("T", "symbol"),
                    ("o", "imbalance_qty"),
                    ("p", "paired_qty"),
                    ("b", "book_clearing_price"),
                    ("a", "auction_type"),
                    ("at", "auction_time"),
                    ("x", "exchange"),
                    ("i", "symbol_sequence"),
                    ("t", "timestamp_ns"),
                ),
            ),
            EventType("FMV", "fair market value (Business plans)", "sym", _FMV),
        ),
        _market(
            "options",
            "O:SPY251219C00650000",
            EventType(
                "T",
                "trades",
                "sym",
                (
                    ("sym", "symbol"),
                    ("p", "price"),
                    ("s", "size"),
                    ("x", "exchange"),
                    ("c", "conditions"),
                    ("q", "sequence"),
                    ("t", "timestamp_ms"),
                ),
            ),
            EventType(
                "Q",
                "quotes",
                "sym",
                (
                    *_SIP_QUOTE,
                    ("q", "sequence"),
                    ("t", "timestamp_ms"),
                ),
                wildcard=False,
                max_tickers=1000,
            ),
            EventType("A", "second aggregates", "sym", _STOCK_AGG),
            EventType("AM", "minute aggregates", "sym", _STOCK_AGG),
            EventType("FMV", "fair market value (Business plans)", "sym", _FMV),
        ),
        _market(
            "futures",
            "ESZ5",
            EventType("T", "trades", "sym", FUTURES_TRADE),
            EventType("Q", "quotes", "sym", FUTURES_QUOTE),
            EventType("A", "second aggregates", "sym", FUTURES_AGG),
            EventType("AM", "minute aggregates", "sym", FUTURES_AGG),
        ),
        _market(
            "indices",
            "I:SPX",
            EventType("V", "index values", "T", (("T", "symbol"), ("val", "value"), ("t", "timestamp_ms"))),
            EventType("A", "second aggregates", "sym", _INDEX_AGG),
            EventType("AM", "minute aggregates", "sym", _INDEX_AGG),
        ),
        _market(
            "forex",
            "EUR/USD",
            EventType(
                "C",
                "quotes",
                "p",  # in forex C events `p` is the pair, not a price
                (("p", "symbol"), ("b", "bid_price"), ("a", "ask_price"), ("x", "exchange"), ("t", "timestamp_ms")),
            ),
            EventType("CA", "minute aggregates", "pair", _FX_AGG),
            EventType("CAS", "second aggregates", "pair", _FX_AGG),
            EventType("FMV", "fair market value (Business plans)", "sym", _FMV),
        ),
        _market(
            "crypto",
            "BTC-USD",
            EventType(
                "XT",
                "trades",
                "pair",
                (
                    ("pair", "symbol"),
                    ("p", "price"),
                    ("s", "size"),
                    ("x", "exchange"),
                    ("c", "conditions"),
                    ("i", "trade_id"),
                    ("t", "timestamp_ms"),
                    ("r", "received_ms"),
                ),
            ),
            EventType(
                "XQ",
                "quotes",
                "pair",
                (
                    ("pair", "symbol"),
                    ("bp", "bid_price"),
                    ("bs", "bid_size"),
                    ("ap", "ask_price"),
                    ("as", "ask_size"),
                    ("x", "exchange"),
                    ("t", "timestamp_ms"),
                    ("r", "received_ms"),
                ),
            ),
            EventType("XA", "minute aggregates", "pair", _CRYPTO_AGG),
            EventType("XAS", "second aggregates", "pair", _CRYPTO_AGG),
            EventType(
                "XL2",
                "level 2 book (deprecated)",
                "pair",
                (
                    ("pair", "symbol"),
                    ("b", "bids"),
                    ("a", "asks"),
                    ("x", "exchange"),
                    ("t", "timestamp_ms"),
                    ("r", "received_ms"),
                ),
                deprecated=True,
            ),
            EventType("FMV", "fair market value (Business plans)", "sym", _FMV),
        ),
    )
}


class ChannelError(ValueError):
    """A channel or filter string is not valid for a market; the message says what is valid."""


def valid_prefixes_text(market: Market) -> str:
    return ", ".join(f"{p} ({e.title})" for p, e in market.events.items())


def split_items(items: str | list[str] | tuple[str, ...]) -> list[str]:
    """The non-empty items of a list of strings and/or one comma separated string, stripped."""
    parts = [items] if isinstance(items, str) else list(items)
    out: list[str] = []
    for part in parts:
        out.extend(x.strip() for x in str(part).split(",") if x.strip())
    return out


PREVIEW_LENGTH = 40  # characters of a bad channel quoted back; a 1 MB name must not come back 1 MB


def shown(text: str, limit: int = PREVIEW_LENGTH) -> str:
    """`text` quoted for an error sentence: control characters escaped, cut at `limit` with its full length said."""
    head = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[:limit])
    return f"'{head}...' ({len(text):,} characters)" if len(text) > limit else f"'{head}'"


def _odd_character(ticker: str) -> str | None:
    """The first character no vendor symbol has, described so that a look-alike (a Cyrillic А) is visible."""
    for ch in ticker:
        if ch.isascii() and (ch.isalnum() or ch in ".:-/"):
            continue
        if ch.isspace():
            return f"whitespace (U+{ord(ch):04X})"
        if not ch.isprintable():
            return f"the control character U+{ord(ch):04X}"
        if not ch.isascii():
            return f"'{ch}' (U+{ord(ch):04X}, not ASCII)"
        return f"'{ch}'"
    return None


def ticker_problem(market: Market, ticker: str) -> str | None:
    """Why `ticker` (already upper-cased) is not a symbol of `market`, as a clause; None when it is one."""
    if len(ticker) > MAX_TICKER_LENGTH:
        return f"the ticker is {len(ticker):,} characters long (at most {MAX_TICKER_LENGTH})"
    odd = _odd_character(ticker)
    if odd is not None:
        return f"the ticker contains {odd}, which no symbol has"
    if market.ticker_form.pattern.fullmatch(ticker) is None:
        return f"{shown(ticker)} does not have the form of a {market.name} ticker"
    return None


def normalize_channels(market: Market, channels: str | list[str] | tuple[str, ...]) -> list[str]:
    """Validate subscription strings like `T.AAPL` / `Q.*` for `market`; return them deduplicated, in order.

    Raises ChannelError naming the bad channel (cut short when huge) and the valid form with an example; nothing
    is sent for an invalid list.
    """
    items = split_items(channels)
    if not items:
        raise ChannelError(
            f"No channels given; pass e.g. ['{market.prefixes[0]}.{market.ticker_example}'] "
            f"(valid {market.name} prefixes: {valid_prefixes_text(market)})."
        )
    out: dict[str, None] = {}
    for item in items:
        prefix, dot, ticker = item.partition(".")
        prefix = prefix.upper()
        ticker = ticker.strip().upper()
        if prefix not in market.events:
            raise ChannelError(
                f"{shown(item)} is not a {market.name} channel; valid {market.name} prefixes: "
                f"{valid_prefixes_text(market)} - written <PREFIX>.<ticker>, e.g. "
                f"{market.prefixes[0]}.{market.ticker_example}."
            )
        if not dot or not ticker:
            raise ChannelError(
                f"{shown(item)} has no ticker; write {prefix}.<ticker> (e.g. {prefix}.{market.ticker_example}) "
                f"or {prefix}.* for every ticker."
            )
        et = market.events[prefix]
        if ticker == "*":
            if not et.wildcard:
                raise ChannelError(
                    f"{market.name} {prefix} ({et.title}) does not allow '*'; subscribe to specific tickers "
                    f"(at most {et.max_tickers}), e.g. {prefix}.{market.ticker_example}."
                )
        else:
            problem = ticker_problem(market, ticker)
            if problem is not None:
                raise ChannelError(
                    f"{shown(item)} is not a valid {market.name} channel: {problem}; {market.name} tickers are "
                    f"{market.ticker_form.description}, written {prefix}.{market.ticker_example}, "
                    f"or {prefix}.* for every ticker."
                )
        out[f"{prefix}.{ticker}"] = None
    return list(out)


def check_limits(market: Market, topics: list[str]) -> None:
    """Raise ChannelError when `topics` (the full set after a change) exceeds a vendor per-prefix limit."""
    for prefix, et in market.events.items():
        if et.max_tickers is None:
            continue
        count = sum(1 for t in topics if t.startswith(prefix + "."))
        if count > et.max_tickers:
            raise ChannelError(
                f"{market.name} {prefix} allows at most {et.max_tickers} tickers at once; this would make {count}. "
                "Unsubscribe some first."
            )
