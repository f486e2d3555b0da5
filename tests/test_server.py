"""Server-level behaviour every tool shares: argument errors and unknown tools, through a real MCP client."""

from mcp_polygon.server import App


async def test_server_lists_tools_over_jsonrpc(client, app: App):
    tools = await client.list_tools()
    assert isinstance(tools.tools, list)


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
