"""build_app(settings): the MCP server with its REST and stream toolsets, and what it owns."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from mcp_polygon import __version__
from mcp_polygon.config import Settings
from mcp_polygon.rest.client import RestClient
from mcp_polygon.rest.tools import register_rest_tools
from mcp_polygon.streams.manager import StreamManager
from mcp_polygon.streams.tools import register_stream_tools

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
Market data from Polygon.io / Massive.com: stocks, options, futures, crypto, forex, economy and indices.
REST tools return compact CSV; when more data exists the output ends with a hint for the next call.
Streaming tools (start_<market>_stream, get_<market>_stream_messages, ...) keep one live WebSocket per market;
poll messages with since_seq from the previous response to get only new events.
Timestamps in vendor data are Unix epoch (ms for most REST results, ns for trades/quotes)."""

SIMULATED_NOTE = """
IMPORTANT: this server runs against the built-in SIMULATOR (mcp-polygon --simulate). Every price, quote and
event it returns is synthetic test data, not real market data. Never present it as real."""


def describe_invalid_arguments(tool: str, error: ValidationError) -> str:
    """One sentence naming each bad argument and what it accepts, instead of pydantic's multi-line report."""
    problems = []
    for err in error.errors():
        field = ".".join(str(part) for part in err["loc"]) or "arguments"
        if err["type"] == "missing":
            problems.append(f"{field} is required")
            continue
        got = repr(err.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        problems.append(f"{field}: {err['msg'][:1].lower()}{err['msg'][1:]} (got {got})")
    return f"Invalid arguments for {tool}: {'; '.join(problems)}. Fix them and call again."


def _without_titles(schema: Any) -> Any:
    """Drop pydantic's generated `title` keywords: they repeat the property names and cost ~14% of tools/list.

    Keys of a `properties` map are argument names, not keywords: an argument called `title` stays.
    """
    if isinstance(schema, list):
        return [_without_titles(value) for value in schema]
    if not isinstance(schema, dict):
        return schema
    lean = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            lean[key] = {name: _without_titles(sub) for name, sub in value.items()}
        else:
            lean[key] = _without_titles(value)
    return lean


class PolygonServer(MCPServer):
    """MCPServer with a leaner tools/list, and argument errors that read as one actionable sentence."""

    async def list_tools(self) -> list[Any]:
        tools = await super().list_tools()
        return [tool.model_copy(update={"input_schema": _without_titles(tool.input_schema)}) for tool in tools]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(describe_invalid_arguments(name, exc.__cause__)) from exc.__cause__
            if self._tool_manager.get_tool(name) is None:
                names = [tool.name for tool in self._tool_manager.list_tools()]
                close = difflib.get_close_matches(name, names, n=3)
                hint = f"did you mean {' or '.join(close)}?" if close else "list the tools to see the valid names."
                raise ToolError(f"Unknown tool {name!r}; {hint}") from None
            raise


@dataclass
class App:
    """The server and the resources it owns for the life of the process (shared by every MCP session)."""

    settings: Settings
    server: PolygonServer
    rest: RestClient
    streams: StreamManager

    async def aclose(self) -> None:
        await self.streams.aclose()
        await self.rest.aclose()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def build_app(settings: Settings) -> App:
    instructions = INSTRUCTIONS + (SIMULATED_NOTE if settings.simulated else "")
    server = PolygonServer(name="mcp-polygon", version=__version__, instructions=instructions)
    rest = RestClient(settings)
    streams = StreamManager(settings)
    register_rest_tools(server, rest, settings)
    register_stream_tools(server, streams, settings)
    log.info(
        "mcp-polygon %s: toolsets=%s rest=%s ws=%s key=%s%s",
        __version__,
        ",".join(sorted(settings.toolsets)),
        settings.rest_url,
        settings.ws_url,
        "set" if settings.api_key else "missing",
        " (SIMULATED)" if settings.simulated else "",
    )
    return App(settings=settings, server=server, rest=rest, streams=streams)
