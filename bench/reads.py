"""2. `get_*_stream_messages` latency: a filtered read of up to 1,000 events from a full buffer.

On a buffer filled through the real decode path (MarketStream.feed) of the app that `build_app` assembles:
- the core: StreamManager.read(limit=1000, channel_filter="T.AAPL"): filter parsing, the buffer's raw-frame scan
  (needle pre-check, decode, match). Baseline: the newest 1,000 matches of a list comprehension over the same
  events kept as a list of dicts.
- the tool: get_stocks_stream_messages through MCPServer.call_tool (argument validation, read, CSV text), i.e.
  everything but the JSON-RPC transport. Baseline: the same list comprehension plus json.dumps of its result.
"""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path

import orjson

from bench.common import MARKET, chunks, make_events, median, our_settings, quantile, timed
from bench.report import Row
from mcp_polygon.server import build_app

FRAME_EVENTS = 20  # events per wire frame: a busy tick of the real feed, not a firehose batch
LIMIT = 1000
FILTER = "T.AAPL"
SIZES = ((1_000, 300), (100_000, 30))  # (buffer size, timed reads)
TOOL = f"get_{MARKET}_stream_messages"


def _naive(events: list[dict]) -> list[dict]:
    return [e for e in events if e["ev"] == "T" and e["sym"] == "AAPL"][-LIMIT:]


async def _ours(frames: list[bytes], size: int, repeat: int, data_dir: Path) -> tuple[list, list, list]:
    """(manager.read times, tool call times, the events read)."""
    settings = our_settings("ws://127.0.0.1:9", data_dir=data_dir, buffer_size=size)
    async with build_app(settings.with_overrides(toolsets=frozenset({MARKET}))) as app:
        stream = app.streams.stream(MARKET)
        for frame in frames:
            stream.feed(frame)
        assert len(stream.buffer) == size, "the buffer should be full"
        # Time ours while no decoded copy of the data is alive: 100k dicts held by the bench would make every
        # garbage collection during our read (which allocates) walk them, a cost the server does not have.
        gc.collect()
        core, _ = await timed(lambda: app.streams.read(MARKET, limit=LIMIT, channel_filter=FILTER), repeat, warmup=3)
        args = {"limit": LIMIT, "channel_filter": FILTER}
        result = await app.server.call_tool(TOOL, args)
        assert not result.is_error and f"{MARKET}:" in result.content[0].text, result
        tool, _ = await timed(lambda: app.server.call_tool(TOOL, args), repeat, warmup=3)
        got = [e for _, _, e in app.streams.read(MARKET, limit=LIMIT, channel_filter=FILTER).events]
    return core, tool, got


async def run() -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp:
        for size, repeat in SIZES:
            # 10% more than fits: the ring has wrapped, as in real use.
            frames = [orjson.dumps(f) for f in chunks(make_events(size + size // 10), FRAME_EVENTS)]
            core, tool, got = await _ours(frames, size, repeat, Path(tmp))
            kept = [e for frame in frames for e in orjson.loads(frame)][-size:]
            assert got == _naive(kept), "ours and the baseline must return the same events"
            gc.collect()
            base, _ = await timed(lambda k=kept: _naive(k), repeat, warmup=3)
            base_tool, _ = await timed(lambda k=kept: json.dumps(_naive(k)), repeat, warmup=3)
            del kept
            what = f"{FILTER} limit {LIMIT}, buffer {size:,} ({len(got)} hits)"
            for label, ours, baseline in (("read", core, base), ("tool", tool, base_tool)):
                rows.append(Row(f"2. {label} {what} median", "s", median(ours), median(baseline), target=1e-3))
                rows.append(Row(f"2. {label} {what} p99", "s", quantile(ours, 0.99), quantile(baseline, 0.99),
                                target=1e-3))  # fmt: skip
    return rows
