"""4. Memory per 1,000 buffered events, after buffering 100,000 realistic events.

tracemalloc counts what is still allocated after the fill (and a full collection), so transient work is not
counted and what is counted is what the buffer keeps. Every variant allocates its own copy of the data inside the
traced window (each frame is copied or decoded there), so nothing is shared with the bench's input.

Ours: MarketStream.feed (frame classification, buffer append; recording off) of 20-event wire frames into a 100k
ring. Each frame is handed over as a fresh exact-size bytes object, as websockets' recv() returns it: orjson.dumps
output would not do, it keeps orjson's over-allocated buffer (about 8 KB for a 3 KB frame).
A second figure is the same buffer after reads: an agent paging through all of it (limit 10,000, since_seq) and
then polling with a filter, which fills the buffer's decode cache (and its per-frame index) to its budget.
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
PAGE = 10_000  # the tools' largest limit


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


def _fill_ours(wire: list[bytes], data_dir: Path, *, read: bool) -> StreamManager:
    manager = StreamManager(our_settings("ws://127.0.0.1:9", data_dir=data_dir, buffer_size=EVENTS))
    stream = manager.stream(MARKET)
    for raw in wire:
        stream.feed(bytes(memoryview(raw)))  # a copy, as the socket hands over its own buffer
    assert len(stream.buffer) == EVENTS
    if read:
        since, more = 0, True
        while more:
            page = manager.read(MARKET, limit=PAGE, since_seq=since)
            since, more = page.next_seq, page.more
        for _ in range(2):  # the second read builds the per-frame index of the cached frames
            manager.read(MARKET, limit=1000, channel_filter="T.AAPL")
    return manager


def run() -> list[Row]:
    from massive.websocket.models import Market, parse

    wire = [orjson.dumps(frame) for frame in chunks(make_events(EVENTS), FRAME_EVENTS)]
    vendor_log = logging.getLogger("bench.vendor")

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        ours = _retained(lambda: _fill_ours(wire, Path(tmp), read=False))
        ours_read = _retained(lambda: _fill_ours(wire, Path(tmp), read=True))

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
        Row("4. same, after paging through it all (vs list of dicts)", "B", ours_read / per_k, dicts / per_k,
            target=0.5 * 2**20),
    ]  # fmt: skip
