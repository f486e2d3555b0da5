"""What every benchmark shares: the feed they use, realistic events, our client and the vendor's, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson

from mcp_polygon.config import Settings
from mcp_polygon.simulator import DEFAULT_API_KEY
from mcp_polygon.simulator.events import EventFactory
from mcp_polygon.streams.manager import StreamManager

MARKET = "stocks"
# A mixed feed: trades, quotes and both aggregates of the simulator's three wildcard tickers (12 streams), so a
# filter such as T.AAPL keeps one event in twelve.
TOPICS = ["T.*", "Q.*", "A.*", "AM.*"]
STREAMS = [(channel, ticker) for channel in ("T", "Q", "A", "AM") for ticker in ("AAPL", "MSFT", "NVDA")]
API_KEY = DEFAULT_API_KEY

# Keep the table readable: the vendor client logs reconnects and server statuses to stdout, ours logs them at INFO
# (which MCPServer's logging setup lets through once the read benchmark has built the app).
for _name in ("WebSocketClient", "mcp_polygon", "mcp_polygon.streams.wire"):
    logging.getLogger(_name).setLevel(logging.WARNING if _name.startswith("mcp") else logging.CRITICAL)


# -- data ----------------------------------------------------------------------------------------------------------


def make_events(n: int, *, seed: int = 7, start_ns: int | None = None, step_ns: int = 1_000_000) -> list[dict]:
    """`n` realistic stock events cycling over STREAMS, with event times `step_ns` apart."""
    factory = EventFactory(seed)
    streams = itertools.cycle(STREAMS)
    t = time.time_ns() if start_ns is None else start_ns
    out = []
    for i in range(n):
        channel, ticker = next(streams)
        out.append(factory.event(MARKET, channel, ticker, t + i * step_ns))
    return out


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def scan_flat_jsonl(path: Path, from_ns: int, to_ns: int, sym: str | None = None) -> list[dict]:
    """Baseline 3: one event + its receive time per line, every line parsed with orjson; the events received
    from_ns <= recv_ns <= to_ns (and, with `sym`, only its trades)."""
    out = []
    loads = orjson.loads
    with open(path, "rb") as f:
        for line in f:
            event = loads(line)
            if from_ns <= event["recv_ns"] <= to_ns and (sym is None or (event["ev"] == "T" and event["sym"] == sym)):
                out.append(event)
    return out


# -- statistics ------------------------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (q in [0, 1]); enough for medians and p99s of a few hundred to a few 10k samples."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return quantile(values, 0.5)


async def timed(
    call: Callable[[], object],
    repeat: int,
    *,
    warmup: int = 0,
    setup: Callable[[], object] | None = None,
    collect: bool = False,
    keep=None,
) -> tuple[list[float], object]:
    """Seconds per call of `call` (awaited when it returns an awaitable), `repeat` times after `warmup` untimed
    calls, and keep(last result). `setup()` runs untimed before each call. collect=True runs a full GC before each
    call and drops each result before the next: for calls that build a million objects, so none pays for the
    garbage of the one before."""
    kept = None
    out = []
    clock = time.perf_counter
    for i in range(warmup + repeat):
        if setup is not None:
            setup()
        if collect:
            kept = None
            gc.collect()
        t0 = clock()
        result = call()
        if inspect.isawaitable(result):
            result = await result
        if i >= warmup:
            out.append(clock() - t0)
        kept = keep(result) if keep is not None else None
        del result
    return out, kept


async def wait_until(predicate: Callable[[], bool], within: float, poll: float = 0.001) -> float:
    """Poll `predicate` every `poll` seconds; return perf_counter() when it first held. TimeoutError after `within`.

    Polling, not an Event: what the benchmarks wait on are plain counters of the code under test, which signals
    nothing, and a wake-up every millisecond costs the measured loop well under 1%."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - see the docstring
            await asyncio.sleep(poll)
    return time.perf_counter()


# -- clients ---------------------------------------------------------------------------------------------------------


def our_settings(url: str, *, data_dir: Path, record: bool = False, buffer_size: int = 100_000) -> Settings:
    return Settings(api_key=API_KEY, ws_url=url, data_dir=data_dir, record=record, buffer_size=buffer_size)


@contextlib.asynccontextmanager
async def our_stream(settings: Settings, topics: list[str] = TOPICS, *, before_start=None):
    """A StreamManager streaming `topics` on MARKET; yields (manager, market stream). `before_start(stream)` runs
    before the connection exists (to install a hook)."""
    manager = StreamManager(settings)
    try:
        stream = manager.stream(MARKET)
        if before_start is not None:
            before_start(stream)
        outcome = await manager.start(MARKET, topics)
        if outcome.error or outcome.rejected or outcome.pending:
            raise RuntimeError(f"our client did not subscribe: {outcome}")
        yield manager, stream
    finally:
        await manager.aclose()


class JsonSpy:
    """A `custom_json` for massive.WebSocketClient: the vendor's own stdlib json, remembering the last decoded
    frame so a handler can read fields (sim_ns) that the vendor's models drop."""

    dumps = staticmethod(json.dumps)

    def __init__(self) -> None:
        self.last = None

    def loads(self, text):
        self.last = json.loads(text)
        return self.last


@contextlib.asynccontextmanager
async def vendor_stream(port: int, handler: Callable[[list], Awaitable[None]], topics: list[str] = TOPICS, **kw):
    """massive.WebSocketClient on ws://127.0.0.1:<port>/stocks, running `handler` (its normal parsed-model path)."""
    from massive import WebSocketClient

    client = WebSocketClient(
        api_key=API_KEY,
        feed=f"127.0.0.1:{port}",  # the vendor builds ws[s]://<feed>/<market>
        market=MARKET,
        secure=False,
        subscriptions=topics,
        max_reconnects=None,
        **kw,
    )
    task = asyncio.create_task(client.connect(handler))
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
