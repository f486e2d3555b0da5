"""The WebSocket simulator speaks the vendor protocol: checked with a raw `websockets` client, no project code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from mcp_polygon.simulator.events import MARKETS, ticker_key
from mcp_polygon.simulator.ws import (
    MSG_AUTH_FAILED,
    MSG_AUTH_TIMEOUT,
    MSG_LIMIT,
    MSG_MAX_CONNECTIONS,
    MSG_NO_WS_PLAN,
    MSG_NOT_AUTHORIZED,
    WsSimulator,
)

KEY = "test-key"
SPEC = Path(__file__).resolve().parents[1] / "specs" / "massive_websocket_openapi.json"
# Futures events are not in the vendor document; the stream spec fixes their fields.
FUTURES_FIELDS = {
    "T": {"ev", "sym", "p", "s", "t", "q"},
    "Q": {"ev", "sym", "bp", "bs", "bt", "ap", "as", "at", "t"},
    "A": {"ev", "sym", "v", "dv", "o", "c", "h", "l", "n", "s", "e"},
    "AM": {"ev", "sym", "v", "dv", "o", "c", "h", "l", "n", "s", "e"},
}
# Fields the feed sends beyond the document: decimal-string volumes on stock aggregates (see the stream spec).
EXTRA_FIELDS = {("stocks", "A"): {"dv", "dav"}, ("stocks", "AM"): {"dv", "dav"}}
NANOSECOND_TIMES = {("stocks", "LULD"), ("stocks", "NOI"), *((m, "FMV") for m in MARKETS)}


def spec_fields(market: str, channel: str) -> tuple[set[str], set[str]]:
    """(fields of the spec's example, every field of the spec's schema) for one channel."""
    doc = json.loads(SPEC.read_text())
    path = f"/business/{market}/FMV" if channel == "FMV" else f"/{market}/{channel}"
    content = next(iter(doc["paths"][path]["get"]["responses"]["200"]["content"].values()))

    def properties(schema: dict) -> set[str]:
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        names = set(schema.get("properties", {}))
        for part in schema.get("allOf", []) + schema.get("anyOf", []) + schema.get("oneOf", []):
            names |= properties(part)
        return names

    return set(content["example"]), properties(content["schema"])


@pytest.fixture
async def sim() -> AsyncIterator[WsSimulator]:
    # pytest-asyncio sets a fixture up and tears it down in different tasks: start/stop must cope.
    simulator = WsSimulator(api_key=KEY, rate=50.0, restart_pause=0.05)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def frame(ws: ClientConnection) -> list | dict:
    async with asyncio.timeout(5):
        return orjson.loads(await ws.recv())


async def open_ws(sim: WsSimulator, path: str = "stocks") -> ClientConnection:
    ws = await connect(f"{sim.url}/{path}")
    assert await frame(ws) == [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
    return ws


async def authed(sim: WsSimulator, path: str = "stocks", key: str = KEY) -> ClientConnection:
    ws = await open_ws(sim, path)
    await ws.send(json.dumps({"action": "auth", "params": key}))
    assert await frame(ws) == [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
    return ws


async def subscribe(ws: ClientConnection, params: str, action: str = "subscribe") -> list[dict]:
    await ws.send(json.dumps({"action": action, "params": params}))
    return await frame(ws)


def ok(topic: str, verb: str = "subscribed") -> dict:
    return {"ev": "status", "status": "success", "message": f"{verb} to: {topic}"}


async def collect(ws: ClientConnection, done: Callable[[list[dict]], bool]) -> list[dict]:
    """Data events until `done(events)`; status events are skipped."""
    events: list[dict] = []
    while not done(events):
        batch = await frame(ws)
        assert isinstance(batch, list)
        events.extend(event for event in batch if event["ev"] != "status")
    return events


async def until_marker(ws: ClientConnection) -> list[dict]:
    """Every event up to the "marker" status the test sent after the action it measures."""
    events: list[dict] = []
    while True:
        for event in await frame(ws):
            if event.get("status") == "marker":
                return events
            events.append(event)


async def assert_dropped_without_close_frame(ws: ClientConnection) -> None:
    with pytest.raises(ConnectionClosedError) as raised:
        await frame(ws)
    assert raised.value.rcvd is None  # the TCP connection ended with no close frame


# -- handshake and subscriptions ------------------------------------------------------------------------------------


async def test_connect_auth_subscribe_unsubscribe(sim: WsSimulator):
    sim.set_rate("stocks", 0)
    ws = await authed(sim)
    assert await subscribe(ws, "T.AAPL,Q.AAPL") == [ok("T.AAPL"), ok("Q.AAPL")]  # one frame, one ack per topic
    assert sim.subscriptions("stocks") == {"T.AAPL", "Q.AAPL"}
    assert await subscribe(ws, "T.AAPL", "unsubscribe") == [ok("T.AAPL", "unsubscribed")]
    assert sim.subscriptions("stocks") == {"Q.AAPL"}
    assert (sim.connections("stocks"), sim.connect_count("stocks"), sim.auth_count("stocks")) == (1, 1, 1)
    await ws.close()
    async with asyncio.timeout(5):
        await sim.wait_connections("stocks", 0)


async def test_subscribe_before_auth_is_refused(sim: WsSimulator):
    ws = await open_ws(sim)
    reply = await subscribe(ws, "T.AAPL")
    assert [(e["ev"], e["status"]) for e in reply] == [("status", "auth_required")]
    assert sim.subscriptions("stocks") == set()
    await ws.close()


async def test_unknown_channel_prefix_is_silently_ignored(sim: WsSimulator):
    sim.set_rate("stocks", 0)
    ws = await authed(sim)
    await ws.send(json.dumps({"action": "subscribe", "params": "FOO.AAPL"}))
    # No ack for FOO: the next frame is the reply to the next request, and it names only the known channel.
    assert await subscribe(ws, "BAR.MSFT,T.AAPL,NOSEPARATOR") == [ok("T.AAPL")]
    await ws.close()


async def test_topics_the_plan_lacks_are_not_authorized(sim: WsSimulator):
    sim.set_rate("stocks", 0)
    sim.deny["stocks"] |= {"LULD", "T.TSLA"}
    ws = await authed(sim)
    refused = {"ev": "status", "status": "error", "message": MSG_NOT_AUTHORIZED}
    assert await subscribe(ws, "LULD.AAPL,T.TSLA,T.AAPL") == [refused, refused, ok("T.AAPL")]
    assert sim.subscriptions("stocks") == {"T.AAPL"}
    await ws.close()


async def test_option_quotes_are_limited_to_1000_contracts(sim: WsSimulator):
    sim.set_rate("options", 0)
    ws = await authed(sim, "options")
    contracts = [f"Q.O:SPY251219C{strike:05d}000" for strike in range(1001)]
    reply = await subscribe(ws, ",".join(contracts))
    limit = {"ev": "status", "status": "error", "message": MSG_LIMIT}
    assert reply == [ok(topic) for topic in contracts[:1000]] + [limit]
    assert await subscribe(ws, "Q.*,T.*") == [limit, ok("T.*")]  # quotes take named contracts only
    # Freeing a slot makes room again.
    await subscribe(ws, contracts[0], "unsubscribe")
    assert await subscribe(ws, contracts[1000]) == [ok(contracts[1000])]
    await ws.close()


# -- data -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("market", list(MARKETS))
async def test_every_channel_streams_the_vendor_fields(sim: WsSimulator, market: str):
    spec = MARKETS[market]
    ticker = spec.wildcard_tickers[0]
    ws = await authed(sim, market)
    topics = [f"{channel}.{ticker}" for channel in spec.channels]
    assert await subscribe(ws, ",".join(topics)) == [ok(topic) for topic in topics]

    events = await collect(ws, lambda evs: {e["ev"] for e in evs} >= set(spec.channels))
    for channel in spec.channels:
        event = next(e for e in events if e["ev"] == channel)
        if market == "futures":
            assert set(event) == FUTURES_FIELDS[channel]
        else:
            example, schema = spec_fields(market, channel)
            assert example <= set(event), f"{market} {channel} lacks {example - set(event)}"
            extra = set(event) - schema - EXTRA_FIELDS.get((market, channel), set())
            assert not extra, f"{market} {channel} has undocumented {extra}"
        expected_ticker = ticker
        if channel == "FMV" and market in ("forex", "crypto"):  # FMV spells pairs the REST way
            expected_ticker = {"forex": "C:EURUSD", "crypto": f"X:{ticker}"}[market]
        assert event[ticker_key(market, channel)] == expected_ticker
        if "t" in event:
            unit = 10**18 if (market, channel) in NANOSECOND_TIMES else 10**12
            assert unit <= event["t"] < unit * 10, f"{market} {channel} t={event['t']}"
    if market == "crypto":
        assert isinstance(next(e for e in events if e["ev"] == "XT")["s"], float)  # fractional sizes
    await ws.close()


async def test_wildcard_streams_the_default_tickers(sim: WsSimulator):
    ws = await authed(sim)
    assert await subscribe(ws, "T.*") == [ok("T.*")]
    events = await collect(ws, lambda evs: len({e["sym"] for e in evs}) == 3)
    assert {e["sym"] for e in events} == set(MARKETS["stocks"].wildcard_tickers)
    await ws.close()


async def test_unknown_ticker_is_acknowledged_but_never_streamed(sim: WsSimulator):
    ws = await authed(sim)
    assert await subscribe(ws, "T.ZZZQ,T.AAPL") == [ok("T.ZZZQ"), ok("T.AAPL")]
    events = await collect(ws, lambda evs: len(evs) >= 20)
    assert {e["sym"] for e in events} == {"AAPL"}
    await ws.close()


async def test_rate_zero_pauses_the_flow(sim: WsSimulator):
    sim.set_rate("stocks", 0)
    ws = await authed(sim)
    await subscribe(ws, "T.AAPL")
    await asyncio.sleep(0.15)  # several pump ticks
    await sim.send_status("stocks", "marker", "end")
    assert await until_marker(ws) == []
    await ws.close()


# -- refusals and faults ----------------------------------------------------------------------------------------------


async def test_bad_key_gets_auth_failed_then_a_drop_without_close_frame(sim: WsSimulator):
    ws = await open_ws(sim)
    await ws.send(json.dumps({"action": "auth", "params": "wrong"}))
    assert await frame(ws) == [{"ev": "status", "status": "auth_failed", "message": MSG_AUTH_FAILED}]
    await assert_dropped_without_close_frame(ws)
    assert sim.auth_count("stocks") == 1


async def test_plan_without_websocket_access(sim: WsSimulator):
    sim.no_ws_keys.add("basic-plan")
    ws = await open_ws(sim, "crypto")
    await ws.send(json.dumps({"action": "auth", "params": "basic-plan"}))
    assert await frame(ws) == [{"ev": "status", "status": "auth_failed", "message": MSG_NO_WS_PLAN}]
    await assert_dropped_without_close_frame(ws)


async def test_no_auth_in_time(sim: WsSimulator):
    sim.auth_timeout = 0.1
    ws = await open_ws(sim)
    assert await frame(ws) == [{"ev": "status", "status": "auth_timeout", "message": MSG_AUTH_TIMEOUT}]
    with pytest.raises(ConnectionClosedOK):
        await frame(ws)


async def test_second_connection_with_the_same_key_evicts_the_older(sim: WsSimulator):
    older = await authed(sim)
    newer = await authed(sim)
    assert await frame(older) == [{"ev": "status", "status": "max_connections", "message": MSG_MAX_CONNECTIONS}]
    with pytest.raises(ConnectionClosedOK):
        while True:  # data frames may precede the close
            await frame(older)
    async with asyncio.timeout(5):
        await sim.wait_connections("stocks", 1)
    # Another cluster (the business feed) and another key each hold a slot of their own.
    sim.keys.add("other-key")
    business = await authed(sim, "business/stocks")
    other = await authed(sim, key="other-key")
    assert sim.connections("stocks") == 3
    for ws in (newer, business, other):
        await ws.close()


async def test_drop_ends_connections_without_close_frame(sim: WsSimulator):
    ws = await authed(sim, "forex")
    await subscribe(ws, "C.EUR/USD")
    assert await sim.drop("forex") == 1
    assert sim.connections("forex") == 0
    with pytest.raises(ConnectionClosedError) as raised:
        while True:
            await frame(ws)
    assert raised.value.rcvd is None


async def test_restart_drops_everyone_then_listens_on_the_same_port(sim: WsSimulator):
    port = sim.port
    ws = await authed(sim)
    restarting = asyncio.create_task(sim.restart(pause=0.5))
    with pytest.raises(ConnectionClosedError) as raised:
        while True:
            await frame(ws)
    assert raised.value.rcvd is None
    # The listener closed before connections were dropped; during the pause connections are refused.
    with pytest.raises(OSError):
        await connect(f"ws://127.0.0.1:{port}/stocks")
    await restarting
    assert sim.port == port and sim.url == f"ws://127.0.0.1:{port}"
    again = await authed(sim)
    assert sim.connect_count("stocks") == 2
    await again.close()


@pytest.mark.parametrize("fault", ["force_disconnect", "slow_consumer"])
async def test_status_then_disconnect(sim: WsSimulator, fault: str):
    sim.set_rate("indices", 0)
    ws = await authed(sim, "indices")
    if fault == "slow_consumer":
        assert await sim.slow_consumer("indices") == 1
    else:
        assert await sim.send_status("indices", fault, "Forced disconnect.", close=True) == 1
    assert [e["status"] for e in await frame(ws)] == [fault]
    with pytest.raises(ConnectionClosedOK):
        await frame(ws)


async def test_malformed_frames(sim: WsSimulator):
    sim.set_rate("stocks", 0)
    ws = await authed(sim)
    await subscribe(ws, "T.AAPL")

    await sim.malformed("stocks", "non_json")
    with pytest.raises(orjson.JSONDecodeError):
        await frame(ws)
    await sim.malformed("stocks", "non_array")
    bare = await frame(ws)
    assert isinstance(bare, dict) and bare["ev"] == "T" and bare["sym"] == "AAPL"
    await sim.malformed("stocks", "missing_fields")
    [broken] = await frame(ws)
    assert broken["ev"] == "T" and "sym" not in broken and "p" not in broken
    await sim.malformed("stocks", "no_ev_first")
    no_ev, trade = await frame(ws)
    assert "ev" not in no_ev and no_ev["sym"] == "AAPL" and trade["ev"] == "T" and trade["sym"] == "AAPL"
    await sim.malformed("stocks", "nested_ev")
    [outer] = await frame(ws)
    assert outer["ev"] == "T" and outer["x"] == {"ev": "T", "sym": "AAPL"}
    await sim.malformed("stocks", "non_object")
    first, five, second = await frame(ws)
    assert (first["ev"], five, second["ev"]) == ("T", 5, "T")
    with pytest.raises(ValueError, match="kind must be one of"):
        await sim.malformed("stocks", "nonsense")
    await ws.close()


# -- benchmark modes -----------------------------------------------------------------------------------------------


async def test_firehose_sends_exactly_n_events(sim: WsSimulator):
    sim.set_rate("crypto", 0)
    ws = await authed(sim, "crypto")
    await subscribe(ws, "XT.BTC-USD,XQ.ETH-USD,XT.ZZZ-USD")
    n = 25_500  # 25 full frames and a partial one
    firehose = asyncio.create_task(sim.firehose("crypto", n, batch=1000))
    received = asyncio.create_task(until_marker(ws))
    assert await firehose == n
    await sim.send_status("crypto", "marker", "end")
    events = await received
    assert len(events) == n
    assert {(e["ev"], e["pair"]) for e in events} == {("XT", "BTC-USD"), ("XQ", "ETH-USD")}
    await ws.close()


async def test_paced_events_carry_their_send_time(sim: WsSimulator):
    sim.set_rate("stocks", 0)
    ws = await authed(sim)
    await subscribe(ws, "Q.MSFT")
    received = asyncio.create_task(until_marker(ws))
    assert await sim.paced("stocks", 500, 0.1, batch=5) == 50
    await sim.send_status("stocks", "marker", "end")
    events = await received
    assert len(events) == 50
    stamps = [e["sim_ns"] for e in events]
    assert stamps == sorted(stamps) and all(e["t"] == e["sim_ns"] // 1_000_000 for e in events)
    await ws.close()


# -- endpoints and lifecycle --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["futures/cme", "futures/nymex", "business/stocks", "delayed/options", "crypto/"])
async def test_alternative_paths(sim: WsSimulator, path: str):
    ws = await authed(sim, path)
    await ws.close()


async def test_unknown_path_is_404(sim: WsSimulator):
    with pytest.raises(InvalidStatus) as raised:
        await connect(f"{sim.url}/bonds")
    assert raised.value.response.status_code == 404


async def test_start_and_stop_from_different_tasks():
    simulator = WsSimulator(api_key=KEY)
    await asyncio.create_task(simulator.start())
    ws = await authed(simulator)
    await asyncio.create_task(simulator.stop())
    with pytest.raises(ConnectionClosed):
        while True:
            await frame(ws)
    with pytest.raises(OSError):
        await connect(f"{simulator.url}/stocks")
    await simulator.stop()  # idempotent
