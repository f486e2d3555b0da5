"""The shared stream against a real redis-server: one seq per market for every reader, fencing of a deposed owner,
batches appended once, the MAXLEN cap and the gaps it leaves, resuming from a seq, and "Redis came back empty"."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from mcp_polygon.sharedfeed import (
    FeedKeys,
    FeedReader,
    LeaseGrant,
    LeaseLost,
    MarketLease,
    RedisLink,
    SharedFrame,
    SharedStream,
)
from redis_server import RedisServer

KEYS = FeedKeys("test", "stocks")


def frame(*tickers: str, ev: str = "T") -> tuple[bytes, int, int]:
    events = [
        {"ev": ev, "sym": ticker, "p": 100.0 + i, "s": 10, "t": 1_700_000_000_000 + i}
        for i, ticker in enumerate(tickers)
    ]
    return orjson.dumps(events), len(events), time.time_ns()


async def grant_for(link: RedisLink, holder: str = "owner", ttl: float = 5.0) -> LeaseGrant:
    grant = await MarketLease(link, KEYS, holder, ttl=ttl).acquire()
    assert grant is not None
    return grant


async def read_until(reader: FeedReader, last_seq: int, within: float = 5.0) -> list[SharedFrame]:
    frames: list[SharedFrame] = []
    deadline = time.monotonic() + within
    while reader.last_seq < last_seq:
        assert time.monotonic() < deadline, f"reader stuck at {reader.last_seq}, wanted {last_seq}"
        batch = await reader.read()
        assert batch.reset is None
        frames.extend(batch.frames)
    return frames


@contextlib.asynccontextmanager
async def closing(*readers: FeedReader) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for reader in readers:
            await reader.aclose()


async def test_every_reader_sees_the_same_frames_with_the_same_seqs(link: RedisLink) -> None:
    stream = SharedStream(link, KEYS)
    writer = stream.writer(await grant_for(link))
    readers = [stream.reader(block=0.2) for _ in range(3)]
    async with closing(*readers):
        first = await writer.append([frame("AAPL"), frame("MSFT", "NVDA", "AAPL")])
        assert (first.first_seq, first.last_seq) == (1, 4)
        flusher = asyncio.create_task(writer.run())
        try:
            for i in range(50):
                writer.offer(*frame(*(["AAPL"] * (i % 4 + 1))))
            expected_last = 4 + sum(i % 4 + 1 for i in range(50))
            seen = [await read_until(reader, expected_last) for reader in readers]
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
    as_tuples = [[(f.first_seq, f.count, f.recv_ns, f.raw) for f in frames] for frames in seen]
    assert as_tuples[0] == as_tuples[1] == as_tuples[2]
    seqs = [(f.first_seq, f.last_seq) for f in seen[0]]
    assert seqs[0] == (1, 1) and seqs[1] == (2, 4)
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(seqs))  # no gap, no overlap
    assert seqs[-1][1] == expected_last == writer.stats.events
    assert orjson.loads(seen[0][1].raw)[1]["sym"] == "NVDA"  # the vendor's bytes, as received


async def test_a_deposed_owner_can_never_append(link: RedisLink) -> None:
    stream = SharedStream(link, KEYS)
    old = stream.writer(await grant_for(link, "old-owner", ttl=0.2))
    await old.append([frame("AAPL")])
    deadline = time.monotonic() + 3.0
    while (new_grant := await MarketLease(link, KEYS, "new-owner").acquire()) is None:  # the old lease expires
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    new = stream.writer(new_grant)
    await new.append([frame("MSFT")])
    with pytest.raises(
        LeaseLost, match=r"^This process no longer owns the stocks feed: .*; it reads the shared stream"
    ):
        await old.append([frame("NVDA")])
    # offer() + run(): the fenced writer stops with LeaseLost and refuses anything more.
    old.offer(*frame("NVDA"))
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(old.run(), 2.0)
    with pytest.raises(LeaseLost):
        old.offer(*frame("NVDA"))
    frames = await stream.frames_after(0)
    assert [(f.first_seq, orjson.loads(f.raw)[0]["sym"]) for f in frames] == [(1, "AAPL"), (2, "MSFT")]


async def test_a_batch_sent_twice_is_appended_once(link: RedisLink) -> None:
    """The reply to an append can be lost after Redis ran it; the writer sends the batch again with its id."""
    stream = SharedStream(link, KEYS)
    grant = await grant_for(link)
    batch = [frame("AAPL"), frame("MSFT")]
    once = await stream._append(grant, batch, batch_id=f"{grant.value}#1")
    again = await stream._append(grant, batch, batch_id=f"{grant.value}#1")
    assert once == again
    assert (await stream.head()).frames == 2


@contextlib.asynccontextmanager
async def reply_losing_proxy(target_port: int) -> AsyncIterator[tuple[int, list[int]]]:
    """Forwards to Redis; while armed ([1]), lets the next EVALSHA through, then cuts the connection before the reply
    comes back: Redis ran the script, the client never heard. Yields (port, arm)."""
    arm = [0]
    cutting = [False]
    open_writers: list[asyncio.StreamWriter] = []

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, requests: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not requests and cutting[0]:
                    continue  # the reply to the armed EVALSHA: never forwarded
                if requests and arm[0] and b"EVALSHA" in data:
                    arm[0], cutting[0] = 0, True
                writer.write(data)
                await writer.drain()
                if requests and cutting[0]:
                    await asyncio.sleep(0.1)  # Redis runs the script meanwhile
                    for w in open_writers:
                        w.transport.abort()
                    cutting[0] = False
                    return
        writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", target_port)
        open_writers.extend((client_writer, redis_writer))
        await asyncio.gather(
            pump(client_reader, redis_writer, requests=True), pump(redis_reader, client_writer, requests=False)
        )

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], arm
    finally:
        for w in open_writers:
            w.transport.abort()
        server.close()


async def test_a_batch_whose_reply_was_lost_is_appended_once(redis: RedisServer) -> None:
    async with reply_losing_proxy(redis.port) as (port, arm):
        link = RedisLink(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            stream = SharedStream(link, KEYS)
            writer = stream.writer(await grant_for(link))
            await writer.append([frame("AAPL")])
            arm[0] = 1
            flusher = asyncio.create_task(writer.run())
            try:
                writer.offer(*frame("MSFT"))
                await asyncio.wait_for(_until(lambda: writer.stats.frames == 2), 8.0)
                assert arm[0] == 0  # the reply of the MSFT append was really lost
            finally:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
            frames = await stream.frames_after(0)
            assert [orjson.loads(f.raw)[0]["sym"] for f in frames] == ["AAPL", "MSFT"]
        finally:
            await link.aclose()


async def test_a_writer_rides_out_a_redis_that_stops_answering(link: RedisLink) -> None:
    stream = SharedStream(link, KEYS)
    writer = stream.writer(await grant_for(link, ttl=10.0))
    flusher = asyncio.create_task(writer.run())
    try:
        writer.offer(*frame("AAPL"))
        await asyncio.wait_for(_until(lambda: writer.stats.frames == 1), 3.0)
        # Redis stops answering writes for longer than a call may wait: the append times out and is sent again.
        await link.run(lambda r: r.execute_command("CLIENT", "PAUSE", 1500, "WRITE"))
        for ticker in ("MSFT", "NVDA", "AMZN"):
            writer.offer(*frame(ticker))
        await asyncio.wait_for(_until(lambda: writer.stats.frames == 4), 8.0)
        assert writer.stats.resends >= 1
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
    frames = await stream.frames_after(0)
    assert [orjson.loads(f.raw)[0]["sym"] for f in frames] == ["AAPL", "MSFT", "NVDA", "AMZN"]
    assert [f.first_seq for f in frames] == [1, 2, 3, 4]


async def _until(predicate: Callable[[], bool], within: float = 8.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_maxlen_caps_the_stream_and_a_slow_reader_is_told_of_the_gap(link: RedisLink) -> None:
    stream = SharedStream(link, KEYS, max_frames=100)
    writer = stream.writer(await grant_for(link))
    reader = stream.reader(block=0.2, count=10)
    async with closing(reader):
        await writer.append([frame("AAPL") for _ in range(10)])
        first = await reader.read()
        assert [f.first_seq for f in first.frames] == list(range(1, 11)) and first.gap == 0
        for _ in range(10):
            await writer.append([frame("AAPL") for _ in range(100)])
        head = await stream.head()
        assert head.head_seq == 1010
        assert head.frames < 300  # MAXLEN ~ 100: Redis trims whole nodes of 100 entries, so "about" 100
        assert head.oldest_seq is not None and head.oldest_seq > 11
        late = await reader.read()
        assert late.frames[0].first_seq == head.oldest_seq
        assert late.gap == head.oldest_seq - 11  # exactly the events trimmed before the reader got to them


async def test_a_reader_resumes_from_a_seq_inside_a_frame(link: RedisLink) -> None:
    stream = SharedStream(link, KEYS)
    writer = stream.writer(await grant_for(link))
    await writer.append([frame("A", "B", "C"), frame("D", "E"), frame("F")])  # seqs 1-3, 4-5, 6
    reader = stream.reader(after_seq=4, block=0.2)
    async with closing(reader):
        batch = await reader.read()
    # The frame holding seq 5 comes first (it starts at 4: the caller skips what it already has).
    assert [(f.first_seq, f.count) for f in batch.frames] == [(4, 2), (6, 1)]
    assert [(f.first_seq, f.count) for f in await stream.frames_after(3)] == [(4, 2), (6, 1)]
    assert [(f.first_seq, f.count) for f in await stream.frames_after(5)] == [(6, 1)]
    assert await stream.frames_after(6) == []


async def test_redis_coming_back_empty_is_reported_as_a_reset(redis: RedisServer, link: RedisLink) -> None:
    stream = SharedStream(link, KEYS)
    writer = stream.writer(await grant_for(link))
    await writer.append([frame("AAPL", "MSFT"), frame("NVDA")])
    reader = stream.reader(block=0.2)
    async with closing(reader):
        before = await read_until(reader, 3)
        old_epoch = before[0].epoch
        await redis.restart_empty()
        with pytest.raises(LeaseLost):  # the lease went with the data: the old owner is fenced off
            await writer.append([frame("AMZN")])
        new_writer = stream.writer(await grant_for(link, "owner"))
        await new_writer.append([frame("TSLA")])
        batches = []
        deadline = time.monotonic() + 5.0
        while not any(b.frames for b in batches):
            assert time.monotonic() < deadline
            with contextlib.suppress(Exception):
                batches.append(await reader.read())
        resets = [b.reset for b in batches if b.reset is not None]
        assert len(resets) == 1
        assert resets[0].previous_epoch == old_epoch and resets[0].last_seq == 3
        new_frames = [f for b in batches for f in b.frames]
        assert [(f.first_seq, orjson.loads(f.raw)[0]["sym"]) for f in new_frames] == [(1, "TSLA")]
        assert new_frames[0].epoch != old_epoch and reader.epoch == new_frames[0].epoch


async def test_a_reader_resuming_with_an_old_epoch_is_told_of_the_reset(link: RedisLink) -> None:
    stream = SharedStream(link, KEYS)
    writer = stream.writer(await grant_for(link))
    await writer.append([frame("AAPL")])
    reader = stream.reader(after_seq=500, epoch="an-epoch-from-before", block=0.2)
    async with closing(reader):
        batch = await reader.read()
        assert batch.reset is not None and batch.reset.last_seq == 500
        assert [f.first_seq for f in (await reader.read()).frames] == [1]


async def test_a_frame_without_events_is_refused(link: RedisLink) -> None:
    writer = SharedStream(link, KEYS).writer(await grant_for(link))
    with pytest.raises(ValueError, match="at least one event"):
        await writer.append([(b"[]", 0, 1)])


async def test_frames_a_writer_had_to_drop_show_as_a_gap_to_readers(link: RedisLink) -> None:
    stream = SharedStream(link, KEYS)
    writer = stream.writer(await grant_for(link), max_pending_frames=3)
    for ticker in ("A", "B", "C", "D", "E"):  # Redis is "slow": nothing is sent yet, the oldest two go
        writer.offer(*frame(ticker, ticker))
    assert writer.stats.dropped_events == 4 and writer.stats.pending_frames == 3
    reader = stream.reader(after_seq=0, block=0.2)
    async with closing(reader):
        await writer.append([frame("first")])  # seq 1: the reader's position before the drop
        assert [f.first_seq for f in (await reader.read()).frames] == [1]
        flusher = asyncio.create_task(writer.run())
        try:
            batch = await reader.read()
            while not batch.frames:
                batch = await reader.read()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
    assert batch.gap == 4  # the dropped events took their seqs, so no reader mistakes the rest for complete
    assert [(f.first_seq, orjson.loads(f.raw)[0]["sym"]) for f in batch.frames] == [(6, "C"), (8, "D"), (10, "E")]


async def test_follow_rides_out_redis_coming_back_empty(redis: RedisServer, link: RedisLink) -> None:
    stream = SharedStream(link, KEYS)
    await stream.writer(await grant_for(link)).append([frame("AAPL")])
    reader = stream.reader(block=0.2)
    batches = reader.follow()
    async with closing(reader):
        assert [f.first_seq for f in (await anext(batches)).frames] == [1]
        await redis.restart_empty()
        await stream.writer(await grant_for(link)).append([frame("MSFT"), frame("NVDA")])
        after = await asyncio.wait_for(anext(batches), 5.0)
        assert after.reset is not None and after.reset.last_seq == 1
        frames = list(after.frames) or list((await asyncio.wait_for(anext(batches), 5.0)).frames)
        assert [(f.first_seq, orjson.loads(f.raw)[0]["sym"]) for f in frames] == [(1, "MSFT"), (2, "NVDA")]
        await batches.aclose()
