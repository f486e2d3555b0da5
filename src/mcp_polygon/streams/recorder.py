"""Append-only recordings of stream frames on disk, per market, with time-range replay.

Layout: <data_dir>/<market>/<first_ns>-open-<pid>.jsonl while a segment is written, renamed to
<first_ns>-<last_ns>-<pid>.jsonl when it is closed. A line is one received frame:

    <receive time, Unix ns> <the frame's data events as a JSON array>\\n

Event k of a line is stamped receive time + k ns, and a writer keeps stamps strictly increasing, so every
recorded event has a unique time and a replay can continue exactly after the last event it returned.
The file names carry each segment's time range: a replay opens only the segments that overlap its window
and binary-searches inside each by seeking (lines start with their time), so it never reads a whole day
to return one minute. Retention: when a market's recordings exceed max_bytes, the oldest closed segments
are deleted.

Durability: writes go to a buffered file; `tick()`, called about once a second by the stream manager whether or
not frames arrive, hands them to the OS, so a kill -9 loses at most the last second and a clean close loses
nothing. Nothing here holds the stream up: an OS error turns recording FAILED (one typed state, shown by every
tool) instead of failing the reader, and it is retried at the next stream start and every retry_interval.

Replay trusts nothing it reads: a line that does not parse, or whose time falls outside its segment's named range
or breaks the segment's increasing order, is skipped and counted, never taken for the end of the data.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import orjson

from mcp_polygon.streams.formatting import iso
from mcp_polygon.streams.query import Direction, Event, ReadPlan

if TYPE_CHECKING:
    from mcp_polygon.analytics.compaction import CompactedSegment

log = logging.getLogger(__name__)

_loads = orjson.loads
_NAME = re.compile(r"^(\d{1,20})-(?:(\d{1,20})|open)-(\d+)\.jsonl$")
DEFAULT_SEGMENT_BYTES = 8 << 20
DEFAULT_FLUSH_INTERVAL = 1.0  # seconds: the most a kill -9 can lose
DEFAULT_RETRY_INTERVAL = 30.0  # seconds between attempts to record again after a failure, while streaming
_BISECT_MIN = 64 << 10  # below this many bytes, scan instead of bisecting
_TAIL = 1 << 16
_DICT_ONLY = {dict}
_LOOKAHEAD = 4  # lines read ahead to tell a damaged (too large) time from the real end of a window
_CORRUPT = -1  # the stamp judged_lines gives a line it rejects

_END_OF_TIME = 2**63 - 1  # the largest stamp a recording can hold (an int64 of ns)

Opener = Callable[[Path], BinaryIO]
Clock = Callable[[], float]
# Told each closed segment's path (on the loop thread; it must return at once): the columnar compaction queue.
SegmentSink = Callable[[Path], None]


def open_for_append(path: Path) -> BinaryIO:
    """The file a segment is written to: kept open across writes, with a large buffer (one syscall per MB)."""
    return open(path, "ab", buffering=1 << 20)


# -- state ------------------------------------------------------------------------------------------------------


class RecordingState(StrEnum):
    ON = "on"
    OFF_BY_SETTING = "off_by_setting"  # POLYGON_RECORD=false: there is no recorder
    FAILED = "failed"  # an OS error stopped it; retried at the next start and every retry_interval


@dataclass(frozen=True)
class RecordingFailure:
    """Why recording stopped and when it is tried again."""

    reason: str  # the OS error and the path it hit, e.g. "No space left on device (/data/stocks/...jsonl)"
    at: float  # Unix time of the failure
    retry_at: float  # Unix time of the next periodic attempt while the stream runs
    retry_every: float  # seconds


@dataclass(frozen=True)
class RecordingStatus:
    """The one truth about a market's recording, for the status and replay tools alike."""

    state: RecordingState
    directory: Path
    bytes_written: int = 0
    failure: RecordingFailure | None = None

    def describe(self) -> str:
        """One phrase for agents: what the recording is doing and, after a failure, what happens next."""
        failure = self.failure
        if self.state is RecordingState.OFF_BY_SETTING:
            return "off (POLYGON_RECORD=false)"
        if failure is None:
            return f"on ({self.bytes_written / 1e6:.1f} MB written this run) in {self.directory}"
        return (
            f"OFF since {iso(failure.at, ms=False)} after an error: {failure.reason}; events received since then "
            f"are not on disk - it is retried at the next stream start and every {failure.retry_every:g} s while "
            "streaming; fix the cause (disk space, permissions or POLYGON_DATA_DIR)"
        )


# -- segments ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    path: Path
    first_ns: int
    last_ns: int | None  # None while open (or left open by a process that died)
    pid: int
    size: int

    @property
    def closed(self) -> bool:
        return self.last_ns is not None


def list_parquet(directory: Path) -> list[CompactedSegment]:
    """The compacted (Parquet) segments in `directory`, oldest first: analytics.compaction's listing."""
    # Imported here: the analytics package imports this module, so a module-level import would be circular.
    from mcp_polygon.analytics.compaction import list_compacted

    return list_compacted(directory)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def named_files(directory: Path, name: re.Pattern[str]) -> list[tuple[Path, re.Match[str], int]]:
    """(path, name match, size) of the files in `directory` whose names match; missing directory -> []. A file
    that vanishes while listed (retention, compaction) is left out."""
    out: list[tuple[Path, re.Match[str], int]] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        m = name.match(entry.name)
        if not m:
            continue
        try:
            size = entry.stat().st_size
        except OSError:
            continue
        out.append((Path(entry.path), m, size))
    return out


def list_segments(directory: Path) -> list[Segment]:
    """Segments in `directory`, oldest first. Missing directory -> []."""
    out = [
        Segment(path, int(m.group(1)), int(m.group(2)) if m.group(2) else None, int(m.group(3)), size)
        for path, m, size in named_files(directory, _NAME)
    ]
    out.sort(key=lambda s: (s.first_ns, s.path.name))
    return out


def _last_line_ns(path: Path, size: int) -> int | None:
    """Time of the last event of the last complete line of a segment (read from its tail only)."""
    if size <= 0:
        return None
    try:
        with open(path, "rb") as f:
            pos = size
            tail = b""
            while pos > 0:
                step = min(_TAIL, pos)
                pos -= step
                f.seek(pos)
                tail = f.read(step) + tail
                end = tail.rfind(b"\n")
                if end < 0:
                    continue
                start = tail.rfind(b"\n", 0, end) + 1
                if start == 0 and pos > 0:
                    continue  # the line starts further back
                line = tail[start:end]
                ns_text, _, raw = line.partition(b" ")
                try:
                    return int(ns_text) + max(0, len(_loads(raw)) - 1)
                except (ValueError, orjson.JSONDecodeError, TypeError):
                    return int(ns_text) if ns_text.isdigit() else None
    except OSError:
        return None
    return None


def _seal(path: Path, first_ns: int, pid: int) -> None:
    """Give an open segment its closed name, with the last time its complete lines hold (an empty one goes)."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    last = _last_line_ns(path, size)
    with contextlib.suppress(OSError):
        if last is None:
            path.unlink()
        else:
            path.rename(path.with_name(f"{first_ns:020d}-{last:020d}-{pid}.jsonl"))


def finalize_orphans(directory: Path) -> None:
    """Close segments left open by processes that are gone (crash, kill -9): rename them with their last time."""
    for seg in list_segments(directory):
        if not seg.closed and not _pid_alive(seg.pid):
            _seal(seg.path, seg.first_ns, seg.pid)


# -- writing ----------------------------------------------------------------------------------------------------


class Recorder:
    """Writes one market's frames to segment files. Used from the event loop thread only."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        segment_bytes: int | None = None,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        opener: Opener = open_for_append,
        clock: Clock = time.time,
        on_closed: SegmentSink | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 << 10, min(DEFAULT_SEGMENT_BYTES, max_bytes // 8))
        self._flush_ns = int(flush_interval * 1e9)
        self.retry_interval = retry_interval
        self.opener = opener
        self.clock = clock
        self.on_closed = on_closed
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._first_ns = 0
        self._last_ns = 0
        self._next_ns = 0  # every stamp written from now on is >= this
        self._size = 0
        self._last_flush = 0
        self._failure: RecordingFailure | None = None
        self.frames_written = 0
        self.events_written = 0
        self.bytes_written = 0
        self.segments_deleted = 0
        self._prepared = False

    @property
    def flush_interval(self) -> float:
        """Seconds: the manager ticks this often while the stream runs; a busy feed also flushes this often."""
        return self._flush_ns / 1e9

    @flush_interval.setter
    def flush_interval(self, seconds: float) -> None:
        self._flush_ns = int(seconds * 1e9)  # kept in ns: the hot path compares receive times with it

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def state(self) -> RecordingState:
        return RecordingState.ON if self._failure is None else RecordingState.FAILED

    @property
    def enabled(self) -> bool:
        return self._failure is None

    @property
    def error(self) -> str | None:
        return self._failure.reason if self._failure is not None else None

    def status(self) -> RecordingStatus:
        return RecordingStatus(self.state, self.directory, self.bytes_written, self._failure)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def resume(self) -> RecordingState:
        """Make sure recording can run: at a stream start, and for the periodic retry after a failure.

        The directory is prepared now rather than at the first frame, so a data dir that cannot be written is
        reported before any event is lost silently. A failed recorder starts over (retention may also free room).
        """
        previous = self._failure
        if previous is None and self._prepared:
            return self.state
        self._failure = None
        try:
            self._prepare()
        except OSError as exc:
            self._fail(exc, previous)
        else:
            if previous is not None:
                log.info("recording resumed in %s", self.directory)
        return self.state

    def tick(self) -> None:
        """Called every flush_interval while the stream runs, with or without new frames: hand buffered lines to
        the OS (a quiet feed must not keep its last events in memory) and retry a failed recording when due."""
        failure = self._failure
        if failure is None:
            self.flush()
        elif self.clock() >= failure.retry_at:
            self.resume()

    def _prepare(self) -> None:
        self._prepared = False
        self.directory.mkdir(parents=True, exist_ok=True)
        finalize_orphans(self.directory)
        self._enforce_retention()
        segs = list_segments(self.directory)
        spans = [s.last_ns or s.first_ns for s in segs] + [c.last_ns for c in list_parquet(self.directory)]
        if spans:  # stamps continue after everything already recorded, even across restarts
            self._next_ns = max(self._next_ns, max(spans) + 1)
        self._prepared = True
        for seg in segs:  # closed segments a previous run left uncompacted (or a crash left half-compacted)
            if seg.closed:
                self._closed(seg.path)

    def _open(self, first_ns: int) -> BinaryIO:
        path = self.directory / f"{first_ns:020d}-open-{os.getpid()}.jsonl"
        self._file = self.opener(path)
        self._path = path
        self._first_ns = first_ns
        self._size = 0
        self._last_flush = first_ns
        return self._file

    # -- the hot path ------------------------------------------------------------------------------------------

    def write(self, raw: bytes, count: int, recv_ns: int) -> int:
        """Record one frame (raw: JSON array of `count` data events, no newline) received at recv_ns; returns the
        stamp it has on disk (recv_ns, moved forward when not after the previous frame's last event).

        The stamp is given even while recording is FAILED, from the same counter, so the buffer's stamps and the
        disk's never disagree: the query engine tells a buffered frame from a recorded one by its exact stamp."""
        if self._failure is not None:
            if recv_ns < self._next_ns:
                recv_ns = self._next_ns
            self._next_ns = recv_ns + count
            return recv_ns
        try:
            if not self._prepared:
                self._prepare()
            if recv_ns < self._next_ns:
                recv_ns = self._next_ns
            self._next_ns = recv_ns + count
            f = self._file
            if f is None:
                f = self._open(recv_ns)
            f.write(b"%d " % recv_ns)
            f.write(raw)
            f.write(b"\n")
        except OSError as exc:
            self._fail(exc)
            return recv_ns
        self._last_ns = recv_ns + count - 1
        n = len(raw) + 22
        self._size += n
        self.bytes_written += n
        self.frames_written += 1
        self.events_written += count
        if self._size >= self.segment_bytes:
            self._rotate()
        elif recv_ns - self._last_flush >= self._flush_ns:  # a busy feed flushes itself; tick() covers quiet ones
            self._last_flush = recv_ns
            self.flush()
        return recv_ns

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(exc)

    # -- segments and retention --------------------------------------------------------------------------------

    def _close_segment(self) -> None:
        f, path = self._file, self._path
        self._file = self._path = None
        if f is None or path is None:
            return
        try:
            f.close()
        except OSError as exc:
            self._fail(exc)
            _seal(path, self._first_ns, os.getpid())  # keep what did reach the disk, under its real range
            return
        try:
            if self._size == 0:
                path.unlink()
                return
            closed = path.with_name(f"{self._first_ns:020d}-{self._last_ns:020d}-{os.getpid()}.jsonl")
            path.rename(closed)
        except OSError as exc:
            self._fail(exc)
            return
        self._closed(closed)

    def _closed(self, path: Path) -> None:
        """Hand a closed segment to the compaction queue; a failing queue must not stop the recording."""
        if self.on_closed is None:
            return
        try:
            self.on_closed(path)
        except Exception:
            log.exception("queueing %s for compaction failed; it stays JSONL (still replayed and queried)", path)

    def _rotate(self) -> None:
        self._close_segment()
        self._enforce_retention()

    def _enforce_retention(self) -> None:
        """Delete the oldest closed segments, JSONL or Parquet, while everything on disk exceeds max_bytes."""
        files = [(s.first_ns, s.path, s.size, s.closed) for s in list_segments(self.directory)]
        files += [(c.first_ns, c.path, c.size, True) for c in list_parquet(self.directory)]
        files.sort(key=lambda f: (f[0], f[1].name))
        total = sum(f[2] for f in files) + (self._size if self._file is not None else 0)
        for _first, path, size, closed in files:
            if total <= self.max_bytes:
                break
            if not closed:
                continue
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            self.segments_deleted += 1

    def close(self) -> None:
        self._close_segment()

    def _fail(self, exc: OSError, previous: RecordingFailure | None = None) -> None:
        now = self.clock()
        where = os.fsdecode(exc.filename) if exc.filename else str(self.directory)
        reason = f"{exc.strerror or exc} ({where})"
        self._failure = RecordingFailure(reason, now, now + self.retry_interval, self.retry_interval)
        # A failure that repeats at every retry is news once.
        repeated = previous is not None and previous.reason == reason
        log.log(
            logging.DEBUG if repeated else logging.WARNING,
            "recording stopped: %s; retrying at the next stream start and every %g s",
            reason,
            self.retry_interval,
        )
        f, path = self._file, self._path
        self._file = self._path = None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        if path is not None:  # the segment keeps what reached the disk, named by its real range
            _seal(path, self._first_ns, os.getpid())


# -- replay -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayResult:
    events: list[tuple[int, Event]]  # (event time in Unix ns, raw event), oldest first
    more: bool  # the window holds more matching events after the last one returned
    next_from_ns: int | None  # pass as from_timestamp to continue
    segments_read: int
    segments_total: int
    recorded_from_ns: int | None  # the oldest recorded time available
    recorded_to_ns: int | None
    corrupt_lines: int = 0  # damaged lines skipped in the part of the window this page covered


@dataclass(frozen=True)
class _SegmentReplay:
    events: list[tuple[int, Event]]
    more: bool
    corrupt_lines: int


def _stamp_of(line: bytes) -> int | None:
    """The time a complete line starts with; None if it has none."""
    ns_text = line.partition(b" ")[0]
    return int(ns_text) if ns_text.isdigit() else None


def _trusted_probe(f: BinaryIO) -> tuple[int, int] | None:
    """(offset, time) of the second complete line from here, if it lies strictly between its neighbours' times.

    A bisection must not jump forward on a damaged time (too small, it would skip real events); a line in order
    with the lines around it is trusted. Anything else answers None, and the caller moves back, which only costs
    a longer scan.
    """
    offsets: list[int] = []
    stamps: list[int] = []
    for _ in range(3):
        offsets.append(f.tell())
        line = f.readline()
        stamp = _stamp_of(line) if line.endswith(b"\n") else None
        if stamp is None:
            return None
        stamps.append(stamp)
    if stamps[0] < stamps[1] < stamps[2]:
        return offsets[1], stamps[1]
    return None


def _seek_line_before(f: BinaryIO, size: int, target_ns: int) -> int:
    """Offset of a line start at or before the first line stamped >= target_ns (bisection by seeking).

    Only a trusted line stamped before target_ns moves the lower bound, so every event at or after target_ns
    lies after the returned offset whatever the damage; a corrupt probe only moves the search back.
    """
    lo, hi = 0, size
    while hi - lo > _BISECT_MIN:
        mid = (lo + hi) // 2
        f.seek(mid)
        f.readline()  # finish the line mid landed in
        probe = _trusted_probe(f)
        if probe is not None and probe[0] < hi and probe[1] < target_ns:
            lo = probe[0]
        else:
            hi = mid
    return lo


def _above_most_of(ns: int, floor: int, ahead: Iterable[tuple[int | None, bytes]]) -> bool:
    """Whether `ns` is larger than most plausible times read ahead: a damaged time, since good ones increase."""
    later = [s for s, _ in ahead if s is not None and s >= floor]
    if len(later) < 2:  # too little evidence (the end of the file): the segment's named range is the guard
        return False
    return 2 * sum(1 for s in later if s <= ns) > len(later)


def judged_lines(lines: Iterable[bytes], low: int, high: int | None) -> Iterator[tuple[int, bytes]]:
    """(time, JSON) of each complete line in file order; time is _CORRUPT for a line that cannot be trusted.

    A line is corrupt when its time is missing, outside the segment's named range [low, high], not above the
    previous good line's, or above most of the lines after it (a damaged future time is not the end). Stops at a
    line cut short (still being written, or cut by a crash): that is not damage.
    """
    ahead: deque[tuple[int | None, bytes]] = deque()
    floor = low
    # _LOOKAHEAD empty entries after the last line let the loop judge the final lines like the others.
    padded = itertools.chain(itertools.takewhile(_complete, lines), itertools.repeat(b"", _LOOKAHEAD))
    for line in padded:
        if line:
            ns_text, _, raw = line.partition(b" ")
            ahead.append((int(ns_text) if ns_text.isdigit() else None, raw))
        if (line and len(ahead) <= _LOOKAHEAD) or not ahead:  # filling the window, or all judged
            continue
        ns, raw = ahead.popleft()
        if ns is None or ns < floor or (high is not None and ns > high):
            yield _CORRUPT, raw
            continue
        nxt = ahead[0][0] if ahead else None
        if (nxt is None or nxt <= ns) and _above_most_of(ns, floor, ahead):  # the common case reads one stamp
            yield _CORRUPT, raw
            continue
        floor = ns + 1
        yield ns, raw


def _complete(line: bytes) -> bool:
    return line.endswith(b"\n")


def replay(directory: Path, plan: ReadPlan) -> ReplayResult:
    """The recorded events `plan` selects, oldest first: its channels, received from_ns <= time <= to_ns (either
    bound may be open), at most plan.limit. Safe to run in a thread.

    Recordings are addressed by time: a plan that reads the NEWEST events or starts after a since_seq (a buffer's
    numbering) is a ValueError.
    """
    if plan.direction is not Direction.FORWARD or plan.since_seq is not None:
        raise ValueError("replay reads forward by receive time; NEWEST and since_seq are the buffer's")
    from_ns = 0 if plan.from_ns is None else plan.from_ns
    to_ns = _END_OF_TIME if plan.to_ns is None else plan.to_ns
    limit = plan.limit
    segs = list_segments(Path(directory))
    spans: list[tuple[int, int, Segment | CompactedSegment]] = []
    for seg in segs:
        last = seg.last_ns if seg.closed else _last_line_ns(seg.path, seg.size)
        if last is None:
            continue
        spans.append((seg.first_ns, last, seg))
    # A segment present as both (between the Parquet's rename and the JSONL's unlink) is read as JSONL.
    raw_keys = {(s.first_ns, s.last_ns, s.pid) for s in segs if s.closed}
    for cseg in list_parquet(Path(directory)):
        if (cseg.first_ns, cseg.last_ns, cseg.pid) not in raw_keys:
            spans.append((cseg.first_ns, cseg.last_ns, cseg))
    rec_from = min((s[0] for s in spans), default=None)
    rec_to = max((s[1] for s in spans), default=None)
    chosen = [s for s in spans if s[0] <= to_ns and s[1] >= from_ns]
    chosen.sort(key=lambda s: s[0])
    overlapping = any(chosen[i][0] <= chosen[i - 1][1] for i in range(1, len(chosen)))
    out: list[tuple[int, Event]] = []
    more = False
    read = 0
    corrupt = 0
    for _first, _last, part in chosen:
        if len(out) >= limit and not overlapping:
            more = True
            break
        got = (
            _replay_segment(part, from_ns, to_ns, plan)
            if isinstance(part, Segment)
            else _replay_parquet(part.path, from_ns, to_ns, plan)
        )
        read += 1
        out.extend(got.events)
        more = more or got.more
        corrupt += got.corrupt_lines
    if overlapping:  # two writers recorded the same market at once: merge by time
        out.sort(key=lambda e: e[0])
    if len(out) > limit:
        out = out[:limit]
        more = True
    next_from = out[-1][0] + 1 if (more and out) else None
    return ReplayResult(out, more, next_from, read, len(spans), rec_from, rec_to, corrupt)


def _replay_segment(seg: Segment, from_ns: int, to_ns: int, plan: ReadPlan) -> _SegmentReplay:
    """One segment's part of a page. Corrupt lines are counted once over a paged walk: those before the page's
    first good line in the window belong to this page, those after the line that filled it to the next one."""
    out: list[tuple[int, Event]] = []
    corrupt = 0
    unplaced = 0  # corrupt lines since the last good line: inside the window if a good line in it follows
    needles, limit = plan.needles, plan.limit
    try:
        f = open(seg.path, "rb")
    except OSError:
        # Compacted since it was listed: its Parquet holds the same events.
        parquet = seg.path.with_suffix(".parquet")
        if seg.closed and parquet.exists():
            return _replay_parquet(parquet, from_ns, to_ns, plan)
        return _SegmentReplay(out, False, 0)
    with f:
        size = seg.size if seg.closed else os.fstat(f.fileno()).st_size
        if seg.first_ns < from_ns and size > _BISECT_MIN:
            f.seek(_seek_line_before(f, size, from_ns))
        # The name's last time bounds a closed segment; an open one may still be growing past its tail.
        lines = judged_lines(f, seg.first_ns, seg.last_ns)
        for ns, raw in lines:
            if ns == _CORRUPT:
                unplaced += 1
                continue
            if ns < from_ns:
                unplaced = 0  # they lie before this line, so before the window
            else:
                corrupt += unplaced
                unplaced = 0
            if ns > to_ns:
                return _SegmentReplay(out, False, corrupt)
            if needles is not None and not any(needle in raw for needle in needles):
                continue
            events = _line_events(raw)
            if events is None:
                if ns >= from_ns:  # (one before the window was counted by the page that covered it)
                    corrupt += 1
                continue
            # Event k of a line is stamped ns + k: the window cuts a line at its own stamps.
            start, end = max(0, from_ns - ns), min(len(events), to_ns - ns + 1)
            part = events[start:end] if start or end < len(events) else events
            hits = [(ns + k, e) for k, e in plan.hits(enumerate(part, start))]
            room = limit - len(out)
            if len(hits) >= room:
                out += hits[:room]
                # "Are there more?" cheaply: the rest of this frame, or the next good line being in range.
                return _SegmentReplay(out, len(hits) > room or _next_good_in_window(lines, to_ns), corrupt)
            out += hits
    return _SegmentReplay(out, False, corrupt + unplaced)


def _replay_parquet(path: Path, from_ns: int, to_ns: int, plan: ReadPlan) -> _SegmentReplay:
    """One compacted segment's part of a page: the same (ns, event) pairs a JSONL replay gives (compaction keeps
    exactly the lines judged_lines trusts, so it has no corrupt lines left to count)."""
    from mcp_polygon.analytics.compaction import CompactionError, replay_compacted  # (circular at module level)

    channels = plan.channels
    try:
        got = replay_compacted(
            path, from_ns, to_ns, limit=plan.limit, channels=channels,
            match=None if channels.all_events else plan.matches,
        )  # fmt: skip
    except CompactionError:  # deleted by retention since it was listed, or not ours: nothing to give
        return _SegmentReplay([], False, 0)
    return _SegmentReplay(cast(list[tuple[int, Event]], got.events), got.more, 0)


def _line_events(raw: bytes) -> list[Event] | None:
    """The events of one recorded line (its objects; anything else in the array is dropped), None if it is not a
    JSON array."""
    try:
        events = _loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(events) is not list:
        return None
    if set(map(type, events)) != _DICT_ONLY:
        return [e for e in events if type(e) is dict]
    return events


def _next_good_in_window(lines: Iterator[tuple[int, bytes]], to_ns: int) -> bool:
    """Whether the next trusted line is stamped <= to_ns (asked once, when a page is full; counts nothing)."""
    for ns, _ in lines:
        if ns != _CORRUPT:
            return ns <= to_ns
    return False
