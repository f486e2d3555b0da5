"""buffer.py: seq numbers, overwrite/gap, filters, since_seq and receive-time reads, the decode cache, memory.

Most answers are checked against NaiveBuffer, the buffer's contract written the slow, obvious way (every event
slot in one list, every read a scan of it), on random frames, random filters and random cursors.
"""

from __future__ import annotations

import json
import random
import tracemalloc

import orjson
import pytest

from mcp_polygon.streams.buffer import DecodedFrame, MessageBuffer, PairPicker, ReadResult, decode_frame, laid_out
from mcp_polygon.streams.formatting import TimeFormatError, parse_time_ns
from mcp_polygon.streams.markets import MARKETS
from mcp_polygon.streams.protocol import ProtocolSession
from mcp_polygon.streams.query import Direction, ReadPlan, parse_filter, read_plan

STOCKS = MARKETS["stocks"]
S = 1_000_000_000  # ns per second


def plan(
    flt: str | None = None,
    limit: int = 100,
    *,
    since_seq: int | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    direction: Direction | None = None,
) -> ReadPlan:
    bounds = {"since_seq": since_seq, "from_ns": from_ns, "to_ns": to_ns, "direction": direction}
    return read_plan(STOCKS, parse_filter(STOCKS, flt), limit=limit, **bounds)


def read(buf: MessageBuffer, flt: str | None = None, limit: int = 100, **bounds) -> ReadResult:
    return buf.read(plan(flt, limit, **bounds))


def fill(buf: MessageBuffer, frames: list[list[dict]], t0: float = 1000.0) -> None:
    for i, events in enumerate(frames):
        buf.append(orjson.dumps(events), len(events), t0 + i)


def trades(n: int, sym: str = "AAPL", ev: str = "T", start: int = 0) -> list[dict]:
    return [{"ev": ev, "sym": sym, "p": float(start + i)} for i in range(n)]


def seqs(r: ReadResult) -> list[int]:
    return [s for s, _, _ in r.events]


# -- the reference ------------------------------------------------------------------------------------------------


def naive_terms(flt: str | None) -> list[tuple[str, str]] | None:
    """A channel_filter as (prefix, ticker) terms, '*' for any; None for every event. Valid filters only."""
    terms = []
    for item in (flt or "").split(","):
        if item.strip():
            prefix, dot, ticker = item.strip().partition(".")
            terms.append((prefix.strip().upper(), ticker.strip().upper() if dot else "*"))
    return terms or None


def naive_match(terms: list[tuple[str, str]] | None, event: dict) -> bool:
    if terms is None or ("*", "*") in terms:
        return True
    ev = event.get("ev")
    if not isinstance(ev, str):
        return False
    for prefix, ticker in terms:
        if prefix in ("*", ev) and (ticker == "*" or event.get(STOCKS.ticker_key(ev)) == ticker):
            return True
    return False


class NaiveBuffer:
    """The contract: one (seq, receive time, event or None) slot per event still in the ring; None where the
    frame's bytes did not hold the event (decode_frame decides what a frame holds)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slots: list[tuple[int, float, dict | None]] = []
        self.head = 0
        self.last_time = 0.0

    def append(self, raw: bytes, count: int, t: float) -> None:
        t = self.last_time = max(t, self.last_time)
        events = decode_frame(raw, count)
        for k in range(count):
            self.head += 1
            self.slots.append((self.head, t, events[k] if k < len(events) else None))
        self.slots = [slot for slot in self.slots if slot[0] > self.head - self.capacity]

    def read(self, flt, limit, since_seq=None, from_ns=None, to_ns=None, direction=None) -> ReadResult:
        head = self.head
        oldest = max(1, head - self.capacity + 1) if head else 1
        forward = (since_seq is not None or from_ns is not None) if direction is None else direction == "forward"
        ahead = since_seq is not None and since_seq > head
        lower, gap = oldest, 0
        if since_seq is not None:
            since = oldest - 1 if ahead else since_seq
            gap = max(0, oldest - since - 1)
            lower = max(lower, since + 1)
        after = [s for s, t, _ in self.slots if s >= lower and (from_ns is None or t >= from_ns / 1e9)]
        lower = after[0] if after else lower
        until = [s for s, t, _ in self.slots if to_ns is None or t <= to_ns / 1e9]
        end = head if to_ns is None else (until[-1] if until else oldest - 1)
        terms = naive_terms(flt)
        rows = [
            (s, t, e)
            for s, t, e in self.slots
            if s >= lower and e is not None and naive_match(terms, e)
            and (from_ns is None or t >= from_ns / 1e9) and (to_ns is None or t <= to_ns / 1e9)
        ]  # fmt: skip
        to_end = max(end, lower - 1)
        if forward:
            got = rows[:limit]
            full = len(got) >= limit
            next_seq = got[-1][0] if full else to_end
            return ReadResult(got, next_seq, head, oldest, gap=gap, more=full and next_seq < end, ahead=ahead)
        got = rows[-limit:]
        more = len(got) >= limit and got[0][0] > lower
        return ReadResult(got, to_end, head, oldest, gap=gap, more=more, ahead=ahead)


# -- random frames, filters and cursors ---------------------------------------------------------------------------

TYPES = ["T", "Q", "A", "AM", "LULD", "NOI", "FMV", "ZZ"]  # ZZ: a type the stocks table does not know
TICKERS = ["AAPL", "MSFT", "BRK.A", "AAPLX"]  # AAPLX: AAPL's bytes are inside it, but not "AAPL" with quotes
FILTERS = [None, "*", "T.AAPL", "Q.MSFT", "A.AAPL", "AM.AAPL", "LULD.AAPL", "T.BRK.A", "T.AAPLX", "T.*", "NOI",
           "*.AAPL", "*.MSFT", "T.AAPL,Q.AAPL", "T.AAPL,T.MSFT", "Q.*,*.BRK.A", "FMV.AAPL", "T.AAPL,Q.*",
           "T.AAPL,*.MSFT"]  # fmt: skip


def random_event(rng: random.Random) -> dict:
    ev = rng.choice(TYPES)
    event: dict = {"ev": ev}
    if rng.random() < 0.95:
        event[STOCKS.ticker_key(ev)] = rng.choice(TICKERS)
    event["p"] = round(rng.uniform(1, 500), 2)
    if rng.random() < 0.2:
        event["x"] = rng.choice(TICKERS)  # a ticker's bytes in another field: a byte pre-check must not decide
    if rng.random() < 0.1:
        event["c"] = [rng.randrange(60) for _ in range(rng.randrange(3))]
    return event


def random_frame(rng: random.Random) -> tuple[bytes, int]:
    """(raw, count): mostly the vendor's compact layout; sometimes one a partial decode cannot cut."""
    events = [random_event(rng) for _ in range(rng.randint(1, 6))]
    layout = rng.random()
    if layout < 0.12:
        return json.dumps(events).encode(), len(events)  # spaces after separators
    if layout < 0.2:
        reordered = [{k: e[k] for k in reversed(list(e))} for e in events]  # the ticker before `ev`
        return orjson.dumps(reordered), len(events)
    if layout < 0.25:
        return orjson.dumps([*events[:1], 7, *events[1:]]), len(events)  # a stray entry
    if layout < 0.28:
        return orjson.dumps(events)[:-5], len(events)  # cut short: not JSON
    return orjson.dumps(events), len(events)


def proven_flat(raw: bytes, count: int) -> bool:
    """The flag the protocol gives these bytes when its fast path takes them as they are."""
    frame = ProtocolSession(None).receive(raw, 0)
    return frame.flat and frame.raw == raw and frame.count == count


def test_what_the_protocol_proves_flat_is_laid_out():
    rng = random.Random(5)
    proven = 0
    for _ in range(3000):
        raw, count = random_frame(rng)
        if proven_flat(raw, count):
            proven += 1
            assert laid_out(raw, count), raw
    assert proven > 1000  # most frames take the fast path


def random_bounds(rng: random.Random, buf: MessageBuffer, times: list[float]) -> dict:
    bounds: dict = {}
    roll = rng.random()
    if roll < 0.4:
        bounds["since_seq"] = rng.randint(0, buf.head + 2)
    elif roll < 0.5:
        bounds["since_seq"] = buf.head + rng.choice([1, 5, 10**6])  # ahead: a cursor from before a restart
    if times and rng.random() < 0.3:
        bounds["from_ns"] = int((rng.choice(times) + rng.choice([-0.1, 0, 0, 0.1])) * S)
    if times and rng.random() < 0.2:
        bounds["to_ns"] = int((rng.choice(times) + rng.choice([-0.1, 0, 0, 0.1])) * S)
    if rng.random() < 0.15:
        bounds["direction"] = rng.choice(list(Direction))
    return bounds


def same(got: ReadResult, expected: ReadResult, context: object) -> None:
    assert got == expected, context


def check_cache(buf: MessageBuffer) -> None:
    cache = buf.cache
    kept = [cache.get(first) for first in cache.firsts()]
    assert cache.weight == sum(entry.weight for entry in kept if entry is not None) <= cache.budget


@pytest.mark.parametrize("seed", range(8))
def test_reads_equal_the_naive_reference(seed):
    rng = random.Random(seed)
    capacity = rng.choice([1, 5, 17, 40, 120])
    buf, ref = MessageBuffer(capacity), NaiveBuffer(capacity)
    buf.cache.budget = rng.choice([capacity // 4, 0, 3, capacity * 2])
    t, times = 1000.0, []
    for _ in range(40):
        for _ in range(rng.randint(1, 6)):
            t += rng.choice([0.0, 0.0, 0.25, 0.5, 1.0, -0.5])  # -0.5: the wall clock stepped back
            raw, count = random_frame(rng)
            buf.append(raw, count, t, flat=proven_flat(raw, count))  # as MarketStream.ingest appends
            ref.append(raw, count, t)
            times.append(max(t, times[-1]) if times else t)
        for _ in range(rng.randint(1, 5)):
            flt = rng.choice(FILTERS)
            limit = rng.choice([1, 2, 3, 7, 1000])
            bounds = random_bounds(rng, buf, times)
            expected = ref.read(flt, limit, **bounds)
            for _ in range(2):  # cold or warm, then surely warm: the cache must never change an answer
                same(read(buf, flt, limit, **bounds), expected, (seed, flt, limit, bounds))
                check_cache(buf)
            if rng.random() < 0.2:
                buf.drop_cache()


def test_paging_forward_with_next_seq_sees_every_matching_event_once():
    rng = random.Random(99)
    buf, ref = MessageBuffer(10_000), NaiveBuffer(10_000)
    for i in range(200):
        raw, count = random_frame(rng)
        buf.append(raw, count, 1000.0 + i)
        ref.append(raw, count, 1000.0 + i)
    for flt in FILTERS:
        expected = [s for s, _, e in ref.slots if e is not None and naive_match(naive_terms(flt), e)]
        seen, cursor = [], 0
        while True:
            r = read(buf, flt, 7, since_seq=cursor)
            seen += seqs(r)
            cursor = r.next_seq
            if not r.more:
                break
        assert seen == expected and cursor == buf.head, flt


# -- the contract, by example -------------------------------------------------------------------------------------


def test_seq_numbers_span_frames_and_only_increase():
    b = MessageBuffer(100)
    assert b.append(orjson.dumps(trades(3)), 3, 1.0) == 1
    assert b.append(orjson.dumps(trades(2)), 2, 2.0) == 4
    r = read(b)
    assert seqs(r) == [1, 2, 3, 4, 5]
    assert [t for _, t, _ in r.events] == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert r.next_seq == 5 and r.head == 5 and r.oldest == 1 and len(b) == 5


def test_newest_without_since_seq_oldest_first():
    b = MessageBuffer(100)
    fill(b, [trades(5), trades(5, start=5)])
    r = read(b, limit=3)
    assert [e["p"] for _, _, e in r.events] == [7.0, 8.0, 9.0] and r.more
    assert r.next_seq == 10


def test_overwrite_counts_and_gap_reported():
    b = MessageBuffer(10)
    fill(b, [trades(4, start=4 * i) for i in range(6)])  # 24 events, ring of 10
    assert b.head == 24 and len(b) == 10 and b.overwritten == 14 and b.oldest == 15
    r = read(b, since_seq=5)
    assert r.gap == 9  # seq 6..14 were overwritten before this read
    assert seqs(r) == list(range(15, 25))
    # Partially overwritten first frame: only its live tail is readable.
    assert r.events[0][2]["p"] == 14.0


def test_since_seq_at_head_is_empty():
    b = MessageBuffer(10)
    fill(b, [trades(3)])
    r = read(b, limit=10, since_seq=3)
    assert r.events == [] and r.next_seq == 3 and not r.ahead
    r = read(MessageBuffer(10), limit=10, since_seq=0)
    assert r.events == [] and r.next_seq == 0 and r.head == 0 and not r.ahead


@pytest.mark.parametrize("since", [13, 15, 1_000_035, 2**70])
def test_since_seq_ahead_of_the_buffer_answers_from_the_oldest_event(since):
    # A cursor from before a restart: hiding every new event until seq catches up would lose them all.
    b = MessageBuffer(10)
    fill(b, [trades(4, start=4 * i) for i in range(3)])  # seq 1-12, ring keeps 3-12
    r = read(b, limit=5, since_seq=since)
    assert r.ahead and r.gap == 0
    assert seqs(r) == [3, 4, 5, 6, 7] and r.more and r.next_seq == 7
    r = read(b, "T.AAPL", limit=100, since_seq=since, from_ns=0)
    assert r.ahead and seqs(r) == list(range(3, 13)) and r.next_seq == 12


def test_since_seq_ahead_of_an_empty_buffer_restarts_the_cursor_at_zero():
    r = read(MessageBuffer(10), limit=10, since_seq=15)
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
    got = [f"{e['ev']}.{e.get('sym') or e.get('T')}" for _, _, e in read(b, flt).events]
    assert got == expected


def test_filter_skips_frames_without_the_ticker_bytes(monkeypatch):
    from mcp_polygon.streams import buffer as buffer_module

    b = MessageBuffer(1000)
    fill(b, [trades(50, "MSFT"), trades(2, "AAPL"), trades(50, "NVDA")])
    decoded = []
    real = buffer_module.decode_frame
    monkeypatch.setattr(buffer_module, "decode_frame", lambda raw, n: decoded.append(n) or real(raw, n))
    r = read(b, "*.AAPL", limit=10)
    assert [e["sym"] for _, _, e in r.events] == ["AAPL", "AAPL"]
    assert decoded == [2]  # the MSFT and NVDA frames were never decoded
    assert parse_filter(MARKETS["forex"], "C.EUR/USD").needles() is None  # not a plain ticker: no byte pre-check


def test_filtered_forward_read_next_seq_skips_scanned_events():
    b = MessageBuffer(100)
    fill(b, [trades(5, "MSFT"), trades(1, "AAPL"), trades(5, "MSFT")])
    r = read(b, "T.AAPL", limit=10, since_seq=0)
    assert seqs(r) == [6] and r.next_seq == 11 and not r.more
    r = read(b, "T.MSFT", limit=3, since_seq=0)
    assert seqs(r) == [1, 2, 3] and r.next_seq == 3 and r.more


def test_receive_time_bounds():
    b = MessageBuffer(100)
    fill(b, [trades(2), trades(2), trades(2)], t0=100.0)  # frames at 100, 101, 102
    assert seqs(read(b, from_ns=101 * S)) == [3, 4, 5, 6]
    assert read(b, from_ns=103 * S).events == []
    assert seqs(read(b, from_ns=101 * S, since_seq=4)) == [5, 6]
    r = read(b, from_ns=100 * S, to_ns=101 * S)
    assert seqs(r) == [1, 2, 3, 4] and r.next_seq == 4 and not r.more  # the cursor stops at the window's end
    r = read(b, to_ns=101 * S, limit=1)
    assert seqs(r) == [4] and r.more and r.next_seq == 4  # NEWEST within the window


def test_receive_times_stay_monotonic_when_the_clock_steps_back():
    b = MessageBuffer(100)
    b.append(orjson.dumps(trades(1)), 1, 10.0)
    b.append(orjson.dumps(trades(1)), 1, 5.0)
    assert [t for _, t, _ in read(b, limit=10).events] == [10.0, 10.0]


def test_a_plan_needs_a_positive_limit():
    with pytest.raises(ValueError, match="at least 1"):
        plan(limit=0)


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


# -- the decode cache and partial decoding ------------------------------------------------------------------------


def test_cache_is_bounded_and_keeps_the_newest_frames():
    b = MessageBuffer(400)  # cache budget: 100 events
    fill(b, [trades(10, start=10 * i) for i in range(40)])
    for _ in range(3):
        read(b, limit=400)
    assert b.cache.weight <= b.cache.budget == 100
    assert b.cache.firsts() == list(range(301, 401, 10))  # the ten newest frames


def test_a_second_read_decodes_nothing(monkeypatch):
    from mcp_polygon.streams import buffer as buffer_module

    b = MessageBuffer(100)
    fill(b, [trades(5, "MSFT") + trades(5), trades(10)])
    first = read(b, "T.AAPL").events
    assert [s for s, _, _ in first] == list(range(6, 21))
    picks, decodes = [], []
    real_pick, real_decode = PairPicker.pick, buffer_module.decode_frame
    monkeypatch.setattr(
        PairPicker, "pick", lambda self, raw, n, flat=False: picks.append(n) or real_pick(self, raw, n, flat)
    )
    monkeypatch.setattr(buffer_module, "decode_frame", lambda raw, n: decodes.append(n) or real_decode(raw, n))
    assert read(b, "T.AAPL").events == first and picks == decodes == []  # the picks were kept
    assert len(read(b, "*").events) == 20 and decodes == [10, 10]  # a plan they do not cover decodes whole
    assert read(b, "T.AAPL").events == first and read(b, "*.MSFT").events  # whole frames serve every plan
    assert picks == [] and decodes == [10, 10]


def test_picks_of_two_pairs_of_one_frame_are_both_kept():
    b = MessageBuffer(100)
    fill(b, [trades(3, "MSFT") + trades(3)])
    read(b, "T.AAPL")
    read(b, "T.MSFT")
    entry = b.cache.get(1)
    assert entry is not None and not entry.complete and entry.pairs == {("T", "AAPL"), ("T", "MSFT")}
    assert entry.weight == 1 + 6 and b.cache.weight == 7
    assert not entry.covers(plan("Q.AAPL")) and not entry.covers(plan("*.AAPL")) and entry.covers(plan("T.MSFT"))


def test_a_frame_older_than_everything_kept_does_not_evict_newer_ones():
    b = MessageBuffer(40)  # budget 10
    fill(b, [trades(5, start=5 * i) for i in range(8)])
    read(b, since_seq=30)  # frames 31-35 and 36-40: the budget is full
    assert b.cache.firsts() == [31, 36]
    read(b, since_seq=0)  # older frames, no room: not worth evicting the newest for
    assert b.cache.firsts() == [31, 36]
    b.cache.keep(41, DecodedFrame.whole(trades(5)))  # a newer frame evicts the oldest
    assert b.cache.firsts() == [36, 41]
    b.cache.keep(46, DecodedFrame.whole(trades(11)))  # more than the whole budget: kept nowhere, evicts nothing
    b.cache.keep(51, DecodedFrame.whole([]))  # nothing decoded: nothing to keep
    assert b.cache.firsts() == [36, 41] and b.cache.weight == 10


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
    # a nested object that starts like an event: more `{"ev":"` than events, decoded whole
    b'[{"ev":"T","sym":"AAPL","m":{"ev":"T","sym":"AAPL"}},{"ev":"T","sym":"AAPL","p":14.0}]',
    # ... and one that makes up for an event in another key order: as many `{"ev":"` as events, yet not their starts
    b'[{"sym":"MSFT","ev":"Q"},{"ev":"T","sym":"AAPL","p":15.0},{"ev":"Q","sym":"MSFT","m":{"ev":"Z"}}]',
]
PICK_COUNTS = [3, 3, 2, 3, 3, 2, 3, 4, 2, 3]


@pytest.mark.parametrize("flt", ["T.AAPL", "A.AAPL", "AM.AAPL", "T.MSFT", "Q.AAPL", "T.AAPL,Q.AAPL", "*.AAPL"])
def test_partly_decoded_reads_equal_the_reference_on_odd_frames(flt):
    """Reads that cut frames and decode only the events whose bytes can match must return what decoding every
    frame whole returns, whatever the frames hold."""
    cut, ref = MessageBuffer(100), NaiveBuffer(100)
    for i, (raw, n) in enumerate(zip(PICK_FRAMES, PICK_COUNTS, strict=True)):
        cut.append(raw, n, 1000.0 + i)
        ref.append(raw, n, 1000.0 + i)
    cut.cache.budget = 0  # nothing is kept: every read takes the cut-and-pick path
    for since in (None, 0, 2, 4, 9, 14):
        for limit in (1, 2, 1000):
            same(read(cut, flt, limit, since_seq=since), ref.read(flt, limit, since_seq=since), (flt, since, limit))


def test_pick_decodes_only_candidates_of_the_pair_or_gives_up():
    picker = PairPicker.for_plan(plan("T.AAPL"))
    assert picker is not None
    assert picker.pick(PICK_FRAMES[0], 3) == {0: {"ev": "T", "sym": "AAPL", "p": 1.0, "c": [0, 12]}}
    assert picker.pick(PICK_FRAMES[6], 3) == {}  # AAPLX is not AAPL
    decoy = b'[{"ev":"Q","sym":"AAPL"},{"ev":"T","sym":"MSFT","x":"AAPL"}]'  # a T event with AAPL's bytes
    assert picker.pick(decoy, 2) == {1: {"ev": "T", "sym": "MSFT", "x": "AAPL"}}  # a candidate; the plan decides
    b = MessageBuffer(10)
    b.append(decoy, 2, 1.0)
    assert read(b, "T.AAPL").events == [] and b.cache.get(1) is not None
    for i in (1, 2, 3, 4, 5, 7, 8, 9):  # key orders, whitespace, nesting, stray entries, not JSON, odd types
        assert picker.pick(PICK_FRAMES[i], PICK_COUNTS[i]) is None, i
    assert PairPicker.for_plan(plan("*.AAPL")) is None and PairPicker.for_plan(plan("T.AAPL,Q.AAPL")) is None
    forex = read_plan(MARKETS["forex"], parse_filter(MARKETS["forex"], "C.EUR/USD"), limit=1)
    assert PairPicker.for_plan(forex) is None  # '/' may be written escaped: no byte search


def test_cache_entries_of_every_kind_never_change_an_answer():
    """Single-pair reads keep only the events they picked; reads of other pairs of the same frames add theirs,
    and a read that needs whole frames replaces the picks. Answers must stay those of the reference."""
    frames = [
        [
            {"ev": "T", "sym": "AAPL", "p": float(i)},
            {"ev": "Q", "sym": "MSFT", "bp": float(i)},
            {"ev": "T", "sym": "MSFT", "p": float(i)},
            {"ev": "Q", "sym": "AAPL", "bp": float(i)},
        ][: 1 + i % 4]
        for i in range(80)
    ]
    warm, ref = MessageBuffer(120), NaiveBuffer(120)
    for i, events in enumerate(frames):
        warm.append(orjson.dumps(events), len(events), 1000.0 + i)
        ref.append(orjson.dumps(events), len(events), 1000.0 + i)
    filters = ["T.AAPL", "Q.AAPL", "T.AAPL", None, "T.MSFT", "*.AAPL", "T.AAPL", "Q.MSFT", "LULD.AAPL"]
    for rnd in range(3):
        for flt in filters:
            for since in (None, 0, 130, 150, 195):
                limit = 7 if rnd and since is None else 1000
                same(read(warm, flt, limit, since_seq=since), ref.read(flt, limit, since_seq=since), (flt, since))
                check_cache(warm)
        for i, events in enumerate(frames[:5]):  # new data: the ring moves on
            warm.append(orjson.dumps(events), len(events), 2000.0 + rnd + i)
            ref.append(orjson.dumps(events), len(events), 2000.0 + rnd + i)
