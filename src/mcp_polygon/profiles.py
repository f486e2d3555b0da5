"""The compact profile: about a dozen tools that reach every tool of the full profile.

Clients such as VS Code / Copilot, the OpenAI API and Gemini CLI cap a server at 128 tools, and Cursor loads about
40; every listed tool also costs context before the agent reads a word. The compact profile lists:
- `find_tools(query)`: keyword search over every tool of the full profile (name, purpose, parameters), answering
  with the best matches and their full input schemas;
- `call_tool(name, arguments)`: runs any of them by name, through the full profile's own server, so validation,
  errors and answers are the ones a direct call gives;
- the 8 stream verbs once, with a `market` argument (registered by streams/tools.py from the per-market code);
- `query_market_data` and `get_stream_summary` (issue 9's SQL and summary tools), copied from the full profile
  whenever it has them.

The full profile's server (the catalogue) is built either way and never served in this profile.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from mcp.types import Tool as ListedTool
from pydantic import Field

# Issue 9's tools are listed in both profiles as they are (they take `market` already); picked up by name.
PASSTHROUGH_TOOLS = ("query_market_data", "get_stream_summary")
FIND_LIMIT = 5
MAX_FIND_LIMIT = 20
QUERY_CHARS = 200

COMPACT_NOTE = """
COMPACT PROFILE: this server lists about a dozen tools. find_tools(query) searches every other tool (REST data of
every asset class, per-market stream tools) and shows its input schema; call_tool(name, arguments) runs it with the
same answer as a direct call. A hint in an answer that names a tool not listed here (get_aggs(...),
get_crypto_stream_messages(...)) is called through call_tool; the stream verbs take market='crypto' instead."""

_FIND_ANNOTATIONS = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
# call_tool can run anything, including tools that stop a stream or call the vendor: the MCP defaults for an
# unknown tool (may change state, may delete, not idempotent, open world), said explicitly.
_CALL_ANNOTATIONS = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
)

_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = frozenset({"a", "an", "and", "by", "for", "get", "in", "list", "of", "on", "or", "the", "to", "with"})


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower().replace("_", " ")))


def _stem(word: str) -> str:
    return word[:5] if len(word) > 5 else word.rstrip("s")


def _matches(term: str, words: frozenset[str]) -> bool:
    """A query word matches a tool word that equals it or shares its stem ('trade' ~ 'trades', 'aggregates' ~
    'aggs'): good enough for a few hundred tools with vendor vocabulary, and predictable."""
    if term in words:
        return True
    stem = _stem(term)
    if len(stem) < 3:
        return False
    for word in words:
        other = _stem(word)
        if len(other) >= 3 and (stem.startswith(other) or other.startswith(stem)):
            return True
    return False


@dataclass(frozen=True)
class IndexedTool:
    """One tool of the full profile as find_tools searches and shows it."""

    listed: ListedTool
    name_words: frozenset[str]
    purpose_words: frozenset[str]
    parameter_words: frozenset[str]

    @classmethod
    def of(cls, listed: ListedTool) -> IndexedTool:
        properties = listed.input_schema.get("properties", {})
        parameter_text = " ".join(
            f"{name} {spec.get('description', '')}" for name, spec in properties.items() if isinstance(spec, dict)
        )
        return cls(
            listed=listed,
            name_words=_words(listed.name),
            purpose_words=_words(f"{listed.title or ''} {listed.description or ''}"),
            parameter_words=_words(parameter_text),
        )

    def score(self, terms: Iterable[str]) -> int:
        """Name hits weigh most, then purpose, then parameters; a tool must hit at least one term."""
        total = 0
        for term in terms:
            if _matches(term, self.name_words):
                total += 6
            if _matches(term, self.purpose_words):
                total += 3
            if _matches(term, self.parameter_words):
                total += 1
        return total

    def render(self) -> str:
        schema = json.dumps(self.listed.input_schema, separators=(",", ":"), ensure_ascii=False)
        title = f" ({self.listed.title})" if self.listed.title else ""
        return f"## {self.listed.name}{title}\n{self.listed.description or ''}\ninput schema: {schema}"


class ToolIndex:
    """Every tool of the full profile, searchable by keyword."""

    def __init__(self, tools: Iterable[ListedTool]) -> None:
        self.tools = {tool.name: IndexedTool.of(tool) for tool in tools}

    def search(self, query: str, limit: int) -> list[IndexedTool]:
        terms = [term for term in _words(query) if term not in _STOP_WORDS] or list(_words(query))
        scored = [(tool.score(terms), name) for name, tool in self.tools.items()]
        best = sorted((item for item in scored if item[0] > 0), key=lambda item: (-item[0], item[1]))
        return [self.tools[name] for _, name in best[:limit]]


def _clipped(text: str) -> str:
    return text if len(text) <= QUERY_CHARS else text[: QUERY_CHARS - 3] + "..."


def _unknown_tool(name: str, names: Iterable[str]) -> ToolError:
    close = difflib.get_close_matches(name, list(names), n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else "find_tools(query) shows the tools there are."
    return ToolError(f"Unknown tool {_clipped(name)!r}; {hint}")


def register_compact_tools(server: MCPServer, catalogue: MCPServer) -> None:
    """find_tools and call_tool over `catalogue` (the full profile's server), and the passthrough tools it has.
    The stream verbs are registered by streams/tools.py."""
    indexes: list[ToolIndex] = []

    async def index() -> ToolIndex:
        # Built at the first search, from the catalogue's tools/list as a client would see it (lean schemas).
        if not indexes:
            indexes.append(ToolIndex(await catalogue.list_tools()))
        return indexes[0]

    async def find_tools(
        query: Annotated[str, Field(description="words, e.g. 'option chain greeks', 'crypto trades stream'")],
        limit: Annotated[int, Field(ge=1, le=MAX_FIND_LIMIT)] = FIND_LIMIT,
    ) -> str:
        found = (await index()).search(query, limit)
        if not found:
            return (
                f"No tool matches {_clipped(query)!r}; try other words, such as an asset class (stocks, options, "
                "futures, crypto, forex, economy, indices) with a kind of data (aggregates, trades, quotes, snapshot, "
                "news, stream)."
            )
        head = f"{len(found)} best matches for {_clipped(query)!r}; run one with call_tool(name, arguments)."
        return "\n\n".join([head, *(tool.render() for tool in found)])

    async def call_tool(
        name: str,
        arguments: Annotated[dict[str, Any] | None, Field(description="as the tool's input schema says")] = None,
    ) -> CallToolResult:
        if catalogue._tool_manager.get_tool(name) is None:
            raise _unknown_tool(name, [tool.name for tool in catalogue._tool_manager.list_tools()])
        try:
            # The catalogue's own call path: the same argument checks, one-sentence errors and answer as a direct
            # call in the full profile, which is what an agent reading a hint for that tool expects.
            result = await catalogue.call_tool(name, arguments or {})
        except ToolError as exc:  # exactly what the server sends for a direct call that fails this way
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        if not isinstance(result, CallToolResult):  # an input-required round trip: not used by these tools
            raise ToolError(f"{name} asked for input call_tool cannot relay; call it in the full profile.")
        return result

    server.add_tool(
        find_tools,
        title="Find tools",
        description="Search every tool by keyword; returns the best matches with their input schemas.",
        annotations=_FIND_ANNOTATIONS,
        structured_output=False,
    )
    server.add_tool(
        call_tool,
        title="Call a tool by name",
        description="Run any tool find_tools shows, with its arguments; answers as a direct call would.",
        annotations=_CALL_ANNOTATIONS,
        structured_output=False,
    )
    for passthrough in PASSTHROUGH_TOOLS:
        tool = catalogue._tool_manager.get_tool(passthrough)
        if tool is not None:
            # The catalogue's registration as it is (function, schema, title, annotations): registering tool.fn
            # again would re-read its signature, whose annotations may name types local to where it was made.
            server._tool_manager._tools[tool.name] = tool
