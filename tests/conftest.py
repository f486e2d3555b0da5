"""Shared fixtures: a simulator on 127.0.0.1, settings pointing at it, and a real MCP client session.

Test modules may add their own fixtures locally; keep this file to what every suite needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client._memory import InMemoryTransport

from mcp_polygon.config import Settings
from mcp_polygon.server import App, build_app
from mcp_polygon.simulator import Simulator


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


@pytest.fixture
def settings(sim: Simulator, tmp_path: Path) -> Settings:
    return Settings(
        api_key=sim.api_key,
        rest_url=sim.rest_url,
        ws_url=sim.ws_url,
        data_dir=tmp_path / "data",
        max_retries=2,
        request_timeout=5.0,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    async with build_app(settings) as application:
        yield application


@contextlib.asynccontextmanager
async def mcp_session(server) -> AsyncIterator[Client]:
    """An MCP client session over JSON-RPC (in-memory streams) to `server`.

    The session lives in a task of its own: anyio cancel scopes must be entered and left in one task, and
    pytest-asyncio sets up and tears down a fixture in different tasks.
    """
    ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def hold_session() -> None:
        try:
            async with Client(InMemoryTransport(server)) as mcp_client:
                ready.set_result(mcp_client)
                await finished.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    holder = asyncio.create_task(hold_session())
    try:
        yield await ready
    finally:
        finished.set()
        await holder


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    """An MCP client session over JSON-RPC, as an agent would use the server."""
    async with mcp_session(app.server) as mcp_client:
        yield mcp_client


def text_of(result) -> str:
    """The text content of a CallToolResult (the tools return text, never structuredContent)."""
    return "".join(block.text for block in result.content if getattr(block, "type", "") == "text")
