"""Realistic vendor WebSocket events for every channel of every market.

Field names, order and units follow specs/massive_websocket_openapi.json (futures: the fixed list in the stream
spec). Prices are a seeded random walk per instrument, so one seed gives one market history for the same sequence
of calls. Timestamps are wall-clock: milliseconds, except LULD/NOI `t` and FMV `t`, which the vendor documents
in nanoseconds.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Tickers starting with this (after any "O:", "I:", "C:", "X:" prefix) are unknown to the simulator: a subscription
# to them is acknowledged like the vendor does, and no event is ever sent for them.
UNKNOWN_TICKER_PREFIX = "ZZZ"


@dataclass(frozen=True)
class MarketSpec:
    name: str
    channels: tuple[str, ...]
    # The tickers a `<CHANNEL>.*` subscription streams: the simulator has no universe of every listed ticker.
    wildcard_tickers: tuple[str, ...]
    # Channels that refuse `*` (options quotes: at most 1,000 named contracts per connection).
    no_wildcard: frozenset[str] = frozenset()


MARKETS: dict[str, MarketSpec] = {
    spec.name: spec
    for spec in (
        MarketSpec("stocks", ("T", "Q", "A", "AM", "LULD", "NOI", "FMV"), ("AAPL", "MSFT", "NVDA")),
        MarketSpec(
            "options",
            ("T", "Q", "A", "AM", "FMV"),
            ("O:SPY251219C00650000", "O:AAPL251219C00230000", "O:TSLA251219P00400000"),
            no_wildcard=frozenset({"Q"}),
        ),
        MarketSpec("futures", ("T", "Q", "A", "AM"), ("ESZ5", "NQZ5", "CLZ5")),
        MarketSpec("indices", ("V", "A", "AM"), ("I:SPX", "I:NDX", "I:DJI")),
        MarketSpec("forex", ("C", "CA", "CAS", "FMV"), ("EUR/USD", "USD/JPY", "GBP/USD")),
        MarketSpec("crypto", ("XT", "XQ", "XA", "XAS", "XL2", "FMV"), ("BTC-USD", "ETH-USD", "SOL-USD")),
    )
}


def ticker_key(market: str, channel: str) -> str:
    """The field that carries the ticker in an event of this channel."""
    if (market == "stocks" and channel in ("LULD", "NOI")) or (market == "indices" and channel == "V"):
        return "T"
    if market == "forex" and channel == "C":
        return "p"
    if market in ("forex", "crypto") and channel != "FMV":
        return "pair"
    return "sym"


def is_known_ticker(ticker: str) -> bool:
    bare = ticker.split(":", 1)[1] if ticker[:2] in ("O:", "I:", "C:", "X:") else ticker
    return not bare.startswith(UNKNOWN_TICKER_PREFIX)


def event_ticker(market: str, channel: str, ticker: str) -> str:
    """The ticker as the event spells it: FMV on forex/crypto uses the REST form ("C:EURUSD", "X:BTC-USD")."""
    if channel == "FMV" and market == "forex" and not ticker.startswith("C:"):
        return "C:" + ticker.replace("/", "")
    if channel == "FMV" and market == "crypto" and not ticker.startswith("X:"):
        return "X:" + ticker
    return ticker


# Plausible starting prices; anything else starts at a seeded log-uniform price in the market's range.
_ANCHORS: dict[str, float] = {
    "AAPL": 230.0, "MSFT": 420.0, "NVDA": 130.0, "TSLA": 250.0, "SPY": 560.0, "AMZN": 185.0, "GOOGL": 165.0,
    "META": 500.0, "ES": 5600.0, "NQ": 19800.0, "YM": 41000.0, "RTY": 2200.0, "CL": 72.0, "GC": 2450.0,
    "SI": 29.0, "ZN": 112.0, "ZB": 118.0, "I:SPX": 5600.0, "I:NDX": 19800.0, "I:DJI": 41000.0, "I:VIX": 16.0,
    "I:RUT": 2200.0, "EURUSD": 1.08, "USDJPY": 150.0, "GBPUSD": 1.27, "AUDUSD": 0.66, "USDCAD": 1.36,
    "USDCHF": 0.88, "BTC-USD": 60000.0, "ETH-USD": 2600.0, "SOL-USD": 150.0,
}  # fmt: skip
_RANGES: dict[str, tuple[float, float]] = {
    "stocks": (5.0, 500.0),
    "options": (0.3, 25.0),
    "futures": (50.0, 5000.0),
    "indices": (500.0, 20000.0),
    "forex": (0.5, 2.0),
    "crypto": (0.05, 500.0),
}
_SIGMA = {"stocks": 4e-4, "options": 3e-3, "futures": 2e-4, "indices": 1e-4, "forex": 5e-5, "crypto": 6e-4}
_OTC_TICKERS = frozenset({"TCEHY", "NSRGY", "RHHBY", "BAYRY", "OTCSIM"})


def anchor_price(ticker: str) -> float | None:
    """The price a well-known ticker's stream starts from, given its REST spelling (AAPL, I:SPX, C:EURUSD,
    X:BTCUSD); None for the others. REST bars follow it too, so the simulator's REST closes and stream trades tell
    one story."""
    if ticker.startswith("C:"):
        return _ANCHORS.get(ticker[2:])
    if ticker.startswith("X:"):
        pair = ticker[2:]
        return _ANCHORS.get(f"{pair[:-3]}-{pair[-3:]}")
    return _ANCHORS.get(ticker)


def _instrument_key(market: str, ticker: str) -> str:
    """One price path per instrument, whichever spelling or channel asks ("EUR/USD", "C:EURUSD")."""
    if market == "forex":
        return ticker.removeprefix("C:").replace("/", "").replace("-", "")
    if market == "crypto":
        return ticker.removeprefix("X:")
    return ticker


class Instrument:
    """Price state of one ticker: a mean-reverting random walk plus the day's running totals."""

    __slots__ = ("anchor", "day_notional", "day_open", "day_volume", "decimals", "price", "rng", "seq", "sigma")

    def __init__(self, market: str, key: str, seed: int) -> None:
        # Seeding with a string is stable across processes (str hash() is randomised per process).
        self.rng = random.Random(f"{seed}:{market}:{key}")
        root = key[:-2] if market == "futures" else key
        low, high = _RANGES[market]
        self.anchor = (
            _ANCHORS.get(key) or _ANCHORS.get(root) or math.exp(self.rng.uniform(math.log(low), math.log(high)))
        )
        self.price = self.anchor
        self.sigma = _SIGMA[market]
        if market == "forex":
            self.decimals = 3 if self.anchor > 20 else 5
        else:
            self.decimals = 2 if self.anchor >= 1 else 4 if market == "stocks" else 6
        self.seq = self.rng.randrange(1_000, 5_000_000)
        self.day_open = self.round(self.anchor * (1 + self.rng.gauss(0, 0.003)))
        self.day_volume: float = self.rng.randrange(10_000, 5_000_000)
        self.day_notional = self.day_volume * self.anchor

    def round(self, value: float) -> float:
        return round(value, self.decimals)

    def step(self) -> float:
        self.price *= 1 + self.rng.gauss(0, self.sigma)
        self.price += 0.001 * (self.anchor - self.price)  # keep long runs (firehose, paced) near the anchor
        return self.round(self.price)

    def next_seq(self) -> int:
        # Increasing and unique per ticker, not always consecutive (as the vendor documents).
        self.seq += self.rng.choice((1, 1, 1, 2, 3))
        return self.seq

    def spread(self) -> tuple[float, float]:
        mid = self.step()
        half = max(10.0**-self.decimals, mid * 5e-5)
        return self.round(mid - half), self.round(mid + half)

    def window(self, volume: float) -> tuple[float, float, float, float]:
        """open, high, low, close of an aggregate window ending now; updates the day totals."""
        open_ = self.round(self.price)
        close = self.step()
        wiggle = abs(self.rng.gauss(0, self.sigma)) * self.price
        high, low = self.round(max(open_, close) + wiggle), self.round(min(open_, close) - wiggle)
        self.day_volume += volume
        self.day_notional += volume * (open_ + close) / 2
        return open_, high, low, close

    def day_vwap(self) -> float:
        return round(self.day_notional / self.day_volume, 4) if self.day_volume else self.price


Builder = Callable[[Instrument, str, int], dict[str, Any]]


def _window_start(ms: int, width_ms: int) -> int:
    return ms - ms % width_ms


# Each builder takes (instrument, ticker as the event spells it, now in ns) and returns the event, fields in the
# vendor's order. Aggregates cover the second (A, CAS, XAS) or minute (AM, CA, XA) that contains `now`.


def _stock_trade(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    rng = inst.rng
    exchange = rng.choice((4, 4, 11, 12, 10, 8, 15, 19, 21))
    ev = {
        "ev": "T", "sym": sym, "x": exchange, "i": str(rng.randrange(1, 10**14)), "z": rng.choice((1, 2, 3)),
        "p": inst.step(), "s": rng.choice((1, 5, 10, 50, 100, 100, 100, 200, 300, 500)),
        "c": rng.choice(([0], [12], [37], [14, 41], [0, 12])), "t": ns // 1_000_000, "q": inst.next_seq(),
    }  # fmt: skip
    if exchange == 4:  # off-exchange trades carry the Trade Reporting Facility's id and timestamp
        ev["trfi"] = rng.choice((201, 202, 203))
        ev["trft"] = ns // 1_000_000 - rng.randrange(0, 5)
    return ev


def _stock_quote(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    rng = inst.rng
    bid, ask = inst.spread()
    return {
        "ev": "Q", "sym": sym, "bx": rng.choice((11, 12, 19, 21)), "bp": bid, "bs": rng.randrange(1, 30),
        "ax": rng.choice((11, 12, 19, 21)), "ap": ask, "as": rng.randrange(1, 30), "c": rng.choice((0, 0, 1)),
        "i": rng.choice(([604], [1], [])), "t": ns // 1_000_000, "q": inst.next_seq(), "z": rng.choice((1, 2, 3)),
    }  # fmt: skip


def _aggregate_base(
    inst: Instrument, sym: str, ns: int, ev: str, width_ms: int, lots: tuple[int, ...]
) -> dict[str, Any]:
    """The stock/option A and AM body; `lots` are typical trade sizes."""
    rng = inst.rng
    trades = rng.randrange(1, 60)
    volume = trades * rng.choice(lots)
    open_, high, low, close = inst.window(volume)
    start = _window_start(ns // 1_000_000, width_ms)
    return {
        "ev": ev, "sym": sym, "v": volume, "av": inst.day_volume, "op": inst.day_open,
        "vw": round((open_ + high + low + close) / 4, 4), "o": open_, "c": close, "h": high, "l": low,
        "a": inst.day_vwap(), "z": volume // trades, "s": start, "e": start + width_ms,
    }  # fmt: skip


def _stock_aggregate(ev: str, width_ms: int) -> Builder:
    def build(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
        body = _aggregate_base(inst, sym, ns, ev, width_ms, (1, 10, 50, 100))
        # Fractional-share volumes arrive as decimal strings next to the integer ones.
        frac = inst.rng.choice(("", ".25", ".5", ".125"))
        body["dv"] = f"{body['v']}{frac}"
        body["dav"] = f"{body['av']}{frac}"
        if sym in _OTC_TICKERS:  # the vendor omits `otc` when false
            body["otc"] = True
        return body

    return build


def _option_aggregate(ev: str, width_ms: int) -> Builder:
    return lambda inst, sym, ns: _aggregate_base(inst, sym, ns, ev, width_ms, (1, 2, 5, 10))


def _luld(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    ref = inst.step()
    return {
        "ev": "LULD", "T": sym, "h": inst.round(ref * 1.05), "l": inst.round(ref * 0.95),
        "i": inst.rng.choice(([21], [17], [17, 21])), "z": inst.rng.choice((1, 2, 3)), "t": ns, "q": inst.next_seq(),
    }  # fmt: skip


def _imbalance(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    rng = inst.rng
    opening = rng.random() < 0.5
    return {
        "ev": "NOI", "T": sym, "t": ns, "at": 930 if opening else 1600, "a": "M" if opening else "C",
        "i": inst.next_seq(), "x": rng.choice((10, 11, 12)), "o": rng.randrange(100, 50_000),
        "p": rng.randrange(100, 500_000), "b": inst.step(),
    }  # fmt: skip


def _fmv(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    return {"ev": "FMV", "fmv": inst.step(), "sym": sym, "t": ns}


def _option_trade(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    rng = inst.rng
    return {
        "ev": "T", "sym": sym, "x": rng.choice((300, 302, 303, 313, 322, 65)), "p": inst.step(),
        "s": rng.randrange(1, 20), "c": rng.choice(([209], [227], [233], [219])), "t": ns // 1_000_000,
        "q": inst.next_seq(),
    }  # fmt: skip


def _option_quote(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    rng = inst.rng
    bid, ask = inst.spread()
    return {
        "ev": "Q", "sym": sym, "bx": rng.choice((300, 302, 313)), "ax": rng.choice((300, 302, 313)), "bp": bid,
        "ap": ask, "bs": rng.randrange(1, 200), "as": rng.randrange(1, 200), "t": ns // 1_000_000,
        "q": inst.next_seq(),
    }  # fmt: skip


def _future_trade(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    return {
        "ev": "T", "sym": sym, "p": inst.step(), "s": inst.rng.randrange(1, 12), "t": ns // 1_000_000,
        "q": inst.next_seq(),
    }  # fmt: skip


def _future_quote(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    rng = inst.rng
    bid, ask = inst.spread()
    ms = ns // 1_000_000
    return {
        "ev": "Q", "sym": sym, "bp": bid, "bs": rng.randrange(1, 80), "bt": ms - rng.randrange(0, 50), "ap": ask,
        "as": rng.randrange(1, 80), "at": ms - rng.randrange(0, 50), "t": ms,
    }  # fmt: skip


def _future_aggregate(ev: str, width_ms: int) -> Builder:
    def build(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
        trades = inst.rng.randrange(1, 40)
        volume = trades * inst.rng.randrange(1, 6)
        open_, high, low, close = inst.window(volume)
        start = _window_start(ns // 1_000_000, width_ms)
        return {
            "ev": ev, "sym": sym, "v": volume, "dv": round(volume * (open_ + close) / 2, 2), "o": open_, "c": close,
            "h": high, "l": low, "n": trades, "s": start, "e": start + width_ms,
        }  # fmt: skip

    return build


def _index_value(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
    return {"ev": "V", "val": inst.step(), "T": sym, "t": ns // 1_000_000}


def _index_aggregate(ev: str, width_ms: int) -> Builder:
    def build(inst: Instrument, sym: str, ns: int) -> dict[str, Any]:
        open_, high, low, close = inst.window(0)
        start = _window_start(ns // 1_000_000, width_ms)
        return {
            "ev": ev, "sym": sym, "op": inst.day_open, "o": open_, "c": close, "h": high, "l": low, "s": start,
            "e": start + width_ms,
        }  # fmt: skip

    return build


def _forex_quote(inst: Instrument, pair: str, ns: int) -> dict[str, Any]:
    bid, ask = inst.spread()
    return {"ev": "C", "p": pair, "x": inst.rng.choice((48, 44, 1)), "a": ask, "b": bid, "t": ns // 1_000_000}


def _forex_aggregate(ev: str, width_ms: int) -> Builder:
    def build(inst: Instrument, pair: str, ns: int) -> dict[str, Any]:
        ticks = inst.rng.randrange(1, 120)  # forex aggregate volume is the number of quotes in the window
        open_, high, low, close = inst.window(ticks)
        start = _window_start(ns // 1_000_000, width_ms)
        return {
            "ev": ev, "pair": pair, "o": open_, "c": close, "h": high, "l": low, "v": ticks, "s": start,
            "e": start + width_ms,
        }  # fmt: skip

    return build


def _crypto_size(inst: Instrument) -> float:
    # Crypto sizes are fractional: up to 8 decimals, never zero.
    return max(1e-8, round(inst.rng.expovariate(1 / 0.3), 8))


def _crypto_trade(inst: Instrument, pair: str, ns: int) -> dict[str, Any]:
    rng = inst.rng
    ms = ns // 1_000_000
    return {
        "ev": "XT", "pair": pair, "p": inst.step(), "t": ms, "s": _crypto_size(inst), "c": [rng.choice((1, 2))],
        "i": rng.randrange(1, 10**9), "x": rng.choice((1, 2, 6, 23)), "r": ms + rng.randrange(1, 200),
    }  # fmt: skip


def _crypto_quote(inst: Instrument, pair: str, ns: int) -> dict[str, Any]:
    rng = inst.rng
    bid, ask = inst.spread()
    ms = ns // 1_000_000
    return {
        "ev": "XQ", "pair": pair, "bp": bid, "bs": _crypto_size(inst), "ap": ask, "as": _crypto_size(inst),
        "t": ms, "x": rng.choice((1, 2, 6, 23)), "r": ms + rng.randrange(1, 50),
    }  # fmt: skip


def _crypto_book(inst: Instrument, pair: str, ns: int) -> dict[str, Any]:
    bid, ask = inst.spread()
    tick = 10.0**-inst.decimals
    ms = ns // 1_000_000
    return {
        "ev": "XL2", "pair": pair, "t": ms, "r": ms + inst.rng.randrange(1, 50), "x": inst.rng.choice((1, 2, 6)),
        "b": [[inst.round(bid - level * tick * 5), _crypto_size(inst)] for level in range(5)],
        "a": [[inst.round(ask + level * tick * 5), _crypto_size(inst)] for level in range(5)],
    }  # fmt: skip


def _crypto_aggregate(ev: str, width_ms: int) -> Builder:
    def build(inst: Instrument, pair: str, ns: int) -> dict[str, Any]:
        trades = inst.rng.randrange(1, 80)
        volume = round(sum(_crypto_size(inst) for _ in range(3)) * trades / 3, 8)
        open_, high, low, close = inst.window(volume)
        start = _window_start(ns // 1_000_000, width_ms)
        return {
            "ev": ev, "pair": pair, "v": volume, "vw": inst.round((open_ + high + low + close) / 4), "z": trades,
            "o": open_, "c": close, "h": high, "l": low, "s": start, "e": start + width_ms,
        }  # fmt: skip

    return build


SECOND, MINUTE = 1_000, 60_000
_BUILDERS: dict[tuple[str, str], Builder] = {
    ("stocks", "T"): _stock_trade,
    ("stocks", "Q"): _stock_quote,
    ("stocks", "A"): _stock_aggregate("A", SECOND),
    ("stocks", "AM"): _stock_aggregate("AM", MINUTE),
    ("stocks", "LULD"): _luld,
    ("stocks", "NOI"): _imbalance,
    ("stocks", "FMV"): _fmv,
    ("options", "T"): _option_trade,
    ("options", "Q"): _option_quote,
    ("options", "A"): _option_aggregate("A", SECOND),
    ("options", "AM"): _option_aggregate("AM", MINUTE),
    ("options", "FMV"): _fmv,
    ("futures", "T"): _future_trade,
    ("futures", "Q"): _future_quote,
    ("futures", "A"): _future_aggregate("A", SECOND),
    ("futures", "AM"): _future_aggregate("AM", MINUTE),
    ("indices", "V"): _index_value,
    ("indices", "A"): _index_aggregate("A", SECOND),
    ("indices", "AM"): _index_aggregate("AM", MINUTE),
    ("forex", "C"): _forex_quote,
    ("forex", "CA"): _forex_aggregate("CA", MINUTE),
    ("forex", "CAS"): _forex_aggregate("CAS", SECOND),
    ("forex", "FMV"): _fmv,
    ("crypto", "XT"): _crypto_trade,
    ("crypto", "XQ"): _crypto_quote,
    ("crypto", "XA"): _crypto_aggregate("XA", MINUTE),
    ("crypto", "XAS"): _crypto_aggregate("XAS", SECOND),
    ("crypto", "XL2"): _crypto_book,
    ("crypto", "FMV"): _fmv,
}

# What a "missing_fields" fault removes besides the ticker: the event's main number.
_PRICE_FIELDS = ("p", "bp", "val", "fmv", "c", "h")


class EventFactory:
    """Builds events; one instance per simulator so every connection sees the same market."""

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed
        self._instruments: dict[tuple[str, str], Instrument] = {}

    def instrument(self, market: str, ticker: str) -> Instrument:
        key = (market, _instrument_key(market, ticker))
        inst = self._instruments.get(key)
        if inst is None:
            inst = self._instruments[key] = Instrument(market, key[1], self.seed)
        return inst

    def event(self, market: str, channel: str, ticker: str, now_ns: int | None = None) -> dict[str, Any]:
        """One event of `channel` for `ticker` (as subscribed), stamped `now_ns` (default: the wall clock)."""
        build = _BUILDERS[(market, channel)]
        ns = time.time_ns() if now_ns is None else now_ns
        return build(self.instrument(market, ticker), event_ticker(market, channel, ticker), ns)

    def broken_event(self, market: str, channel: str, ticker: str) -> dict[str, Any]:
        """A well-formed event with its ticker and its main number removed (a "missing_fields" fault)."""
        ev = self.event(market, channel, ticker)
        ev.pop(ticker_key(market, channel), None)
        for name in _PRICE_FIELDS:
            if name in ev:
                del ev[name]
                break
        return ev
