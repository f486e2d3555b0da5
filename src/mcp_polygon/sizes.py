"""What each profile's `tools/list` costs an agent before it reads a word, as stated in the README.

`make catalogue` rewrites the README's sizes line from `measure()`; tests/test_compact_profile.py checks the stated
numbers against a measurement through a real MCP client and fails when they drift by more than 5%.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mcp.types import Tool as ListedTool

from mcp_polygon.config import Profile, Settings

BEGIN, END = "<!-- sizes:begin -->", "<!-- sizes:end -->"
_LINE = re.compile(
    r"full profile: (?P<full_tools>\d+) tools, (?P<full_kb>[\d.]+) KB .*?"
    r"compact profile: (?P<compact_tools>\d+) tools, (?P<compact_kb>[\d.]+) KB",
    flags=re.S,
)


def listed_bytes(tool: ListedTool) -> int:
    """One tool's share of tools/list: its JSON as the server sends it (aliases, no nulls, compact)."""
    document = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass(frozen=True)
class ProfileSize:
    profile: Profile
    tools: int
    total_bytes: int

    @classmethod
    def of(cls, profile: Profile, tools: Sequence[ListedTool]) -> ProfileSize:
        return cls(profile, len(tools), sum(listed_bytes(tool) for tool in tools))

    @property
    def kb(self) -> float:
        return round(self.total_bytes / 1000, 1)


async def measure() -> tuple[ProfileSize, ProfileSize]:
    """Both profiles with every toolset, as a client sees them with a real key (no simulator note)."""
    from mcp_polygon.server import build_app  # server imports config and profiles; this module is only a reader

    sizes = []
    with tempfile.TemporaryDirectory() as data:
        for profile in (Profile.FULL, Profile.COMPACT):
            async with build_app(Settings(data_dir=Path(data), profile=profile, record=False)) as app:
                sizes.append(ProfileSize.of(profile, await app.server.list_tools()))
    return sizes[0], sizes[1]


def render(full: ProfileSize, compact: ProfileSize) -> str:
    per_tool = round(full.total_bytes / max(full.tools, 1))
    return (
        f"Measured `tools/list`: full profile: {full.tools} tools, {full.kb} KB ({per_tool} B per tool); "
        f"compact profile: {compact.tools} tools, {compact.kb} KB."
    )


def stated(readme: str) -> tuple[ProfileSize, ProfileSize] | None:
    """The sizes the README states, or None when it has no sizes line."""
    block = re.search(re.escape(BEGIN) + r"(.*?)" + re.escape(END), readme, flags=re.S)
    found = _LINE.search(block.group(1)) if block else None
    if found is None:
        return None
    return (
        ProfileSize(Profile.FULL, int(found["full_tools"]), int(float(found["full_kb"]) * 1000)),
        ProfileSize(Profile.COMPACT, int(found["compact_tools"]), int(float(found["compact_kb"]) * 1000)),
    )


def splice(readme: str, line: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + line + "\n" + readme[end:]
