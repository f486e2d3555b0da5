"""The README's client snippets work as written with --simulate: parsed from the README, launched, used."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import sys
from pathlib import Path

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from conftest import text_of

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def simulate_server_entry() -> dict:
    for block in code_blocks("json"):
        for entry in json.loads(block)["mcpServers"].values():
            if "--simulate" in entry.get("args", []):
                return entry
    raise AssertionError("README has no Claude Desktop snippet with --simulate")


def shell_line(pattern: str) -> list[str]:
    for block in code_blocks("bash"):
        for line in block.splitlines():
            if re.search(pattern, line):
                return shlex.split(line.split("#", 1)[0])
    raise AssertionError(f"README has no command line matching {pattern!r}")


async def check_simulated_session(client: Client) -> None:
    tools = (await client.list_tools()).tools
    assert len(tools) == 131  # 81 REST + 48 streaming + SQL and summaries
    assert "SIMULATOR" in (client.instructions or "")
    result = await client.call_tool("get_market_status", {})
    assert not result.is_error, text_of(result)
    assert text_of(result).startswith("# SIMULATED DATA")


def installed(command: str) -> str:
    """The README says `mcp-polygon`: use the one installed in this environment."""
    assert command == "mcp-polygon"
    return str(BIN / command)


async def test_claude_desktop_simulate_snippet(tmp_path: Path):
    entry = simulate_server_entry()
    params = StdioServerParameters(
        command=installed(entry["command"]),
        args=entry["args"],
        env={**entry.get("env", {}), "POLYGON_DATA_DIR": str(tmp_path)},
    )
    async with Client(params) as client:
        await check_simulated_session(client)


async def test_claude_code_simulate_snippet(tmp_path: Path):
    words = shell_line(r"^claude mcp add \S+ -- mcp-polygon --simulate")
    command, *args = words[words.index("--") + 1 :]
    params = StdioServerParameters(command=installed(command), args=args, env={"POLYGON_DATA_DIR": str(tmp_path)})
    async with Client(params) as client:
        await check_simulated_session(client)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_http_simulate_snippet_shares_one_stream_between_sessions(tmp_path: Path):
    words = shell_line(r"^mcp-polygon --simulate --transport http")
    port = free_port()
    words[words.index("--port") + 1] = str(port)
    process = await asyncio.create_subprocess_exec(
        installed(words[0]),
        *words[1:],
        env={"POLYGON_DATA_DIR": str(tmp_path), "PATH": str(BIN)},
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        async with Client(url) as first:
            await check_simulated_session(first)
            started = await first.call_tool("start_crypto_stream", {"channels": ["XT.BTC-USD"]})
            assert not started.is_error, text_of(started)
        # A second session of the same process sees the stream the first one started.
        async with Client(url) as second:
            for _ in range(50):  # the stream delivers within a second or two; poll up to 10 s
                text = text_of(await second.call_tool("get_crypto_stream_messages", {}))
                if "BTC-USD" in text:
                    break
                await asyncio.sleep(0.2)
            status = text_of(await second.call_tool("get_crypto_stream_status", {}))
        assert "XT.BTC-USD" in status and "SIMULATED" in status
        assert "BTC-USD" in text
    finally:
        process.terminate()
        await process.wait()
