"""8. Analytics: SQL over 1,000,000 recorded trades, Parquet compaction, replay from Parquet, buffer queries.

Data: 1M distinct stock trades (the simulator's, 50 symbols, 20 per frame, receive times over one hour) written
through Recorder.write into its default 8 MB segments, then compacted (finish_pending, as at a restart).
Baseline, measured in the same run: the same events as one flat JSON-lines file (event + receive ns per line),
scanned with orjson, as bench/replay.py does; for the GROUP BY it also sums per symbol in Python.

Rows: the GROUP BY symbol (count, VWAP) through QueryEngine (validation, view refresh and the query: what an agent
waits for, minus JSON-RPC); replay of the whole hour (1M events as (ns, dict) pairs), of one symbol (a full scan
that keeps ~2%) and of a 1-minute window, from Parquet vs the flat scan (and the JSONL replay for reference); disk;
compaction speed; ingest (buffer append + recorder write) alone and while the Compactor works; how late the event
loop wakes from a 1 ms sleep while the Compactor works (vs idle); the query_market_data tool over a full
1,000-event buffer, fresh (every frame new) and steady (a few new frames since the last query).

Run alone: `python -m bench.analytics`, or as a section of `python -m bench` once it is listed there.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson

from bench.common import median, our_settings, quantile, scan_flat_jsonl
from bench.report import HIGHER, Row, render
from mcp_polygon.analytics import compaction
from mcp_polygon.analytics.engine import QueryEngine
from mcp_polygon.server import build_app
from mcp_polygon.simulator.events import EventFactory
from mcp_polygon.streams import recorder as rec
from mcp_polygon.streams.buffer import MessageBuffer
from mcp_polygon.streams.markets import MARKETS
from mcp_polygon.streams.query import parse_filter, read_plan

T = TypeVar("T")
EVENTS = 1_000_000
FRAME_EVENTS = 20
SYMBOLS = [f"S{i:02d}" for i in range(47)] + ["AAPL", "MSFT", "NVDA"]
SPAN_NS = 3600 * 10**9
WINDOW_NS = 60 * 10**9
T0 = 1_750_000_000 * 10**9
GROUP_SQL = (
    "SELECT symbol, count(*) AS trades, sum(price * size) / sum(size) AS vwap FROM stocks_trades GROUP BY symbol"
)


def _events() -> list[bytes]:
    """EVENTS distinct trades as frames of FRAME_EVENTS (raw JSON arrays)."""
    factory = EventFactory(11)
    step = SPAN_NS // EVENTS
    frames = []
    k = 0
    for _ in range(EVENTS // FRAME_EVENTS):
        batch = []
        for _ in range(FRAME_EVENTS):
            batch.append(factory.event("stocks", "T", SYMBOLS[k % len(SYMBOLS)], T0 + k * step))
            k += 1
        frames.append(orjson.dumps(batch))
    return frames


def _frame_ns(i: int) -> int:
    return T0 + i * (SPAN_NS // (EVENTS // FRAME_EVENTS))


def _write_recordings(directory: Path, frames: list[bytes]) -> None:
    r = rec.Recorder(directory, 1 << 31)
    for i, raw in enumerate(frames):
        r.write(raw, FRAME_EVENTS, _frame_ns(i))
    r.close()


def _write_flat(path: Path, frames: list[bytes]) -> None:
    with open(path, "wb") as f:
        for i, raw in enumerate(frames):
            ns = _frame_ns(i)
            for k, event in enumerate(orjson.loads(raw)):
                f.write(orjson.dumps({"recv_ns": ns + k, **event}) + b"\n")


def _flat_group(path: Path) -> dict[str, tuple[int, float]]:
    """The naive answer: parse every line, sum per symbol."""
    count: dict[str, int] = {}
    notional: dict[str, float] = {}
    volume: dict[str, float] = {}
    loads = orjson.loads
    with open(path, "rb") as f:
        for line in f:
            e = loads(line)
            if e["ev"] != "T":
                continue
            s = e["sym"]
            count[s] = count.get(s, 0) + 1
            notional[s] = notional.get(s, 0.0) + e["p"] * e["s"]
            volume[s] = volume.get(s, 0.0) + e["s"]
    return {s: (count[s], notional[s] / volume[s]) for s in count}


def _jsonl_replay(directory: Path, from_ns: int, to_ns: int, limit: int, flt: str | None = None) -> int:
    market = MARKETS["stocks"]
    plan = read_plan(market, parse_filter(market, flt), limit=limit, from_ns=from_ns, to_ns=to_ns)
    return len(rec.replay(directory, plan).events)


def _parquet_replay(
    directory: Path, from_ns: int, to_ns: int, limit: int, flt: str | None = None
) -> list[tuple[int, dict[str, object]]]:
    """Replay over compacted segments as the recorder's replay walks JSONL ones: by name, in time order."""
    market = MARKETS["stocks"]
    parsed = parse_filter(market, flt) if flt else None
    match = read_plan(market, parsed, limit=1, from_ns=0).matches if parsed else None
    out: list[tuple[int, dict[str, object]]] = []
    for seg in compaction.list_compacted(directory):
        if seg.last_ns < from_ns or seg.first_ns > to_ns:
            continue
        page = compaction.replay_compacted(
            seg.path, from_ns, to_ns, limit=limit - len(out), channels=parsed, match=match
        )
        out += page.events
        if len(out) >= limit:
            break
    return out


def _time(call: Callable[[], T], repeat: int, warmup: int = 0) -> tuple[list[float], T]:
    """Seconds per call (after `warmup` untimed calls, a full collection before each) and the last result."""
    times: list[float] = []
    for i in range(warmup + repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = call()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if i < warmup + repeat - 1:
            del result  # no result alive during the next call: a million events would make it pay for their GC
    return times, result


def _ingest_rate(frames: list[bytes], directory: Path, seconds: float = 0.5) -> float:
    """Events/s of what MarketStream.ingest does per frame (buffer append, recorder write) over `seconds`."""
    buffer = MessageBuffer(1000)
    r = rec.Recorder(directory, 64 << 20)  # retention keeps the disk this costs bounded
    i = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(500):
            raw = frames[i % len(frames)]
            ns = _frame_ns(i)
            buffer.append(raw, FRAME_EVENTS, ns / 1e9)
            r.write(raw, FRAME_EVENTS, ns)
            i += 1
    elapsed = time.perf_counter() - t0
    r.close()
    shutil.rmtree(directory, ignore_errors=True)
    return i * FRAME_EVENTS / elapsed


async def _lateness(seconds: float | None, until: Callable[[], bool] | None = None) -> list[float]:
    """How late each asyncio.sleep(1 ms) wakes up: the event loop's responsiveness, for `seconds` or until()."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    stop = loop.time() + (seconds or 3600)
    while loop.time() < stop and not (until is not None and until()):
        t0 = loop.time()
        await asyncio.sleep(0.001)
        late.append(loop.time() - t0 - 0.001)
    return late


def _loop_lateness(directory: Path) -> tuple[list[float], list[float], float]:
    """Loop wakeup lateness while idle, then while the Compactor compacts every segment of `directory`."""

    async def measure() -> tuple[list[float], list[float], float]:
        idle = await _lateness(2.0)
        compactor = compaction.Compactor()
        t0 = time.perf_counter()
        compactor.submit_pending(directory)
        busy = await _lateness(None, lambda: compactor.wait(0))
        elapsed = time.perf_counter() - t0
        compactor.close()
        return idle, busy, elapsed

    return asyncio.run(measure())


async def _buffer_queries(tmp: Path, frames: list[bytes], collect: bool) -> tuple[list[float], list[float]]:
    """query_market_data through MCPServer.call_tool (argument validation, the hop to a worker thread, the sandbox,
    view refresh, the query and its CSV: what an agent waits for, minus the JSON-RPC transport) over a full
    1,000-event stocks buffer filled through the protocol (MarketStream.feed, 50 frames of 20), recording off:
    after 50 new frames (every frame new) and after 1-3 new frames (an agent polling a busy stream).

    collect=False is the target's figure: calls come between frames being fed, as in a server. collect=True runs a
    full collection before each call, as the rows that build a million objects must; for a call that builds a few
    hundred it measures mostly that the collection's walk over the heap left the CPU caches cold (1-2 ms here)."""
    settings = our_settings("ws://127.0.0.1:9", data_dir=tmp / f"tool-{collect}", buffer_size=1000).with_overrides(
        toolsets=frozenset({"stocks"})
    )
    fresh: list[float] = []
    steady: list[float] = []
    args = {"sql": GROUP_SQL}
    async with build_app(settings) as app:
        stream = app.streams.stream("stocks")
        feed = iter(frames)

        async def ask(into: list[float]) -> None:
            if collect:
                gc.collect()
            t0 = time.perf_counter()
            result = await app.server.call_tool("query_market_data", args)
            into.append(time.perf_counter() - t0)
            text = result.content[0].text  # type: ignore[union-attr]
            assert not result.is_error, text
            rows = [line for line in text.splitlines() if line and not line.startswith("#")][1:]  # (after the header)
            counts = [int(line.split(",")[1]) for line in rows]
            assert sum(counts) == len(stream.buffer) == 1000, text

        for _ in range(50):
            stream.feed(next(feed))
        await ask([])  # warm-up: the first query also creates the views
        for _ in range(30):
            for _ in range(50):
                stream.feed(next(feed))
            await ask(fresh)
            for step in range(1, 4):
                for _ in range(step):
                    stream.feed(next(feed))
                await ask(steady)
    return fresh, steady


def run() -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as tmp_name:
        tmp = Path(tmp_name)
        directory = tmp / "data" / "stocks"
        print(f"  analytics: building {EVENTS:,} trades ...", file=sys.stderr)
        frames = _events()
        _write_recordings(directory, frames)
        flat = tmp / "flat.jsonl"
        _write_flat(flat, frames)
        jsonl_bytes = sum(s.size for s in rec.list_segments(directory))
        jsonl_copy = tmp / "jsonl" / "stocks"
        jsonl_copy.mkdir(parents=True)
        for seg in rec.list_segments(directory):
            os.link(seg.path, jsonl_copy / seg.path.name)  # the JSONL replay, for reference

        # Ingest alone, then while the backlog compacts in the Compactor's thread (how the recorder hands it
        # over), then alone again: the two "alone" runs bracket the other, so a busy moment of the machine shows.
        alone = [_ingest_rate(frames, tmp / f"ingest-a{i}") for i in range(3)]
        results: list[compaction.CompactionResult] = []
        compactor = compaction.Compactor(
            on_result=lambda path, outcome: (
                results.append(outcome) if isinstance(outcome, compaction.CompactionResult) else None
            )
        )
        t0 = time.perf_counter()
        compactor.submit_pending(directory)
        during: list[float] = []
        while not compactor.wait(0):
            during.append(_ingest_rate(frames, tmp / f"ingest-b{len(during)}"))
        compact_s = time.perf_counter() - t0
        compactor.close()
        alone += [_ingest_rate(frames, tmp / f"ingest-c{i}") for i in range(3)]
        ingest_alone = median(alone)
        assert compactor.failed == 0, compactor.last_error
        compacted_events = sum(r.events for r in results)
        assert compacted_events == EVENTS, compacted_events
        parquet_bytes = sum(s.size for s in compaction.list_compacted(directory))
        kept_raw = sum(r.kept_raw for r in results)

        engine = QueryEngine(tmp / "data", markets=["stocks"])
        try:
            ours_group, ours = _time(lambda: engine.query_sync(GROUP_SQL, 100), 10, warmup=2)
        finally:
            engine.close()
        base_group, base = _time(lambda: _flat_group(flat), 1)
        got = {r[0]: r[1] for r in ours.rows}
        assert got == {s: c for s, (c, _) in base.items()}

        end = _frame_ns(EVENTS // FRAME_EVENTS) + FRAME_EVENTS
        w_from = T0 + SPAN_NS // 2
        w_to = w_from + WINDOW_NS - 1
        full, everything = _time(lambda: len(_parquet_replay(directory, 0, end, 2 * EVENTS)), 1)
        base_full, base_all = _time(lambda: len(scan_flat_jsonl(flat, 0, end)), 1)
        jsonl_full, jsonl_all = _time(lambda: _jsonl_replay(jsonl_copy, 0, end, 2 * EVENTS), 1)
        assert everything == base_all == jsonl_all == EVENTS, (everything, base_all, jsonl_all)
        one, one_got = _time(lambda: len(_parquet_replay(directory, 0, end, EVENTS, "T.AAPL")), 3)
        base_one, base_one_got = _time(lambda: len(scan_flat_jsonl(flat, 0, end, "AAPL")), 1)
        jsonl_one, _ = _time(lambda: _jsonl_replay(jsonl_copy, 0, end, EVENTS, "T.AAPL"), 1)
        assert one_got == base_one_got, (one_got, base_one_got)
        window, window_got = _time(lambda: len(_parquet_replay(directory, w_from, w_to, 1000)), 10, warmup=1)
        base_window, _ = _time(lambda: len(scan_flat_jsonl(flat, w_from, w_to)), 1)

        fresh, steady = asyncio.run(_buffer_queries(tmp, frames, collect=False))
        cold_fresh, cold_steady = asyncio.run(_buffer_queries(tmp, frames, collect=True))
        again = tmp / "again" / "stocks"
        again.mkdir(parents=True)
        for seg in rec.list_segments(jsonl_copy):
            os.link(seg.path, again / seg.path.name)
        idle_late, busy_late, _ = _loop_lateness(again)
        flat_bytes = flat.stat().st_size

    rows += [
        Row("8. SQL GROUP BY symbol (count, VWAP), 1M recorded trades (vs flat JSONL + orjson)", "s",
            median(ours_group), base_group[0], target=0.1, target_ratio=10),
        Row("8. replay from Parquet, all 1M events (vs flat JSONL scan)", "s", full[0], base_full[0], target_ratio=3),
        Row("   same, JSONL replay (recorder.replay, today's path)", "s", jsonl_full[0], base_full[0]),
        Row(f"8. replay from Parquet, T.AAPL full scan ({one_got:,} events) (vs flat JSONL)", "s", median(one),
            base_one[0], target_ratio=3),
        Row("   same, JSONL replay (recorder.replay, today's path)", "s", jsonl_one[0], base_one[0]),
        Row(f"8. replay from Parquet, 1-min window, first {window_got:,} (vs flat JSONL scan)", "s", median(window),
            base_window[0], target=0.1),
        Row("8. disk per 1M recorded trades, Parquet (vs flat JSON lines)", "B", parquet_bytes, flat_bytes,
            target=25 * 2**20),
        Row("   disk per 1M recorded trades, recorder JSONL segments (vs flat JSON lines)", "B", jsonl_bytes,
            flat_bytes),
        Row(f"   compaction, 1M events in {len(results)} segments ({kept_raw} kept as text)", "ev/s",
            EVENTS / compact_s, None, HIGHER),
        Row("8. ingest (append + record) while compaction runs (vs ingest alone)", "ev/s", median(during),
            ingest_alone, HIGHER, target_ratio=0.9),
        Row("8. event-loop wakeup lateness while compaction runs, median and p99 (vs loop idle)", "s",
            median(busy_late), median(idle_late), ours_p99=quantile(busy_late, 0.99),
            baseline_p99=quantile(idle_late, 0.99)),
        Row("8. query_market_data tool, full 1,000-event buffer, every frame new (vs target)", "s", median(fresh),
            None, target=0.01, ours_p99=quantile(fresh, 0.99)),
        Row("8. query_market_data tool, full 1,000-event buffer, 1-3 frames new (vs target)", "s", median(steady),
            None, target=0.01, ours_p99=quantile(steady, 0.99)),
        Row("   same, every frame new, a full GC before each call (cold caches)", "s", median(cold_fresh), None,
            ours_p99=quantile(cold_fresh, 0.99)),
        Row("   same, 1-3 frames new, a full GC before each call (cold caches)", "s", median(cold_steady), None,
            ours_p99=quantile(cold_steady, 0.99)),
    ]  # fmt: skip
    return rows


def main() -> int:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"analytics benchmark - {os.cpu_count()} CPU(s), load average {load}")
    print(render(run()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
