"""markets.py and formatting.py: channel validation per market, endpoint resolution, CSV output."""

from __future__ import annotations

import json

import pytest

from mcp_polygon.streams.formatting import csv_sections
from mcp_polygon.streams.manager import StreamError, resolve_endpoint
from mcp_polygon.streams.markets import MARKETS, ChannelError, check_limits, normalize_channels
from mcp_polygon.streams.query import parse_filter

SPEC = json.load(open("specs/massive_websocket_openapi.json"))


def test_every_market_and_prefix_from_the_stream_spec():
    assert {m: list(mk.prefixes) for m, mk in MARKETS.items()} == {
        "stocks": ["T", "Q", "A", "AM", "LULD", "NOI", "FMV"],
        "options": ["T", "Q", "A", "AM", "FMV"],
        "futures": ["T", "Q", "A", "AM"],
        "indices": ["V", "A", "AM"],
        "forex": ["C", "CA", "CAS", "FMV"],
        "crypto": ["XT", "XQ", "XA", "XAS", "XL2", "FMV"],
    }


def _spec_fields(path: str) -> set[str]:
    schema = SPEC["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    comps = SPEC["components"]["schemas"]

    def props(s):
        if "$ref" in s:
            return props(comps[s["$ref"].split("/")[-1]])
        out = set(s.get("properties", {}))
        for part in s.get("allOf", []):
            out |= props(part)
        return out

    return props(schema)


@pytest.mark.parametrize("market", ["stocks", "options", "indices", "forex", "crypto"])
def test_columns_cover_every_field_of_the_vendor_spec(market):
    mk = MARKETS[market]
    for prefix, et in mk.events.items():
        path = f"/business/{market}/FMV" if prefix == "FMV" else f"/{market}/{prefix}"
        fields = _spec_fields(path) - {"ev"}
        cols = {w for w, _ in et.columns}
        assert fields <= cols, (market, prefix, fields - cols)
        assert et.ticker_key in fields


@pytest.mark.parametrize(
    ("market", "raw", "expected"),
    [
        ("stocks", ["T.AAPL", "q.aapl", "T.AAPL"], ["T.AAPL", "Q.AAPL"]),
        ("stocks", "T.AAPL, AM.*", ["T.AAPL", "AM.*"]),
        ("stocks", ["T.BRK.B"], ["T.BRK.B"]),  # split at the first dot
        ("options", ["Q.O:SPY251219C00650000", "T.*"], ["Q.O:SPY251219C00650000", "T.*"]),
        ("futures", ["T.ESZ5", "AM.*"], ["T.ESZ5", "AM.*"]),
        ("indices", ["V.I:SPX", "A.*"], ["V.I:SPX", "A.*"]),
        ("forex", ["C.EUR/USD", "CAS.*"], ["C.EUR/USD", "CAS.*"]),
        ("crypto", ["XT.BTC-USD", "XL2.*"], ["XT.BTC-USD", "XL2.*"]),
    ],
)
def test_valid_channels(market, raw, expected):
    assert normalize_channels(MARKETS[market], raw) == expected


@pytest.mark.parametrize(
    ("market", "raw", "needle"),
    [
        ("stocks", ["XT.BTC-USD"], "valid stocks prefixes: T (trades), Q (quotes)"),
        ("crypto", ["T.AAPL"], "valid crypto prefixes: XT"),
        ("indices", ["T.I:SPX"], "valid indices prefixes: V"),
        ("stocks", ["T"], "has no ticker"),
        ("stocks", ["T."], "has no ticker"),
        ("stocks", [], "No channels given"),
        ("stocks", ["T.AA PL"], "whitespace"),
        ("options", ["Q.*"], "does not allow '*'"),
    ],
)
def test_invalid_channels_name_the_valid_prefixes(market, raw, needle):
    with pytest.raises(ChannelError, match=None) as exc:
        normalize_channels(MARKETS[market], raw)
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    ("market", "raw", "expected"),
    [
        ("stocks", ["T.BRK.A", "Q.brk.b", "FMV.AAPL"], ["T.BRK.A", "Q.BRK.B", "FMV.AAPL"]),
        ("options", ["A.O:SPY251219P00650000", "FMV.O:AAPL1251219C00230000"], None),
        ("futures", ["A.ES", "Q.CLZ25"], None),
        ("indices", ["AM.I:NDX", "V.I:VIX1D"], None),
        ("forex", ["C.EUR-USD", "CA.EURUSD", "FMV.C:EURUSD"], None),  # FMV events spell the pair the REST way
        ("crypto", ["XL2.ETH-USDT", "FMV.X:BTC-USD", "XT.1INCH-USD"], None),
    ],
)
def test_every_real_ticker_form_is_accepted(market, raw, expected):
    assert normalize_channels(MARKETS[market], raw) == (expected or raw)


@pytest.mark.parametrize(
    ("market", "raw", "needle"),
    [
        ("stocks", 'T.{"EV":"STATUS"}', "contains '{'"),  # JSON smuggled into a subscribe message
        ("stocks", "T.\u0410APL", "'\u0410' (U+0410, not ASCII)"),  # a Cyrillic A that looks like T.AAPL
        ("stocks", "T.AAPL\x00", "control character U+0000"),
        ("stocks", "T.AAPL*", "contains '*'"),
        ("stocks", "T.AAPL;Q.MSFT", "contains ';'"),
        ("options", "T.SPY251219C00650000", "O:<underlying><YYMMDD><C or P>"),  # the O: prefix is part of it
        ("options", "T.O:SPY251219C650", "e.g. O:SPY251219C00650000"),
        ("indices", "V.SPX", "I: then letters and digits (e.g. I:SPX)"),
        ("forex", "C.EURO/USD", "BASE/QUOTE (e.g. EUR/USD, EUR-USD)"),
        ("crypto", "XT.BTCUSD", "BASE-QUOTE (e.g. BTC-USD"),
        ("futures", "T.ES Z5", "whitespace (U+0020)"),
    ],
)
def test_channels_outside_the_vendor_symbol_alphabet_are_refused(market, raw, needle):
    with pytest.raises(ChannelError) as exc:
        normalize_channels(MARKETS[market], [raw])
    text = str(exc.value)
    assert needle in text
    prefix = raw.partition(".")[0]
    assert f"{prefix}.{MARKETS[market].ticker_example}" in text  # the valid form, with an example
    assert f"{prefix}.*" in text


def test_a_huge_channel_is_refused_with_a_short_message():
    huge = "T." + "A" * 1_000_000
    with pytest.raises(ChannelError) as exc:
        normalize_channels(MARKETS["stocks"], ["T.AAPL", huge])
    text = str(exc.value)
    assert len(text) < 400 and "(1,000,002 characters)" in text and "at most 40" in text and "T.AAPL" in text
    with pytest.raises(ChannelError) as exc:
        normalize_channels(MARKETS["stocks"], "X" * 1_000_000 + ".AAPL")  # a huge prefix, too
    assert len(str(exc.value)) < 400
    with pytest.raises(ChannelError) as exc:
        parse_filter(MARKETS["stocks"], huge)
    assert len(str(exc.value)) < 400


def test_options_quote_limit_checked_before_sending():
    topics = [f"Q.O:X{i}" for i in range(1001)]
    with pytest.raises(ChannelError, match="at most 1000"):
        check_limits(MARKETS["options"], topics)
    check_limits(MARKETS["options"], [*topics[:1000], "T.*"])


@pytest.mark.parametrize(
    ("value", "market", "url"),
    [
        ("wss://delayed.massive.com", "stocks", "wss://delayed.massive.com/stocks"),
        ("wss://delayed.massive.com/", "crypto", "wss://delayed.massive.com/crypto"),
        ("wss://socket.massive.com/futures/cme", "futures", "wss://socket.massive.com/futures/cme"),
        ("https://business.massive.com", "stocks", "wss://business.massive.com/stocks"),
        ("delayed.polygon.io", "options", "wss://delayed.polygon.io/options"),
        ("ws://127.0.0.1:8101", "forex", "ws://127.0.0.1:8101/forex"),
    ],
)
def test_endpoint_resolution(value, market, url):
    assert resolve_endpoint(value, MARKETS[market]) == url


@pytest.mark.parametrize("value", ["ftp://x", "", "wss://"])
def test_bad_endpoint(value):
    with pytest.raises(StreamError):
        resolve_endpoint(value, MARKETS["stocks"])


def test_csv_one_section_per_type_readable_columns_and_no_empty_columns():
    rows = [
        (1, {"ev": "T", "sym": "AAPL", "p": 1.5, "s": 100, "x": 4, "c": [0, 12], "t": 1}),
        (2, {"ev": "Q", "sym": "AAPL", "bp": 1.4, "ap": 1.6, "bs": 1, "as": 2, "t": 2}),
        (3, {"ev": "T", "sym": "MS,FT", "p": 2.5, "s": 5, "t": 3, "new_field": True}),
    ]
    lines = csv_sections(MARKETS["stocks"], rows, "seq")
    assert lines == [
        "# T trades: 2 events",
        "seq,symbol,price,size,exchange,conditions,timestamp_ms,new_field",
        "1,AAPL,1.5,100,4,0|12,1,",
        '3,"MS,FT",2.5,5,,,3,true',
        "# Q quotes: 1 event",
        "seq,symbol,bid_price,bid_size,ask_price,ask_size,timestamp_ms",
        "2,AAPL,1.4,1,1.6,2,2",
    ]


def test_csv_forex_p_is_the_pair_and_crypto_book_levels():
    lines = csv_sections(MARKETS["forex"], [(1, {"ev": "C", "p": "EUR/USD", "a": 1.1, "b": 1.0, "t": 5})], "seq")
    assert lines[1:] == ["seq,symbol,bid_price,ask_price,timestamp_ms", "1,EUR/USD,1,1.1,5"]
    book = {"ev": "XL2", "pair": "BTC-USD", "b": [[1.0, 2.0], [0.5, 1.0]], "a": [[3.0, 1.0]], "t": 1}
    assert csv_sections(MARKETS["crypto"], [(None, book)], None)[1:] == [
        "symbol,bids,asks,timestamp_ms",
        "BTC-USD,1:2|0.5:1,3:1,1",
    ]


def test_csv_survives_odd_events():
    rows = [(1, {"ev": "T"}), (2, {"ev": "ZZ", "x": {"a": 1}}), (3, {"ev": 5, "y": None})]
    text = "\n".join(csv_sections(MARKETS["stocks"], rows, "seq"))
    assert "ZZ (event type not in the stocks table)" in text and '"{""a"":1}"' in text


def test_csv_list_columns_fast_path_keeps_empty_and_single_lists():
    rows = [(i, {"ev": "T", "sym": "A", "c": c}) for i, c in enumerate([[0, 12], [], [37], [1.5, 2]])]
    assert csv_sections(MARKETS["stocks"], rows, "seq")[2:] == ["0,A,0|12", "1,A,", "2,A,37", "3,A,1.5|2"]
