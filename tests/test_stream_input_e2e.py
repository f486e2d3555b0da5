"""Issue 7 through a real MCP client: bad channels and filters refused in one sentence, mixed frames counted as
they read, and the key a vendor echoes kept out of the log. The server runs against the simulator."""

from __future__ import annotations

import logging

import pytest

from conftest import call, until


@pytest.mark.parametrize(
    ("channel", "needle"),
    [
        ('T.{"EV":"STATUS"}', "contains '{'"),
        ("T.\u0410APL", "U+0410"),  # a Cyrillic A: looks like T.AAPL
        ("T." + "A" * 1_000_000, "(1,000,002 characters)"),
    ],
)
async def test_a_bad_channel_is_refused_in_one_sentence_and_nothing_is_sent(client, sim, channel, needle):
    text, is_error = await call(client, "start_stocks_stream", channels=[channel])
    assert is_error and needle in text and "T.AAPL" in text
    assert len(text) < 500 and text.count(". ") <= 2  # one sentence (the examples hold dots, not sentence ends)
    assert sim.ws.connect_count("stocks") == 0
    status, _ = await call(client, "get_stocks_stream_status")
    assert len(status) < 5_000  # the refused name is nowhere in the status


async def test_a_filter_that_would_match_nothing_is_refused(client, sim):
    _, is_error = await call(client, "start_stocks_stream", channels=["T.AAPL"])
    assert not is_error
    text, is_error = await call(client, "get_stocks_stream_messages", channel_filter="T.")
    assert is_error and "nothing after the dot" in text and "T.*" in text


async def test_mixed_frames_count_exactly_the_readable_events(client, sim, app):
    sim.ws.set_rate("stocks", 0)
    _, is_error = await call(client, "start_stocks_stream", channels=["T.AAPL"])
    assert not is_error
    await sim.ws.wait_subscribed("stocks", ["T.AAPL"])
    stream = app.streams.stream("stocks")
    head = stream.buffer.head
    for kind in ("no_ev_first", "nested_ev", "non_object"):  # 1 + 1 + 2 readable trades
        assert await sim.ws.malformed("stocks", kind) == 1
    await sim.ws.send_status("stocks", "marker", "end")  # frames arrive in order: after it, all of them are in
    await until(lambda: stream.session.status_counts["unknown"] >= 1)
    assert stream.buffer.head - head == 4 and stream.session.malformed_events == 2
    events = [e for _, _, e in app.streams.read("stocks", limit=10, since_seq=head).events]
    assert [(e["ev"], e["sym"]) for e in events] == [("T", "AAPL")] * 4
    text, is_error = await call(client, "get_stocks_stream_messages", limit=50)
    assert not is_error and "# T trades: 4 events" in text


async def test_the_key_a_vendor_echoes_stays_out_of_the_log(client, sim, caplog):
    caplog.set_level(logging.DEBUG, logger="mcp_polygon")
    _, is_error = await call(client, "start_stocks_stream", channels=["T.AAPL"])
    assert not is_error
    await sim.ws.send_status("stocks", "error", f"unknown request from key {sim.api_key}")
    await sim.ws.send_status("stocks", "force_disconnect", f"bye {sim.api_key}", close=True)
    await until(lambda: sim.ws.connect_count("stocks") >= 2)
    assert "unknown request from key ***" in caplog.text and "bye ***" in caplog.text
    assert sim.api_key not in caplog.text
    status, _ = await call(client, "get_stocks_stream_status")
    assert sim.api_key not in status
