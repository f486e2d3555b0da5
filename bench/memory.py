"""4. Memory per 1,000 buffered events, after buffering 100,000 realistic events.

tracemalloc counts what is still allocated after the fill (and a full collection), so transient decode work is
not counted and what is counted is what the buffer keeps. Every variant allocates its own copy of the data inside
the traced window (each frame is encoded or decoded there), so nothing is shared with the bench's input.

Ours: MarketStream.feed (decode, buffer append; recording off) of 20-event wire frames into a 100k ring. Each
frame is handed over as a fresh exact-size bytes object, as websockets' recv() returns it: orjson.dumps output
would not do, it keeps orjson's over-allocated buffer (about 8 KB for a 3 KB frame).
Baselines: the same events as a plain list of dicts, and as the vendor client's model objects (EquityTrade...).
"""

from __future__ import annotations

import gc
import logging
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.common import MARKET, chunks, make_events, our_settings
from bench.report import Row
from mcp_polygon.streams.manager import StreamManager

EVENTS = 100_000
FRAME_EVENTS = 20


def _retained(fill: Callable[[], object]) -> int:
    """Bytes still allocated after `fill()`, with its result kept alive."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def run() -> list[Row]:
    from massive.websocket.models import Market, parse

    frames = list(chunks(make_events(EVENTS), FRAME_EVENTS))
    wire = [orjson.dumps(frame) for frame in frames]
    vendor_log = logging.getLogger("bench.vendor")

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        manager = StreamManager(our_settings("ws://127.0.0.1:9", data_dir=Path(tmp), buffer_size=EVENTS))
        stream = manager.stream(MARKET)

        def fill_ours():
            for raw in wire:
                stream.feed(bytes(memoryview(raw)))  # a copy: the socket's own buffer
            return stream

        ours = _retained(fill_ours)
        assert len(stream.buffer) == EVENTS

    def fill_dicts():
        out: list[dict] = []
        for raw in wire:
            out.extend(orjson.loads(raw))
        return out

    def fill_models():
        out: list = []
        for raw in wire:
            out.extend(parse(orjson.loads(raw), vendor_log, Market.Stocks))
        return out

    dicts = _retained(fill_dicts)
    models = _retained(fill_models)
    per_k = EVENTS / 1000
    return [
        Row("4. memory per 1,000 buffered events (vs list of dicts)", "B", ours / per_k, dicts / per_k,
            target=0.5 * 2**20),
        Row("4. memory per 1,000 buffered events (vs massive models)", "B", ours / per_k, models / per_k,
            target=0.5 * 2**20),
    ]  # fmt: skip
