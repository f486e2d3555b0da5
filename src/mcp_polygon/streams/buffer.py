"""A bounded ring of stream events per market, with sequence numbers, read through a query.ReadPlan.

Events are stored per received frame, as the frame's raw JSON bytes (status events already removed): appending
a frame costs O(1) whatever its size, and 1,000 buffered events take about 0.1-0.3 MB instead of the ~0.7 MB
their decoded dicts would. The protocol often stores a frame without decoding it (it counts event types on the
bytes), so a read decodes what it needs and keeps it decoded for the next reads in a small cache (DecodeCache).

Sequence numbers start at 1 and only increase for the life of the buffer (the process): event k of a frame
whose first event has seq F has seq F + k. The receive time is stored per frame.

One trick stays, because the cold-read target needs it (bench/reads.py: a 1,000-event read under 1 ms, where
decoding 1,000 events whole takes about 1 ms on its own): a single-pair read such as `T.AAPL` decodes only the
events of a frame whose bytes can match (PairPicker), and the cache keeps those.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from heapq import heappop, heappush
from operator import attrgetter
from typing import NamedTuple

import orjson

from mcp_polygon.streams.query import Direction, Event, Pair, ReadPlan, plain

_loads = orjson.loads
_first_seq = attrgetter("first")
_recv_time = attrgetter("time")
_DICT_ONLY = {dict}
# How the vendor (and orjson) write a frame of events: `[{"ev":"T",...},{"ev":"Q",...}]`.
_EV_START = b'{"ev":"'
_EV_START_RE = re.escape(_EV_START)
_FRAME_START = b'[{"ev":"'

Row = tuple[int, float, Event]  # (seq, receive time in Unix seconds, raw event)


def decode_frame(raw: bytes, count: int) -> list[Event]:
    """The frame's events, exactly `count` of them at most, whatever the bytes hold (never raises).

    The protocol's fast path stores frames without decoding them; a frame that turns out not to be what its
    counts promised (not JSON, stray entries) must not shift the seq numbers of other frames.
    """
    try:
        decoded = _loads(raw)
    except orjson.JSONDecodeError:
        return []
    if type(decoded) is not list:
        return []
    events: list[Event] = decoded
    if len(events) != count or set(map(type, events)) != _DICT_ONLY:
        events = [e for e in events if type(e) is dict and e.get("ev") != "status"][:count]
    return events


class StoredFrame(NamedTuple):
    first: int  # seq of its first event
    last: int  # seq of its last event
    time: float  # receive time, Unix seconds
    raw: bytes  # the JSON array of its data events
    # Its exact stamp, Unix ns: the recorder's when it records (strictly increasing, event k at recv_ns + k), so the
    # query engine can tell a buffered frame already on disk from one not yet written.
    recv_ns: int = 0
    flat: bool = False  # the protocol proved it `laid_out` on receipt: a pair read need not check it again


@dataclass(frozen=True, slots=True)
class ReadResult:
    events: list[Row]  # oldest first
    next_seq: int  # pass as since_seq next time to get only newer events
    head: int  # newest seq in the buffer (0 when nothing was ever received)
    oldest: int  # oldest seq still readable (head + 1 when empty)
    gap: int = 0  # events after since_seq that were overwritten before they could be read
    more: bool = False  # more matching events may exist beyond the ones returned (older ones for NEWEST)
    # since_seq was beyond the newest seq: a cursor from before a restart (seq numbers start again at 1) or a
    # typing mistake. The read answers from the oldest buffered event instead of hiding every new one.
    ahead: bool = False


# -- the decode cache ---------------------------------------------------------------------------------------------


class DecodedFrame(NamedTuple):
    """What reads have decoded of one frame: its events by position, all of them when complete. (A NamedTuple,
    immutable like a frozen dataclass, because a cold read builds one per frame: it is built 4x faster.)"""

    events: dict[int, Event]  # position in the frame -> event, ascending
    complete: bool  # every event is decoded: serves any plan
    pairs: frozenset[Pair]  # (partial frames) the pairs whose every event is decoded
    weight: int  # what it costs the cache, in events; a partial entry costs one more than it holds

    @staticmethod
    def whole(events: list[Event]) -> DecodedFrame:
        return DecodedFrame(dict(enumerate(events)), True, frozenset(), len(events))

    @staticmethod
    def picked(events: dict[int, Event], pairs: frozenset[Pair]) -> DecodedFrame:
        return DecodedFrame(events, False, pairs, 1 + len(events))

    def covers(self, plan: ReadPlan) -> bool:
        return self.complete or (plan.pair is not None and plan.pair in self.pairs)

    def with_picks(self, events: dict[int, Event], pair: Pair) -> DecodedFrame:
        """This partial frame plus the events of one more pair (the events of both stay)."""
        held = dict(sorted({**self.events, **events}.items()))
        return DecodedFrame(held, False, self.pairs | {pair}, 1 + len(held))


class DecodeCache:
    """Decoded frames kept for repeated reads, by first seq, bounded to `budget` in weight (about events).

    The newest frames (by seq) are kept, not the most recently read: reads scan from the newest frame backwards,
    and an LRU would evict exactly what the next scan needs first. So a frame older than everything kept, when
    there is no room, is not kept at all.
    """

    __slots__ = ("_entries", "_firsts", "_weight", "budget")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: dict[int, DecodedFrame] = {}
        self._firsts: list[int] = []  # min-heap of the cached first seqs: the oldest goes first
        self._weight = 0

    @property
    def weight(self) -> int:
        return self._weight

    def firsts(self) -> list[int]:
        """The first seqs of the frames kept, ascending."""
        return sorted(self._entries)

    def get(self, first: int) -> DecodedFrame | None:
        return self._entries.get(first)

    def keep(self, first: int, entry: DecodedFrame) -> None:
        """Keep `entry` for the frame starting at `first` (replacing what was kept of it) when it fits."""
        if not 0 < entry.weight <= self.budget:
            return  # nothing decoded, or more than the whole budget: what was kept of the frame stays valid
        old = self._entries.get(first)
        if old is None:
            heappush(self._firsts, first)
        else:
            self._weight -= old.weight
        self._entries[first] = entry
        self._weight += entry.weight
        while self._weight > self.budget:  # the oldest go first: an entry older than all the others, itself
            self._weight -= self._entries.pop(heappop(self._firsts)).weight

    def clear(self) -> None:
        self._entries.clear()
        self._firsts.clear()
        self._weight = 0


# -- partial decoding ---------------------------------------------------------------------------------------------


def laid_out(raw: bytes, count: int) -> bool:
    """Whether `raw` holds exactly `count` flat objects, each starting `{"ev":"`, in `[...]` (what
    ProtocolSession.receive proves on its fast path, here for a frame it did not prove): then every `{` starts an
    event, and no `{` or `"ev":"` hides in a string (see PairPicker)."""
    return (
        raw.startswith(_FRAME_START)
        and raw.endswith(b"}]")
        and raw.count(b"{") == count
        and raw.count(_EV_START) == count
    )


@dataclass(frozen=True, slots=True)
class PairPicker:
    """Decodes only the events of one (ev, ticker) pair in a raw frame.

    Decoding costs ~1 us per event, so a `T.AAPL` read that decoded every event of a mixed feed would spend most
    of its time on events it drops (bench/reads.py shows the cold read's target needs this). The cut uses the
    protocol's own argument (ProtocolSession.receive): in a frame laid out as `laid_out` says, every `{` opens an
    event and none hides in a string, so an event runs from its `{` to the next `{` (or the frame's end), and one
    regex over the frame finds, at C speed, each event of the wanted type that holds the ticker's bytes. Those are
    decoded in one call; the plan decides which match.
    """

    pair: Pair
    pairs: frozenset[Pair]  # {pair}, made once: what a cache entry of its picks covers
    # `{"ev":"T"` then, within the same event (no `{`), `"AAPL"`, then the rest of the event up to the next `{`:
    # the match ends with the `,` before the next event or the frame's closing `]`.
    candidates: re.Pattern[bytes]

    @staticmethod
    def for_plan(plan: ReadPlan) -> PairPicker | None:
        """A picker for a single-pair plan whose names cannot hide behind JSON escapes; None otherwise."""
        pair = plan.pair
        if pair is None or not (plain(pair[0]) and plain(pair[1])):
            return None
        ev, ticker = (re.escape(name.encode()) for name in pair)
        pattern = re.compile(_EV_START_RE + ev + rb'"[^{]*"' + ticker + rb'"[^{]*')
        return PairPicker(pair, frozenset((pair,)), pattern)

    def pick(self, raw: bytes, count: int, flat: bool = False) -> dict[int, Event] | None:
        """{position: event} of every event of the frame that can be of the pair (its type, with the ticker's
        bytes somewhere in it), ascending. `flat`: the protocol proved the layout (laid_out) when it received the
        frame. None when the frame is not laid out so (whitespace, other key orders, nested objects, a `{` in a
        string, stray entries) or a picked event is not valid JSON: the caller decodes it whole.

        One difference remains: a frame whose wanted events are valid JSON but whose other bytes are not yields
        those events here, where decoding it whole yields none (the protocol only lets such a frame through if
        the vendor sends broken JSON).
        """
        if not (flat or laid_out(raw, count)):
            return None
        matches = list(self.candidates.finditer(raw))
        if not matches:
            return {}
        try:
            events = _loads(b"[" + b",".join([m[0][:-1] for m in matches]) + b"]")
        except orjson.JSONDecodeError:
            return None
        if len(events) != len(matches):  # a stray entry (`},5,{`) sits inside some match: not laid out after all
            return None
        braces = raw.count
        return {braces(b"{", 0, m.start()): event for m, event in zip(matches, events, strict=True)}


# -- the ring -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Window:
    """The part of the ring a plan can read."""

    lower: int  # the first seq it may return
    lo: int  # index of the frame holding `lower`
    hi: int  # index after the last frame received at or before to_ns
    end_seq: int  # the last seq in the window (head without to_ns)
    gap: int
    ahead: bool

    @property
    def read_to_end(self) -> int:
        """next_seq once everything in the window has been read."""
        return max(self.end_seq, self.lower - 1)


class MessageBuffer:
    """Ring buffer of `capacity` events, stored frame by frame."""

    __slots__ = ("_frames", "_last_time", "_next_ns", "_start", "cache", "capacity", "head")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._frames: list[StoredFrame] = []  # frames before _start are gone
        self._start = 0
        self.head = 0
        self._last_time = 0.0
        self._next_ns = 0  # the next stamp is at least this (the recorder's rule: after the last frame's last event)
        # A quarter of the ring, in events: a decoded event takes ~1 KB, a raw one ~0.15 KB, so raw + cache stays
        # under ~0.45 MB per 1,000 buffered events; the cache is empty until something reads.
        self.cache = DecodeCache(capacity // 4)

    # -- writing -------------------------------------------------------------------------------------------

    def append(self, raw: bytes, count: int, recv_time: float, recv_ns: int | None = None, flat: bool = False) -> int:
        """Add one frame of `count` events (raw = its JSON array). Returns the seq of its first event.

        recv_ns is the frame's stamp (the recorder's, when it records); without one it comes from recv_time. Stamps
        are kept strictly increasing the way the recorder keeps them, which leaves the recorder's unchanged. `flat`
        says the layout was proven (`laid_out`); False is always safe."""
        if recv_time < self._last_time:  # the wall clock stepped back: keep receive times monotonic
            recv_time = self._last_time
        self._last_time = recv_time
        ns = int(recv_time * 1e9) if recv_ns is None else recv_ns
        if ns < self._next_ns:
            ns = self._next_ns
        self._next_ns = ns + count
        first = self.head + 1
        self.head = last = self.head + count
        frames = self._frames
        frames.append(StoredFrame(first, last, recv_time, raw, ns, flat))
        oldest = last - self.capacity + 1
        i = self._start
        if frames[i].last < oldest:
            while frames[i].last < oldest:
                i += 1
            if i > 64 and i * 2 > len(frames):
                del frames[:i]
                i = 0
            self._start = i
        return first

    def append_at(self, raw: bytes, count: int, recv_time: float, first_seq: int, flat: bool = False) -> bool:
        """Add one frame whose first event has seq `first_seq`, numbered elsewhere (the shared feed). Seqs skipped
        between the head and `first_seq` never arrive: reads report them in `gap`. A frame that starts at or before
        the head (already held) is ignored; returns whether the frame was added."""
        if first_seq <= self.head:
            return False
        self.head = first_seq - 1
        self.append(raw, count, recv_time, flat=flat)
        return True

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def oldest(self) -> int:
        """The oldest seq still readable (head + 1 when empty)."""
        if not self.head:
            return 1
        # After a jump (append_at) the ring may hold fewer than `capacity` seqs: the oldest frame held bounds it.
        return max(1, self.head - self.capacity + 1, self._frames[self._start].first)

    def __len__(self) -> int:
        """The seqs the ring spans: its events, plus any the shared feed skipped between them (append_at)."""
        return self.head - self.oldest + 1 if self.head else 0

    @property
    def overwritten(self) -> int:
        """Events pushed out of the ring since the process started."""
        return max(0, self.head - self.capacity)

    def stamped_frames(self) -> list[StoredFrame]:
        """Every frame still in the ring, oldest first (a copy of references: for the query engine's live part)."""
        return self._frames[self._start :]

    def drop_cache(self) -> None:
        self.cache.clear()

    # -- reading -------------------------------------------------------------------------------------------

    def read(self, plan: ReadPlan) -> ReadResult:
        """The plan's matching events, oldest first.

        NEWEST: the newest `limit` matching events. FORWARD: the oldest `limit` matching events after since_seq
        and/or from from_ns, so a caller paging with `next_seq` sees every event exactly once (events overwritten
        before it came back are reported in `gap`). A since_seq beyond the newest seq is answered from the oldest
        buffered event, flagged `ahead`. Receive times bound the read at both ends when the plan has them.
        """
        window = self._window(plan)
        if plan.direction is Direction.FORWARD:
            return self._read_forward(plan, window)
        return self._read_newest(plan, window)

    def _window(self, plan: ReadPlan) -> _Window:
        head, oldest, frames, start = self.head, self.oldest, self._frames, self._start
        since = plan.since_seq
        ahead = since is not None and since > head
        lower, gap = oldest, 0
        if since is not None:
            since = oldest - 1 if ahead else max(0, since)
            gap = max(0, oldest - since - 1)
            lower = max(lower, since + 1)
        lo = max(start, bisect_right(frames, lower, lo=start, key=_first_seq) - 1)
        if since is not None and lo + 1 < len(frames) and frames[lo].last < lower:
            # `lower` fell between two frames: seqs the shared feed skipped (never in this ring) are a gap too.
            gap += frames[lo + 1].first - lower
            lo += 1
        hi, end_seq = len(frames), head
        if plan.from_ns is not None:
            ti = bisect_left(frames, plan.from_ns / 1e9, lo=start, key=_recv_time)
            if ti > lo:
                lo = ti
                if ti < hi:
                    lower = max(lower, frames[ti].first)
        if plan.to_ns is not None:
            hi = bisect_right(frames, plan.to_ns / 1e9, lo=start, key=_recv_time)
            end_seq = frames[hi - 1].last if hi > start else oldest - 1
        return _Window(lower, lo, hi, end_seq, gap, ahead)

    def _rows(self, frame: StoredFrame, lower: int, plan: ReadPlan, picker: PairPicker | None) -> list[Row]:
        """One frame's matching events at or after seq `lower`, ascending. Both read directions take this path."""
        if plan.needles is not None:
            raw = frame.raw
            for needle in plan.needles:
                if needle in raw:
                    break
            else:
                return []  # no event of this frame can match: not decoded at all
        first, t, skip = frame.first, frame.time, lower - frame.first
        events = self._events(frame, plan, picker).items()
        items = events if skip <= 0 else ((k, e) for k, e in events if k >= skip)
        return [(first + k, t, e) for k, e in plan.hits(items)]

    def _events(self, frame: StoredFrame, plan: ReadPlan, picker: PairPicker | None) -> dict[int, Event]:
        """The frame's events by position, as far as the plan needs them decoded: from the cache, picked (only
        the pair's events), or decoded whole. What is decoded is kept in the cache when it fits."""
        cache = self.cache
        kept = cache.get(frame.first)
        if kept is not None and kept.covers(plan):
            return kept.events
        count = frame.last - frame.first + 1
        if picker is not None:
            picked = picker.pick(frame.raw, count, frame.flat)
            if picked is not None:
                entry = (
                    DecodedFrame.picked(picked, picker.pairs) if kept is None else kept.with_picks(picked, picker.pair)
                )
                cache.keep(frame.first, entry)
                return entry.events
        entry = DecodedFrame.whole(decode_frame(frame.raw, count))
        cache.keep(frame.first, entry)
        return entry.events

    def _read_forward(self, plan: ReadPlan, w: _Window) -> ReadResult:
        frames, limit = self._frames, plan.limit
        picker = PairPicker.for_plan(plan)
        out: list[Row] = []
        for fi in range(w.lo, w.hi):
            out += self._rows(frames[fi], w.lower, plan, picker)[: limit - len(out)]
            if len(out) >= limit:
                break
        if len(out) >= limit:
            next_seq = out[-1][0]
            more = next_seq < w.end_seq  # there may be more matching events after it
        else:
            next_seq, more = w.read_to_end, False
        return ReadResult(out, next_seq, self.head, self.oldest, gap=w.gap, more=more, ahead=w.ahead)

    def _read_newest(self, plan: ReadPlan, w: _Window) -> ReadResult:
        frames, limit = self._frames, plan.limit
        picker = PairPicker.for_plan(plan)
        chunks: list[list[Row]] = []  # newest frame first
        got = 0
        for fi in range(w.hi - 1, w.lo - 1, -1):
            rows = self._rows(frames[fi], w.lower, plan, picker)
            if rows:
                chunk = rows[-(limit - got) :]  # the newest of them that still fit
                chunks.append(chunk)
                got += len(chunk)
                if got >= limit:
                    break
        picked = [row for chunk in reversed(chunks) for row in chunk]
        more = got >= limit and picked[0][0] > w.lower  # older matching events may exist
        return ReadResult(picked, w.read_to_end, self.head, self.oldest, gap=w.gap, more=more, ahead=w.ahead)
