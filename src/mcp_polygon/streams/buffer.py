"""A bounded ring of stream events per market, with sequence numbers and filtered reads.

Events are stored per received frame, as the frame's raw JSON bytes (status events already removed): appending
a frame costs O(1) whatever its size, and 1,000 buffered events take about 0.1-0.3 MB instead of the ~0.7 MB
their decoded dicts would. A frame is decoded again only when a read needs it.

Sequence numbers start at 1 and only increase for the life of the buffer (the process): event k of a frame
whose first event has seq F has seq F + k. The receive time is stored per frame.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter

import orjson

_loads = orjson.loads
_first_seq = itemgetter(0)
_recv_time = itemgetter(2)

Matcher = Callable[[dict], bool]


def decode_frame(raw: bytes, count: int) -> list:
    """The frame's events, exactly `count` of them at most, whatever the bytes hold (never raises).

    The protocol's fast path stores frames without decoding them; a frame that turns out not to be what its
    counts promised (not JSON, stray entries) must not shift the seq numbers of other frames.
    """
    try:
        events = _loads(raw)
    except orjson.JSONDecodeError:
        return []
    if type(events) is not list:
        return []
    if len(events) != count or not all(type(e) is dict for e in events):
        events = [e for e in events if type(e) is dict and e.get("ev") != "status"][:count]
    return events


@dataclass
class ReadResult:
    events: list[tuple[int, float, dict]]  # (seq, receive time in Unix seconds, raw event), oldest first
    next_seq: int  # pass as since_seq next time to get only newer events
    head: int  # newest seq in the buffer (0 when nothing was ever received)
    oldest: int  # oldest seq still readable (head + 1 when empty)
    gap: int = 0  # events after since_seq that were overwritten before they could be read
    more: bool = False  # more matching events exist after the last one returned
    scanned: int = 0  # events looked at
    meta: dict = field(default_factory=dict)


class MessageBuffer:
    """Ring buffer of `capacity` events, stored frame by frame."""

    __slots__ = ("_frames", "_last_time", "_start", "capacity", "head")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # (first_seq, last_seq, receive_time, raw) per frame; frames before _start are gone.
        self._frames: list[tuple[int, int, float, bytes]] = []
        self._start = 0
        self.head = 0
        self._last_time = 0.0

    # -- writing -------------------------------------------------------------------------------------------

    def append(self, raw: bytes, count: int, recv_time: float) -> int:
        """Add one frame of `count` events (raw = its JSON array). Returns the seq of its first event."""
        if recv_time < self._last_time:  # the wall clock stepped back: keep receive times monotonic
            recv_time = self._last_time
        self._last_time = recv_time
        first = self.head + 1
        self.head = last = self.head + count
        frames = self._frames
        frames.append((first, last, recv_time, raw))
        oldest = last - self.capacity + 1
        i = self._start
        if frames[i][1] < oldest:
            while frames[i][1] < oldest:
                i += 1
            if i > 64 and i * 2 > len(frames):
                del frames[:i]
                i = 0
            self._start = i
        return first

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def oldest(self) -> int:
        """The oldest seq still readable (head + 1 when empty)."""
        return max(1, self.head - self.capacity + 1) if self.head else 1

    def __len__(self) -> int:
        return min(self.head, self.capacity)

    @property
    def overwritten(self) -> int:
        """Events pushed out of the ring since the process started."""
        return max(0, self.head - self.capacity)

    @property
    def first_time(self) -> float | None:
        return self._frames[self._start][2] if self.head else None

    @property
    def last_time(self) -> float | None:
        return self._frames[-1][2] if self.head else None

    # -- reading -------------------------------------------------------------------------------------------

    def read(
        self,
        limit: int = 100,
        *,
        since_seq: int | None = None,
        since_time: float | None = None,
        match: Matcher | None = None,
        needles: tuple[bytes, ...] | None = None,
    ) -> ReadResult:
        """Matching events, oldest first.

        Without since_seq/since_time: the newest `limit` matching events. With either: the oldest `limit`
        matching events after that point, so a caller paging with `next_seq` sees every event exactly once
        (events overwritten before it came back are reported in `gap`).
        """
        limit = max(0, limit)
        head = self.head
        oldest = self.oldest
        frames = self._frames
        start = self._start
        if not head or start >= len(frames):
            return ReadResult([], max(head, since_seq or 0), head, head + 1)
        forward = since_seq is not None or since_time is not None
        lower = oldest
        gap = 0
        if since_seq is not None:
            since_seq = max(0, since_seq)
            if since_seq >= head:
                return ReadResult([], since_seq if since_seq > head else head, head, oldest)
            if since_seq + 1 < oldest:
                gap = oldest - since_seq - 1
            lower = max(lower, since_seq + 1)
        fi = bisect_right(frames, lower, lo=start, key=_first_seq) - 1
        fi = max(fi, start)
        if since_time is not None:
            ti = bisect_left(frames, since_time, lo=start, key=_recv_time)
            if ti >= len(frames):
                return ReadResult([], head, head, oldest, gap=gap)
            if ti > fi:
                fi = ti
                lower = max(lower, frames[ti][0])
        if forward:
            return self._read_forward(fi, lower, limit, match, needles, head, oldest, gap)
        return self._read_newest(fi, lower, limit, match, needles, head, oldest)

    def _read_forward(self, fi, lower, limit, match, needles, head, oldest, gap) -> ReadResult:
        frames = self._frames
        out: list[tuple[int, float, dict]] = []
        scanned = 0
        n = len(frames)
        while fi < n and len(out) < limit:
            first, last, t, raw = frames[fi]
            fi += 1
            skip = lower - first if lower > first else 0
            if needles is not None and not any(nd in raw for nd in needles):
                scanned += last - first + 1 - skip
                continue
            events = decode_frame(raw, last - first + 1)
            need = limit - len(out)
            if match is None:
                part = events[skip : skip + need]
                scanned += len(part)
                out.extend(zip(range(first + skip, first + skip + len(part)), repeat(t), part, strict=False))
                continue
            scanned += len(events) - skip
            hits = [(first + k, t, e) for k, e in enumerate(events[skip:], skip) if match(e)]
            out.extend(hits[:need])
        if limit == 0:
            next_seq, more = lower - 1, True
        elif len(out) >= limit:
            next_seq = out[-1][0]
            more = next_seq < head  # there may be more matching events after it
        else:
            next_seq, more = head, False
        return ReadResult(out, next_seq, head, oldest, gap=gap, more=more, scanned=scanned)

    def _read_newest(self, lo_fi, lower, limit, match, needles, head, oldest) -> ReadResult:
        frames = self._frames
        chunks: list[list[tuple[int, float, dict]]] = []  # newest frame first
        got = 0
        scanned = 0
        fi = len(frames) - 1
        while fi >= lo_fi and got < limit:
            first, last, t, raw = frames[fi]
            fi -= 1
            skip = lower - first if lower > first else 0
            if needles is not None and not any(nd in raw for nd in needles):
                scanned += last - first + 1 - skip
                continue
            events = decode_frame(raw, last - first + 1)
            need = limit - got
            if match is None:
                start = max(skip, len(events) - need)
                part = events[start:]
                scanned += len(part)
                chunk = list(zip(range(first + start, first + start + len(part)), repeat(t), part, strict=False))
            else:
                scanned += len(events) - skip
                chunk = [(first + k, t, e) for k, e in enumerate(events[skip:], skip) if match(e)][-need:]
            chunks.append(chunk)
            got += len(chunk)
        picked = [row for chunk in reversed(chunks) for row in chunk]
        more = bool(picked) and got >= limit and picked[0][0] > lower
        return ReadResult(picked, head, head, oldest, more=more, scanned=scanned)
