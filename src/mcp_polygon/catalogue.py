"""The tool catalogue as Markdown, rendered from the registered tools so the README cannot drift."""

from __future__ import annotations

import asyncio

from mcp_polygon.config import ALL_TOOLSETS, Settings
from mcp_polygon.server import build_app

START = "<!-- catalogue:start -->"
END = "<!-- catalogue:end -->"


def _summary(description: str) -> str:
    first = description.strip().splitlines()[0] if description.strip() else ""
    return first.replace("|", "\\|")


async def _tools_of(toolset: str) -> list[tuple[str, str]]:
    app = build_app(Settings(toolsets=frozenset({toolset})))
    try:
        tools = await app.server.list_tools()
    finally:
        await app.aclose()
    return [(tool.name, _summary(tool.description or "")) for tool in tools]


def render() -> str:
    """Markdown: one table per toolset, each tool with the first line of its description."""

    async def collect() -> list[tuple[str, list[tuple[str, str]]]]:
        return [(toolset, await _tools_of(toolset)) for toolset in ALL_TOOLSETS]

    sections = []
    total = 0
    for toolset, tools in asyncio.run(collect()):
        total += len(tools)
        rows = "\n".join(f"| `{name}` | {summary} |" for name, summary in tools)
        sections.append(f"### {toolset} ({len(tools)} tools)\n\n| tool | what it does |\n|---|---|\n{rows}\n")
    return f"{total} tools in all.\n\n" + "\n".join(sections)


def splice(readme: str, catalogue: str) -> str:
    """Replace what stands between the catalogue markers in the README."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{catalogue}{END}{tail}"
