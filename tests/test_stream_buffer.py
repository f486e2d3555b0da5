"""buffer.py: seq numbers, overwrite/gap, filters, since_seq and since_timestamp reads, memory."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from mcp_polygon.streams.buffer import MessageBuffer, decode_frame
from mcp_polygon.streams.formatting import TimeFormatError, parse_time_ns
from mcp_polygon.streams.markets import MARKETS, compile_filter, make_matcher, parse_filter

STOCKS = MARKETS["stocks"]


def fill(buf: MessageBuffer, frames: list[list[dict]], t0: float = 1000.0) -> None:
    for i, events in enumerate(frames):
        buf.append(orjson.dumps(events), len(events), t0 + i)


def trades(n: int, sym: str = "AAPL", ev: str = "T", start: int = 0) -> list[dict]:
    return [{"ev": ev, "sym": sym, "p": float(start + i)} for i in range(n)]


def read(buf, flt=None, **kw):
    f = parse_filter(STOCKS, flt)
    return buf.read(match=make_matcher(STOCKS, f), needles=f.needles(), **kw)


def test_seq_numbers_span_frames_and_only_increase():
    b = MessageBuffer(100)
    assert b.append(orjson.dumps(trades(3)), 3, 1.0) == 1
    assert b.append(orjson.dumps(trades(2)), 2, 2.0) == 4
    r = b.read(100)
    assert [s for s, _, _ in r.events] == [1, 2, 3, 4, 5]
    assert [t for _, t, _ in r.events] == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert r.next_seq == 5 and r.head == 5 and r.oldest == 1 and len(b) == 5


def test_newest_without_since_seq_oldest_first():
    b = MessageBuffer(100)
    fill(b, [trades(5), trades(5, start=5)])
    r = b.read(3)
    assert [e["p"] for _, _, e in r.events] == [7.0, 8.0, 9.0] and r.more
    assert r.next_seq == 10


def test_overwrite_counts_and_gap_reported():
    b = MessageBuffer(10)
    fill(b, [trades(4, start=4 * i) for i in range(6)])  # 24 events, ring of 10
    assert b.head == 24 and len(b) == 10 and b.overwritten == 14 and b.oldest == 15
    r = b.read(100, since_seq=5)
    assert r.gap == 9  # seq 6..14 were overwritten before this read
    assert [s for s, _, _ in r.events] == list(range(15, 25))
    # Partially overwritten first frame: only its live tail is readable.
    assert r.events[0][2]["p"] == 14.0


def test_since_seq_pages_forward_without_duplicates_or_losses():
    b = MessageBuffer(1000)
    fill(b, [trades(7, start=7 * i) for i in range(10)])  # 70 events
    seen, seq = [], 0
    while True:
        r = b.read(9, since_seq=seq)
        seen += [s for s, _, _ in r.events]
        if r.next_seq == seq:
            break
        seq = r.next_seq
        if not r.more:
            break
    assert seen == list(range(1, 71))
    fill(b, [trades(3)], t0=5000)
    r = b.read(100, since_seq=seq)
    assert [s for s, _, _ in r.events] == [71, 72, 73] and not r.more


def test_since_seq_at_head_is_empty():
    b = MessageBuffer(10)
    fill(b, [trades(3)])
    r = b.read(10, since_seq=3)
    assert r.events == [] and r.next_seq == 3 and not r.ahead
    empty = MessageBuffer(10)
    r = empty.read(10, since_seq=0)
    assert r.events == [] and r.next_seq == 0 and r.head == 0 and not r.ahead


@pytest.mark.parametrize("since", [13, 15, 1_000_035, 2**70])
def test_since_seq_ahead_of_the_buffer_answers_from_the_oldest_event(since):
    # A cursor from before a restart: hiding every new event until seq catches up would lose them all.
    b = MessageBuffer(10)
    fill(b, [trades(4, start=4 * i) for i in range(3)])  # seq 1-12, ring keeps 3-12
    r = b.read(5, since_seq=since)
    assert r.ahead and r.gap == 0
    assert [s for s, _, _ in r.events] == [3, 4, 5, 6, 7] and r.more and r.next_seq == 7
    r = read(b, "T.AAPL", limit=100, since_seq=since, since_time=0.0)
    assert r.ahead and [s for s, _, _ in r.events] == list(range(3, 13)) and r.next_seq == 12


def test_since_seq_ahead_of_an_empty_buffer_restarts_the_cursor_at_zero():
    r = MessageBuffer(10).read(10, since_seq=15)
    assert r.ahead and r.events == [] and r.next_seq == 0


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ("T.AAPL", ["T.AAPL"]),
        ("T.*", ["T.AAPL", "T.MSFT"]),
        ("T", ["T.AAPL", "T.MSFT"]),
        ("*.AAPL", ["T.AAPL", "Q.AAPL", "LULD.AAPL"]),
        ("T.MSFT, Q.AAPL", ["T.MSFT", "Q.AAPL"]),
        ("t.aapl", ["T.AAPL"]),
        ("*", ["T.AAPL", "T.MSFT", "Q.AAPL", "LULD.AAPL"]),
        ("LULD.AAPL", ["LULD.AAPL"]),  # LULD carries its ticker in `T`
    ],
)
def test_channel_filters(flt, expected):
    b = MessageBuffer(100)
    events = [
        {"ev": "T", "sym": "AAPL"},
        {"ev": "T", "sym": "MSFT"},
        {"ev": "Q", "sym": "AAPL"},
        {"ev": "LULD", "T": "AAPL", "h": 1.0},
    ]
    fill(b, [events])
    r = read(b, flt, limit=100)
    got = [f"{e['ev']}.{e.get('sym') or e.get('T')}" for _, _, e in r.events]
    assert got == expected


def test_filter_skips_frames_without_the_ticker_bytes(monkeypatch):
    from mcp_polygon.streams import buffer as buffer_module

    b = MessageBuffer(1000)
    fill(b, [trades(50, "MSFT"), trades(2, "AAPL"), trades(50, "NVDA")])
    decoded = []
    real = buffer_module.decode_frame
    monkeypatch.setattr(buffer_module, "decode_frame", lambda raw, n: decoded.append(n) or real(raw, n))
    r = read(b, "T.AAPL", limit=10)
    assert [e["sym"] for _, _, e in r.events] == ["AAPL", "AAPL"]
    assert decoded == [2]  # the MSFT and NVDA frames were never decoded
    assert parse_filter(MARKETS["forex"], "C.EUR/USD").needles() is None  # not a plain ticker: no byte pre-check


def test_filtered_forward_read_next_seq_skips_scanned_events():
    b = MessageBuffer(100)
    fill(b, [trades(5, "MSFT"), trades(1, "AAPL"), trades(5, "MSFT")])
    r = read(b, "T.AAPL", limit=10, since_seq=0)
    assert [s for s, _, _ in r.events] == [6] and r.next_seq == 11 and not r.more
    r = read(b, "T.MSFT", limit=3, since_seq=0)
    assert [s for s, _, _ in r.events] == [1, 2, 3] and r.next_seq == 3 and r.more


def test_since_time_uses_receive_time():
    b = MessageBuffer(100)
    fill(b, [trades(2), trades(2), trades(2)], t0=100.0)  # frames at 100, 101, 102
    r = b.read(100, since_time=101.0)
    assert [s for s, _, _ in r.events] == [3, 4, 5, 6]
    assert b.read(100, since_time=103.0).events == []
    r = b.read(100, since_time=101.0, since_seq=4)
    assert [s for s, _, _ in r.events] == [5, 6]


def test_receive_times_stay_monotonic_when_the_clock_steps_back():
    b = MessageBuffer(100)
    b.append(orjson.dumps(trades(1)), 1, 10.0)
    b.append(orjson.dumps(trades(1)), 1, 5.0)
    assert [t for _, t, _ in b.read(10).events] == [10.0, 10.0]


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        (1735828200, 1735828200 * 10**9),  # seconds
        (1735828200.5, 1735828200_500_000_000),
        ("1735828200", 1735828200 * 10**9),
        (1735828200123, 1735828200_123_000_000),  # ms
        ("1735828200123", 1735828200_123_000_000),
        (1735828200123456, 1735828200_123_456_000),  # us
        (1735828200123456789, 1735828200_123_456_789),  # ns
        ("1735828200123456789", 1735828200_123_456_789),
        ("2025-01-02T14:30:00Z", 1735828200 * 10**9),
        ("2025-01-02T14:30:00", 1735828200 * 10**9),  # no zone: UTC
        ("2025-01-02 14:30:00", 1735828200 * 10**9),
        ("2025-01-02T15:30:00+01:00", 1735828200 * 10**9),
        ("2025-01-02T14:30:00.123456Z", 1735828200_123_456_000),
        ("2025-01-02", 1735776000 * 10**9),
        ("now", 2_000_000_000 * 10**9),
        ("-5m", (2_000_000_000 - 300) * 10**9),
        ("now-30s", (2_000_000_000 - 30) * 10**9),
        ("-2h", (2_000_000_000 - 7200) * 10**9),
    ],
)
def test_time_formats(value, ns):
    assert parse_time_ns(value, now_ns=2_000_000_000 * 10**9) == ns


@pytest.mark.parametrize("value", ["yesterday", "", "2025-13-45", "12:30", True, float("nan"), "-5 parsecs"])
def test_bad_times_have_a_clear_message(value):
    with pytest.raises(TimeFormatError, match="ISO 8601"):
        parse_time_ns(value, "since_timestamp")


def test_decode_frame_never_shifts_seq():
    assert decode_frame(b"garbage", 3) == []
    assert decode_frame(b'{"ev":"T"}', 1) == []
    assert decode_frame(b'[{"ev":"T"},{"ev":"T"},{"ev":"T"}]', 2) == [{"ev": "T"}, {"ev": "T"}]
    assert decode_frame(b'[{"ev":"T"},5,{"ev":"status"}]', 1) == [{"ev": "T"}]


def test_memory_per_thousand_events_is_small():
    events = [
        {"ev": "T", "sym": "AAPL", "x": 4, "i": "1234567", "z": 3, "p": 230.12 + i, "s": 100, "c": [0, 12],
         "t": 1735828200123 + i, "q": 3681328 + i}
        for i in range(1000)
    ]  # fmt: skip
    frames = [orjson.dumps(events[i : i + 100]) for i in range(0, 1000, 100)]
    tracemalloc.start()
    try:
        b = MessageBuffer(10_000)
        for rep in range(10):
            for f in frames:
                b.append(bytes(bytearray(f)), 100, float(rep))  # a distinct bytes object per frame, as received
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size / 10 < 0.5e6  # bytes per 1,000 buffered events


@pytest.mark.parametrize("flt", [None, "T.AAPL", "T.*", "*.MSFT", "T.AAPL,Q.MSFT", "LULD.AAPL"])
def test_cached_and_indexed_reads_equal_cold_reads(flt):
    """The decoded-frame cache and the per-frame index must never change an answer."""
    frames = []
    for i in range(60):
        frames.append(
            [
                {"ev": "T", "sym": "AAPL", "p": float(i)},
                {"ev": "Q", "sym": "MSFT", "bp": float(i)},
                {"ev": "T", "sym": "MSFT", "p": float(i)},
                {"ev": "LULD", "T": "AAPL", "h": float(i)},
            ][: 1 + i % 4]
        )
    cold = MessageBuffer(100)
    warm = MessageBuffer(100)
    fill(cold, frames)
    fill(warm, frames)
    for since in (None, 0, 3, 120, 140):
        for limit in (1, 7, 1000):
            kw = {"limit": limit} if since is None else {"limit": limit, "since_seq": since}
            read(warm, flt, **kw)  # populate the cache and indexes
            cold.drop_cache()
            a, b = read(cold, flt, **kw), read(warm, flt, **kw)
            assert [(s, e) for s, _, e in a.events] == [(s, e) for s, _, e in b.events], (flt, since, limit)
            assert (a.next_seq, a.more, a.gap) == (b.next_seq, b.more, b.gap)


def test_cache_is_bounded_and_keeps_the_newest_frames():
    b = MessageBuffer(400)  # cache budget: 100 events
    fill(b, [trades(10, start=10 * i) for i in range(40)])
    for _ in range(3):
        b.read(400)
    assert b._cached <= b.cache_budget == 100
    assert sorted(b._cache) == [first for first in range(301, 401, 10)]  # the ten newest frames


PICK_FRAMES = [
    # compact, ev first: the vendor's layout (cut at the event starts)
    b'[{"ev":"T","sym":"AAPL","p":1.0,"c":[0,12]},{"ev":"Q","sym":"AAPL","bp":2.0},{"ev":"T","sym":"MSFT","p":3.0}]',
    # ticker before ev, other fields around, a ticker-like string in another field
    b'[{"sym":"AAPL","ev":"T","p":4.0},{"ev":"T","p":5.0,"sym":"AAPL"},{"ev":"T","sym":"MSFT","x":"AAPL"}]',
    # whitespace between events and inside them: not cut (no `{"ev":"` at every start), decoded whole
    b'[{"ev": "T", "sym": "AAPL", "p": 6.0}, {"ev":"T","sym":"AAPL","p":7.0}]',
    # nested values, braces and escaped quotes in strings
    b'[{"ev":"T","sym":"AAPL","m":{"a":[{"b":1}]},"s":"},{\\"ev\\":\\"T\\""},{"ev":"T","sym":"AAPL","p":8.0}]',
    # stray entries: the frame holds fewer events than its count, decoded whole
    b'[{"ev":"T","sym":"AAPL","p":9.0},5,{"ev":"T","sym":"AAPL","p":10.0}]',
    # not JSON at all, though it starts like a frame
    b'[{"ev":"T","sym":"AAPL","p":11.0},{"ev":"T","sym":"AAPL",',
    # an event type that is a prefix of another, a ticker that is a prefix of another
    b'[{"ev":"A","sym":"AAPL","o":1},{"ev":"AM","sym":"AAPL","o":2},{"ev":"T","sym":"AAPLX","p":12.0}]',
    # non-string type and ticker values
    b'[{"ev":["T"],"sym":"AAPL"},{"ev":"T","sym":["AAPL"]},{"ev":"T","sym":null},{"ev":"T","sym":"AAPL","p":13}]',
]


@pytest.mark.parametrize("flt", ["T.AAPL", "A.AAPL", "AM.AAPL", "T.MSFT", "Q.AAPL", "T.AAPL,Q.AAPL", "*.AAPL"])
def test_reads_that_decode_only_candidate_events_equal_whole_frame_reads(flt):
    """Reads that cut frames and decode only the events whose bytes can match (done for frames the cache will
    not keep) must return what decoding every frame whole returns, whatever the frames hold."""
    counts = [3, 3, 2, 3, 3, 2, 3, 4]
    whole, cut = MessageBuffer(100), MessageBuffer(100)
    for buf in (whole, cut):
        for i, (raw, n) in enumerate(zip(PICK_FRAMES, counts, strict=True)):
            buf.append(raw, n, 1000.0 + i)
    cut.cache_budget = 0  # nothing is cacheable: every frame takes the cut-and-pick path
    sel = compile_filter(STOCKS, flt)
    for since in (None, 0, 2, 4, 9, 14):
        for limit in (1, 2, 1000):
            kw = {"limit": limit} if since is None else {"limit": limit, "since_seq": since}
            whole.drop_cache()
            a, b = read(whole, flt, **kw), cut.read(selector=sel, **kw)
            assert [(s, e) for s, _, e in a.events] == [(s, e) for s, _, e in b.events], (flt, since, limit)
            assert (a.next_seq, a.more, a.gap) == (b.next_seq, b.more, b.gap)


def test_selector_scan_equals_the_predicate():
    events = orjson.loads(PICK_FRAMES[0]) + orjson.loads(PICK_FRAMES[7]) + orjson.loads(PICK_FRAMES[1])
    for flt in ("T.AAPL", "T.MSFT", "*.AAPL", "T.*"):
        sel = compile_filter(STOCKS, flt)
        for skip in (0, 1, 5):
            assert sel.scan(events, skip) == [k for k in range(skip, len(events)) if sel.match(events[k])]


def test_picked_and_whole_cache_entries_never_change_an_answer():
    """Single-pair reads cache only the events they picked; reads of other pairs of the same frames add theirs,
    and a read that needs whole frames replaces the picks. Answers must stay those of cold whole-frame reads."""
    frames = [
        [
            {"ev": "T", "sym": "AAPL", "p": float(i)},
            {"ev": "Q", "sym": "MSFT", "bp": float(i)},
            {"ev": "T", "sym": "MSFT", "p": float(i)},
            {"ev": "Q", "sym": "AAPL", "bp": float(i)},
        ][: 1 + i % 4]
        for i in range(80)
    ]
    warm, cold = MessageBuffer(120), MessageBuffer(120)
    fill(warm, frames)
    fill(cold, frames)
    filters = ["T.AAPL", "Q.AAPL", "T.AAPL", None, "T.MSFT", "*.AAPL", "T.AAPL", "Q.MSFT", "LULD.AAPL"]
    for rnd in range(3):
        for flt in filters:
            for since in (None, 0, 130, 150, 195):
                kw = {"limit": 7 if rnd else 1000} if since is None else {"limit": 1000, "since_seq": since}
                cold.drop_cache()
                a, b = read(cold, flt, **kw), warm.read(selector=compile_filter(STOCKS, flt), **kw)
                assert [(s, e) for s, _, e in a.events] == [(s, e) for s, _, e in b.events], (flt, since, rnd)
                assert (a.next_seq, a.more, a.gap) == (b.next_seq, b.more, b.gap)
                assert warm._cached == sum(entry[3] for entry in warm._cache.values()) <= warm.cache_budget
        fill(warm, frames[:5], t0=2000.0 + rnd)  # new data: the ring moves on
        fill(cold, frames[:5], t0=2000.0 + rnd)
