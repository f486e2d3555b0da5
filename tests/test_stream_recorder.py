"""recorder.py: segments, rotation, retention, replay ranges, restart and crash recovery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from conftest import FlakyDisk
from mcp_polygon.streams import recorder as rec
from mcp_polygon.streams.markets import MARKETS
from mcp_polygon.streams.query import Direction, parse_filter, read_plan

S = 1_000_000_000  # ns per second
T0 = 1_700_000_000 * S
STOCKS = MARKETS["stocks"]


def replay(directory: Path, from_ns: int, to_ns: int, *, limit: int = 1000, channel_filter: str | None = None):
    """rec.replay of the plan the replay tool builds for these arguments."""
    plan = read_plan(STOCKS, parse_filter(STOCKS, channel_filter), limit=limit, from_ns=from_ns, to_ns=to_ns)
    return rec.replay(directory, plan)


def frame(i: int, n: int = 3, sym: str = "AAPL") -> bytes:
    return orjson.dumps([{"ev": "T", "sym": sym, "p": float(i), "k": j} for j in range(n)])


def test_write_then_replay_window(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    for i in range(10):
        r.write(frame(i), 3, T0 + i * S)
    r.flush()
    out = replay(tmp_path, T0 + 2 * S, T0 + 5 * S - 1)
    assert [e["p"] for _, e in out.events] == [2.0] * 3 + [3.0] * 3 + [4.0] * 3
    # Event k of a frame is stamped frame time + k ns: unique, increasing.
    assert [ns for ns, _ in out.events][:3] == [T0 + 2 * S, T0 + 2 * S + 1, T0 + 2 * S + 2]
    assert not out.more and out.next_from_ns is None
    assert out.recorded_from_ns == T0 and out.recorded_to_ns == T0 + 9 * S + 2


def test_replay_pages_exactly_with_next_from(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    for i in range(10):
        r.write(frame(i, 5), 5, T0 + i * S)
    r.flush()
    got, start = [], T0
    while True:
        out = replay(tmp_path, start, T0 + 100 * S, limit=7)
        got += [(e["p"], e["k"]) for _, e in out.events]
        if not out.more:
            break
        start = out.next_from_ns
    assert got == [(float(i), k) for i in range(10) for k in range(5)]


def test_stamps_stay_increasing_when_frames_share_a_time(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    r.write(frame(0, 3), 3, T0)
    r.write(frame(1, 3), 3, T0)  # same receive time
    r.write(frame(2, 3), 3, T0 - S)  # clock stepped back
    r.flush()
    stamps = [ns for ns, _ in replay(tmp_path, 0, T0 + S).events]
    assert stamps == sorted(set(stamps)) and len(stamps) == 9


def test_rotation_and_only_overlapping_segments_are_read(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30, segment_bytes=2000)
    for i in range(200):
        r.write(frame(i, 10), 10, T0 + i * S)
    r.close()
    segs = rec.list_segments(tmp_path)
    assert len(segs) > 10 and all(s.closed for s in segs)
    out = replay(tmp_path, T0 + 100 * S, T0 + 101 * S)
    assert {e["p"] for _, e in out.events} == {100.0, 101.0}
    assert out.segments_read <= 2 and out.segments_total == len(segs)


def test_replay_bisects_inside_a_large_segment(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30, segment_bytes=1 << 30)
    for i in range(20_000):
        r.write(frame(i, 2), 2, T0 + i * S)
    r.flush()
    (seg,) = rec.list_segments(tmp_path)
    assert seg.size > 1 << 20
    with open(seg.path, "rb") as f:
        off = rec._seek_line_before(f, seg.size, T0 + 15_000 * S)
    assert off > seg.size // 2  # it did not start from the top
    out = replay(tmp_path, T0 + 15_000 * S, T0 + 15_002 * S - 1)
    assert [e["p"] for _, e in out.events] == [15000.0, 15000.0, 15001.0, 15001.0]


def test_retention_deletes_oldest_segments(tmp_path):
    r = rec.Recorder(tmp_path, 20_000, segment_bytes=4_000)
    for i in range(400):
        r.write(frame(i, 5), 5, T0 + i * S)
    r.close()
    segs = rec.list_segments(tmp_path)
    assert sum(s.size for s in segs) <= 20_000 + 4_000
    assert r.segments_deleted > 0
    out = replay(tmp_path, 0, T0 + 1000 * S, limit=10_000)
    ps = [e["p"] for _, e in out.events]
    assert ps[-1] == 399.0 and ps[0] > 0  # the oldest are gone, the newest kept


def test_replay_after_restart_and_new_writer_continues(tmp_path):
    r1 = rec.Recorder(tmp_path, 1 << 30)
    for i in range(5):
        r1.write(frame(i), 3, T0 + i * S)
    r1.close()
    r2 = rec.Recorder(tmp_path, 1 << 30)  # a new process on the same data dir
    r2.write(frame(5), 3, T0 + 2 * S)  # its clock says earlier: stamps still continue after what is recorded
    r2.flush()
    out = replay(tmp_path, 0, T0 + 100 * S, limit=100)
    assert [e["p"] for _, e in out.events][-4:] == [4.0, 5.0, 5.0, 5.0]
    stamps = [ns for ns, _ in out.events]
    assert stamps == sorted(stamps)


def test_open_segment_of_a_dead_process_is_finalized(tmp_path):
    # A child process records and is killed without closing its segment.
    src, first, second = os.path.abspath("src"), T0, T0 + S
    code = (
        f"import sys, os, orjson; sys.path.insert(0, {src!r})\n"
        "from mcp_polygon.streams.recorder import Recorder\n"
        f"r = Recorder({str(tmp_path)!r}, 1 << 30)\n"
        f"r.write(orjson.dumps([{{'ev':'T','sym':'AAPL','p':1.0}}]), 1, {first})\n"
        f"r.write(orjson.dumps([{{'ev':'T','sym':'AAPL','p':2.0}}]), 1, {second})\n"
        "r.flush(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    (seg,) = rec.list_segments(tmp_path)
    assert not seg.closed
    # Replay works on it as it is (its end time comes from its tail)...
    assert [e["p"] for _, e in replay(tmp_path, 0, T0 + 10 * S).events] == [1.0, 2.0]
    # ...and the next writer renames it with its time range.
    r = rec.Recorder(tmp_path, 1 << 30)
    r.write(frame(9), 3, T0 + 5 * S)
    r.close()
    segs = rec.list_segments(tmp_path)
    assert all(s.closed for s in segs) and segs[0].last_ns == T0 + S


def test_partial_last_line_and_garbage_are_skipped(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    r.write(frame(1), 3, T0)
    r.flush()
    path = rec.list_segments(tmp_path)[0].path
    with open(path, "ab") as f:
        f.write(b"garbage line\n")
        f.write(b"%d not json\n" % (T0 + S))
        f.write(b'%d [{"ev":"T","p":' % (T0 + 2 * S))  # cut mid-write
    out = replay(tmp_path, 0, T0 + 10 * S)
    assert [e["p"] for _, e in out.events] == [1.0, 1.0, 1.0]


def test_replay_filter(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    for i in range(10):
        r.write(frame(i, 2, "AAPL" if i % 2 else "MSFT"), 2, T0 + i * S)
    r.flush()
    out = replay(tmp_path, 0, T0 + 100 * S, channel_filter="T.AAPL")
    assert {e["sym"] for _, e in out.events} == {"AAPL"} and len(out.events) == 10
    assert [e["p"] for _, e in out.events] == [float(i) for i in range(1, 10, 2) for _ in range(2)]


def test_replay_decodes_no_line_without_the_tickers_bytes(tmp_path, monkeypatch):
    r = rec.Recorder(tmp_path, 1 << 30)
    for i in range(10):
        r.write(frame(i, 2, "AAPL" if i == 4 else "MSFT"), 2, T0 + i * S)
    r.flush()
    decoded = []
    real = rec._line_events
    monkeypatch.setattr(rec, "_line_events", lambda raw: decoded.append(raw) or real(raw))
    out = replay(tmp_path, 0, T0 + 100 * S, channel_filter="T.AAPL")
    assert [e["p"] for _, e in out.events] == [4.0, 4.0] and len(decoded) == 1


def test_replay_takes_open_time_bounds_and_refuses_what_only_the_buffer_has(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    for i in range(4):
        r.write(frame(i, 2), 2, T0 + i * S)
    r.flush()
    everything = read_plan(STOCKS, parse_filter(STOCKS, None), limit=100, direction=Direction.FORWARD)
    assert [e["p"] for _, e in rec.replay(tmp_path, everything).events] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    until = read_plan(STOCKS, parse_filter(STOCKS, None), limit=100, to_ns=T0 + S, direction=Direction.FORWARD)
    assert [e["p"] for _, e in rec.replay(tmp_path, until).events] == [0.0, 0.0, 1.0]  # event k is stamped +k ns
    newest = read_plan(STOCKS, parse_filter(STOCKS, None), limit=100)
    with pytest.raises(ValueError, match="forward"):
        rec.replay(tmp_path, newest)
    after_seq = read_plan(STOCKS, parse_filter(STOCKS, None), limit=100, since_seq=3, from_ns=0)
    with pytest.raises(ValueError, match="since_seq"):
        rec.replay(tmp_path, after_seq)


def test_missing_directory_and_empty_window(tmp_path):
    out = replay(tmp_path / "nothing", 0, T0)
    assert out.events == [] and out.segments_total == 0 and out.recorded_from_ns is None


def test_os_error_turns_recording_off_instead_of_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = rec.Recorder(blocker / "stocks", 1 << 30)
    r.write(frame(1), 3, T0)  # mkdir fails: no exception
    assert r.state is rec.RecordingState.FAILED and "Not a directory" in r.error
    r.write(frame(2), 3, T0 + S)


# -- durability: a quiet feed reaches the disk without another frame -------------------------------------------


def lines_on_disk(directory) -> list[bytes]:
    """What another process would read now: every complete line of every segment, through a separate open()."""
    out: list[bytes] = []
    for seg in rec.list_segments(directory):
        with open(seg.path, "rb") as f:
            out += [line for line in f.read().split(b"\n")[:-1]]
    return out


def test_tick_puts_a_quiet_feeds_last_frames_on_disk(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    for i in range(20):  # 20 frames within one second, then silence
        r.write(frame(i), 3, T0 + i * 1_000_000)
    assert lines_on_disk(tmp_path) == []  # still in the writer's buffer: a kill -9 now would lose them
    r.tick()  # what the stream manager does every flush_interval, frames or not
    assert len(lines_on_disk(tmp_path)) == 20


async def test_the_manager_flushes_a_running_stream_every_flush_interval(tmp_path):
    from mcp_polygon.config import Settings
    from mcp_polygon.streams.manager import StreamManager

    manager = StreamManager(Settings(api_key="k", ws_url="ws://127.0.0.1:9", data_dir=tmp_path))
    stream = manager.stream("stocks")
    assert stream.recorder is not None
    stream.recorder.flush_interval = 0.02
    stream.start_recording()  # what start_stocks_stream does
    try:
        for i in range(20):
            stream.recorder.write(frame(i), 3, T0 + i * 1_000_000)
        deadline = time.monotonic() + 5
        while len(lines_on_disk(tmp_path / "stocks")) < 20:
            assert time.monotonic() < deadline, "the upkeep task never flushed"
            await asyncio.sleep(0.01)
    finally:
        await manager.aclose()
    assert stream.record_task is None and all(s.closed for s in rec.list_segments(tmp_path / "stocks"))


# -- replay of damaged recordings ------------------------------------------------------------------------------

LINES = 6_000  # one event per line, in one segment (> _BISECT_MIN, so pages after the first bisect)


def write_one_event_lines(directory, n: int = LINES) -> None:
    r = rec.Recorder(directory, 1 << 30, segment_bytes=1 << 30)
    for i in range(n):
        r.write(orjson.dumps([{"ev": "T", "sym": "AAPL", "i": i}]), 1, T0 + i * S)
    r.close()


def damage(directory, edits: dict[int, bytes], inserts: dict[int, bytes] | None = None) -> None:
    """Replace line i with edits[i]; put inserts[i] right after line i (the file keeps its closed name)."""
    (seg,) = rec.list_segments(directory)
    lines = seg.path.read_bytes().split(b"\n")[:-1]
    out = []
    for i, line in enumerate(lines):
        out.append(edits.get(i, line))
        if inserts and i in inserts:
            out.append(inserts[i])
    seg.path.write_bytes(b"\n".join(out) + b"\n")


def flip_bit(line: bytes, index: int, bit: int) -> bytes:
    return line[:index] + bytes([line[index] ^ (1 << bit)]) + line[index + 1 :]


def page_through(directory, from_ns: int, to_ns: int, limit: int = 1000) -> tuple[list[int], int, int]:
    """Every event of the window by paging with next_from_ns: (event indexes, corrupt lines counted, pages)."""
    got: list[int] = []
    corrupt = pages = 0
    start = from_ns
    while True:
        out = replay(directory, start, to_ns, limit=limit)
        got += [e["i"] for _, e in out.events]
        corrupt += out.corrupt_lines
        pages += 1
        assert pages < 100
        if not out.more:
            return got, corrupt, pages
        start = out.next_from_ns


def original_line(directory, i: int) -> bytes:
    (seg,) = rec.list_segments(directory)
    return seg.path.read_bytes().split(b"\n")[i]


def test_a_garbage_line_after_a_page_boundary_does_not_end_paging(tmp_path):
    write_one_event_lines(tmp_path)
    damage(tmp_path, {}, inserts={1999: b"garbage line", 3999: b"\x00\x00\x00 [1,2"})  # right after pages 2 and 4
    got, corrupt, _ = page_through(tmp_path, T0, T0 + LINES * S)
    assert got == list(range(LINES))  # every event, once, in order
    assert corrupt == 2


def test_a_damaged_time_is_skipped_and_counted_not_taken_for_the_end(tmp_path):
    write_one_event_lines(tmp_path)
    edits = {
        1000: flip_bit(original_line(tmp_path, 1000), 0, 3),  # '1' -> '9': far in the future
        2500: b"%d" % (T0 + 5_000 * S) + original_line(tmp_path, 2500)[19:],  # future, inside the segment's range
        3000: flip_bit(original_line(tmp_path, 3000), 2, 4),  # '0' -> ' ': a tiny time, before the segment
        3500: b"%d" % (T0 + 10 * S) + original_line(tmp_path, 3500)[19:],  # in range, breaks the order
        4000: original_line(tmp_path, 4000)[:20] + b"{not json",
    }
    damage(tmp_path, edits)
    good = [i for i in range(LINES) if i not in edits]
    got, corrupt, _ = page_through(tmp_path, T0, T0 + LINES * S)
    assert got == good and corrupt == len(edits)
    # A window ending before the damaged future time still runs to its end (that line is not "past to_ns").
    got, corrupt, _ = page_through(tmp_path, T0 + 2_000 * S, T0 + 4_500 * S - 1, limit=700)
    assert got == [i for i in good if 2_000 <= i < 4_500] and corrupt == 4


def test_bisection_is_not_misled_by_damaged_times(tmp_path):
    write_one_event_lines(tmp_path)
    # Every other line of the middle third stamped far too early (in the segment's range, out of order): where a
    # bisection probe lands on one, trusting it would jump past the window and skip its events.
    edits = {i: b"%d" % (T0 + (i // 4) * S) + original_line(tmp_path, i)[19:] for i in range(2_001, 4_000, 2)}
    damage(tmp_path, edits)
    for start in range(150, LINES - 30, 29):
        out = replay(tmp_path, T0 + start * S, T0 + (start + 20) * S, limit=100)
        assert [e["i"] for _, e in out.events] == [i for i in range(start, start + 21) if i not in edits], start


# -- one recording state, retried after failures ---------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_unwritable_directory_is_retried_at_resume_and_when_due(tmp_path, caplog):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")  # mkdir fails, even for root
    clock = Clock()
    r = rec.Recorder(blocker / "stocks", 1 << 30, retry_interval=30, clock=clock)
    assert r.resume() is rec.RecordingState.FAILED  # known at the start, before any frame is lost silently
    status = r.status()
    assert status.failure is not None and status.failure.at == clock.now and status.failure.retry_at == clock.now + 30
    assert "OFF since" in status.describe() and "every 30 s" in status.describe()
    clock.now += 30
    r.tick()  # due: tried again, fails the same way
    assert r.status().failure.at == clock.now
    assert [x.levelname for x in caplog.records if x.name == rec.__name__] == ["WARNING"]  # news once, not per retry
    blocker.unlink()
    clock.now += 29
    r.tick()
    assert r.state is rec.RecordingState.FAILED  # not due yet
    clock.now += 1
    r.tick()
    assert r.state is rec.RecordingState.ON and r.status().describe().startswith("on (")
    r.write(frame(1), 3, T0)
    r.close()
    assert len(replay(blocker / "stocks", 0, T0 + S).events) == 3


def test_disk_full_stops_recording_and_the_next_start_records_again(tmp_path):
    disk = FlakyDisk()
    r = rec.Recorder(tmp_path, 1 << 30, opener=disk, clock=Clock())
    r.write(frame(0), 3, T0)
    r.flush()
    disk.full = True
    r.write(frame(1), 3, T0 + S)  # the disk is full: recording stops, the reader does not
    r.write(frame(2), 3, T0 + 2 * S)
    assert r.state is rec.RecordingState.FAILED and "No space left on device" in r.error
    # What reached the disk stays, in a segment closed under its real range.
    (seg,) = rec.list_segments(tmp_path)
    assert seg.closed and seg.last_ns == T0 + 2
    disk.full = False
    assert r.resume() is rec.RecordingState.ON  # a stream start
    r.write(frame(3), 3, T0 + 3 * S)
    r.close()
    out = replay(tmp_path, 0, T0 + 10 * S)
    assert [e["p"] for _, e in out.events] == [0.0] * 3 + [3.0] * 3 and out.corrupt_lines == 0
