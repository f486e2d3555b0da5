"""analytics/compaction.py: closed segments -> Parquet, atomically; replay from Parquet exactly as from JSONL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import shutil
import threading
from pathlib import Path

import orjson
import pytest

from conftest import counting_loop_turns
from mcp_polygon.analytics import compaction
from mcp_polygon.analytics.compaction import (
    CompactionError,
    SegmentBusy,
    compact_segment,
    finish_pending,
    replay_compacted,
)
from mcp_polygon.simulator.events import MARKETS as SIM_MARKETS
from mcp_polygon.simulator.events import EventFactory
from mcp_polygon.streams import recorder as rec
from mcp_polygon.streams.markets import MARKETS
from mcp_polygon.streams.query import ChannelFilter, parse_filter, read_plan

S = 1_000_000_000
T0 = 1_750_000_000 * S
END = T0 + 10**6 * S

# Events the typed columns cannot hold as they are: each must come back exactly, key order and int/float included.
ODD_STOCK_FRAMES: list[bytes] = [
    b'[{"ev":"T","sym":"AAPL","x":4,"i":"1","z":3,"p":150,"s":100,"c":[0],"t":1750000000000,"q":1}]',  # whole price
    b'[{"sym":"AAPL","ev":"T","x":4,"i":"2","z":3,"p":150.5,"s":1,"c":[0],"t":1750000000001,"q":2}]',  # key order
    b'[{"ev":"T","sym":"AAPL","x":null,"i":"3","z":3,"p":1.25,"s":100.0,"c":[],"t":1750000000002,"q":3}]',
    b'[{"ev":"T","sym":"MSFT","p":420.1,"s":5,"t":1750000000003,"brand_new_field":{"a":[1,2]}}]',  # unknown field
    b'[{"ev":"ZZ","sym":"AAPL","k":1},{"no_ev":true},{"ev":5,"sym":"AAPL"}]',  # unknown / missing / odd `ev`
    b'[1,{"ev":"T","sym":"AAPL","p":2.5,"s":1,"t":1750000000004},"x",null,{"ev":"Q","sym":"AAPL","bp":1,"ap":2}]',
    b'[{"ev":"T","sym":"\\u00c4PFEL","p":1e2,"s":-0,"i":"\\"q\\"","t":1750000000005,"c":[1,"a"]}]',  # escapes
    b'[{"ev":"T","sym":"AAPL","p":0.30000000000000004,"s":9007199254740993,"t":1750000000006,"q":-5}]',
    b'[{"ev":"A","sym":"AAPL","v":10,"dv":"10.5","o":1,"c":1.5,"h":2,"l":0.5,"s":1750000000000,"e":1750000001000}]',
    b'[{"ev":"LULD","T":"AAPL","h":210.5,"l":190.25,"i":[17,21],"z":1,"t":1750000000000000000,"q":7}]',
]


def _frames(market: str, n_frames: int, per_frame: int = 6, seed: int = 7) -> list[bytes]:
    """Realistic frames of every channel the simulator has for `market`, mixed."""
    factory = EventFactory(seed)
    spec = SIM_MARKETS[market]
    streams = [(ch, tk) for ch in spec.channels for tk in spec.wildcard_tickers]
    out = []
    k = 0
    for i in range(n_frames):
        events = []
        for _ in range(per_frame):
            channel, ticker = streams[k % len(streams)]
            k += 1
            events.append(factory.event(market, channel, ticker, T0 + i * 10**6))
        out.append(orjson.dumps(events))
    return out


def _record(directory: Path, frames: list[bytes], *, close: bool = True, step: int = 10**6) -> rec.Recorder:
    r = rec.Recorder(directory, 1 << 30, segment_bytes=1 << 30)
    for i, raw in enumerate(frames):
        r.write(raw, len(orjson.loads(raw)), T0 + i * step)
    if close:
        r.close()
    else:
        r.flush()
    return r


def _jsonl(directory: Path, lo: int, hi: int, limit: int, channels: ChannelFilter | None = None) -> list:
    """What recorder.replay answers for the JSONL segments: the oracle every Parquet replay is held to.
    (The one place that knows the recorder's replay API.)"""
    flt = channels if channels is not None else parse_filter(MARKETS["stocks"], None)
    plan = read_plan(MARKETS["stocks"], flt, limit=limit, from_ns=lo, to_ns=hi)
    return rec.replay(directory, plan).events


def _one_closed(directory: Path) -> Path:
    (seg,) = [s for s in rec.list_segments(directory) if s.closed]
    return seg.path


def _same(got: list[tuple[int, dict]], expected: list[tuple[int, dict]]) -> None:
    assert [ns for ns, _ in got] == [ns for ns, _ in expected]
    # Byte-equal JSON: same keys in the same order, same values, ints stay ints and floats floats.
    assert orjson.dumps([e for _, e in got]) == orjson.dumps([e for _, e in expected])


@pytest.mark.parametrize("market", sorted(MARKETS))
def test_compacted_segment_replays_exactly_as_its_jsonl(tmp_path, market):
    directory = tmp_path / market
    frames = _frames(market, 60)
    if market == "stocks":
        frames = frames[:30] + ODD_STOCK_FRAMES + frames[30:]
    _record(directory, frames)
    segment = _one_closed(directory)
    expected = _jsonl(directory, 0, END, 10**6)
    result = compact_segment(segment)
    assert not segment.exists() and result.target.exists() and result.target.suffix == ".parquet"
    assert result.events == len(expected)
    got = replay_compacted(result.target, 0, END, limit=10**6)
    _same(got.events, expected)
    assert not got.more
    if market == "stocks":
        assert 0 < result.kept_raw <= 12  # the odd events, and nothing else, are kept as JSON text


def test_only_the_odd_events_are_kept_as_text(tmp_path):
    directory = tmp_path / "stocks"
    _record(directory, _frames("stocks", 200))
    result = compact_segment(_one_closed(directory))
    assert result.events == 1200 and result.kept_raw == 0


@pytest.mark.parametrize("flt", ["T.AAPL", "*.MSFT", "Q.*", "T.AAPL,Q.MSFT,LULD.*", "*.AAPL", "T.ZZZZ"])
def test_channel_filters_are_pushed_down_and_answer_as_jsonl_does(tmp_path, flt):
    directory = tmp_path / "stocks"
    frames = _frames("stocks", 80)
    _record(directory, frames[:40] + ODD_STOCK_FRAMES + frames[40:])
    market = MARKETS["stocks"]
    parsed = parse_filter(market, flt)
    plan = read_plan(market, parsed, limit=10**6, from_ns=0, to_ns=END)
    expected = _jsonl(directory, 0, END, 10**6, parsed)
    target = compact_segment(_one_closed(directory)).target
    got = replay_compacted(target, 0, END, limit=10**6, channels=parsed, match=plan.matches)
    _same(got.events, expected)


def test_pages_and_windows_match_jsonl(tmp_path):
    directory = tmp_path / "stocks"
    _record(directory, _frames("stocks", 100))
    all_events = _jsonl(directory, 0, END, 10**6)
    target = compact_segment(_one_closed(directory)).target
    # A window that starts and ends inside frames.
    lo, hi = all_events[57][0], all_events[301][0]
    window = replay_compacted(target, lo, hi, limit=10**6)
    _same(window.events, all_events[57:302])
    # Paging with limit: every event exactly once, `more` until the end.
    seen, start = [], 0
    while True:
        page = replay_compacted(target, start, END, limit=37)
        seen += page.events
        if not page.more:
            break
        assert len(page.events) == 37
        start = page.events[-1][0] + 1
    _same(seen, all_events)


def test_parquet_is_much_smaller_than_the_jsonl(tmp_path):
    directory = tmp_path / "stocks"
    factory = EventFactory(3)
    frames = [
        orjson.dumps([factory.event("stocks", "T", f"S{(i * 20 + k) % 50}", T0 + i * 10**6) for k in range(20)])
        for i in range(500)
    ]
    _record(directory, frames)
    result = compact_segment(_one_closed(directory))
    assert result.target_bytes < result.source_bytes / 4, result


def test_a_failed_publish_leaves_the_jsonl_and_no_parquet(tmp_path, monkeypatch):
    directory = tmp_path / "stocks"
    _record(directory, _frames("stocks", 20))
    segment = _one_closed(directory)
    before = segment.read_bytes()

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compaction.os, "replace", no_rename)
    with pytest.raises(CompactionError, match="No space left on device"):
        compact_segment(segment)
    assert segment.read_bytes() == before
    assert sorted(p.name for p in directory.iterdir()) == [segment.name]  # no Parquet, no temporary file


def test_finish_pending_recompacts_what_a_crash_left_behind(tmp_path):
    directory = tmp_path / "stocks"
    frames = _frames("stocks", 30)
    _record(directory, frames)
    segment = _one_closed(directory)
    expected = _jsonl(directory, 0, END, 10**6)
    kept = tmp_path / "copy.jsonl"
    shutil.copy(segment, kept)
    target = compact_segment(segment).target
    # The crash: the JSONL survived (not removed yet), the Parquet is damaged, a temporary file is left over.
    shutil.copy(kept, segment)
    target.write_bytes(target.read_bytes()[:100])
    leftover = directory / ("." + segment.stem + ".parquet.tmp")
    leftover.write_bytes(b"partial")
    # And a second segment that was closed but never compacted.
    r = rec.Recorder(directory, 1 << 30)
    for i, raw in enumerate(frames[:5]):
        r.write(raw, len(orjson.loads(raw)), T0 + 10**15 + i * 10**6)
    r.close()
    results = finish_pending(directory)
    assert len(results) == 2
    assert sorted(p.suffix for p in directory.iterdir()) == [".parquet", ".parquet"]
    _same(replay_compacted(target, 0, END, limit=10**6).events, expected)


def test_open_segments_are_never_compacted(tmp_path):
    directory = tmp_path / "stocks"
    r = _record(directory, _frames("stocks", 10), close=False)
    (seg,) = rec.list_segments(directory)
    assert not seg.closed
    with pytest.raises(CompactionError, match="not a closed recorder segment"):
        compact_segment(seg.path)
    assert finish_pending(directory) == [] and seg.path.exists()
    r.close()


def test_lines_replay_would_skip_are_skipped(tmp_path):
    directory = tmp_path / "stocks"
    directory.mkdir()
    good = b'[{"ev":"T","sym":"AAPL","p":1.5,"s":1,"t":1}]'
    lines = [
        b"%d %s" % (T0, good),
        b"not-a-time " + good,
        b"%d [{broken" % (T0 + 10),
        b'%d {"ev":"T"}' % (T0 + 20),  # not an array
        b'%d ["\xff\xfe"]' % (T0 + 30),  # not UTF-8
        b"%d %s" % (T0 + 40, good),
        b'%d [{"ev":"T","sym":"cut' % (T0 + 50),  # the last line, cut by a crash: no newline
    ]
    segment = directory / f"{T0:020d}-{T0 + 50:020d}-1.jsonl"
    segment.write_bytes(b"\n".join(lines))
    expected = _jsonl(directory, 0, END, 100)
    assert len(expected) == 2
    target = compact_segment(segment).target
    _same(replay_compacted(target, 0, END, limit=100).events, expected)


async def test_compaction_runs_in_a_worker_thread_without_holding_the_loop(tmp_path):
    directory = tmp_path / "stocks"
    _record(directory, _frames("stocks", 3000, per_frame=10))
    segment = _one_closed(directory)
    async with counting_loop_turns() as turns:
        result = await asyncio.to_thread(compact_segment, segment)
    assert result.events == 30000
    # The loop kept turning while DuckDB worked (it releases the GIL): hundreds of turns, not a handful.
    assert turns.count > 100, turns.count


def test_two_threads_compact_two_segments_at_once(tmp_path):
    segments = []
    for name in ("a", "b"):
        directory = tmp_path / name / "stocks"
        _record(directory, _frames("stocks", 200, seed=len(name) + ord(name)))
        segments.append((directory, _one_closed(directory), _jsonl(directory, 0, END, 10**6)))
    results: dict[str, Path] = {}

    def run(directory: Path, segment: Path) -> None:
        results[str(directory)] = compact_segment(segment, "stocks").target

    threads = [threading.Thread(target=run, args=(d, s)) for d, s, _ in segments]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for directory, _segment, expected in segments:
        _same(replay_compacted(results[str(directory)], 0, END, limit=10**6).events, expected)


def test_list_compacted_reads_the_time_range_from_the_name(tmp_path):
    directory = tmp_path / "stocks"
    _record(directory, _frames("stocks", 5))
    segment = _one_closed(directory)
    seg = next(s for s in rec.list_segments(directory) if s.closed)
    compact_segment(segment)
    (done,) = compaction.list_compacted(directory)
    assert (done.first_ns, done.last_ns, done.pid) == (seg.first_ns, seg.last_ns, os.getpid())
    assert done.size == done.path.stat().st_size


def test_damaged_times_are_judged_as_replay_judges_them(tmp_path):
    """A line whose time was damaged (far in the future, or before the segment began) is skipped by replay, and
    the lines after it are not: the Parquet holds exactly the same events."""
    directory = tmp_path / "stocks"
    directory.mkdir()
    good = b'[{"ev":"T","sym":"AAPL","p":1.5,"s":1,"t":1}]'
    stamps = [T0 + i * S for i in range(12)]
    lines = [b"%d %s" % (ns, good) for ns in stamps]
    lines[4] = b"%d %s" % (T0 + 10**17, good)  # a flipped digit: decades ahead
    lines[8] = b"%d %s" % (T0 - 5 * S, good)  # before the segment's first time
    segment = directory / f"{T0:020d}-{stamps[-1]:020d}-1.jsonl"
    segment.write_bytes(b"\n".join(lines) + b"\n")
    expected = _jsonl(directory, 0, 2**62, 100)
    assert len(expected) == 10
    target = compact_segment(segment).target
    _same(replay_compacted(target, 0, 2**62, limit=100).events, expected)


def test_the_compactor_queues_without_blocking_and_works_in_a_low_priority_thread(tmp_path, monkeypatch):
    directory = tmp_path / "stocks"
    segments = []
    for i in range(3):
        r = rec.Recorder(directory, 1 << 30)
        for j, raw in enumerate(_frames("stocks", 20, seed=i)):
            r.write(raw, len(orjson.loads(raw)), T0 + i * 10**12 + j * 10**6)
        r.close()
    segments = [s.path for s in rec.list_segments(directory)]
    gate = threading.Event()
    real = compaction.compact_segment
    seen: list[tuple[Path, object, int]] = []

    def gated(path, market=None):
        gate.wait(10)  # the first compaction cannot finish until the test has queued everything
        return real(path, market)

    monkeypatch.setattr(compaction, "compact_segment", gated)

    def on_result(path, outcome):
        seen.append((path, outcome, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    compactor = compaction.Compactor(on_result=on_result)
    for segment in segments:
        compactor.submit(segment)  # returns while the worker is stuck on the first one
    assert not compactor.wait(0.01) and seen == []
    gate.set()
    assert compactor.wait(30)
    compactor.close(5)
    assert [p for p, _, _ in seen] == segments and compactor.compacted == 3 and compactor.failed == 0
    assert all(isinstance(o, compaction.CompactionResult) for _, o, _ in seen)
    assert all(nice >= 10 for _, _, nice in seen)  # the compactor's thread runs below the loop's priority
    assert not any(s.exists() for s in segments) and len(compaction.list_compacted(directory)) == 3
    with pytest.raises(RuntimeError):
        compactor.submit(segments[0])


def test_the_compactor_finishes_a_restarts_leftovers_and_reports_failures(tmp_path):
    directory = tmp_path / "stocks"
    _record(directory, _frames("stocks", 10))
    (directory / ".leftover.parquet.tmp").write_bytes(b"x")
    bad = directory / f"{T0 + 10**15:020d}-{T0 + 10**15 + 5:020d}-1.jsonl"
    bad.mkdir()  # named like a segment, cannot be read as one (whoever runs the test)
    results = []
    compactor = compaction.Compactor(on_result=lambda path, outcome: results.append(outcome))
    compactor.submit_pending(directory)
    assert compactor.wait(30)
    compactor.close(5)
    assert not (directory / ".leftover.parquet.tmp").exists()
    assert compactor.compacted == 1 and compactor.failed == 1 and "cannot read" in (compactor.last_error or "")
    assert len(results) == 2 and isinstance(results[1], CompactionError) and bad.is_dir()


def test_an_undamaged_segment_is_read_by_duckdb_alone(tmp_path, monkeypatch):
    """The common case holds the GIL for a few C calls only: the lines are read and judged in DuckDB, and the
    line-by-line judgment in Python is left for damaged segments."""
    directory = tmp_path / "stocks"
    _record(directory, _frames("stocks", 50))
    expected = _jsonl(directory, 0, END, 10**6)
    calls = []
    real = compaction.eventsql.split_lines
    monkeypatch.setattr(compaction.eventsql, "split_lines", lambda *a: calls.append(a) or real(*a))
    target = compact_segment(_one_closed(directory)).target
    assert calls == []
    _same(replay_compacted(target, 0, END, limit=10**6).events, expected)


def test_a_failing_callback_does_not_stop_the_compactor(tmp_path):
    directory = tmp_path / "stocks"
    for i in range(2):
        r = rec.Recorder(directory, 1 << 30)
        r.write(_frames("stocks", 1)[0], 6, T0 + i * 10**12)
        r.close()
    first, second = [s.path for s in rec.list_segments(directory)]
    calls = []

    def on_result(path, outcome):
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("a bug in the caller's callback")

    compactor = compaction.Compactor(on_result=on_result)
    compactor.submit(first)
    compactor.submit(second)
    assert compactor.wait(30)
    compactor.close(5)
    assert calls == [first, second] and compactor.compacted == 2


def _compact_or_busy(path: str) -> str:
    """In another process: compact one segment; 'busy' when a compaction elsewhere holds it."""
    try:
        return str(compact_segment(Path(path), "stocks").target)
    except SegmentBusy:
        return "busy"


def test_a_segment_another_process_is_compacting_is_left_to_it(tmp_path):
    # Two processes sharing a data dir (the shared feed hands recording from one to the other) both queue the
    # segment the first just closed. Only one may write it: the other steps aside without touching anything.
    directory = tmp_path / "stocks"
    _record(directory, _frames("stocks", 50))
    segment = _one_closed(directory)
    expected = _jsonl(directory, 0, END, 10**6)
    with compaction.claimed(segment):
        with pytest.raises(SegmentBusy, match="another"):
            compact_segment(segment, "stocks")
        assert segment.exists() and not compaction.list_compacted(directory)
        assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temporary written
    _same(replay_compacted(compact_segment(segment, "stocks").target, 0, END, limit=10**6).events, expected)
    with pytest.raises(SegmentBusy, match="gone"):  # the other one got there first: nothing left to do
        compact_segment(segment, "stocks")
    # Queued again after it was compacted (the other process's queue ran late): nothing to do, nothing failed.
    compactor = compaction.Compactor()
    compactor.submit(segment, "stocks")
    assert compactor.wait(30)
    compactor.close(5)
    assert compactor.failed == 0


def test_two_processes_compacting_the_same_segments_publish_each_once_and_whole(tmp_path):
    directory = tmp_path / "stocks"
    expected = []
    for i in range(4):  # four closed segments, far apart in time
        r = rec.Recorder(directory, 1 << 30, segment_bytes=1 << 30)
        frames = _frames("stocks", 300, seed=i)
        for k, raw in enumerate(frames):
            r.write(raw, len(orjson.loads(raw)), T0 + i * 10**12 + k * 10**6)
        r.close()
    segments = [s.path for s in rec.list_segments(directory) if s.closed]
    assert len(segments) == 4
    for seg in segments:
        lo, hi = (int(x) for x in seg.name.split("-")[:2])
        expected.append(_jsonl(directory, lo, hi, 10**6))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        runs = [pool.submit(_compact_or_busy, str(seg)) for seg in segments for _ in range(2)]
        outcomes = [run.result(timeout=120) for run in runs]
    assert all(o == "busy" or o.endswith(".parquet") for o in outcomes), outcomes
    files = compaction.list_compacted(directory)
    assert len(files) == 4 and not rec.list_segments(directory)
    for cseg, want in zip(files, expected, strict=True):
        _same(replay_compacted(cseg.path, 0, END, limit=10**6).events, want)
