"""analytics/engine.py: views over Parquet + JSONL + buffer without duplicates, across restarts; limits; errors."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from conftest import counting_loop_turns
from mcp_polygon.analytics.compaction import compact_segment, list_compacted, pending_segments
from mcp_polygon.analytics.engine import LiveFrame, QueryEngine
from mcp_polygon.analytics.errors import QueryFailed, QueryRejected, QueryTimeout
from mcp_polygon.analytics.results import QueryResult, render_csv
from mcp_polygon.simulator.events import EventFactory
from mcp_polygon.streams import recorder as rec

S = 1_000_000_000
T0 = 1_750_000_000 * S
SYMBOLS = ("AAPL", "MSFT", "NVDA")


def make_frames(n: int, start: int = 0, seed: int = 7) -> list[tuple[int, bytes, list[dict]]]:
    """n frames of stock trades and quotes, 1 ms apart from T0 + start ms: (recv_ns, raw, events)."""
    factory = EventFactory(seed)
    out = []
    for i in range(start, start + n):
        ns = T0 + i * 10**6
        events = [factory.event("stocks", ch, sym, ns) for ch in ("T", "Q") for sym in SYMBOLS]
        out.append((ns, orjson.dumps(events), events))
    return out


def record(data_dir: Path, frames, *, segment_bytes: int = 32 << 10, close: bool = False) -> rec.Recorder:
    r = rec.Recorder(data_dir / "stocks", 1 << 30, segment_bytes=segment_bytes)
    for ns, raw, events in frames:
        r.write(raw, len(events), ns)
    if close:
        r.close()
    else:
        r.flush()
    return r


def live(frames) -> dict[str, list[LiveFrame]]:
    return {"stocks": [LiveFrame(ns, raw) for ns, raw, _ in frames]}


def by_symbol(frames, ev: str = "T", size_key: str = "s") -> dict[str, tuple[int, float]]:
    """symbol -> (events of type `ev`, total of their `size_key`): the truth the views must give."""
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for _, _, events in frames:
        for e in events:
            if e["ev"] == ev:
                count[e["sym"]] += 1
                size[e["sym"]] += e[size_key]
    return {s: (count[s], float(size[s])) for s in count}


def trades_by_symbol(frames) -> dict[str, tuple[int, float]]:
    return by_symbol(frames)


def per_symbol(result: QueryResult) -> dict[str, tuple[int, float]]:
    return {row[0]: (row[1], row[2]) for row in result.rows}  # type: ignore[misc]


TRADES_SQL = "SELECT symbol, count(*), sum(size) FROM stocks_trades GROUP BY symbol ORDER BY symbol"


@pytest.fixture
def engine(tmp_path):
    eng = QueryEngine(tmp_path / "data", markets=["stocks", "crypto"], timeout=5)
    yield eng
    eng.close()


def test_views_join_parquet_jsonl_and_the_buffer_counting_each_event_once(tmp_path):
    data = tmp_path / "data"
    frames = make_frames(900)
    recorded, unflushed = frames[:800], frames[800:]
    recorder = record(data, recorded)  # several closed segments and an open one
    pending = pending_segments(data / "stocks")
    assert len(pending) >= 4
    for segment in pending[: len(pending) // 2]:
        compact_segment(segment)
    assert list_compacted(data / "stocks") and pending_segments(data / "stocks")
    # The buffer holds the last 300 frames: 200 already on disk, 100 not flushed yet (the last second).
    buffered = live(frames[600:])
    engine = QueryEngine(data, markets=["stocks"])
    try:
        assert per_symbol(engine.query_sync(TRADES_SQL, live=buffered)) == trades_by_symbol(frames)
        # Asked again (nothing parsed twice), and after the rest is compacted: the same answer.
        assert per_symbol(engine.query_sync(TRADES_SQL, live=buffered)) == trades_by_symbol(frames)
        for segment in pending_segments(data / "stocks"):
            compact_segment(segment)
        assert per_symbol(engine.query_sync(TRADES_SQL, live=buffered)) == trades_by_symbol(frames)
        # The unflushed frames reach the disk: still each event once.
        for ns, raw, events in unflushed:
            recorder.write(raw, len(events), ns)
        recorder.flush()
        assert per_symbol(engine.query_sync(TRADES_SQL, live=buffered)) == trades_by_symbol(frames)
    finally:
        engine.close()
        recorder.close()


def test_recordings_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    frames = make_frames(300)
    record(data, frames, close=True)
    for segment in pending_segments(data / "stocks")[:2]:
        compact_segment(segment)
    first = QueryEngine(data, markets=["stocks"])
    before = first.query_sync(TRADES_SQL)
    first.close()
    second = QueryEngine(data, markets=["stocks"])
    try:
        assert second.query_sync(TRADES_SQL).rows == before.rows
        assert per_symbol(before) == trades_by_symbol(frames)
    finally:
        second.close()


def test_buffer_only_follows_the_ring(engine):
    frames = make_frames(400)
    assert per_symbol(engine.query_sync(TRADES_SQL, live=live(frames[:200]))) == trades_by_symbol(frames[:200])
    # The ring moved on: older frames dropped, newer arrived.
    moved = frames[150:400]
    assert per_symbol(engine.query_sync(TRADES_SQL, live=live(moved))) == trades_by_symbol(moved)
    assert engine.query_sync(TRADES_SQL, live=live([])).rows == ()


def test_a_ring_that_moved_past_everything_parsed_replaces_the_live_rows(engine):
    frames = make_frames(300)
    for window in (frames[:50], frames[100:150], frames[120:170], frames[250:300], frames[250:300]):
        assert per_symbol(engine.query_sync(TRADES_SQL, live=live(window))) == trades_by_symbol(window)


QUOTES_SQL = "SELECT symbol, count(*), sum(bid_size) FROM stocks_quotes GROUP BY symbol ORDER BY symbol"


def test_a_ring_sliding_in_small_steps_shows_exactly_its_events_and_keeps_the_live_rows_bounded(engine):
    # An agent polling a busy stream: each query sees a few new frames and a few dropped. Rows that left the ring
    # are hidden by the views' floor at once and deleted in batches; which views a query reads varies, so one
    # view's rows may lag while another's are current.
    frames = make_frames(700)
    ring = 40
    end = ring
    for step in range(120):
        end += 1 + step % 5
        window = frames[end - ring : end]
        buffered = live(window)
        if step % 3 != 1:
            assert per_symbol(engine.query_sync(TRADES_SQL, live=buffered)) == trades_by_symbol(window), step
        if step % 3 != 0:
            assert per_symbol(engine.query_sync(QUOTES_SQL, live=buffered)) == by_symbol(window, "Q", "bs"), step
        held = engine._session.execute("SELECT count(*) FROM internal.live_stocks_trades").fetchall()[0][0]
        assert held <= 3 * ring * len(SYMBOLS) + 5 * len(SYMBOLS), (step, held)
    assert end > 5 * ring  # the ring moved well past its length, so deletes ran
    # The buffer emptied (the stream was cleared): nothing live is left in either view.
    assert engine.query_sync(TRADES_SQL, live=live([])).rows == ()
    assert engine.query_sync(QUOTES_SQL, live=live([])).rows == ()


def test_views_take_in_the_recordings_that_appear_after_buffer_only_queries(tmp_path):
    data = tmp_path / "data"
    frames = make_frames(400)
    engine = QueryEngine(data, markets=["stocks"])
    recorder = None
    try:
        buffered = live(frames[300:])
        assert per_symbol(engine.query_sync(TRADES_SQL, live=buffered)) == trades_by_symbol(frames[300:])
        recorder = record(data, frames)  # JSONL segments appear: the views must read the tail table again
        assert per_symbol(engine.query_sync(TRADES_SQL, live=buffered)) == trades_by_symbol(frames)
        recorder.close()
        for segment in pending_segments(data / "stocks"):
            compact_segment(segment)
        assert not pending_segments(data / "stocks")
        assert per_symbol(engine.query_sync(TRADES_SQL, live=buffered)) == trades_by_symbol(frames)
    finally:
        engine.close()
        if recorder is not None:
            recorder.close()


def test_a_file_deleted_by_retention_drops_out_of_the_views(tmp_path):
    data = tmp_path / "data"
    frames = make_frames(300)
    record(data, frames, close=True)
    for segment in pending_segments(data / "stocks"):
        compact_segment(segment)
    engine = QueryEngine(data, markets=["stocks"])
    try:
        engine.query_sync(TRADES_SQL)
        first = list_compacted(data / "stocks")[0]
        first.path.unlink()
        total = sum(n for n, _ in per_symbol(engine.query_sync(TRADES_SQL)).values())
        assert 0 < total < sum(n for n, _ in trades_by_symbol(frames).values())
    finally:
        engine.close()


def test_columns_are_typed_and_times_are_utc_timestamps(engine):
    frames = make_frames(3)
    described = engine.query_sync("DESCRIBE stocks_trades", 50, live(frames))
    types = {row[0]: row[1] for row in described.rows}
    assert types["received"] == types["timestamp"] == "TIMESTAMP"
    assert types["price"] == types["size"] == "DOUBLE"
    assert types["sequence"] == types["exchange"] == "BIGINT"
    assert types["conditions"] == "BIGINT[]" and types["symbol"] == "VARCHAR"
    first_sql = "SELECT received, timestamp, price FROM stocks_trades ORDER BY received LIMIT 1"
    row = engine.query_sync(first_sql, 5, live(frames)).rows[0]
    first = frames[0][2][0]
    assert row[0] == dt.datetime(2025, 6, 15, 15, 6, 40)  # T0, the receive time
    assert row[1] == dt.datetime.fromtimestamp(first["t"] / 1000, dt.UTC).replace(tzinfo=None)
    assert row[2] == first["p"]
    recent = "SELECT count(*) FROM stocks_trades WHERE received > now() - INTERVAL 1 DAY"
    assert engine.query_sync(recent, 5, live(frames)).rows == ((0,),)  # UTC now() against UTC receive times
    since = f"SELECT count(*) FROM stocks_trades WHERE received >= TIMESTAMP '{dt.datetime(2025, 6, 15, 15, 6, 40)}'"
    assert engine.query_sync(since, 5, live(frames)).rows == ((9,),)


def test_asof_join_and_time_buckets_answer_in_one_query(engine):
    frames = make_frames(120)
    result = engine.query_sync(
        "SELECT t.symbol, count(*) AS n, avg(q.ask_price - q.bid_price) AS spread FROM stocks_trades t "
        "ASOF JOIN stocks_quotes q ON t.symbol = q.symbol AND t.received >= q.received GROUP BY 1 ORDER BY 1",
        10,
        live(frames),
    )
    assert [r[0] for r in result.rows] == sorted(SYMBOLS) and all(r[1] == 120 and r[2] > 0 for r in result.rows)
    buckets = engine.query_sync(
        "SELECT time_bucket(INTERVAL 50 MILLISECOND, received) AS b, count(*) FROM stocks_trades GROUP BY b",
        10,
        live(frames),
    )
    assert sum(r[1] for r in buckets.rows) == 360 and len(buckets.rows) in (3, 4)


def test_show_tables_lists_the_views(engine):
    names = [r[0] for r in engine.query_sync("SHOW TABLES", 100).rows]
    assert "stocks_trades" in names and "crypto_l2" in names and "options_trades" not in names  # markets given
    assert not any(n.startswith(("tail_", "live_")) for n in names)


def test_rows_are_capped_and_counted_and_the_csv_fits_the_budget(engine):
    result = engine.query_sync("SELECT range AS n, 'x' AS pad FROM range(250)", 100)
    assert len(result.rows) == 100 and result.truncated and result.total_rows == 250
    text = render_csv(result, 80_000)
    assert text.startswith("# 250 rows, first 100 shown (max_rows)") and text.count("\n") == 101
    small = render_csv(result, 300)
    assert len(small) <= 300 and "# truncated:" in small and small.startswith("# 250 rows")
    exact = engine.query_sync("SELECT 1 AS one", 100)
    assert render_csv(exact, 1000).splitlines()[0].startswith("# 1 row (")


def test_unknown_columns_list_the_views_columns(engine):
    with pytest.raises(QueryFailed) as err:
        engine.query_sync("SELECT bid FROM stocks_quotes")
    assert str(err.value).startswith("Column bid does not exist: stocks_quotes has received, symbol, bid_price,")
    with pytest.raises(QueryRejected, match="the tables are: crypto_fmv, crypto_l2,"):
        engine.query_sync("SELECT * FROM trades")


def test_a_query_past_the_time_limit_is_interrupted_and_the_engine_carries_on(tmp_path):
    engine = QueryEngine(tmp_path / "data", markets=["stocks"], timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"longer than 0.3 s and was stopped"):
            engine.query_sync("SELECT count(*) FROM range(100000000000000) a, range(10) b")
        assert time.monotonic() - started < 5  # stopped at the limit, not run to the end (hours)
        assert engine.query_sync("SELECT 42").rows == ((42,),)
    finally:
        engine.close()


def test_each_query_gets_its_own_time_limit_and_no_other_query_s_interrupt(tmp_path):
    """One watchdog serves every query: a deadline armed for one query never stops the next, and each runaway
    query is stopped at its own limit."""
    engine = QueryEngine(tmp_path / "data", markets=["stocks"], timeout=0.2)
    runaway = "SELECT count(*) FROM range(100000000000000) a, range(10) b"
    try:
        for _ in range(3):
            with pytest.raises(QueryTimeout):
                engine.query_sync(runaway)
            quick = time.monotonic()
            while time.monotonic() - quick < 0.5:  # past the 0.2 s a stale deadline would have fired at
                assert engine.query_sync("SELECT count(*) FROM range(100000)").rows == ((100000,),)
    finally:
        engine.close()


def test_the_memory_limit_is_enforced(tmp_path):
    engine = QueryEngine(tmp_path / "data", markets=["stocks"], memory_mb=64)
    try:
        with pytest.raises(QueryFailed, match="more than the 64 MB allowed for queries"):
            engine.query_sync("SELECT max(len(l)) FROM (SELECT list(range) AS l FROM range(50000000))")
        assert engine.query_sync("SELECT 1").rows == ((1,),)
    finally:
        engine.close()


def test_a_busy_engine_answers_within_the_time_limit(tmp_path):
    engine = QueryEngine(tmp_path / "data", markets=["stocks"], timeout=0.2)
    try:
        engine._lock.acquire()  # another query holds the engine
        try:
            with pytest.raises(QueryTimeout, match="kept the engine busy"):
                engine.query_sync("SELECT 1")
        finally:
            engine._lock.release()
    finally:
        engine.close()


async def test_queries_run_off_the_event_loop(tmp_path):
    engine = QueryEngine(tmp_path / "data", markets=["stocks"], timeout=10, live=lambda market: [])
    try:
        async with counting_loop_turns() as turns:
            result = await engine.query("SELECT count(*) FROM range(300000000) WHERE range % 7 = 0")
        assert result.rows[0][0] > 0
    finally:
        engine.close()
    assert turns.count > 100, turns.count  # the loop kept turning while DuckDB counted


async def test_the_live_source_is_read_on_the_loop_for_each_market(tmp_path):
    frames = make_frames(50)
    calls: list[str] = []

    def source(market: str) -> list[LiveFrame]:
        calls.append(market)
        return live(frames)["stocks"] if market == "stocks" else []

    engine = QueryEngine(tmp_path / "data", markets=["stocks", "crypto"], live=source)
    try:
        result = await engine.query(TRADES_SQL)
        assert per_symbol(result) == trades_by_symbol(frames)
        assert sorted(calls) == ["crypto", "stocks"]
    finally:
        engine.close()


def test_a_segment_both_in_jsonl_and_parquet_counts_once(tmp_path):
    """Compaction removes the JSONL after publishing the Parquet; between the two (or after a crash there) both
    exist, and the JSONL is what counts."""
    data = tmp_path / "data"
    frames = make_frames(300)
    record(data, frames, close=True)
    segment = pending_segments(data / "stocks")[0]
    kept = segment.read_bytes()
    compact_segment(segment)
    segment.write_bytes(kept)
    engine = QueryEngine(data, markets=["stocks"])
    try:
        assert per_symbol(engine.query_sync(TRADES_SQL)) == trades_by_symbol(frames)
        segment.unlink()  # the compaction finishes: now the Parquet counts, still once
        assert per_symbol(engine.query_sync(TRADES_SQL)) == trades_by_symbol(frames)
    finally:
        engine.close()


def test_from_settings_takes_the_query_limits_and_markets(tmp_path):
    from mcp_polygon.config import Settings

    settings = Settings.from_env(
        {
            "POLYGON_DATA_DIR": str(tmp_path / "data"),
            "POLYGON_TOOLSETS": "stocks,crypto,economy",
            "POLYGON_QUERY_TIMEOUT": "3",
            "POLYGON_QUERY_MEMORY_MB": "128",
        }
    )
    engine = QueryEngine.from_settings(settings)
    try:
        assert engine.markets == ("stocks", "crypto") and engine.timeout == 3.0 and engine.memory_mb == 128
        assert engine.data_dir == (tmp_path / "data").resolve()
        assert "crypto_trades" in engine.table_names() and "forex_quotes" not in engine.table_names()
    finally:
        engine.close()
