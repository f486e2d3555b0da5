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
from mcp_polygon.analytics.tools import Analytics, build_analytics, register_analytics_tools
from mcp_polygon.config import Profile, Settings
from mcp_polygon.profiles import COMPACT_NOTE, register_compact_tools
from mcp_polygon.rest.client import RestClient
from mcp_polygon.rest.tools import register_rest_tools
from mcp_polygon.streams.manager import StreamManager
from mcp_polygon.streams.tools import register_market_verb_tools, register_stream_tools

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
Market data from Polygon.io / Massive.com: stocks, options, futures, crypto, forex, economy and indices.
REST answers are compact CSV, a header line then rows; times in them are ISO 8601 UTC. When more rows exist, the
last line is '# next page: call <tool> with ...': make that call as written (its cursor carries every filter).
Arguments every REST tool shares: limit = rows per page (1 to 50000, default 10); max_rows = rows shown (list_aggs:
bars fetched across pages); cursor = the token from a '# next page' line; sort = a column, or column.asc /
column.desc; order = asc or desc by that column (omitted: the vendor's default order); adjusted = prices
adjusted for splits; store_as = save every page (up to max_rows, default 10000 rows) as a table of that name for
query_market_data. Tickers are case-sensitive:
AAPL, O:SPY251219C00650000 (options), I:SPX (indices), C:EURUSD (forex), X:BTCUSD (crypto); market_type follows
the prefix.
Filters: a bare value means equals. One marked [range] also takes >=v, >v, <=v, <v (space-separated to combine:
'>=2024-01-01 <2024-02-01') or lo..hi (both ends included: '2024-01-01..2024-01-31'); one marked [list] takes
comma-separated values, meaning any of them. Dates are YYYY-MM-DD; time filters also take ISO 8601 or Unix epoch
(ms for aggregates, ns for trades and quotes).
Indicators (sma, ema, macd, rsi) answer one value per bar, newest first: timespan = the bar size (default day);
window (default 50, rsi 14), short_window (12), long_window (26), signal_window (9) count bars; series_type = the
bar price used (close); adjusted defaults to true; expand_underlying (false) adds the bars used.
Streaming tools (start_<market>_stream, get_<market>_stream_messages, ...) keep one live WebSocket per market;
poll messages with since_seq from the previous response to get only new events. Channels are '<PREFIX>.<ticker>'
or '<PREFIX>.*' (each market's prefixes are listed on its start tool); channel_filter takes comma-separated
'T.AAPL', 'T.*' or '*.AAPL'. Stream times take ISO 8601, Unix s/ms/ns or relative like -5m. format='csv' gives one
section per event type, 'json' the raw vendor fields. endpoint: omit for the configured feed; 'delayed' is 15
minutes delayed; a URL must be wss:// on the vendor's socket/delayed/business hosts (ws:// only on loopback)."""

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
    """The server and the resources it owns for the life of the process (shared by every MCP session).

    `server` is what is served: in the full profile it is `catalogue` itself (every tool of the toolsets); in the
    compact profile it is a small server whose find_tools and call_tool reach `catalogue`, which is never served.
    """

    settings: Settings
    server: PolygonServer
    rest: RestClient
    streams: StreamManager
    catalogue: PolygonServer
    analytics: Analytics | None = None  # SQL, summaries, store_as and compaction; None without stream markets

    async def aclose(self) -> None:
        await self.streams.aclose()
        if self.analytics is not None:  # after the streams: their last segments are queued for compaction by then
            await self.analytics.aclose()
        await self.rest.aclose()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _instructions(settings: Settings, profile: Profile) -> str:
    compact = COMPACT_NOTE if profile is Profile.COMPACT else ""
    return INSTRUCTIONS + compact + (SIMULATED_NOTE if settings.simulated else "")


def _full_server(
    settings: Settings, rest: RestClient, streams: StreamManager, analytics: Analytics | None = None
) -> PolygonServer:
    """Every tool of the toolsets: the full profile, and what the compact profile's call_tool runs.
    Every tool registers here, so that both profiles reach it."""
    server = PolygonServer(name="mcp-polygon", version=__version__, instructions=_instructions(settings, Profile.FULL))
    register_rest_tools(server, rest, settings, store=analytics.store if analytics is not None else None)
    register_stream_tools(server, streams, settings)
    if analytics is not None:
        register_analytics_tools(server, analytics, settings)
    return server


def _compact_server(settings: Settings, catalogue: PolygonServer, streams: StreamManager) -> PolygonServer:
    """About a dozen tools reaching everything in `catalogue` (profiles.py); built after it is complete, because
    the SQL and summary tools are copied from it by name."""
    server = PolygonServer(
        name="mcp-polygon", version=__version__, instructions=_instructions(settings, Profile.COMPACT)
    )
    register_compact_tools(server, catalogue)
    register_market_verb_tools(server, streams, settings)
    return server


def build_app(settings: Settings) -> App:
    rest = RestClient(settings)
    streams = StreamManager(settings)
    analytics = build_analytics(settings, streams) if settings.stream_markets else None
    catalogue = _full_server(settings, rest, streams, analytics)
    compact = settings.profile is Profile.COMPACT
    server = _compact_server(settings, catalogue, streams) if compact else catalogue
    log.info(
        "mcp-polygon %s: profile=%s toolsets=%s rest=%s ws=%s key=%s%s",
        __version__,
        settings.profile.value,
        ",".join(sorted(settings.toolsets)),
        settings.rest_url,
        settings.ws_url,
        "set" if settings.api_key else "missing",
        " (SIMULATED)" if settings.simulated else "",
    )
    return App(settings=settings, server=server, rest=rest, streams=streams, catalogue=catalogue, analytics=analytics)
