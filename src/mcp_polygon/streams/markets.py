"""The single source of truth per market: WebSocket path, channel prefixes, event fields and readable columns.

Every event type's fields come from the vendor's WebSocket OpenAPI document (specs/massive_websocket_openapi.json),
except futures, which that document does not cover; their fields are listed here (see FUTURES_* below).
A channel prefix equals the `ev` value of the events it delivers (`T.AAPL` -> events with `"ev": "T"`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import and_, eq
from typing import Any

import orjson


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
    ("pair", "pair"),
    ("o", "open"),
    ("h", "high"),
    ("l", "low"),
    ("c", "close"),
    ("v", "volume"),
    ("s", "start_ms"),
    ("e", "end_ms"),
)

_CRYPTO_AGG = (
    ("pair", "pair"),
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
                (("p", "pair"), ("b", "bid_price"), ("a", "ask_price"), ("x", "exchange"), ("t", "timestamp_ms")),
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
                    ("pair", "pair"),
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
                    ("pair", "pair"),
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
                    ("pair", "pair"),
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


def _split_items(items: str | list[str] | tuple[str, ...]) -> list[str]:
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
    items = _split_items(channels)
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


@dataclass(frozen=True)
class ChannelFilter:
    """A parsed channel_filter: `T.AAPL`, `T.*` (or `T`), `*.AAPL`, `*`, comma separated; any term may match."""

    all_events: bool = False
    prefixes: frozenset[str] = frozenset()  # `T.*`: every ticker of these event types
    tickers: frozenset[str] = frozenset()  # `*.AAPL`: these tickers in every event type
    pairs: frozenset[tuple[str, str]] = frozenset()  # `T.AAPL`

    @property
    def is_all(self) -> bool:
        return self.all_events

    def needles(self) -> tuple[bytes, ...] | None:
        """Byte strings at least one of which must occur in a raw frame for any event in it to match.

        None when no cheap pre-check is possible. Only plain tickers qualify, so JSON escaping cannot hide them.
        """
        if self.all_events or self.prefixes:
            return None
        tickers = self.tickers | {t for _, t in self.pairs}
        if not tickers or not all(_plain(t) for t in tickers):
            return None
        return tuple(b'"' + t.encode() + b'"' for t in tickers)


def _plain(ticker: str) -> bool:
    return all(ch.isalnum() or ch in ".:-_" for ch in ticker) and ticker.isascii()


def parse_filter(market: Market, raw: str | list[str] | None) -> ChannelFilter:
    """Parse a channel_filter (`T.AAPL`, `T.*` or `T`, `*.AAPL`, `*`; comma separated). Raises ChannelError naming
    the bad term and the valid forms: a term that can match nothing is refused, never silently kept."""
    if raw is None:
        return ChannelFilter(all_events=True)
    items = _split_items(raw)
    if not items:
        return ChannelFilter(all_events=True)
    prefixes: set[str] = set()
    tickers: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    forms = f"forms: {market.prefixes[0]}.{market.ticker_example}, {market.prefixes[0]}.*, *.{market.ticker_example}"
    for item in items:
        prefix, dot, ticker = item.partition(".")
        prefix = prefix.strip().upper()
        ticker = ticker.strip().upper() if dot else "*"
        if prefix != "*" and prefix not in market.events:
            raise ChannelError(
                f"channel_filter {shown(item)} names no {market.name} event type; valid {market.name} prefixes: "
                f"{', '.join(market.prefixes)} ({forms})."
            )
        if not ticker:
            raise ChannelError(
                f"channel_filter {shown(item)} has nothing after the dot, so it would match no event; "
                f"write {prefix}.<ticker> or {prefix}.* ({forms})."
            )
        if ticker != "*":
            problem = ticker_problem(market, ticker)
            if problem is not None:
                raise ChannelError(
                    f"channel_filter {shown(item)} can match no event: {problem}; {market.name} tickers are "
                    f"{market.ticker_form.description} ({forms})."
                )
        if prefix == "*":
            if ticker == "*":
                return ChannelFilter(all_events=True)
            tickers.add(ticker)
        elif ticker == "*":
            prefixes.add(prefix)
        else:
            pairs.add((prefix, ticker))
    return ChannelFilter(prefixes=frozenset(prefixes), tickers=frozenset(tickers), pairs=frozenset(pairs))


Event = dict[str, Any]  # one decoded vendor event
Matcher = Callable[[Event], bool]
IndexKey = tuple[str | None, str | None]  # (ev, ticker) of a decoded event; None where it is not a string


def make_matcher(market: Market, flt: ChannelFilter) -> Matcher | None:
    """A fast predicate over decoded events for `flt`, or None when every event matches."""
    if flt.is_all:
        return None
    keymap = {p: e.ticker_key for p, e in market.events.items()}
    prefixes, tickers, pairs = flt.prefixes, flt.tickers, flt.pairs
    need_ticker = bool(tickers or pairs)

    def match(event: Event) -> bool:
        ev = event.get("ev")
        if type(ev) is not str:  # (a list would not even hash); the protocol drops such events before the buffer
            return False
        if ev in prefixes:
            return True
        if not need_ticker:
            return False
        tk = event.get(keymap.get(ev, "sym"))
        if type(tk) is not str:
            return False
        return tk in tickers or (ev, tk) in pairs

    return match


def build_index(events: list[Event], keymap: dict[str, str]) -> dict[IndexKey, list[int]]:
    """(ev, ticker) -> positions of one decoded frame; lets repeated filtered reads skip non-matching events."""
    index: dict[IndexKey, list[int]] = {}
    for k, e in enumerate(events):
        ev = e.get("ev")
        if type(ev) is not str:
            ev = None
        tk = e.get(keymap.get(ev, "sym"))  # type: ignore[arg-type]  # None finds the default, as it should
        if type(tk) is not str:
            tk = None
        ks = index.get((ev, tk))
        if ks is None:
            index[(ev, tk)] = [k]
        else:
            ks.append(k)
    return index


_EV_START = b'{"ev":"'  # how every compact event object starts (the vendor's and orjson's key order)
_loads = orjson.loads


class Selector:
    """A channel filter compiled for one market: a per-event predicate, a per-frame index lookup, a byte
    pre-check. `match is None` means every event matches."""

    __slots__ = (
        "_ev_start",
        "_pairs",
        "_prefixes",
        "_single_key",
        "_ticker_needle",
        "_tickers",
        "keymap",
        "match",
        "needles",
        "single",
    )

    def __init__(self, market: Market, flt: ChannelFilter) -> None:
        self.match = make_matcher(market, flt)
        self.needles = flt.needles()
        self.keymap = {p: e.ticker_key for p, e in market.events.items()}
        self._pairs, self._prefixes, self._tickers = flt.pairs, flt.prefixes, flt.tickers
        only_one = len(flt.pairs) == 1 and not flt.prefixes and not flt.tickers
        self.single = next(iter(flt.pairs)) if only_one else None  # the common `T.AAPL` case
        self._single_key = self.keymap.get(self.single[0], "sym") if self.single is not None else None
        # pick(): the start of an event of the wanted type, and the ticker's bytes (plain names only, as needles).
        self._ev_start: re.Pattern[bytes] | None = None
        self._ticker_needle: bytes | None = None
        if self.single is not None and self.needles is not None and _plain(self.single[0]):
            self._ev_start = re.compile(re.escape(_EV_START + self.single[0].encode() + b'"'))
            self._ticker_needle = self.needles[0]

    def pick(self, raw: bytes, count: int, skip: int = 0) -> tuple[dict[int, Event], list[int]] | None:
        """({position: event}, positions) of the matching events >= skip of a raw frame, decoding only those
        whose bytes can match; None when the frame's layout does not allow it (then decode it all).

        Decoding costs ~0.7 us per event, so a `T.AAPL` read that decoded every event of a mixed feed would
        spend most of its time on events it drops. Every event the vendor (and orjson) writes starts with
        `{"ev":"`, a sequence that cannot occur inside a JSON string (it holds a bare quote); when the frame
        holds exactly `count` of them they are exactly the event starts, so the frame can be cut there. Only
        the events of the wanted type that also hold the ticker's bytes are decoded, and each is checked against
        the pair. A piece that does not decode to an object means the frame is not what it seemed:
        None, and the caller decodes it whole, as it always did. One difference remains: a frame whose wanted
        events are valid JSON but whose other bytes are not yields those events here, where decoding it whole
        yields none (the protocol only lets such a frame through if the vendor sends broken JSON).
        """
        ev_start, needle, single = self._ev_start, self._ticker_needle, self.single
        if ev_start is None or needle is None or single is None or raw[-1:] != b"]":
            return None
        key = self._single_key
        ev, ticker = single
        found: dict[int, Event] = {}
        k, counted_to, last = 0, 0, len(raw) - 1
        for m in ev_start.finditer(raw):
            start = m.start()
            end = raw.find(_EV_START, m.end())
            end = end - 1 if end > 0 else last  # drop the `,` before the next event, or the closing `]`
            if raw.find(needle, start, end) < 0:
                continue
            k += raw.count(_EV_START, counted_to, start)  # this event's position in the frame
            counted_to = start
            if k < skip:
                continue
            try:
                event = _loads(raw[start:end])  # fails on `}, {`-style whitespace too: decoded whole then
            except orjson.JSONDecodeError:
                return None
            if type(event) is not dict:
                return None
            if event.get("ev") == ev and event.get(key) == ticker:  # self.match, for this single pair
                found[k] = event
        # The event starts counted so far (for the positions) plus the rest: one pass over the frame checks that
        # there are exactly `count` of them, which every position above relied on.
        if k + raw.count(_EV_START, counted_to) != count:
            return None
        return found, list(found)

    def scan(self, events: list[Event], skip: int = 0) -> list[int]:
        """Positions >= skip of the matching events of a decoded frame (dicts only), ascending.

        The single `T.AAPL` case compares the `ev` and ticker columns with map/compress, all in C: a Python call
        of `match` per event would cost about as much as decoding the frame did.
        """
        if self.single is None:
            match = self.match
            if match is None:  # no filter: every event
                return list(range(skip, len(events)))
            return [k for k in range(skip, len(events)) if match(events[k])]
        part = events[skip:] if skip else events
        ev, ticker = self.single
        key = self._single_key or "sym"
        evs = map(eq, map(dict.get, part, repeat("ev")), repeat(ev))  # == on JSON values is always a bool
        tks = map(eq, map(dict.get, part, repeat(key)), repeat(ticker))
        return list(compress(range(skip, skip + len(part)), map(and_, evs, tks)))

    def positions(self, index: dict[IndexKey, list[int]]) -> list[int]:
        """Positions of matching events in a frame, ascending, from its index."""
        if self.single is not None:
            return index.get(self.single, [])
        prefixes, tickers, pairs = self._prefixes, self._tickers, self._pairs
        out: list[int] = []
        parts = 0
        for key, ks in index.items():
            if key[0] in prefixes or key[1] in tickers or key in pairs:
                out += ks
                parts += 1
        if parts > 1:
            out.sort()
        return out


def compile_filter(market: Market, raw: str | list[str] | None) -> Selector:
    return Selector(market, parse_filter(market, raw))
