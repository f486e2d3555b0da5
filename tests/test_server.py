"""Server-level behaviour every tool shares (argument errors, unknown tools, tools/list, non-blocking), through a
real MCP client."""

import asyncio
import time

from conftest import until
from mcp_polygon.config import ALL_TOOLSETS, Profile
from mcp_polygon.rest.endpoints import load_endpoints
from mcp_polygon.server import App, _without_titles
from mcp_polygon.streams.tools import VERBS

# 81 REST tools, 8 per stream market, and issue 9's SQL and summary tools.
FULL_PROFILE = {endpoint.name for endpoint in load_endpoints()} | {
    verb.name_for(market) for verb in VERBS for market in ("stocks", "options", "futures", "indices", "forex", "crypto")
}
ANALYTICS = {"query_market_data", "get_stream_summary"}


async def test_server_lists_every_tool_of_the_full_profile_over_jsonrpc(client, app: App):
    names = [tool.name for tool in (await client.list_tools()).tools]
    assert len(names) == len(set(names)) == len(FULL_PROFILE | ANALYTICS) == 131
    assert set(names) == FULL_PROFILE | ANALYTICS
    assert app.settings.toolsets == frozenset(ALL_TOOLSETS) and app.settings.profile is Profile.FULL
    assert app.server is app.catalogue  # the full profile serves the catalogue itself


async def test_bad_argument_is_one_sentence_naming_valid_choices(client):
    result = await client.call_tool(
        "get_aggs", {"ticker": "AAPL", "multiplier": 1, "timespan": "days", "from_": "2024-01-02", "to": "2024-01-05"}
    )
    text = result.content[0].text
    assert result.is_error
    assert "timespan" in text and "'day'" in text and "(got 'days')" in text
    assert "\n" not in text and "pydantic" not in text


async def test_missing_argument_says_it_is_required(client):
    result = await client.call_tool("get_aggs", {"ticker": "AAPL", "timespan": "day", "from_": "2024-01-02"})
    assert result.is_error
    assert "multiplier is required" in result.content[0].text and "to is required" in result.content[0].text


async def test_unknown_tool_suggests_the_closest_names(client):
    result = await client.call_tool("get_agg", {})
    assert result.is_error
    assert "did you mean get_aggs" in result.content[0].text


def test_schema_titles_are_dropped_but_an_argument_named_title_stays():
    schema = {
        "title": "toolArguments",
        "type": "object",
        "properties": {
            "title": {"title": "Title", "type": "string"},
            "limit": {"title": "Limit", "anyOf": [{"type": "integer", "title": "x"}]},
        },
    }
    assert _without_titles(schema) == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "limit": {"anyOf": [{"type": "integer"}]}},
    }


async def test_listed_schemas_carry_no_generated_titles(client):
    tools = (await client.list_tools()).tools
    assert len(tools) == 131
    assert all('"title"' not in str(tool.input_schema).replace("'", '"') for tool in tools)


async def test_a_slow_rest_call_does_not_stall_a_stream(client, app: App, sim):
    """While a REST call waits 2 s on the upstream, stream events keep landing and stream tools answer at once."""
    sim.ws.set_rate("crypto", 50)
    started = await client.call_tool("start_crypto_stream", {"channels": ["XT.BTC-USD"]})
    assert not started.is_error
    sim.rest.inject("/v3/trades", delay=2.0)
    slow = asyncio.create_task(client.call_tool("list_trades", {"ticker": "AAPL"}))
    await asyncio.sleep(0.2)  # the slow call is now waiting on the simulator
    buffer = app.streams.stream("crypto").buffer
    head_before = buffer.head
    began = time.monotonic()
    messages = await client.call_tool("get_crypto_stream_messages", {"limit": 5})
    answered_in = time.monotonic() - began
    await until(lambda: buffer.head > head_before, 1.5)  # events land while the REST call waits (1.8 s more)
    assert not slow.done(), "the REST call should still be waiting on the delayed upstream"
    assert not messages.is_error and answered_in < 1.0
    assert not (await slow).is_error
