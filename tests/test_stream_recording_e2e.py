"""Recordings seen through a real MCP client: what the agent saw is on disk soon after a feed goes quiet, damaged
lines are skipped and reported, and every tool tells the same truth about the recording state.

Timing: every wait polls with a deadline; failures of the disk are injected (a file where the data directory should
be, or an opener whose writes raise ENOSPC), never waited for.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest

from conftest import FlakyDisk, mcp_session, ok, until
from mcp_polygon.config import Settings
from mcp_polygon.server import build_app
from mcp_polygon.streams import recorder as rec

S = 1_000_000_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(simulated=True)


def events_on_disk(directory: Path) -> list[dict]:
    """Every event in the recordings, read the way another process would: a separate open() of each segment."""
    out: list[dict] = []
    for seg in rec.list_segments(directory):
        with open(seg.path, "rb") as f:
            for line in f.read().split(b"\n")[:-1]:
                out += orjson.loads(line.partition(b" ")[2])
    return out


def recording_line(status_text: str) -> str:
    return next(line for line in status_text.splitlines() if line.startswith("recording: "))


async def test_what_the_agent_saw_is_on_disk_soon_after_the_feed_goes_quiet(sim, settings):
    sim.ws.set_rate("stocks", 0)  # only the burst below, then silence
    async with build_app(settings) as app, mcp_session(app.server) as client:
        await ok(client, "start_stocks_stream", channels=["T.AAPL"])
        assert await sim.ws.paced("stocks", 400, 0.05) == 20
        seen: list[dict] = []

        async def agent_saw_all() -> bool:
            body = orjson.loads(await ok(client, "get_stocks_stream_messages", format="json", limit=1000))
            seen[:] = [{k: v for k, v in e.items() if k not in ("seq", "received_at")} for e in body["events"]]
            return len(seen) == 20

        await until(agent_saw_all)
        # No further frame arrives; the stream keeps running. The timed flush (1 s) must put them on disk.
        quiet_since = time.monotonic()
        await until(lambda: events_on_disk(settings.data_dir / "stocks") == seen, seconds=5)
        assert time.monotonic() - quiet_since < 3  # (about one flush interval; generous for a loaded machine)


async def test_corrupt_lines_are_skipped_and_counted_by_the_replay_tool(sim, settings):
    directory = settings.data_dir / "stocks"
    t0 = time.time_ns() - 600 * S
    r = rec.Recorder(directory, 1 << 30)
    for i in range(30):
        r.write(orjson.dumps([{"ev": "T", "sym": "AAPL", "p": 1.0, "s": i, "t": 1}]), 1, t0 + i * S)
    # Left open by this (live) process, so the server's start does not compact it: compaction keeps only the lines
    # replay trusts, so damage is found and counted in JSONL, the open segment's form.
    r.flush()
    (seg,) = rec.list_segments(directory)
    assert not seg.closed
    lines = seg.path.read_bytes().split(b"\n")
    lines[10] = b"garbage line"
    lines[20] = b"9" + lines[20][1:]  # a damaged time, far in the future
    seg.path.write_bytes(b"\n".join(lines))
    async with build_app(settings) as app, mcp_session(app.server) as client:
        text = await ok(client, "replay_stocks_stream_messages", from_timestamp="-1h")
        assert "2 corrupt lines skipped" in text
        body = orjson.loads(await ok(client, "replay_stocks_stream_messages", from_timestamp="-1h", format="json"))
        assert [e["s"] for e in body["events"]] == [i for i in range(30) if i not in (10, 20)]
        assert body["corrupt_lines_skipped"] == 2 and "2 corrupt lines skipped" in body["notes"][0]


async def test_an_unwritable_data_dir_is_reported_alike_by_every_tool_then_retried(sim, settings, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")  # makes mkdir fail, even for root
    settings = settings.with_overrides(data_dir=blocker / "data")
    sim.ws.set_rate("stocks", 40)
    async with build_app(settings) as app, mcp_session(app.server) as client:
        recorder = app.streams.stream("stocks").recorder
        assert recorder is not None
        await ok(client, "start_stocks_stream", channels=["T.AAPL"])
        status = recording_line(await ok(client, "get_stocks_stream_status"))
        assert status.startswith("recording: OFF since") and "Not a directory" in status
        replay = await ok(client, "replay_stocks_stream_messages", from_timestamp="-1h")
        assert status in replay.splitlines()  # the same words, not "recording is on"
        # The periodic retry (shortened here) finds the directory usable again while the stream runs.
        recorder.retry_interval = recorder.flush_interval = 0.05
        await ok(client, "start_stocks_stream", channels=["T.AAPL"])  # (a start retries at once: still failing)
        blocker.unlink()

        async def recording_again() -> bool:
            return recording_line(await ok(client, "get_stocks_stream_status")).startswith("recording: on (")

        await until(recording_again)
        await until(lambda: len(events_on_disk(settings.data_dir / "stocks")) >= 3)
        text = await ok(client, "replay_stocks_stream_messages", from_timestamp="-1h")
        assert "# T trades" in text and "OFF" not in text


async def test_after_disk_full_the_next_start_records_again(sim, settings):
    sim.ws.set_rate("stocks", 40)
    disk = FlakyDisk()
    async with build_app(settings) as app, mcp_session(app.server) as client:
        stream = app.streams.stream("stocks")
        assert stream.recorder is not None
        stream.recorder.opener = disk
        await ok(client, "start_stocks_stream", channels=["T.AAPL"])
        await until(lambda: stream.buffer.head > 3)
        disk.full = True

        async def reported_off() -> bool:
            return "No space left on device" in recording_line(await ok(client, "get_stocks_stream_status"))

        await until(reported_off)
        await ok(client, "stop_stocks_stream")
        disk.full = False
        await ok(client, "start_stocks_stream", channels=["T.AAPL"])  # the retry interval (30 s) is not needed
        assert recording_line(await ok(client, "get_stocks_stream_status")).startswith("recording: on (")
        resumed_at = stream.buffer.head
        await until(lambda: stream.buffer.head > resumed_at + 3)
        await ok(client, "stop_stocks_stream")
        recorded = [e["q"] for e in events_on_disk(settings.data_dir / "stocks")]
        newest = [e["q"] for _, _, e in app.streams.read("stocks", limit=3).events]
        assert recorded[-3:] == newest  # the events after the restart are on disk
        assert re.search(r"recording: on \(\d", await ok(client, "get_stocks_stream_status"))
