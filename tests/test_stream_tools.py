"""The 48 stream tools end to end: a real MCP client over JSON-RPC, the server, the WebSocket simulator.

Timing: every wait polls with a deadline; nothing asserts on a duration except "auth failure comes back fast".
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote, quote_plus

import orjson
import pytest

from conftest import call, mcp_session, ok, until
from mcp_polygon.config import STREAM_MARKETS, Settings
from mcp_polygon.server import build_app
from mcp_polygon.streams.connection import ConnectionState

# One subscription per market that streams (a ticker the simulator knows), one for a second event type,
# and a channel_filter that matches only the first.
CASES = {
    "stocks": (["T.AAPL", "Q.*"], "AM.MSFT", "T.AAPL", "timestamp_ms"),
    "options": (["T.O:SPY251219C00650000", "Q.O:SPY251219C00650000"], "A.*", "T.*", "price"),
    "futures": (["T.ESZ5", "Q.*"], "AM.NQZ5", "T.ESZ5", "bid_price"),
    "indices": (["V.I:SPX", "A.*"], "AM.I:NDX", "V.*", "value"),
    "forex": (["C.EUR/USD", "CAS.*"], "CA.USD/JPY", "C.EUR/USD", "ask_price"),
    "crypto": (["XT.BTC-USD", "XQ.*"], "XAS.ETH-USD", "*.BTC-USD", "price"),
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(simulated=True)


def next_seq(text: str) -> int:
    return int(re.findall(r"next since_seq=(\d+)", text)[-1])


def test_every_connection_state_has_words_for_the_agent():
    from mcp_polygon.streams.tools import STATE_TEXTS

    assert set(STATE_TEXTS) == set(ConnectionState)


async def test_48_tools_are_registered(client):
    names = {t.name for t in (await client.list_tools()).tools}
    for m in STREAM_MARKETS:
        for pattern in (
            "start_{}_stream",
            "stop_{}_stream",
            "get_{}_stream_status",
            "subscribe_{}_channels",
            "unsubscribe_{}_channels",
            "list_{}_subscriptions",
            "get_{}_stream_messages",
            "replay_{}_stream_messages",
        ):
            assert pattern.format(m) in names


@pytest.mark.parametrize("market", STREAM_MARKETS)
async def test_stream_lifecycle(market, client, sim, app):
    channels, extra, flt, column = CASES[market]
    sim.ws.set_rate(market, 40)

    text = await ok(client, f"start_{market}_stream", channels=channels)
    assert "SIMULATED" in text and "streaming" in text
    for ch in channels:
        assert ch in text
    assert "acknowledged" in text

    # Read: CSV with readable columns, one section per event type.
    async def some():
        t = await ok(client, f"get_{market}_stream_messages", limit=50)
        return t if t.count("\n# ") + t.startswith("# ") >= 1 and column in t else None

    text = await until(some)
    assert "SIMULATED" in text and "next since_seq=" in text
    for prefix in {c.partition(".")[0] for c in channels}:
        assert f"# {prefix} " in text

    # Filter: only the filtered channel type comes back.
    text = await ok(client, f"get_{market}_stream_messages", limit=20, channel_filter=flt)
    sections = re.findall(r"^# (\S+) ", text, re.M)
    allowed = {c.partition(".")[0] for c in channels} if flt.startswith("*.") else {channels[0].partition(".")[0]}
    assert sections and set(sections) <= allowed
    if flt.startswith("*."):
        assert flt[2:] in text and all(flt[2:] in line for line in text.splitlines() if line[:1].isdigit())

    # Poll by since_seq: strictly newer events, no duplicates.
    seq = next_seq(text)
    seen: list[int] = []

    async def newer():
        nonlocal seq
        t = await ok(client, f"get_{market}_stream_messages", since_seq=seq, format="json")
        body = orjson.loads(t)
        seen.extend(e["seq"] for e in body["events"])
        assert all(e["received_at"] for e in body["events"])
        seq = body["next_since_seq"]
        return len(seen) >= 5

    await until(newer)
    assert seen == sorted(set(seen)) and seen[0] > next_seq(text) - 1

    # Subscribe, list (grouped by channel type), unsubscribe.
    text = await ok(client, f"subscribe_{market}_channels", channels=[extra])
    assert extra in text and "acknowledged" in text
    await until(lambda: extra in sim.ws.subscriptions(market))
    listing = await ok(client, f"list_{market}_subscriptions")
    for ch in [*channels, extra]:
        prefix, _, ticker = ch.partition(".")
        assert re.search(rf"^{re.escape(prefix)} \(.*{re.escape(ticker)}", listing, re.M), listing
    text = await ok(client, f"unsubscribe_{market}_channels", channels=[extra])
    assert "unsubscribed" in text and extra in text
    await until(lambda: extra not in sim.ws.subscriptions(market))

    status = await ok(client, f"get_{market}_stream_status")
    assert "SIMULATED" in status and "streaming" in status and "rate" in status and "buffer:" in status

    # Stop: the socket closes, the buffer stays readable.
    before = app.streams.stream(market).buffer.head
    text = await ok(client, f"stop_{market}_stream")
    assert "stopped" in text
    await until(lambda: sim.ws.connections(market) == 0)
    text = await ok(client, f"get_{market}_stream_messages", limit=5)
    assert "seq" in text and next_seq(text) >= before
    assert "not started" in await ok(client, f"get_{market}_stream_status") or "stopped" in await ok(
        client, f"get_{market}_stream_status"
    )


async def test_start_is_idempotent_and_shares_one_connection(client, sim):
    await ok(client, "start_stocks_stream", channels=["T.AAPL"])
    text = await ok(client, "start_stocks_stream", channels=["T.AAPL"])
    assert "already subscribed" in text
    assert sim.ws.connect_count("stocks") == 1 and sim.ws.connections("stocks") == 1


async def test_validation_errors(client, sim):
    text, err = await call(client, "start_stocks_stream", channels=["XT.BTC-USD"])
    assert err and "valid stocks prefixes: T (trades)" in text
    assert sim.ws.connect_count("stocks") == 0  # nothing was sent
    text, err = await call(client, "start_options_stream", channels=["Q.*"])
    assert err and "'*'" in text
    text, err = await call(client, "subscribe_stocks_channels", channels=["T.AAPL"])
    assert err and "start_stocks_stream" in text
    text, err = await call(client, "get_stocks_stream_messages", format="xml")
    assert err and "csv" in text and "json" in text
    text, err = await call(client, "get_stocks_stream_messages", since_timestamp="yesterday-ish")
    assert err and "ISO 8601" in text
    text, err = await call(client, "get_stocks_stream_messages", channel_filter="XT.*")
    assert err and "valid stocks prefixes" in text
    text, err = await call(client, "replay_stocks_stream_messages", from_timestamp="-1m", to_timestamp="-2m")
    assert err and "before" in text
    text, err = await call(client, "start_stocks_stream", channels=["T.AAPL"], endpoint="ftp://nope")
    assert err and "WebSocket URL" in text
    text, err = await call(client, "get_stocks_stream_messages", limit=0)
    assert err and "limit" in text


async def test_no_key_says_how_to_set_it(sim, tmp_path):
    settings = Settings(api_key=None, ws_url=sim.ws_url, data_dir=tmp_path)
    async with build_app(settings) as app, mcp_session(app.server) as client:
        text, err = await call(client, "start_crypto_stream", channels=["XT.BTC-USD"])
    assert err and "POLYGON_API_KEY" in text and "--simulate" in text


@pytest.mark.parametrize("plan", [False, True])
async def test_auth_failure_is_a_fast_tool_error_without_retries(plan, sim, tmp_path):
    key = "a-wrong-key-123"
    if plan:
        sim.ws.keys.add(key)
        sim.ws.no_ws_keys.add(key)
    settings = Settings(api_key=key, ws_url=sim.ws_url, data_dir=tmp_path)
    async with build_app(settings) as app, mcp_session(app.server) as client:
        started = time.monotonic()
        text, err = await call(client, "start_stocks_stream", channels=["T.AAPL"])
        assert time.monotonic() - started < 5
        assert err and key not in text
        assert ("plan" in text) if plan else ("rejected the API key" in text)
        # The supervisor ends (it may still be closing the socket when the tool answers); once it has, no retry can
        # come: it never waited for one, and it connected once.
        stream = app.streams.stream("stocks")
        await until(lambda: not stream.active)
        assert stream.state is ConnectionState.AUTH_FAILED and sim.ws.connect_count("stocks") == 1
        assert app.streams.status("stocks").connection.reconnects == 0
        status = await ok(client, "get_stocks_stream_status")
        assert "authentication failed" in status and key not in status


async def test_reconnect_after_abrupt_drop_restores_subscriptions(client, sim, app):
    sim.ws.set_rate("stocks", 40)
    await ok(client, "start_stocks_stream", channels=["T.AAPL", "Q.MSFT"])
    assert await sim.ws.drop("stocks") == 1
    await until(lambda: sim.ws.connect_count("stocks") >= 2 and sim.ws.subscriptions("stocks") == {"T.AAPL", "Q.MSFT"})
    head = app.streams.stream("stocks").buffer.head
    await until(lambda: app.streams.stream("stocks").buffer.head > head + 5)
    status = await ok(client, "get_stocks_stream_status")
    assert "1 reconnects" in status and "without a close frame" in status
    assert "2 acknowledged" in status


async def test_reconnect_after_server_restart(client, sim, app):
    await ok(client, "start_forex_stream", channels=["C.EUR/USD"])
    await sim.ws.restart()
    await until(
        lambda: (
            sim.ws.subscriptions("forex") == {"C.EUR/USD"}
            and app.streams.stream("forex").state is ConnectionState.STREAMING
        )
    )


async def test_slow_consumer_and_force_disconnect_are_surfaced(client, sim):
    await ok(client, "start_stocks_stream", channels=["T.AAPL"])
    await sim.ws.slow_consumer("stocks")
    await until(lambda: sim.ws.connect_count("stocks") >= 2 and sim.ws.subscriptions("stocks") == {"T.AAPL"})
    status = await ok(client, "get_stocks_stream_status")
    assert "slow_consumer" in status
    await sim.ws.send_status("stocks", "force_disconnect", "maintenance", close=True)
    await until(lambda: sim.ws.connect_count("stocks") >= 3)
    assert "force_disconnect: maintenance" in await ok(client, "get_stocks_stream_status")


async def test_subscription_errors_are_reported(client, sim):
    sim.ws.deny["stocks"].add("FMV")
    text = await ok(client, "start_stocks_stream", channels=["T.AAPL", "FMV.AAPL"])
    assert "REJECTED" in text and "FMV.AAPL (not authorized)" in text
    assert "T.AAPL" in text.split("REJECTED")[0]
    listing = await ok(client, "list_stocks_subscriptions")
    assert "rejected AAPL (not authorized)" in listing
    sim.ws.option_quote_limit = 2
    text = await ok(client, "start_options_stream", channels=[f"Q.O:SPY251219C0065{i}000" for i in range(3)])
    assert "Subscription limit reached" in text


async def test_malformed_frames_do_not_kill_the_stream(client, sim, app):
    sim.ws.set_rate("crypto", 40)
    await ok(client, "start_crypto_stream", channels=["XT.BTC-USD"])
    for kind in ("non_json", "non_array", "missing_fields"):
        assert await sim.ws.malformed("crypto", kind) == 1
    head = app.streams.stream("crypto").buffer.head
    await until(lambda: app.streams.stream("crypto").buffer.head > head + 5)
    assert sim.ws.connect_count("crypto") == 1
    status = await ok(client, "get_crypto_stream_status")
    assert "malformed input dropped: 1 frames" in status
    text = await ok(client, "get_crypto_stream_messages", limit=200)
    assert "# XT trades" in text


async def test_max_connections_does_not_start_a_reconnect_storm(sim, settings, client, app):
    await ok(client, "start_indices_stream", channels=["V.I:SPX"])
    # A second process (another App) on the same key and market takes the slot.
    async with build_app(settings) as other, mcp_session(other.server) as client2:
        await ok(client2, "start_indices_stream", channels=["V.I:SPX"])
        await until(lambda: app.streams.stream("indices").state is ConnectionState.COOLDOWN)
        status = await ok(client, "get_indices_stream_status")
        assert "max_connections" in status
        # No storm, shown by what the supervisor is doing rather than by waiting: it sits out the 60 s cooldown
        # (only stop() wakes it early), so the other connection keeps the slot.
        ours = app.streams.status("indices").connection
        assert ours.state is ConnectionState.COOLDOWN and ours.retry_at is not None
        assert ours.retry_at - time.time() > 50
        assert sim.ws.connect_count("indices") == 2 and sim.ws.connections("indices") == 1
        assert other.streams.stream("indices").state is ConnectionState.STREAMING


async def test_gap_is_reported_when_events_were_overwritten(sim, settings):
    settings = settings.with_overrides(buffer_size=10)
    sim.ws.set_rate("stocks", 100)
    async with build_app(settings) as app, mcp_session(app.server) as client:
        await ok(client, "start_stocks_stream", channels=["T.AAPL", "Q.AAPL"])
        await until(lambda: app.streams.stream("stocks").buffer.head > 40)
        text = await ok(client, "get_stocks_stream_messages", since_seq=1)
        assert "GAP:" in text and "overwritten" in text
        status = await ok(client, "get_stocks_stream_status")
        assert re.search(r"buffer: 10/10 events, seq \d+-\d+, [1-9]\d* overwritten", status)


async def test_since_timestamp_formats(client, sim, app):
    sim.ws.set_rate("stocks", 40)
    await ok(client, "start_stocks_stream", channels=["T.AAPL"])
    await until(lambda: app.streams.stream("stocks").buffer.head > 3)
    now = time.time()
    for value in (now - 60, int((now - 60) * 1000), int((now - 60) * 1e9), "-1m", "2000-01-01T00:00:00Z"):
        text = await ok(client, "get_stocks_stream_messages", since_timestamp=value, limit=3)
        assert "# T trades" in text, value
    text = await ok(client, "get_stocks_stream_messages", since_timestamp=now + 3600)
    assert "no new events" in text


async def test_replay_after_restart_from_disk(sim, settings):
    sim.ws.set_rate("futures", 40)
    async with build_app(settings) as app, mcp_session(app.server) as client:
        await ok(client, "start_futures_stream", channels=["T.ESZ5", "Q.ESZ5"])
        await until(lambda: app.streams.stream("futures").buffer.head > 20)
        await ok(client, "stop_futures_stream")
        live = app.streams.read("futures", limit=1000)
    # A new process on the same data dir: the buffer is empty, the recording is not.
    async with build_app(settings) as app2, mcp_session(app2.server) as client2:
        text = await ok(client2, "get_futures_stream_messages")
        assert "no events" in text
        text = await ok(client2, "replay_futures_stream_messages", from_timestamp="-5m", channel_filter="T.ESZ5")
        assert "# T trades" in text and "# Q" not in text and "SIMULATED" in text
        body = orjson.loads(
            await ok(client2, "replay_futures_stream_messages", from_timestamp="-5m", format="json", limit=10_000)
        )
        assert [e["q"] for e in body["events"] if e["ev"] == "T"] == [
            e["q"] for _, _, e in live.events if e["ev"] == "T"
        ]
        # Paging: limit + next from_timestamp returns each event exactly once.
        got, start = [], "-5m"
        while True:
            page = orjson.loads(
                await ok(client2, "replay_futures_stream_messages", from_timestamp=start, format="json", limit=7)
            )
            got += [e["received_ns"] for e in page["events"]]
            if not page["more"]:
                break
            start = page["next_from_timestamp"]
        assert got == [e["received_ns"] for e in body["events"]]
        text = await ok(
            client2, "replay_futures_stream_messages", from_timestamp="2001-01-01", to_timestamp="2001-01-02"
        )
        assert "no recorded events" in text and "recordings cover" in text


async def test_recording_off(sim, settings):
    settings = settings.with_overrides(record=False)
    async with build_app(settings) as app, mcp_session(app.server) as client:
        await ok(client, "start_stocks_stream", channels=["T.AAPL"])
        await until(lambda: app.streams.stream("stocks").buffer.head > 2)
        assert "recording: off" in await ok(client, "get_stocks_stream_status")
        assert "no recordings yet" in await ok(client, "replay_stocks_stream_messages", from_timestamp="-1h")
    assert not (settings.data_dir / "stocks").exists()


async def test_endpoint_override_and_unreachable_endpoint(client, sim, app):
    text = await ok(client, "start_crypto_stream", channels=["XT.BTC-USD"], endpoint=sim.ws_url + "/delayed/crypto")
    assert "/delayed/crypto" in text and "streaming" in text
    # A base URL gets the market path appended.
    text = await ok(client, "start_crypto_stream", channels=["XT.BTC-USD"], endpoint=sim.ws_url)
    assert f"{sim.ws_url}/crypto" in text
    # Nothing listens there: a clear warning, not a crash; the stream keeps retrying in the background.
    text = await ok(client, "start_indices_stream", channels=["V.I:SPX"], endpoint="ws://127.0.0.1:9")
    assert "NOT connected" in text and "cannot connect" in text
    await ok(client, "stop_indices_stream")


@pytest.mark.parametrize("key", ["super-secret-key-9876", "s3cr3t+k3y/with=chars&more"])
async def test_api_key_never_appears(key, sim, tmp_path, caplog):
    caplog.set_level("DEBUG")
    sim.ws.keys.add(key)
    settings = Settings(api_key=key, ws_url=sim.ws_url, data_dir=tmp_path)
    outputs = []
    async with build_app(settings) as app, mcp_session(app.server) as client:
        for name, args in [
            ("start_stocks_stream", {"channels": ["T.AAPL"], "endpoint": f"{sim.ws_url}/stocks?apiKey={key}"}),
            ("get_stocks_stream_status", {}),
            # The key URL-encoded, as a URL carries it: masked too.
            (
                "start_stocks_stream",
                {"channels": ["T.AAPL"], "endpoint": f"{sim.ws_url}/stocks?k={quote(key, safe='')}"},
            ),
            ("get_stocks_stream_status", {}),
            ("start_stocks_stream", {"channels": ["T.AAPL"], "endpoint": f"wss://evil.example/?k={quote_plus(key)}"}),
            ("list_stocks_subscriptions", {}),
            ("get_stocks_stream_messages", {"format": "json"}),
            ("start_stocks_stream", {"channels": [key]}),
            # A refused endpoint is echoed clipped at 100 characters: masked first, or the clip would show a piece.
            ("start_stocks_stream", {"channels": ["T.AAPL"], "endpoint": "wss://evil.example/" + "a" * 71 + key}),
            ("stop_stocks_stream", {}),
        ]:
            outputs.append((await call(client, name, **args))[0])
    # The simulator's own server logs are not ours; everything the client side logs is.
    outputs += [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server")]
    spellings = {key, quote(key, safe=""), quote_plus(key), key[:7]}
    assert outputs[0] and "***" in outputs[1] and "***" in outputs[3]
    assert not [(s, out) for out in outputs for s in spellings if s in out]
