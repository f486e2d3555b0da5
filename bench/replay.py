"""3. Replay of 1,000,000 recorded events: a 1-minute window and a full scan.

Ours: 1M events written through Recorder.write (the path every received frame takes) with synthetic receive
times spread over one hour, then StreamManager.replay (segment pick by file name, bisection by seeking, decode of
the lines in range). Baseline: the same events as one flat JSONL file, one event per line with its time, scanned
by parsing every line (orjson, so the gap is the method, not the JSON library). The files were just written, so
both read from the page cache.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import MARKET, chunks, make_events, median, our_settings, scan_flat_jsonl, timed
from bench.report import HIGHER, Row
from mcp_polygon.streams.manager import StreamManager

EVENTS = 1_000_000
FRAME_EVENTS = 20
SPAN_NS = 3600 * 10**9  # one hour of receive times
WINDOW_NS = 60 * 10**9
POOL_FRAMES = 2000  # distinct frames, cycled: content does not matter for the cost, only its shape


def _frames() -> list[bytes]:
    events = make_events(POOL_FRAMES * FRAME_EVENTS)
    return [orjson.dumps(frame) for frame in chunks(events, FRAME_EVENTS)]


def _write_ours(manager: StreamManager, pool: list[bytes], start_ns: int) -> float:
    """Write EVENTS events through the recorder; returns events/s."""
    recorder = manager.stream(MARKET).recorder
    n_frames = EVENTS // FRAME_EVENTS
    step = SPAN_NS // n_frames
    t0 = time.perf_counter()
    for i, raw in zip(range(n_frames), itertools.cycle(pool), strict=False):
        recorder.write(raw, FRAME_EVENTS, start_ns + i * step)
    recorder.flush()
    return EVENTS / (time.perf_counter() - t0)


def _write_flat(path: Path, pool: list[bytes], start_ns: int) -> float:
    """The baseline's file: one JSON object per line, the event plus its receive time."""
    n_frames = EVENTS // FRAME_EVENTS
    step = SPAN_NS // n_frames
    decoded = [orjson.loads(raw) for raw in pool]
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for i, events in zip(range(n_frames), itertools.cycle(decoded), strict=False):
            ns = start_ns + i * step
            for k, event in enumerate(events):
                f.write(orjson.dumps({"recv_ns": ns + k, **event}) + b"\n")
    return EVENTS / (time.perf_counter() - t0)


def _summary(result) -> tuple[int, bool]:
    return len(result.events), result.more


async def run() -> list[Row]:
    pool = _frames()
    start_ns = time.time_ns() - 2 * SPAN_NS
    w_from = start_ns + SPAN_NS // 2
    w_to = w_from + WINDOW_NS - 1
    end_ns = start_ns + SPAN_NS + EVENTS
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        manager = StreamManager(our_settings("ws://127.0.0.1:9", data_dir=Path(tmp), record=True))
        try:
            write_ours = _write_ours(manager, pool, start_ns)
            flat = Path(tmp) / "flat.jsonl"
            write_flat = _write_flat(flat, pool, start_ns)

            def replay(from_ns: int, to_ns: int, limit: int, channel_filter: str | None = None):
                return lambda: manager.replay(MARKET, from_ns, to_ns, limit=limit, channel_filter=channel_filter)

            # One full collection before each call, and no result of a previous call alive during the next: a
            # million live events would make the next call pay for their garbage collection.
            opts = {"collect": True, "keep": _summary}
            first_k, page = await timed(replay(w_from, w_to, 1000), 20, warmup=1, **opts)
            window, got = await timed(replay(w_from, w_to, EVENTS), 20, **opts)
            full, everything = await timed(replay(0, end_ns, 2 * EVENTS), 1, **opts)
            aapl, aapl_got = await timed(replay(0, end_ns, EVENTS, "T.AAPL"), 1, **opts)
            opts["keep"] = len
            base_window, base_got = await timed(lambda: scan_flat_jsonl(flat, w_from, w_to), 1, **opts)
            base_full, base_all = await timed(lambda: scan_flat_jsonl(flat, 0, end_ns), 1, **opts)
            base_aapl, base_aapl_got = await timed(lambda: scan_flat_jsonl(flat, 0, end_ns, "AAPL"), 1, **opts)
        finally:
            await manager.aclose()
    # Same answers, or the comparison means nothing.
    assert everything == (EVENTS, False) and base_all == EVENTS, (everything, base_all)
    assert got == (base_got, False) and page == (1000, True), (got, base_got, page)
    assert aapl_got == (base_aapl_got, False), (aapl_got, base_aapl_got)
    n_window = got[0]
    return [
        Row(f"3. replay 1-min window, first 1000 of {n_window:,} (vs flat JSONL scan)", "s", median(first_k),
            base_window[0], target=0.1),
        Row(f"3. replay 1-min window, all {n_window:,} events (vs flat JSONL scan)", "s", median(window),
            base_window[0], target=0.1),
        Row("3. replay full scan, all 1M events (vs flat JSONL scan)", "s", full[0], base_full[0]),
        Row(f"3. replay full scan, T.AAPL ({aapl_got[0]:,} events) (vs flat JSONL)", "s", aapl[0], base_aapl[0]),
        Row("   recorder write, 1M events (vs flat JSONL writer)", "ev/s", write_ours, write_flat, HIGHER),
    ]  # fmt: skip
