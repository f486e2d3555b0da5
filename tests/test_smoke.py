from mcp_polygon.server import App


async def test_server_lists_tools_over_jsonrpc(client, app: App):
    tools = await client.list_tools()
    assert isinstance(tools.tools, list)
