"""recorder.py: segments, rotation, retention, replay ranges, restart and crash recovery."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from mcp_polygon.streams import recorder as rec
from mcp_polygon.streams.markets import MARKETS, make_matcher, parse_filter

S = 1_000_000_000  # ns per second
T0 = 1_700_000_000 * S


def frame(i: int, n: int = 3, sym: str = "AAPL") -> bytes:
    return orjson.dumps([{"ev": "T", "sym": sym, "p": float(i), "k": j} for j in range(n)])


def test_write_then_replay_window(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    for i in range(10):
        r.write(frame(i), 3, T0 + i * S)
    r.flush()
    out = rec.replay(tmp_path, T0 + 2 * S, T0 + 5 * S - 1)
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
        out = rec.replay(tmp_path, start, T0 + 100 * S, limit=7)
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
    stamps = [ns for ns, _ in rec.replay(tmp_path, 0, T0 + S).events]
    assert stamps == sorted(set(stamps)) and len(stamps) == 9


def test_rotation_and_only_overlapping_segments_are_read(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30, segment_bytes=2000)
    for i in range(200):
        r.write(frame(i, 10), 10, T0 + i * S)
    r.close()
    segs = rec.list_segments(tmp_path)
    assert len(segs) > 10 and all(s.closed for s in segs)
    out = rec.replay(tmp_path, T0 + 100 * S, T0 + 101 * S)
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
    out = rec.replay(tmp_path, T0 + 15_000 * S, T0 + 15_002 * S - 1)
    assert [e["p"] for _, e in out.events] == [15000.0, 15000.0, 15001.0, 15001.0]


def test_retention_deletes_oldest_segments(tmp_path):
    r = rec.Recorder(tmp_path, 20_000, segment_bytes=4_000)
    for i in range(400):
        r.write(frame(i, 5), 5, T0 + i * S)
    r.close()
    segs = rec.list_segments(tmp_path)
    assert sum(s.size for s in segs) <= 20_000 + 4_000
    assert r.segments_deleted > 0
    out = rec.replay(tmp_path, 0, T0 + 1000 * S, limit=10_000)
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
    out = rec.replay(tmp_path, 0, T0 + 100 * S, limit=100)
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
    assert [e["p"] for _, e in rec.replay(tmp_path, 0, T0 + 10 * S).events] == [1.0, 2.0]
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
    out = rec.replay(tmp_path, 0, T0 + 10 * S)
    assert [e["p"] for _, e in out.events] == [1.0, 1.0, 1.0]


def test_replay_filter_and_needles(tmp_path):
    r = rec.Recorder(tmp_path, 1 << 30)
    for i in range(10):
        r.write(frame(i, 2, "AAPL" if i % 2 else "MSFT"), 2, T0 + i * S)
    r.flush()
    flt = parse_filter(MARKETS["stocks"], "T.AAPL")
    out = rec.replay(tmp_path, 0, T0 + 100 * S, match=make_matcher(MARKETS["stocks"], flt), needles=flt.needles())
    assert {e["sym"] for _, e in out.events} == {"AAPL"} and len(out.events) == 10


def test_missing_directory_and_empty_window(tmp_path):
    out = rec.replay(tmp_path / "nothing", 0, T0)
    assert out.events == [] and out.segments_total == 0 and out.recorded_from_ns is None


def test_os_error_turns_recording_off_instead_of_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = rec.Recorder(blocker / "stocks", 1 << 30)
    r.write(frame(1), 3, T0)  # mkdir fails: no exception
    assert not r.enabled and "recording stopped" in r.error
    r.write(frame(2), 3, T0 + S)
