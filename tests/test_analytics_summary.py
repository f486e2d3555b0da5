"""analytics/summary.py: one row per symbol with last price, quote, OHLC, volume, VWAP and rates, in SQL."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from mcp_polygon.analytics.engine import LiveFrame, QueryEngine
from mcp_polygon.analytics.errors import QueryRejected
from mcp_polygon.analytics.summary import normalize_symbols, parse_window

S = 1_000_000_000
T0 = 1_750_000_000 * S


def frame(ns: int, *events: dict) -> LiveFrame:
    return LiveFrame(ns, orjson.dumps(list(events)))


def trade(sym: str, price: float, size: float, ms: int, ev: str = "T", key: str = "sym") -> dict:
    return {"ev": ev, key: sym, "p": price, "s": size, "t": ms}


@pytest.fixture
def engine(tmp_path):
    eng = QueryEngine(tmp_path / "data", timeout=5)
    yield eng
    eng.close()


def _rows(result) -> dict[str, dict[str, object]]:
    return {row[0]: dict(zip(result.columns, row, strict=True)) for row in result.rows}


def test_stocks_summary_from_trades_and_the_last_quote(engine):
    frames = [
        frame(T0, trade("AAPL", 100.0, 10, 1), {"ev": "Q", "sym": "AAPL", "bp": 99.0, "ap": 101.0, "t": 1}),
        frame(T0 + S, trade("AAPL", 102.0, 30, 2), trade("MSFT", 400.0, 1, 2)),
        frame(T0 + 2 * S, trade("AAPL", 98.0, 20, 3), {"ev": "Q", "sym": "AAPL", "bp": 97.5, "ap": 98.5, "t": 3}),
        frame(T0 + 3 * S, trade("AAPL", 101.0, 40, 4)),
    ]
    result = engine.summary_sync("stocks", live={"stocks": frames})
    rows = _rows(result)
    aapl = rows["AAPL"]
    assert aapl["last_price"] == 101.0 and aapl["last_size"] == 40
    assert aapl["last_time"] == dt.datetime(1970, 1, 1, 0, 0, 0, 4000)  # the vendor's time of the last trade
    assert (aapl["open"], aapl["high"], aapl["low"], aapl["close"]) == (100.0, 102.0, 98.0, 101.0)
    assert aapl["volume"] == 100 and aapl["trades"] == 4
    assert aapl["vwap"] == pytest.approx((100 * 10 + 102 * 30 + 98 * 20 + 101 * 40) / 100)
    assert (aapl["bid"], aapl["ask"], aapl["spread"]) == (97.5, 98.5, 1.0)  # the last quote
    assert aapl["events"] == 6 and aapl["events_per_s"] == pytest.approx(6 / 3)  # over its first..last second
    assert rows["MSFT"]["bid"] is None and rows["MSFT"]["trades"] == 1
    for name in ("symbol", "last_price", "bid", "ask", "spread", "open", "high", "low", "close", "volume", "vwap"):
        assert name in result.columns


def test_symbols_and_since_narrow_the_window(engine):
    now = dt.datetime.now(dt.UTC).timestamp()
    recent = int(now * S)
    frames = [
        frame(recent - 600 * S, trade("AAPL", 1.0, 1, 1)),
        frame(recent - 60 * S, trade("AAPL", 2.0, 1, 2), trade("MSFT", 5.0, 1, 2)),
        frame(recent - 30 * S, trade("AAPL", 3.0, 1, 3)),
    ]
    rows = _rows(engine.summary_sync("stocks", ["aapl"], "-5m", live={"stocks": frames}))
    assert list(rows) == ["AAPL"]
    assert rows["AAPL"]["open"] == 2.0 and rows["AAPL"]["trades"] == 2
    assert rows["AAPL"]["events_per_s"] == pytest.approx(2 / 300, rel=0.05)  # over the window since -5m
    assert list(_rows(engine.summary_sync("stocks", "AAPL,MSFT", None, live={"stocks": frames}))) == ["AAPL", "MSFT"]


def test_indices_use_the_index_value_and_columns_without_data_are_left_out(engine):
    frames = [
        frame(T0, {"ev": "V", "T": "I:SPX", "val": 5600.5, "t": 1}),
        frame(T0 + S, {"ev": "V", "T": "I:SPX", "val": 5610.0, "t": 2}),
        frame(T0 + 2 * S, {"ev": "V", "T": "I:SPX", "val": 5590.25, "t": 3}),
    ]
    result = engine.summary_sync("indices", live={"indices": frames})
    spx = _rows(result)["I:SPX"]
    assert (spx["last_price"], spx["open"], spx["high"], spx["low"], spx["close"]) == (
        5590.25,
        5600.5,
        5610.0,
        5590.25,
        5590.25,
    )
    for absent in ("last_size", "bid", "ask", "spread", "volume", "vwap", "trades"):
        assert absent not in result.columns


def test_forex_and_crypto_quotes_give_bid_ask_and_spread(engine):
    fx = [frame(T0, {"ev": "C", "p": "EUR/USD", "x": 48, "a": 1.0802, "b": 1.08, "t": 1})]
    fx_result = engine.summary_sync("forex", live={"forex": fx})
    eur = _rows(fx_result)["EUR/USD"]
    assert (eur["bid"], eur["ask"], eur["spread"]) == (1.08, 1.0802, 0.0002)
    assert "last_price" not in fx_result.columns  # forex has no trades
    crypto = [
        frame(T0, {"ev": "XQ", "pair": "BTC-USD", "bp": 60000.0, "bs": 0.5, "ap": 60001.5, "as": 0.2, "t": 1}),
        frame(T0 + S, trade("BTC-USD", 60001.0, 0.25, 2, ev="XT", key="pair")),
    ]
    btc = _rows(engine.summary_sync("crypto", live={"crypto": crypto}))["BTC-USD"]
    assert (btc["bid"], btc["ask"], btc["spread"], btc["last_price"], btc["volume"]) == (
        60000.0,
        60001.5,
        1.5,
        60001.0,
        0.25,
    )


def bar(ev: str, sym: str, o: float, h: float, lo: float, c: float, v: float, vw: float, start_ms: int, key="sym"):
    return {"ev": ev, key: sym, "o": o, "h": h, "l": lo, "c": c, "v": v, "vw": vw, "s": start_ms, "e": start_ms + 999}


def test_a_symbol_without_trades_takes_its_prices_from_its_finest_bars(engine):
    frames = [
        # AAPL has trades and bars: the trades give its prices.
        frame(T0, trade("AAPL", 100.0, 10, 1), bar("AM", "AAPL", 90, 95, 85, 92, 1000, 91, 0)),
        # MSFT has minute bars only (AM.MSFT): open of the first, high/low over all, close of the last.
        frame(T0 + S, bar("AM", "MSFT", 420, 425, 418, 421, 300, 421.5, 60_000)),
        frame(T0 + 2 * S, bar("AM", "MSFT", 421, 428, 420, 427, 80, 425.0, 120_000)),
        frame(T0 + 2 * S + 10**6, bar("AM", "MSFT", 421, 430, 420, 429, 100, 426.0, 120_000)),  # that bar, revised
        # NVDA has both: its second bars are finer, so the minute bar (from the same trades) is not counted again.
        frame(T0 + 3 * S, bar("A", "NVDA", 130, 131, 129.5, 130.5, 50, 130.2, 1_000)),
        frame(T0 + 4 * S, bar("A", "NVDA", 130.5, 132, 130, 131.5, 150, 131.0, 2_000)),
        frame(T0 + 5 * S, bar("AM", "NVDA", 100, 200, 50, 150, 9999, 120, 0)),
    ]
    rows = _rows(engine.summary_sync("stocks", live={"stocks": frames}))
    aapl, msft, nvda = rows["AAPL"], rows["MSFT"], rows["NVDA"]
    assert (aapl["last_price"], aapl["open"], aapl["volume"], aapl["trades"]) == (100.0, 100.0, 10, 1)
    assert (msft["last_price"], msft["open"], msft["high"], msft["low"], msft["close"]) == (429, 420, 430, 418, 429)
    assert msft["volume"] == 400 and msft["vwap"] == pytest.approx((421.5 * 300 + 426.0 * 100) / 400)
    assert msft["last_time"] == dt.datetime(1970, 1, 1, 0, 2, 0, 999000) and msft["trades"] is None
    assert (nvda["open"], nvda["high"], nvda["low"], nvda["close"], nvda["volume"]) == (130, 132, 129.5, 131.5, 200)
    assert nvda["vwap"] == pytest.approx((130.2 * 50 + 131.0 * 150) / 200)
    # Forex has no trades: its bars give the prices beside the last quote's bid and ask.
    fx = [
        frame(T0, {"ev": "C", "p": "EUR/USD", "x": 48, "a": 1.0802, "b": 1.08, "t": 1}),
        frame(T0 + S, bar("CA", "EUR/USD", 1.079, 1.081, 1.0785, 1.0801, 12, 0, 0, key="pair")),
    ]
    eur = _rows(engine.summary_sync("forex", live={"forex": fx}))["EUR/USD"]
    assert (eur["bid"], eur["ask"], eur["last_price"], eur["high"], eur["volume"]) == (1.08, 1.0802, 1.0801, 1.081, 12)
    assert "vwap" not in eur  # forex bars carry none


def test_window_forms_and_errors():
    now = 1_800_000_000 * S
    assert parse_window(None) is None and parse_window("  ") is None
    assert parse_window("-5m", now) == now - 300 * S
    assert parse_window("2025-01-02T14:30:00Z", now) == 1735828200 * S
    assert parse_window(1735828200, now) == 1735828200 * S
    assert parse_window("1735828200000", now) == 1735828200 * S
    with pytest.raises(QueryRejected, match="since 'yesterday' is not a time; use ISO 8601"):
        parse_window("yesterday", now)
    assert normalize_symbols(" aapl, MSFT ,aapl") == ("AAPL", "MSFT")
    assert normalize_symbols([]) is None


def test_an_unknown_market_names_the_markets(engine):
    with pytest.raises(QueryRejected, match="market must be one of stocks, options, futures, indices, forex, crypto"):
        engine.summary_sync("bonds")
