"""A bounded ring of stream events per market, with sequence numbers and filtered reads.

Events are stored per received frame, as the frame's raw JSON bytes (status events already removed): appending
a frame costs O(1) whatever its size, and 1,000 buffered events take about 0.1-0.3 MB instead of the ~0.7 MB
their decoded dicts would. A frame is decoded again only when a read needs it (whole, or for a single-pair
filter such as `T.AAPL` only its events that can match: see Selector.pick).

Sequence numbers start at 1 and only increase for the life of the buffer (the process): event k of a frame
whose first event has seq F has seq F + k. The receive time is stored per frame.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from heapq import heappop, heappush
from itertools import repeat
from operator import itemgetter

import orjson

from mcp_polygon.streams.markets import build_index

_loads = orjson.loads
_first_seq = itemgetter(0)
_recv_time = itemgetter(2)

Matcher = Callable[[dict], bool]
_DICT_ONLY = {dict}


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
    if len(events) != count or set(map(type, events)) != _DICT_ONLY:
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
    # since_seq was beyond the newest seq: a cursor from before a restart (seq numbers start again at 1) or a
    # typing mistake. The read answers from the oldest buffered event instead of hiding every new one.
    ahead: bool = False
    scanned: int = 0  # events looked at
    meta: dict = field(default_factory=dict)


class MessageBuffer:
    """Ring buffer of `capacity` events, stored frame by frame."""

    __slots__ = (
        "_cache",
        "_cache_keys",
        "_cached",
        "_frames",
        "_last_time",
        "_start",
        "cache_budget",
        "capacity",
        "head",
    )

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # (first_seq, last_seq, receive_time, raw) per frame; frames before _start are gone.
        self._frames: list[tuple[int, int, float, bytes]] = []
        self._start = 0
        self.head = 0
        self._last_time = 0.0
        # Decoded frames kept for repeated reads, newest data first: first_seq -> [events, index, picked, weight].
        # A whole frame: [its events, its (ev, ticker) index or None, False, len(events)]. A frame only picked
        # (Selector.pick: the matching events of one `T.AAPL` pair or more, the rest never decoded):
        # [{position: event}, {pair: positions}, True, 1 + events held].
        # Bounded to a quarter of the ring in weight (~events): a decoded event takes ~1 KB, a raw one ~0.15 KB, so
        # raw + cache stays under ~0.45 MB per 1,000 buffered events; the cache is empty until something reads.
        self._cache: dict[int, list] = {}
        self._cache_keys: list[int] = []  # min-heap of the cached first_seqs: the oldest goes first
        self._cached = 0
        self.cache_budget = capacity // 4

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

    def _decoded(self, first: int, last: int, raw: bytes, selector) -> tuple[list, dict | None]:
        """A frame's events (from the cache when there), and its index when a selector can use one.

        The first read of a frame decodes it and matches event by event; a later read of the same frame gets
        the decoded list from the cache and builds (once) the frame's (ev, ticker) index, so filtered reads that
        come back to the same events only touch the matching ones.

        The cache keeps the newest frames (by seq), not the most recently read: reads scan from the newest
        frame backwards, and an LRU would evict exactly what the next scan needs first.
        """
        cache = self._cache
        entry = cache.get(first)
        if entry is not None and not entry[2]:
            if selector is None:
                return entry[0], None
            if entry[1] is None:
                entry[1] = build_index(entry[0], selector.keymap)
            return entry[0], entry[1]
        events = decode_frame(raw, last - first + 1)
        n = len(events)
        if entry is None:
            self._keep(first, [events, None, False, n])
        elif 0 < n <= self.cache_budget:  # only picked so far: the whole frame replaces it, in place
            self._cached += n - entry[3]
            entry[:] = [events, None, False, n]
            self._evict()
        return events, None

    def _keep(self, first: int, entry: list) -> None:
        """Cache `entry` (weight entry[3]) when it fits, evicting the oldest frames to make room."""
        if not self._cacheable(first, entry[3]):
            return
        cache, keys = self._cache, self._cache_keys
        cache[first] = entry
        heappush(keys, first)
        self._cached += entry[3]
        self._evict()

    def _evict(self) -> None:
        cache, keys = self._cache, self._cache_keys
        while self._cached > self.cache_budget:
            old = cache.pop(heappop(keys), None)
            if old is not None:
                self._cached -= old[3]

    def _picked(self, first: int, last: int, raw: bytes, selector) -> tuple[dict, list[int]] | None:
        """({position: event}, positions) of the frame's events matching the selector's single pair, decoding
        only those (Selector.pick), from the cache when an earlier read picked the same pair. None when the
        frame is cached whole (its index serves) or cannot be cut: the caller decodes it whole."""
        entry = self._cache.get(first)
        if entry is not None and not entry[2]:
            return None
        picked = selector.pick(raw, last - first + 1)
        if picked is None:
            return None
        found, ks = picked
        if entry is None:
            self._keep(first, [found, {selector.single: ks}, True, 1 + len(found)])
        else:  # another pair of the same frame: merge, so the events of both pairs stay
            held = entry[0]
            before = len(held)
            held.update(found)
            entry[1][selector.single] = ks
            entry[3] += len(held) - before
            self._cached += len(held) - before
            self._evict()
        return found, ks

    def _cacheable(self, first: int, n: int) -> bool:
        """Whether an entry of weight `n` for the frame starting at `first` would be kept in the cache."""
        if not n or n > self.cache_budget:
            return False
        keys = self._cache_keys
        # Older than everything cached, and no room: not worth evicting newer frames.
        return not (self._cached + n > self.cache_budget and keys and first < keys[0])

    def drop_cache(self) -> None:
        self._cache.clear()
        self._cache_keys.clear()
        self._cached = 0

    def read(
        self,
        limit: int = 100,
        *,
        since_seq: int | None = None,
        since_time: float | None = None,
        match: Matcher | None = None,
        needles: tuple[bytes, ...] | None = None,
        selector=None,
    ) -> ReadResult:
        """Matching events, oldest first.

        Without since_seq/since_time: the newest `limit` matching events. With either: the oldest `limit`
        matching events after that point, so a caller paging with `next_seq` sees every event exactly once
        (events overwritten before it came back are reported in `gap`).

        A since_seq beyond the newest seq is answered from the oldest buffered event, flagged `ahead`.

        Filter with `selector` (markets.Selector: predicate + per-frame index + byte pre-check), or with a bare
        `match` predicate and optional `needles` (bytes one of which a frame must contain to hold any match).
        """
        if selector is not None:
            match, needles = selector.match, selector.needles
            if match is None:
                selector = None
        limit = max(0, limit)
        head = self.head
        oldest = self.oldest
        frames = self._frames
        start = self._start
        ahead = since_seq is not None and since_seq > head
        if not head or start >= len(frames):
            return ReadResult([], head, head, head + 1, ahead=ahead)
        forward = since_seq is not None or since_time is not None
        lower = oldest
        gap = 0
        if since_seq is not None:
            since_seq = oldest - 1 if ahead else max(0, since_seq)
            if since_seq == head:
                return ReadResult([], head, head, oldest)
            if since_seq + 1 < oldest:
                gap = oldest - since_seq - 1
            lower = max(lower, since_seq + 1)
        fi = bisect_right(frames, lower, lo=start, key=_first_seq) - 1
        fi = max(fi, start)
        if since_time is not None:
            ti = bisect_left(frames, since_time, lo=start, key=_recv_time)
            if ti >= len(frames):
                return ReadResult([], head, head, oldest, gap=gap, ahead=ahead)
            if ti > fi:
                fi = ti
                lower = max(lower, frames[ti][0])
        if forward:
            result = self._read_forward(fi, lower, limit, match, needles, selector, head, oldest, gap)
            result.ahead = ahead
            return result
        return self._read_newest(fi, lower, limit, match, needles, selector, head, oldest)

    def _matches(self, first: int, last: int, raw: bytes, skip: int, match, selector) -> tuple:
        """(events, positions of the matching ones >= skip); positions None means "all from skip".

        `events` is the frame's list, or a {position: event} dict holding only the matching ones."""
        if selector is not None and selector.single is not None:
            # A single pair (`T.AAPL`) keeps one event in many: decode only those (about half the cost of
            # decoding the frame whole on a mixed feed), and cache only those.
            picked = self._picked(first, last, raw, selector)
            if picked is not None:
                found, ks = picked
                if skip and ks and ks[0] < skip:
                    ks = [k for k in ks if k >= skip]
                return found, ks
        events, index = self._decoded(first, last, raw, selector)
        if match is None:
            return events, None
        if index is not None:
            ks = selector.positions(index)
            if skip and ks and ks[0] < skip:
                ks = [k for k in ks if k >= skip]
            return events, ks
        if selector is not None:
            return events, selector.scan(events, skip)
        return events, [k for k in range(skip, len(events)) if match(events[k])]

    def _frame_hits(self, frame, lower, match, needles, one, selector, single):
        """One frame's matching events at or after seq `lower`: (events, ks, skip), or None if none can match.

        ks lists the indexes of matching events (None: every event from `skip` on). Shared by both read
        directions, so the byte pre-check and the cache's fast path are written once.
        """
        first, last, _t, raw = frame
        if needles is not None and (one not in raw if one is not None else not any(x in raw for x in needles)):
            return None
        skip = lower - first if lower > first else 0
        entry = self._cache.get(first) if single is not None else None
        # The hot path of repeated filtered reads: a whole frame's index, or a pick of this very pair.
        if entry is not None and entry[1] is not None and (not entry[2] or single in entry[1]):
            events, ks = entry[0], entry[1].get(single)
            if not ks:
                return None
            if skip and ks[0] < skip:
                ks = [k for k in ks if k >= skip]
        else:
            events, ks = self._matches(first, last, raw, skip, match, selector)
        if ks is not None and not ks:
            return None
        return events, ks, skip

    def _read_forward(self, fi, lower, limit, match, needles, selector, head, oldest, gap) -> ReadResult:
        frames = self._frames
        out: list[tuple[int, float, dict]] = []
        n = len(frames)
        one = needles[0] if needles is not None and len(needles) == 1 else None
        single = selector.single if selector is not None else None
        while fi < n and len(out) < limit:
            frame = frames[fi]
            fi += 1
            hits = self._frame_hits(frame, lower, match, needles, one, selector, single)
            if hits is None:
                continue
            events, ks, skip = hits
            first, t = frame[0], frame[2]
            need = limit - len(out)
            if ks is None:
                part = events[skip : skip + need]
                out.extend(zip(range(first + skip, first + skip + len(part)), repeat(t), part, strict=False))
            else:
                out.extend([(first + k, t, events[k]) for k in ks[:need]])
        scanned = (frames[fi - 1][1] if fi else lower - 1) - lower + 1
        if limit == 0:
            next_seq, more = lower - 1, True
        elif len(out) >= limit:
            next_seq = out[-1][0]
            more = next_seq < head  # there may be more matching events after it
        else:
            next_seq, more = head, False
        return ReadResult(out, next_seq, head, oldest, gap=gap, more=more, scanned=max(0, scanned))

    def _read_newest(self, lo_fi, lower, limit, match, needles, selector, head, oldest) -> ReadResult:
        frames = self._frames
        chunks: list[list[tuple[int, float, dict]]] = []  # newest frame first
        got = 0
        fi = len(frames) - 1
        one = needles[0] if needles is not None and len(needles) == 1 else None
        single = selector.single if selector is not None else None
        while fi >= lo_fi and got < limit:
            frame = frames[fi]
            fi -= 1
            hits = self._frame_hits(frame, lower, match, needles, one, selector, single)
            if hits is None:
                continue
            events, ks, skip = hits
            first, t = frame[0], frame[2]
            need = limit - got
            if ks is None:
                start = max(skip, len(events) - need)
                part = events[start:]
                chunk = list(zip(range(first + start, first + start + len(part)), repeat(t), part, strict=False))
            else:
                chunk = [(first + k, t, events[k]) for k in ks[-need:]]
            chunks.append(chunk)
            got += len(chunk)
        picked = [row for chunk in reversed(chunks) for row in chunk]
        more = bool(picked) and got >= limit and picked[0][0] > lower
        scanned = head - max(lower, frames[fi + 1][0]) + 1 if fi + 1 < len(frames) else 0
        return ReadResult(picked, head, head, oldest, more=more, scanned=max(0, scanned))
