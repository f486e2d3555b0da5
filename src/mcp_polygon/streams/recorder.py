"""Append-only recordings of stream frames on disk, per market, with time-range replay.

Layout: <data_dir>/<market>/<first_ns>-open-<pid>.jsonl while a segment is written, renamed to
<first_ns>-<last_ns>-<pid>.jsonl when it is closed. A line is one received frame:

    <receive time, Unix ns> <the frame's data events as a JSON array>\\n

Event k of a line is stamped receive time + k ns, and a writer keeps stamps strictly increasing, so every
recorded event has a unique time and a replay can continue exactly after the last event it returned.
The file names carry each segment's time range: a replay opens only the segments that overlap its window
and binary-searches inside each by seeking (lines start with their time), so it never reads a whole day
to return one minute. Retention: when a market's recordings exceed max_bytes, the oldest closed segments
are deleted. Nothing here holds the stream up: writes go to a buffered file and are flushed about once a
second; any OS error turns recording off (surfaced in the stream status) instead of failing the reader.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

_loads = orjson.loads
_NAME = re.compile(r"^(\d{1,20})-(?:(\d{1,20})|open)-(\d+)\.jsonl$")
DEFAULT_SEGMENT_BYTES = 8 << 20
_BISECT_MIN = 64 << 10  # below this many bytes, scan instead of bisecting
_TAIL = 1 << 16
_DICT_ONLY = {dict}


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


def list_segments(directory: Path) -> list[Segment]:
    """Segments in `directory`, oldest first. Missing directory -> []."""
    out: list[Segment] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        m = _NAME.match(entry.name)
        if not m:
            continue
        try:
            size = entry.stat().st_size
        except OSError:
            continue
        last = int(m.group(2)) if m.group(2) else None
        out.append(Segment(Path(entry.path), int(m.group(1)), last, int(m.group(3)), size))
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


def _finalize_orphans(directory: Path) -> None:
    """Close segments left open by processes that are gone (crash, kill -9): rename them with their last time."""
    for seg in list_segments(directory):
        if seg.closed or _pid_alive(seg.pid):
            continue
        last = _last_line_ns(seg.path, seg.size)
        try:
            if last is None:
                seg.path.unlink()
            else:
                seg.path.rename(seg.path.with_name(f"{seg.first_ns:020d}-{last:020d}-{seg.pid}.jsonl"))
        except OSError:
            pass


class Recorder:
    """Writes one market's frames to segment files. Used from the event loop thread only."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        segment_bytes: int | None = None,
        flush_interval: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 << 10, min(DEFAULT_SEGMENT_BYTES, max_bytes // 8))
        self._flush_ns = int(flush_interval * 1e9)
        self._file = None
        self._path: Path | None = None
        self._first_ns = 0
        self._last_ns = 0
        self._next_ns = 0  # every stamp written from now on is >= this
        self._size = 0
        self._last_flush = 0
        self.error: str | None = None
        self.frames_written = 0
        self.events_written = 0
        self.bytes_written = 0
        self.segments_deleted = 0
        self._prepared = False

    @property
    def enabled(self) -> bool:
        return self.error is None

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _finalize_orphans(self.directory)
        self._enforce_retention()
        segs = list_segments(self.directory)
        if segs:  # stamps continue after everything already recorded, even across restarts
            self._next_ns = max(s.last_ns or s.first_ns for s in segs) + 1
        self._prepared = True

    def _open(self, first_ns: int):
        self._path = self.directory / f"{first_ns:020d}-open-{os.getpid()}.jsonl"
        self._file = open(self._path, "ab", buffering=1 << 20)  # kept open across writes
        self._first_ns = first_ns
        self._size = 0
        self._last_flush = first_ns
        return self._file

    def write(self, raw: bytes, count: int, recv_ns: int) -> None:
        """Record one frame (raw: JSON array of `count` data events, no newline) received at recv_ns."""
        if self.error is not None:
            return
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
            return
        self._last_ns = recv_ns + count - 1
        n = len(raw) + 22
        self._size += n
        self.bytes_written += n
        self.frames_written += 1
        self.events_written += count
        if self._size >= self.segment_bytes:
            self._rotate()
        elif recv_ns - self._last_flush >= self._flush_ns:
            self._last_flush = recv_ns
            try:
                f.flush()
            except OSError as exc:
                self._fail(exc)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(exc)

    def _close_segment(self) -> None:
        f, path = self._file, self._path
        self._file = self._path = None
        if f is None or path is None:
            return
        try:
            f.close()
            if self._size == 0:
                path.unlink()
            else:
                path.rename(path.with_name(f"{self._first_ns:020d}-{self._last_ns:020d}-{os.getpid()}.jsonl"))
        except OSError as exc:
            self._fail(exc)

    def _rotate(self) -> None:
        self._close_segment()
        self._enforce_retention()

    def _enforce_retention(self) -> None:
        segs = list_segments(self.directory)
        total = sum(s.size for s in segs) + (self._size if self._file is not None else 0)
        for seg in segs:
            if total <= self.max_bytes:
                break
            if not seg.closed:
                continue
            try:
                seg.path.unlink()
            except OSError:
                continue
            total -= seg.size
            self.segments_deleted += 1

    def close(self) -> None:
        self._close_segment()

    def _fail(self, exc: OSError) -> None:
        self.error = f"recording stopped: {exc.strerror or exc} ({self.directory})"
        log.warning("%s", self.error)
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


# -- replay ----------------------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    events: list[tuple[int, dict]]  # (event time in Unix ns, raw event), oldest first
    more: bool  # the window holds more matching events after the last one returned
    next_from_ns: int | None  # pass as from_timestamp to continue
    segments_read: int
    segments_total: int
    recorded_from_ns: int | None  # the oldest recorded time available
    recorded_to_ns: int | None
    notes: list[str] = field(default_factory=list)


def _seek_line_before(f, size: int, target_ns: int) -> int:
    """Offset of a line start at or before the first line stamped >= target_ns (bisection by seeking)."""
    lo, hi = 0, size
    while hi - lo > _BISECT_MIN:
        mid = (lo + hi) // 2
        f.seek(mid)
        f.readline()  # finish the line mid landed in
        pos = f.tell()
        if pos >= hi:
            hi = mid
            continue
        head = f.read(24)
        ns_text = head.partition(b" ")[0]
        if not ns_text.isdigit():
            hi = mid
            continue
        if int(ns_text) < target_ns:
            lo = pos
        else:
            hi = mid
    return lo


def replay(
    directory: Path,
    from_ns: int,
    to_ns: int,
    *,
    limit: int = 1000,
    match: Callable[[dict], bool] | None = None,
    needles: tuple[bytes, ...] | None = None,
) -> ReplayResult:
    """Recorded events with from_ns <= time <= to_ns, oldest first, at most `limit`. Safe to run in a thread."""
    segs = list_segments(Path(directory))
    spans: list[tuple[int, int, Segment]] = []
    for seg in segs:
        last = seg.last_ns if seg.closed else _last_line_ns(seg.path, seg.size)
        if last is None:
            continue
        spans.append((seg.first_ns, last, seg))
    rec_from = min((s[0] for s in spans), default=None)
    rec_to = max((s[1] for s in spans), default=None)
    chosen = [s for s in spans if s[0] <= to_ns and s[1] >= from_ns]
    chosen.sort(key=lambda s: s[0])
    overlapping = any(chosen[i][0] <= chosen[i - 1][1] for i in range(1, len(chosen)))
    out: list[tuple[int, dict]] = []
    more = False
    read = 0
    for _first, _last, seg in chosen:
        if len(out) >= limit and not overlapping:
            more = True
            break
        got, seg_more = _replay_segment(seg, from_ns, to_ns, limit, match, needles)
        read += 1
        out.extend(got)
        more = more or seg_more
    if overlapping:  # two writers recorded the same market at once: merge by time
        out.sort(key=lambda e: e[0])
    if len(out) > limit:
        out = out[:limit]
        more = True
    next_from = out[-1][0] + 1 if (more and out) else None
    return ReplayResult(out, more, next_from, read, len(spans), rec_from, rec_to)


def _replay_segment(seg: Segment, from_ns: int, to_ns: int, limit: int, match, needles):
    out: list[tuple[int, dict]] = []
    try:
        f = open(seg.path, "rb")
    except OSError:
        return out, False
    with f:
        size = seg.size if seg.closed else os.fstat(f.fileno()).st_size
        if seg.first_ns < from_ns and size > _BISECT_MIN:
            f.seek(_seek_line_before(f, size, from_ns))
        for line in f:
            if not line.endswith(b"\n"):
                break  # a line still being written (or cut by a crash)
            ns_text, _, raw = line.partition(b" ")
            try:
                ns = int(ns_text)
            except ValueError:
                continue
            if ns > to_ns:
                return out, False
            if needles is not None and not any(nd in raw for nd in needles):
                continue
            try:
                events = _loads(raw)
            except orjson.JSONDecodeError:
                continue
            if type(events) is not list:
                continue
            if set(map(type, events)) != _DICT_ONLY:
                events = [e for e in events if type(e) is dict]
            start = from_ns - ns if ns < from_ns else 0
            end = min(len(events), to_ns - ns + 1)
            if start >= end:
                continue
            part = events[start:end] if start or end < len(events) else events
            if match is None:
                hits = list(zip(range(ns + start, ns + end), part, strict=True))
            else:
                hits = [(ns + k, e) for k, e in enumerate(part, start) if match(e)]
            room = limit - len(out)
            if len(hits) >= room:
                out += hits[:room]
                # "Are there more?" cheaply: the rest of this frame, or the next line being in range.
                return out, len(hits) > room or _more_after(f, to_ns)
            out += hits
    return out, False


def _more_after(f, to_ns: int) -> bool:
    """Whether the next complete line of `f` is stamped <= to_ns (asked once, when a page is full)."""
    line = f.readline()
    if not line.endswith(b"\n"):
        return False
    ns_text = line.partition(b" ")[0]
    return ns_text.isdigit() and int(ns_text) <= to_ns
