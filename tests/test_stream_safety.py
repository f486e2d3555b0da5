"""Stream safety: where the API key may be sent, cursors ahead of the buffer, and the answer budget.

Through a real MCP client where an agent sees the behaviour; the endpoint policy also as plain function calls.
Events are put in the buffer (and the recording) directly with MarketStream.feed, so counts are exact and no
test waits on a live rate.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson
import pytest

from conftest import call, mcp_session, ok
from mcp_polygon.config import Settings
from mcp_polygon.redaction import Redactor
from mcp_polygon.server import App, build_app
from mcp_polygon.simulator import Simulator
from mcp_polygon.streams.manager import EndpointPolicy, MarketStream, StreamError
from mcp_polygon.streams.markets import MARKETS


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(simulated=True)


def status_endpoint(status: str) -> str:
    return re.search(r"; endpoint (\S+)", status).group(1)


def next_seq(text: str) -> int:
    return int(re.findall(r"next since_seq=(\d+)", text)[-1])


def feed_trades(stream: MarketStream, n: int, per_frame: int = 10, t0_ns: int = 1_700_000_000 * 10**9) -> None:
    """`n` stock trades in frames of `per_frame`, numbered by `q` (1..n), received 1 ms apart per frame."""
    for start in range(0, n, per_frame):
        frame = [
            {"ev": "T", "sym": "AAPL", "p": 100.0 + i / 100, "s": 100, "x": 4, "q": i + 1, "t": 1_700_000_000_000 + i}
            for i in range(start, min(n, start + per_frame))
        ]
        stream.feed(orjson.dumps(frame), t0_ns + start * 1_000_000)


# -- 1. the endpoint: the key goes only to the configured host, the vendor's feeds, or loopback --------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "wss://evil.example.com",
        "wss://socket.massive.com.evil.example/stocks",
        "wss://socket.massive.com@evil.example/stocks",
        "wss://user:pw@socket.massive.com/stocks",
        "https://attacker.test",
        "wss://socket.massive.com:99999",
    ],
)
async def test_a_foreign_endpoint_is_refused_naming_the_allowed_choices(endpoint, client, app: App):
    text, err = await call(client, "start_stocks_stream", channels=["T.AAPL"], endpoint=endpoint)
    assert err
    for choice in ("'realtime'", "'delayed'", "'business'", "socket.massive.com", "delayed.polygon.io", "127.0.0.1"):
        assert choice in text, text
    assert app.streams.stream("stocks").connection is None  # refused before anything was sent


async def test_plain_ws_is_refused_off_loopback(client, app: App):
    text, err = await call(client, "start_stocks_stream", channels=["T.AAPL"], endpoint="ws://socket.massive.com")
    assert err and "unencrypted" in text and "wss://" in text
    assert app.streams.stream("stocks").connection is None


async def test_an_endpoint_never_sticks_stop_then_start_goes_back_to_the_configured_feed(client, sim, app: App):
    # The tester's case, with a second simulator standing in for the other host (loopback is allowed for tests).
    async with Simulator() as other:
        await ok(client, "start_stocks_stream", channels=["T.AAPL"], endpoint=other.ws_url)
        assert status_endpoint(await ok(client, "get_stocks_stream_status")) == f"{other.ws_url}/stocks"
        assert other.ws.auth_count("stocks") == 1
        await ok(client, "stop_stocks_stream")

        await ok(client, "start_stocks_stream", channels=["T.AAPL"])
        assert status_endpoint(await ok(client, "get_stocks_stream_status")) == f"{sim.ws_url}/stocks"
        assert other.ws.auth_count("stocks") == 1 and sim.ws.auth_count("stocks") == 1
        await ok(client, "stop_stocks_stream")

        await ok(client, "start_stocks_stream", channels=["T.AAPL"], endpoint=other.ws_url)
        await ok(client, "stop_stocks_stream")
        await ok(client, "start_stocks_stream", channels=["T.AAPL"], endpoint="")  # blank is "no endpoint" too
        assert status_endpoint(await ok(client, "get_stocks_stream_status")) == f"{sim.ws_url}/stocks"
        assert other.ws.auth_count("stocks") == 2 and sim.ws.auth_count("stocks") == 2


async def test_a_start_without_endpoint_leaves_a_running_other_feed_and_says_so(client, sim):
    await ok(client, "start_stocks_stream", channels=["T.AAPL"], endpoint="delayed")
    assert status_endpoint(await ok(client, "get_stocks_stream_status")) == f"{sim.ws_url}/delayed/stocks"
    text = await ok(client, "start_stocks_stream", channels=["Q.AAPL"])
    assert f"switched from {sim.ws_url}/delayed/stocks" in text
    assert status_endpoint(await ok(client, "get_stocks_stream_status")) == f"{sim.ws_url}/stocks"


@pytest.mark.parametrize(
    ("market", "name", "path"),
    [
        ("stocks", "realtime", "/stocks"),
        ("stocks", "Delayed", "/delayed/stocks"),
        ("crypto", "business", "/business/crypto"),
        ("futures", "cme", "/futures/cme"),
        ("futures", "nymex", "/futures/nymex"),
    ],
)
async def test_short_names_choose_a_feed_of_the_configured_server(market, name, path, client, sim):
    channel = {"stocks": "T.AAPL", "crypto": "XT.BTC-USD", "futures": "T.ESZ5"}[market]
    text = await ok(client, f"start_{market}_stream", channels=[channel], endpoint=name)
    assert f"streaming from {sim.ws_url}{path}" in text


async def test_an_exchange_name_is_for_futures_only(client):
    text, err = await call(client, "start_stocks_stream", channels=["T.AAPL"], endpoint="cme")
    assert err and "'realtime'" in text and "'nymex'" not in text


POLICY = EndpointPolicy("wss://socket.massive.com", Redactor("k" * 20))


@pytest.mark.parametrize(
    ("value", "market", "url"),
    [
        (None, "stocks", "wss://socket.massive.com/stocks"),
        ("  ", "stocks", "wss://socket.massive.com/stocks"),
        ("realtime", "options", "wss://socket.massive.com/options"),
        ("delayed", "stocks", "wss://delayed.massive.com/stocks"),
        ("business", "forex", "wss://business.massive.com/forex"),
        ("cme", "futures", "wss://socket.massive.com/futures/cme"),
        ("wss://delayed.polygon.io", "crypto", "wss://delayed.polygon.io/crypto"),
        ("business.polygon.io", "stocks", "wss://business.polygon.io/stocks"),
        ("wss://SOCKET.massive.com/futures/comex", "futures", "wss://SOCKET.massive.com/futures/comex"),
        ("ws://localhost:8101", "forex", "ws://localhost:8101/forex"),
        ("ws://[::1]:9/stocks", "stocks", "ws://[::1]:9/stocks"),
        ("wss://127.0.0.2:9", "indices", "wss://127.0.0.2:9/indices"),
    ],
)
def test_policy_allows(value, market, url):
    assert POLICY.resolve(value, MARKETS[market]) == url


@pytest.mark.parametrize(
    "value",
    [
        "wss://evil.example",
        "ws://delayed.massive.com",
        "wss://massive.com",
        "wss://api.massive.com",
        "wss://socket.massive.co",
        "wss://foo.localhost",
        "wss://socket.massive.com/stocks\nHost: evil",
        "ftp://socket.massive.com",
        "wss://",
    ],
)
def test_policy_refuses(value):
    with pytest.raises(StreamError, match="'realtime', 'delayed', 'business'"):
        POLICY.resolve(value, MARKETS["stocks"])


def test_policy_follows_the_configured_domain_and_host():
    old = EndpointPolicy("wss://socket.polygon.io", Redactor(None))
    assert old.resolve("delayed", MARKETS["stocks"]) == "wss://delayed.polygon.io/stocks"
    proxy = EndpointPolicy("ws://feed-proxy.internal:8080", Redactor(None))
    stocks = MARKETS["stocks"]
    # The operator chose this host, plain ws:// included; its feeds are paths, as on the simulator.
    assert proxy.resolve(None, stocks) == "ws://feed-proxy.internal:8080/stocks"
    assert proxy.resolve("delayed", stocks) == "ws://feed-proxy.internal:8080/delayed/stocks"
    assert proxy.resolve("ws://feed-proxy.internal:8080/business/stocks", stocks).endswith("/business/stocks")
    with pytest.raises(StreamError, match=r"feed-proxy.internal \(configured\)"):
        proxy.resolve("ws://other-proxy.internal:8080", stocks)
    with pytest.raises(StreamError, match="unencrypted"):
        proxy.resolve("ws://socket.massive.com", stocks)


def test_a_refused_endpoint_is_masked_before_it_is_clipped():
    key = "a-secret-api-key-1234"
    policy = EndpointPolicy("wss://socket.massive.com", Redactor(key))
    with pytest.raises(StreamError) as caught:
        policy.resolve("wss://evil.example/" + "a" * 75 + key, MARKETS["stocks"])
    assert key[:5] not in str(caught.value)


# -- 8. since_seq ahead of the buffer ---------------------------------------------------------------------------


async def test_since_seq_ahead_of_the_buffer_answers_from_the_oldest_event(client, app: App):
    stream = app.streams.stream("stocks")
    feed_trades(stream, 30)
    for since in (31, 1_000_035, 2**62):
        text = await ok(client, "get_stocks_stream_messages", since_seq=since, limit=5)
        assert f"since_seq={since} is ahead of this buffer" in text and "restarted" in text
        assert re.findall(r"^(\d+),AAPL", text, re.M) == ["1", "2", "3", "4", "5"]
        assert next_seq(text) == 5
    body = orjson.loads(await ok(client, "get_stocks_stream_messages", since_seq=999, format="json"))
    assert body["since_seq_ahead"] and [e["seq"] for e in body["events"]][:2] == [1, 2]
    assert "ahead of this buffer" in body["notes"][0]
    text = await ok(client, "get_stocks_stream_messages", since_seq=30)  # at the head: nothing new, no note
    assert "no new events" in text and "ahead" not in text


async def test_a_cursor_from_before_a_restart_starts_again_at_zero(client):
    text = await ok(client, "get_stocks_stream_messages", since_seq=15)
    assert "ahead of this buffer (nothing is buffered yet" in text and next_seq(text) == 0


async def test_an_out_of_range_since_seq_is_an_argument_error_not_a_crash(client):
    text, err = await call(client, "get_stocks_stream_messages", since_seq=2**70, format="json")
    assert err and "since_seq" in text and "unexpectedly" not in text


@pytest.mark.parametrize("value", [2**70, "1e300", "-" + "9" * 400 + "d", 1e300])
async def test_out_of_range_times_are_argument_errors_not_crashes(value, client):
    for name, args in (
        ("get_stocks_stream_messages", {"since_timestamp": value}),
        ("replay_stocks_stream_messages", {"from_timestamp": value}),
        ("replay_stocks_stream_messages", {"from_timestamp": "-1h", "to_timestamp": value}),
    ):
        text, err = await call(client, name, **args)
        assert err and "unexpectedly" not in text and ("not a time" in text or "9999" in text), text


# -- 11. the answer budget --------------------------------------------------------------------------------------


@pytest.fixture
async def big(sim: Simulator, settings: Settings) -> AsyncIterator[tuple[App, object]]:
    """An app whose stocks buffer and recording hold 10,000 trades, at the default ~20k-token budget."""
    async with build_app(settings.with_overrides(buffer_size=20_000)) as application:
        feed_trades(application.streams.stream("stocks"), 10_000)
        async with mcp_session(application.server) as mcp_client:
            yield application, mcp_client


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_stream_reads_stay_within_the_budget_and_page_on_without_losses(fmt, big):
    app, client = big
    cap = app.settings.max_response_chars
    seen: list[int] = []
    since, pages = 0, 0
    while True:
        text = await ok(client, "get_stocks_stream_messages", since_seq=since, limit=10_000, format=fmt)
        assert len(text) <= cap
        pages += 1
        if fmt == "json":
            body = orjson.loads(text)
            seqs = [e["seq"] for e in body["events"]]
            if seqs and body.get("truncated"):
                assert "truncated" in body["notes"][-1] and f"since_seq={seqs[-1]}" in body["notes"][-1]
            nxt = body["next_since_seq"]
        else:
            seqs = [int(s) for s in re.findall(r"^(\d+),AAPL", text, re.M)]
            if len(seqs) < 10_000 - len(seen):
                assert "# truncated:" in text and f"since_seq={seqs[-1]}" in text
            nxt = next_seq(text)
        if not seqs:
            break
        assert nxt == seqs[-1]  # continue exactly after the last row shown
        seen += seqs
        since = nxt
    assert seen == list(range(1, 10_001)) and pages > 2


async def test_a_newest_read_without_since_seq_is_cut_too_and_continues(big):
    app, client = big
    text = await ok(client, "get_stocks_stream_messages", limit=10_000)
    seqs = [int(s) for s in re.findall(r"^(\d+),AAPL", text, re.M)]
    assert len(text) <= app.settings.max_response_chars and seqs[0] == 1 and "# truncated:" in text
    text = await ok(client, "get_stocks_stream_messages", since_seq=next_seq(text), limit=5)
    assert re.findall(r"^(\d+),AAPL", text, re.M)[0] == str(seqs[-1] + 1)


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_replay_stays_within_the_budget_and_pages_on_without_losses(fmt, big):
    app, client = big
    cap = app.settings.max_response_chars
    got: list[int] = []
    start: str | int = "2023-11-14T00:00:00Z"
    for _ in range(50):
        text = await ok(client, "replay_stocks_stream_messages", from_timestamp=start, format=fmt, limit=10_000)
        assert len(text) <= cap
        if fmt == "json":
            body = orjson.loads(text)
            got += [e["q"] for e in body["events"]]
            if not body["more"]:
                break
            start = body["next_from_timestamp"]
        else:
            got += [int(q) for q in re.findall(r"^AAPL,[^,]+,100,4,(\d+),", text, re.M)]
            found = re.findall(r"from_timestamp=(\d+)", text)
            if not found:
                assert "end of the window" in text
                break
            assert "# truncated:" in text
            start = int(found[-1])
    assert got == list(range(1, 10_001))


async def test_one_event_longer_than_the_budget_is_named_and_can_be_skipped(sim, settings):
    async with build_app(settings.with_overrides(max_response_chars=2_000)) as app, mcp_session(app.server) as client:
        stream = app.streams.stream("stocks")
        stream.feed(orjson.dumps([{"ev": "T", "sym": "AAPL", "p": 1.0, "huge": "x" * 5_000}]))
        feed_trades(stream, 3)
        text = await ok(client, "get_stocks_stream_messages", since_seq=0)
        assert len(text) <= 2_000 and "seq 1) alone is longer" in text and next_seq(text) == 1
        text = await ok(client, "get_stocks_stream_messages", since_seq=next_seq(text))
        assert re.findall(r"^(\d+),AAPL", text, re.M) == ["2", "3", "4"]


async def test_control_and_status_answers_and_errors_are_bounded(sim, settings):
    cap = 4_000
    async with build_app(settings.with_overrides(max_response_chars=cap)) as app, mcp_session(app.server) as client:
        # Unknown tickers (ZZZ...) are acknowledged and never streamed: 300 long topics, no data.
        channels = [f"Q.ZZZ{i:03d}{'X' * 30}" for i in range(300)]
        answers = [await ok(client, "start_stocks_stream", channels=channels)]
        answers.append(await ok(client, "list_stocks_subscriptions"))
        answers.append(await ok(client, "get_stocks_stream_status"))
        answers.append(await ok(client, "unsubscribe_stocks_channels", channels=channels[:150]))
        assert all(len(a) <= cap for a in answers), [len(a) for a in answers]
        assert "more" in answers[0]
        for args in ({"channels": ["X" * 100_000]}, {"channels": ["T.AAPL"], "endpoint": "wss://" + "e" * 100_000}):
            text, err = await call(client, "start_stocks_stream", **args)
            assert err and len(text) <= 2_000
        text, err = await call(client, "get_stocks_stream_messages", format="x" * 100_000)
        assert err and len(text) <= 2_000 and "'csv' or 'json'" in text


# -- the key in an agent's own channel names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel",
    [
        "T.{key}",  # a valid-looking ticker: subscribed as-is it would come back upper-cased, which no mask finds
        "T." + "A" * 30 + "{key}",  # a refusal quotes the channel cut at 40 characters: the cut splits the key
        "{key}",
    ],
)
async def test_a_channel_holding_the_key_is_refused_without_showing_any_of_it(channel, client, sim):
    key = sim.api_key
    text, err = await call(client, "start_stocks_stream", channels=[channel.format(key=key)])
    assert err and "T.AAPL" in text  # refused, naming the valid form
    for piece in (key, key.upper(), key[:4], key.upper()[:4]):
        assert piece not in text, (piece, text)
    assert sim.ws.connect_count("stocks") == 0
    text, err = await call(client, "get_stocks_stream_messages", channel_filter=channel.format(key=key))
    assert err and all(piece not in text for piece in (key, key.upper(), key[:4], key.upper()[:4])), text
