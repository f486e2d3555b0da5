"""One shared stream per market: the owner appends frames to a Redis Stream, every process reads them.

An entry is one upstream frame, stored as the vendor sent it: fields `n` (event count), `t` (receive time, Unix
ns), `e` (epoch) and `r` (the raw JSON array). Its entry ID is "<seq of its first event>-0": the append script
takes the seq numbers from a per-market counter (INCRBY count), so `since_seq` means the same in every process,
and "the frame holding seq N" is one XREVRANGE away.

The append script refuses to write unless the caller's lease grant is the current one (fencing: a deposed owner
never appends, so nothing is written twice after a failover), and it is idempotent per batch (a batch re-sent
after a lost reply is not appended twice).

When the counter is missing (a Redis that came back empty), the next append starts a new *epoch*: a random id
stored beside the counter and in every entry. A reader that sees the epoch change reports a `FeedReset`, which
the manager shows like a server restart: seq numbers started again from 1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from mcp_polygon.sharedfeed.errors import LeaseLost, RedisUnavailable
from mcp_polygon.sharedfeed.keys import FeedKeys
from mcp_polygon.sharedfeed.lease import LeaseGrant
from mcp_polygon.sharedfeed.link import RedisLink

DEFAULT_MAX_FRAMES = 10_000  # MAXLEN ~ of each market's stream, in frames (each holds one event or more)
DEFAULT_BLOCK = 1.0  # seconds a reader's XREAD BLOCK waits before it returns an empty batch
MAX_BATCH_FRAMES = 512  # frames per append script call
MAX_BATCH_BYTES = 1 << 20  # raw bytes per append script call: keeps one call well under Redis's limits
MAX_PENDING_FRAMES = 20_000  # frames a writer holds while Redis is slow or away; older ones are dropped first

# KEYS: lease, seq, epoch, frames, last batch.
# ARGV: lease value, maxlen, fresh epoch, batch id, skip, then (count, recv ns, raw) per frame.
# -> {0} fenced; {1, first, last, epoch} appended; {2, first, last, epoch} this batch was appended before.
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
local last = redis.call('GET', KEYS[5])
if last then
  local id, first_done, last_done, epoch_done = string.match(last, '^(%S+) (%d+) (%d+) (%S+)$')
  if id == ARGV[4] then
    return {2, tonumber(first_done), tonumber(last_done), epoch_done}
  end
end
local epoch = redis.call('GET', KEYS[3])
local seq = redis.call('GET', KEYS[2])
if (not epoch) or (not seq) then
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
  redis.call('DEL', KEYS[4])
  seq = 0
else
  seq = tonumber(seq)
end
seq = seq + tonumber(ARGV[5])
local first = seq + 1
for i = 6, #ARGV, 3 do
  local id = string.format('%d', seq + 1) .. '-0'
  seq = seq + tonumber(ARGV[i])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], id,
             'n', ARGV[i], 't', ARGV[i + 1], 'e', epoch, 'r', ARGV[i + 2])
end
local last_text = string.format('%d', seq)
redis.call('SET', KEYS[2], last_text)
redis.call('SET', KEYS[5], ARGV[4] .. ' ' .. string.format('%d', first) .. ' ' .. last_text .. ' ' .. epoch)
return {1, first, seq, epoch}
"""


@dataclass(frozen=True, slots=True)
class SharedFrame:
    """One upstream frame as stored: events first_seq .. first_seq + count - 1 of `epoch`, raw JSON array bytes."""

    first_seq: int
    count: int
    recv_ns: int
    raw: bytes
    epoch: str

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass(frozen=True)
class FeedReset:
    """The stream a reader followed is gone (Redis came back empty): seq numbers started again in a new epoch.

    The manager reports it like a restart: cursors up to `last_seq` of `previous_epoch` mean nothing now.
    `epoch` is None while nobody has appended to the new stream yet.
    """

    previous_epoch: str
    epoch: str | None
    last_seq: int


@dataclass(frozen=True)
class FeedBatch:
    """What one read returned, oldest first.

    `reset`, when set, happened before these frames. `gap` counts events between the reader's previous position
    and these frames that it will never see (trimmed by MAXLEN before it read them, or dropped by a writer that
    Redis could not keep up with). The first frame of a reader started with `after_seq` may begin before it.
    """

    frames: tuple[SharedFrame, ...]
    reset: FeedReset | None = None
    gap: int = 0


@dataclass(frozen=True)
class AppendResult:
    first_seq: int  # of the batch's first event (after any skipped ones)
    last_seq: int
    epoch: str


@dataclass(frozen=True)
class StreamHead:
    """The shared stream's state, for status."""

    epoch: str | None
    head_seq: int  # newest seq appended in this epoch (0: none)
    oldest_seq: int | None  # first seq of the oldest frame still held
    frames: int  # entries held


@dataclass(frozen=True)
class WriterStats:
    frames: int
    events: int
    dropped_events: int  # events offered while too many frames were pending; readers see them as a gap
    pending_frames: int
    resends: int  # batches sent again after Redis trouble (appended once all the same)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _first_seq_of(entry_id: bytes | str) -> int:
    return int(_text(entry_id).partition("-")[0])


def _frame(entry_id: bytes | str, fields: dict[Any, Any]) -> SharedFrame | None:
    try:
        return SharedFrame(
            first_seq=_first_seq_of(entry_id),
            count=int(fields[b"n"]),
            recv_ns=int(fields[b"t"]),
            raw=fields[b"r"],
            epoch=_text(fields[b"e"]),
        )
    except (KeyError, ValueError):
        return None  # not one of ours: skip it rather than shift anybody's seq numbers


def _frames(entries: object) -> list[SharedFrame]:
    """Frames from an XRANGE/XREVRANGE reply (or one stream's part of an XREAD reply): [(id, {field: value})]."""
    frames: list[SharedFrame] = []
    if not isinstance(entries, list | tuple):
        return frames
    for entry in entries:
        if isinstance(entry, list | tuple) and len(entry) == 2:
            entry_id, fields = entry
            if isinstance(entry_id, bytes | str) and isinstance(fields, dict):
                frame = _frame(entry_id, fields)
                if frame is not None:
                    frames.append(frame)
    return frames


def _xread_entries(reply: object) -> object:
    """The one stream's entries from an XREAD reply, in the RESP2 shape ([[key, entries]]) or RESP3's ({key: ...})."""
    if isinstance(reply, dict):
        for value in reply.values():
            return value[0] if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list) else value
        return []
    if isinstance(reply, list | tuple) and reply and isinstance(reply[0], list | tuple) and len(reply[0]) == 2:
        return reply[0][1]
    return []


def _last_entry_id(entries: object) -> str | None:
    if isinstance(entries, list | tuple) and entries:
        last = entries[-1]
        if isinstance(last, list | tuple) and last and isinstance(last[0], bytes | str):
            return _text(last[0])
    return None


class SharedStream:
    """One market's shared stream: status, reads by seq, and the writer and readers built on it."""

    def __init__(self, link: RedisLink, keys: FeedKeys, *, max_frames: int = DEFAULT_MAX_FRAMES) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.link = link
        self.keys = keys
        self.max_frames = max_frames
        self._append_script = link.client.register_script(_APPEND)

    @property
    def market(self) -> str:
        return self.keys.market

    @property
    def last_batch_key(self) -> str:
        return f"{self.keys.base}:lastbatch"

    def writer(self, grant: LeaseGrant, *, max_pending_frames: int = MAX_PENDING_FRAMES) -> FeedWriter:
        return FeedWriter(self, grant, max_pending_frames=max_pending_frames)

    def reader(
        self, *, after_seq: int = 0, epoch: str | None = None, block: float = DEFAULT_BLOCK, count: int = 1000
    ) -> FeedReader:
        return FeedReader(self, after_seq=after_seq, epoch=epoch, block=block, count=count)

    async def head(self) -> StreamHead:
        async def read(r: Redis) -> StreamHead:
            pipe = r.pipeline(transaction=True)
            pipe.get(self.keys.epoch)
            pipe.get(self.keys.seq)
            pipe.xrange(self.keys.frames, "-", "+", count=1)
            pipe.xlen(self.keys.frames)
            epoch, seq, oldest, length = await pipe.execute()
            return StreamHead(
                epoch=_text(epoch) if epoch is not None else None,
                head_seq=int(seq) if seq is not None else 0,
                oldest_seq=held[0].first_seq if (held := _frames(oldest)) else None,
                frames=int(length),
            )

        return await self.link.run(read)

    async def epoch(self) -> str | None:
        value = await self.link.run(lambda r: r.get(self.keys.epoch))
        return _text(value) if value is not None else None

    async def start_id_after(self, seq: int) -> str:
        """The entry ID to XREAD/XRANGE from (exclusive) so the first frame returned holds seq + 1."""
        if seq <= 0:
            return "0-0"
        entries = await self.link.run(lambda r: r.xrevrange(self.keys.frames, f"{seq + 1}-0", "-", count=1))
        found = _frames(entries)
        if found:
            frame = found[0]
            if frame.last_seq >= seq + 1:
                return f"{frame.first_seq - 1}-0"  # IDs are "<n>-0": nothing lies between (F-1)-0 and F-0
        return f"{seq}-0"

    async def frames_after(self, seq: int, limit: int = 1000) -> list[SharedFrame]:
        """Up to `limit` frames holding events after `seq`, oldest first (the first may start before seq + 1)."""
        start = await self.start_id_after(seq)
        entries = await self.link.run(lambda r: r.xrange(self.keys.frames, f"({start}", "+", count=limit))
        return _frames(entries)

    async def _append(
        self, grant: LeaseGrant, frames: Sequence[tuple[bytes, int, int]], *, batch_id: str, skip: int = 0
    ) -> AppendResult:
        args: list[bytes | str | int] = [grant.value, self.max_frames, secrets.token_hex(6), batch_id, skip]
        for raw, count, recv_ns in frames:
            if count < 1:
                raise ValueError("a frame must hold at least one event")
            args.extend((count, recv_ns, raw))
        keys = [self.keys.lease, self.keys.seq, self.keys.epoch, self.keys.frames, self.last_batch_key]
        reply = await self.link.run(lambda r: self._append_script(keys=keys, args=args, client=r))
        if int(reply[0]) == 0:
            raise LeaseLost(self.market, "its lease expired or another process took it over")
        return AppendResult(first_seq=int(reply[1]), last_seq=int(reply[2]), epoch=_text(reply[3]))


class FeedWriter:
    """The owner's side: frames go into Redis in batches, off the hot path, while the grant is current.

    `offer()` is synchronous and O(1), for the socket reader's hot path; `run()` (a task) sends what was offered
    in batches of up to 512 frames per script call. `append()` sends one batch at once and returns its seqs.
    """

    def __init__(self, stream: SharedStream, grant: LeaseGrant, *, max_pending_frames: int = MAX_PENDING_FRAMES):
        self.stream = stream
        self.grant = grant
        self.max_pending_frames = max_pending_frames
        self._pending: collections.deque[tuple[bytes, int, int]] = collections.deque()
        self._wake = asyncio.Event()
        self._batches = 0
        self._skip = 0  # events dropped from the pending queue and not yet accounted for in Redis
        self._frames = 0
        self._events = 0
        self._dropped = 0
        self._resends = 0
        self._fenced: LeaseLost | None = None

    @property
    def stats(self) -> WriterStats:
        return WriterStats(self._frames, self._events, self._dropped, len(self._pending), self._resends)

    def _next_batch_id(self) -> str:
        self._batches += 1
        return f"{self.grant.value}#{self._batches}"

    def offer(self, raw: bytes, count: int, recv_ns: int) -> None:
        """Queue one frame (its raw JSON array, its event count, its receive time in Unix ns) for `run()`."""
        if self._fenced is not None:
            raise self._fenced
        if count < 1:
            return
        pending = self._pending
        if len(pending) >= self.max_pending_frames:
            _, dropped, _ = pending.popleft()
            self._skip += dropped
            self._dropped += dropped
        pending.append((raw, count, recv_ns))
        self._wake.set()

    async def append(self, frames: Sequence[tuple[bytes, int, int]]) -> AppendResult:
        """Append `frames` now, in one script call, behind anything `run()` already sent."""
        result = await self.stream._append(self.grant, frames, batch_id=self._next_batch_id())
        self._count(frames)
        return result

    def _count(self, frames: Sequence[tuple[bytes, int, int]]) -> None:
        self._frames += len(frames)
        self._events += sum(count for _, count, _ in frames)

    def _take_batch(self) -> list[tuple[bytes, int, int]]:
        batch: list[tuple[bytes, int, int]] = []
        size = 0
        pending = self._pending
        while pending and len(batch) < MAX_BATCH_FRAMES and (not batch or size + len(pending[0][0]) <= MAX_BATCH_BYTES):
            frame = pending.popleft()
            size += len(frame[0])
            batch.append(frame)
        return batch

    async def run(self) -> None:
        """Send offered frames until cancelled; raises LeaseLost (and drops what is pending) once fenced off.

        While Redis is away the batch in flight is re-sent with its own id (the script appends it once) after
        `link.wait_up()`; frames keep queueing, the oldest dropped past `max_pending_frames`.
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._take_batch()
                skip, self._skip = self._skip, 0
                batch_id = self._next_batch_id()
                while True:
                    try:
                        await self.stream._append(self.grant, batch, batch_id=batch_id, skip=skip)
                        break
                    except RedisUnavailable:
                        self._resends += 1
                        await self._wait_for_redis()
                    except LeaseLost as lost:
                        self._fenced = lost
                        self._pending.clear()
                        raise
                self._count(batch)

    async def _wait_for_redis(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.stream.link.timeout):
                await self.stream.link.wait_up()
        await asyncio.sleep(0.05)  # without keep_watch the link only learns it is up by trying again


class FeedReader:
    """A process's side: follows the shared stream from a position, returning typed frames in order.

    Each reader has a Redis connection of its own (XREAD BLOCK holds it for up to `block` seconds).
    """

    def __init__(
        self, stream: SharedStream, *, after_seq: int = 0, epoch: str | None = None, block: float, count: int
    ) -> None:
        self.stream = stream
        self.block = block
        self.count = count
        self._client = stream.link.blocking_client(block)
        self._epoch = epoch
        self._last_seq = after_seq
        self._last_id: str | None = None  # resolved from after_seq on the first read

    @property
    def epoch(self) -> str | None:
        return self._epoch

    @property
    def last_seq(self) -> int:
        """The newest seq returned so far (or `after_seq` before the first frame)."""
        return self._last_seq

    async def aclose(self) -> None:
        await self.stream.link.close_client(self._client)

    def _reset(self, epoch: str | None) -> FeedReset:
        assert self._epoch is not None
        reset = FeedReset(previous_epoch=self._epoch, epoch=epoch, last_seq=self._last_seq)
        self._epoch = epoch
        self._last_seq = 0
        self._last_id = "0-0"
        return reset

    async def _start(self) -> FeedReset | None:
        """The first read: is the epoch we were given still Redis's? Then find the frame holding after_seq + 1."""
        current = await self.stream.epoch()
        if self._epoch is not None and current != self._epoch:
            return self._reset(current)
        self._epoch = current
        self._last_id = await self.stream.start_id_after(self._last_seq)
        return None

    async def read(self) -> FeedBatch:
        """The next frames (waiting up to `block` seconds for some); raises RedisUnavailable on Redis trouble."""
        if self._last_id is None:
            reset = await self._start()
            if reset is not None:
                return FeedBatch(frames=(), reset=reset)
        keys = self.stream.keys
        last_id = self._last_id or "0-0"
        block_ms = max(1, round(self.block * 1000))

        # The epoch is read on the same connection, right before the XREAD: redis-py replaces a connection that a
        # restarted Redis closed without telling anyone, so "is this still the Redis whose entry IDs we hold?" is
        # asked on every read (one round trip for both).
        async def fetch(r: Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.get(keys.epoch)
            pipe.xread({keys.frames: last_id}, count=self.count, block=block_ms)
            replies: list[Any] = await pipe.execute()
            return replies

        epoch, reply = await self.stream.link.run(
            fetch, client=self._client, deadline=self.block + 3 * self.stream.link.timeout
        )
        current = _text(epoch) if epoch is not None else None
        if self._epoch is not None and current != self._epoch:
            return FeedBatch(frames=(), reset=self._reset(current))
        entries = _xread_entries(reply)
        last_entry = _last_entry_id(entries)
        if last_entry is None:
            return FeedBatch(frames=())
        return self._accept(_frames(entries), last_entry=last_entry)

    def _accept(self, frames: list[SharedFrame], *, last_entry: str) -> FeedBatch:
        if frames and self._epoch is not None and frames[0].epoch != self._epoch:
            # A new epoch began while the XREAD waited (the counter was lost but not the connection): start over.
            return FeedBatch(frames=(), reset=self._reset(frames[0].epoch))
        gap = 0
        kept: list[SharedFrame] = []
        for frame in frames:
            if self._epoch is None:
                self._epoch = frame.epoch
            if frame.epoch != self._epoch:
                break  # the rest belongs to a newer epoch: the next read reports the reset
            if self._last_seq and frame.first_seq > self._last_seq + 1:
                gap += frame.first_seq - self._last_seq - 1
            self._last_seq = max(self._last_seq, frame.last_seq)
            self._last_id = f"{frame.first_seq}-0"
            kept.append(frame)
        if len(kept) == len(frames):
            self._last_id = last_entry  # also past entries that were not ours
        return FeedBatch(frames=tuple(kept), gap=gap)

    async def follow(self) -> AsyncIterator[FeedBatch]:
        """Batches for ever (empty ones skipped); rides out Redis trouble by waiting for the link to come back."""
        while True:
            try:
                batch = await self.read()
            except RedisUnavailable:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.stream.link.wait_up()
                await asyncio.sleep(0.05)
                continue
            if batch.frames or batch.reset is not None or batch.gap:
                yield batch
