"""The tool catalogue as Markdown, rendered from the registered tools so the README cannot drift."""

from __future__ import annotations

import asyncio
from collections import Counter

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

    per_toolset = asyncio.run(collect())
    # Tools that every stream market brings (SQL, summaries) are listed once, in a section of their own.
    seen = Counter(name for _, tools in per_toolset for name, _ in tools)
    shared = {name: summary for _, tools in per_toolset for name, summary in tools if seen[name] > 1}
    groups = [(toolset, [t for t in tools if t[0] not in shared]) for toolset, tools in per_toolset]
    if shared:
        groups.append(("across markets", list(shared.items())))
    sections = []
    total = 0
    for toolset, tools in groups:
        total += len(tools)
        rows = "\n".join(f"| `{name}` | {summary} |" for name, summary in tools)
        sections.append(f"### {toolset} ({len(tools)} tools)\n\n| tool | what it does |\n|---|---|\n{rows}\n")
    return f"{total} tools in all.\n\n" + "\n".join(sections)


def splice(readme: str, catalogue: str) -> str:
    """Replace what stands between the catalogue markers in the README."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{catalogue}{END}{tail}"
