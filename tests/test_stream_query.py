"""query.py: channel filters and the read plan that the buffer, replay and (next) SQL share."""

from __future__ import annotations

import orjson
import pytest

from mcp_polygon.streams import recorder as rec
from mcp_polygon.streams.buffer import MessageBuffer
from mcp_polygon.streams.markets import MARKETS, ChannelError
from mcp_polygon.streams.query import EVERY_EVENT, ChannelFilter, Direction, Term, parse_filter, read_plan

STOCKS = MARKETS["stocks"]
S = 1_000_000_000


def plan(flt: str | None, market: str = "stocks", **bounds):
    return read_plan(MARKETS[market], parse_filter(MARKETS[market], flt), **{"limit": 100, **bounds})


# -- channel filters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("T.", "has nothing after the dot"),
        ("*.", "has nothing after the dot"),
        ("T.AAPL, Q.", "'Q.' has nothing after the dot"),
        ("T.\u0410APL", "U+0410"),
        ('*.{"ev":"status"}', "contains '{'"),
        ("T.AA PL", "whitespace"),
    ],
)
def test_filters_that_would_match_nothing_are_refused(raw, needle):
    with pytest.raises(ChannelError) as exc:
        parse_filter(STOCKS, raw)
    assert needle in str(exc.value) and "forms: T.AAPL, T.*, *.AAPL" in str(exc.value)


def test_filter_forms_still_accepted():
    assert parse_filter(STOCKS, "T").prefixes == {"T"} == parse_filter(STOCKS, "t.*").prefixes
    assert parse_filter(STOCKS, "*.brk.a").tickers == {"BRK.A"}
    assert parse_filter(STOCKS, "*.*").is_all and parse_filter(STOCKS, "T.AAPL, *").is_all
    assert parse_filter(MARKETS["forex"], "*.C:EURUSD").tickers == {"C:EURUSD"}
    assert parse_filter(STOCKS, ["T.AAPL", "q.msft,  "]).pairs == {("T", "AAPL"), ("Q", "MSFT")}


def test_filter_validation():
    with pytest.raises(ChannelError, match="valid stocks prefixes"):
        parse_filter(STOCKS, "XT.BTC-USD")
    assert parse_filter(STOCKS, None) == EVERY_EVENT == parse_filter(STOCKS, " ")


def test_terms_are_what_an_sql_where_needs():
    flt = parse_filter(STOCKS, "T.AAPL, Q.*, *.MSFT, T.BRK.A")
    assert flt.terms == (Term(None, "MSFT"), Term("Q", None), Term("T", "AAPL"), Term("T", "BRK.A"))
    assert EVERY_EVENT.terms == ()
    assert parse_filter(STOCKS, "T.AAPL").single_pair == ("T", "AAPL")
    assert parse_filter(STOCKS, "T.AAPL,Q.AAPL").single_pair is None and EVERY_EVENT.single_pair is None
    assert (
        parse_filter(STOCKS, "T.AAPL,Q.*").single_pair is None
        and parse_filter(STOCKS, "T.AAPL,*.X").single_pair is None
    )


def test_needles_only_where_a_byte_search_cannot_miss():
    assert parse_filter(STOCKS, "T.AAPL, *.MSFT").needles() == (b'"AAPL"', b'"MSFT"')
    assert parse_filter(STOCKS, "T.AAPL, Q.*").needles() is None  # every Q event matches, whatever its ticker
    assert EVERY_EVENT.needles() is None
    assert parse_filter(MARKETS["forex"], "C.EUR/USD").needles() is None  # JSON may write '/' as '\/'


# -- the plan ----------------------------------------------------------------------------------------------------


def test_direction_follows_the_starting_point_unless_given():
    assert plan(None).direction is Direction.NEWEST
    assert plan(None, since_seq=0).direction is Direction.FORWARD
    assert plan(None, from_ns=5).direction is Direction.FORWARD
    assert plan(None, to_ns=5).direction is Direction.NEWEST
    assert plan(None, from_ns=5, direction=Direction.NEWEST).direction is Direction.NEWEST
    with pytest.raises(ValueError, match="at least 1"):
        plan(None, limit=0)


def test_matches_uses_each_event_types_ticker_field():
    luld = plan("*.AAPL")
    assert luld.matches({"ev": "LULD", "T": "AAPL"}) and not luld.matches({"ev": "LULD", "sym": "AAPL"})
    assert luld.matches({"ev": "ZZ", "sym": "AAPL"})  # a type the table does not know: `sym`
    forex = plan("C.EUR/USD", "forex")
    assert forex.matches({"ev": "C", "p": "EUR/USD"}) and not forex.matches({"ev": "C", "pair": "EUR/USD"})
    prefix = plan("Q, T.AAPL")
    assert prefix.matches({"ev": "Q"}) and prefix.matches({"ev": "T", "sym": "AAPL"})
    assert not prefix.matches({"ev": "T", "sym": "MSFT"}) and not prefix.matches({"ev": "T"})
    for odd in ({"ev": ["T"], "sym": "AAPL"}, {"ev": "T", "sym": ["AAPL"]}, {"ev": None}, {"sym": "AAPL"}, {}):
        assert not luld.matches(odd) and not plan("T.AAPL").matches(odd) and plan("*").matches(odd)


ODD_EVENTS = [
    {"ev": "T", "sym": "AAPL", "p": 1.0},
    {"ev": "Q", "sym": "AAPL"},
    {"ev": ["T"], "sym": "AAPL"},
    {"ev": "T", "sym": ["AAPL"]},
    {"ev": "T", "sym": None},
    {"ev": "T", "sym": "AAPLX"},
    {"sym": "AAPL", "ev": "T"},
    {"ev": "LULD", "T": "AAPL"},
    {"ev": "T", "sym": "MSFT"},
]


@pytest.mark.parametrize("flt", ["T.AAPL", "T.MSFT", "*.AAPL", "T.*", "LULD.AAPL", "T.AAPL,Q.AAPL", None])
def test_hits_equal_the_predicate(flt):
    """hits() has a fast path for the single pair; every path must agree with matches()."""
    p = plan(flt)
    items = list(enumerate(ODD_EVENTS))
    for part in (items, items[3:], items[::-1], []):
        assert p.hits(iter(part)) == [(k, e) for k, e in part if p.matches(e)], flt


def test_the_buffer_and_replay_read_the_same_events_for_one_plan(tmp_path):
    """One plan, two stores: the events a filter selects do not depend on where they are read from."""
    events = [
        {"ev": ev, STOCKS.ticker_key(ev): tk, "p": float(i)}
        for i, (ev, tk) in enumerate((ev, tk) for ev in ("T", "Q", "LULD") for tk in ("AAPL", "MSFT", "BRK.A"))
    ]
    frames = [events[i : i + 4] for i in range(0, len(events), 4)] * 3
    buffer, recorder = MessageBuffer(1000), rec.Recorder(tmp_path, 1 << 30)
    for i, frame in enumerate(frames):
        raw = orjson.dumps(frame)
        buffer.append(raw, len(frame), 1000.0 + i)
        recorder.write(raw, len(frame), (1000 + i) * S)
    recorder.flush()
    for flt in ("T.AAPL", "*.AAPL", "Q.*", "LULD.AAPL,T.BRK.A", None):
        for limit in (1, 5, 1000):
            # (Bounds between frames: replay stamps event k of a frame at +k ns, the buffer gives all its time.)
            p = plan(flt, limit=limit, from_ns=1001 * S - 1, to_ns=1006 * S + 999)
            from_buffer = [e for _, _, e in buffer.read(p).events]
            from_disk = [e for _, e in rec.replay(tmp_path, p).events]
            assert from_buffer == from_disk and from_buffer, (flt, limit)


def test_a_filter_is_a_value():
    assert parse_filter(STOCKS, "t.aapl, T.AAPL") == ChannelFilter(pairs=frozenset({("T", "AAPL")}))
    assert plan("T.AAPL") == plan("t.aapl")  # frozen and comparable: what was asked is what is read
