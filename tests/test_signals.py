"""SIGTERM and SIGINT stop the real `mcp-polygon` command cleanly, keeping every recorded event; a second SIGINT
ends it at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import httpx2
import pytest
from mcp.client import Client

from conftest import StdioPeer, text_of

SCRIPT = Path(sys.executable).with_name("mcp-polygon")
EVENTS_BEFORE_SIGNAL = 20
CLEAN_EXIT_WITHIN_S = 3.0

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed (pip install -e .)")


async def start_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "--simulate",
        *args,
        env={"POLYGON_DATA_DIR": str(tmp_path / "data"), **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
async def stdio_server(tmp_path: Path) -> AsyncIterator[StdioPeer]:
    process = await start_server(tmp_path)
    try:
        peer = StdioPeer(process)
        await peer.initialize()
        yield peer
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def seen_after_streaming(call: Any) -> int:
    """Start a crypto trade stream and poll until the agent has seen enough events; the newest seq seen."""
    await call("start_crypto_stream", channels=["XT.*"])
    newest = 0
    for _ in range(200):  # the simulator streams several events a second; give it up to 20 s
        body = json.loads(await call("get_crypto_stream_messages", since_seq=newest, format="json"))
        newest = max([newest, *(event["seq"] for event in body["events"])])
        if newest >= EVENTS_BEFORE_SIGNAL:
            return newest
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {newest} events arrived")


def recorded_events(data_dir: Path) -> int:
    """Events in the crypto recording: the open or raw segments (one line per frame, `<recv ns> <json array>`)
    plus the closed segments already compacted to Parquet (one row per event)."""
    directory = data_dir / "simulated" / "crypto"
    count = 0
    for segment in directory.glob("*.jsonl"):
        for line in segment.read_text(encoding="utf-8").splitlines():
            _, frame = line.split(" ", 1)
            count += sum(1 for event in json.loads(frame) if event.get("ev") != "status")
    for compacted in directory.glob("*.parquet"):
        with duckdb.connect() as db:
            row = db.execute("SELECT count(*) FROM read_parquet(?)", [str(compacted)]).fetchone()
        count += row[0] if row else 0
    return count


async def exit_code_within(process: asyncio.subprocess.Process, seconds: float) -> int:
    started = time.monotonic()
    code = await asyncio.wait_for(process.wait(), seconds * 3)  # a generous bound, so a slow exit reports its time
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"exit took {elapsed:.1f} s"
    return code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stdio_signal_shuts_down_cleanly_and_keeps_the_recording(stdio_server: StdioPeer, tmp_path, sig):
    seen = await seen_after_streaming(stdio_server.call)
    stdio_server.process.send_signal(sig)
    assert await exit_code_within(stdio_server.process, CLEAN_EXIT_WITHIN_S) == 0
    assert recorded_events(tmp_path / "data") >= seen


async def test_closing_stdin_is_the_same_clean_shutdown(stdio_server: StdioPeer, tmp_path):
    seen = await seen_after_streaming(stdio_server.call)
    assert stdio_server.process.stdin is not None
    stdio_server.process.stdin.close()
    assert await exit_code_within(stdio_server.process, CLEAN_EXIT_WITHIN_S) == 0
    assert recorded_events(tmp_path / "data") >= seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_port(port: int) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                await asyncio.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_http_signal_shuts_down_cleanly_with_a_session_open(tmp_path: Path, sig):
    port = free_port()
    process = await start_server(tmp_path, "--transport", "http", "--port", str(port))
    try:
        await wait_for_port(port)
        outcome: tuple[int, int] | None = None
        try:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:

                async def call(tool: str, **arguments: Any) -> str:
                    result = await client.call_tool(tool, arguments)
                    assert not result.is_error, text_of(result)
                    return text_of(result)

                seen = await seen_after_streaming(call)
                # The session (and its SSE stream) is still open: shutdown must not wait for the client to leave.
                process.send_signal(sig)
                outcome = (seen, await exit_code_within(process, CLEAN_EXIT_WITHIN_S))
        except Exception:
            if outcome is None:
                raise  # failed before the signal; after it, how the client notices the server is gone varies
        assert outcome is not None
        seen, code = outcome
        assert code == 0
        assert recorded_events(tmp_path / "data") >= seen
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_http_shutdown_does_not_wait_for_an_open_sse_stream(tmp_path: Path):
    # A client's GET /mcp (the server-to-client SSE stream) never ends by itself; a shutdown must end it.
    port = free_port()
    process = await start_server(tmp_path, "--transport", "http", "--port", str(port))
    url = f"http://127.0.0.1:{port}/mcp"
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    try:
        await wait_for_port(port)
        async with httpx2.AsyncClient(timeout=20) as http:
            session = (await http.post(url, json=initialize, headers=headers)).headers["mcp-session-id"]
            headers |= {"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
            await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
            async with http.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}) as sse:
                assert sse.status_code == 200
                process.send_signal(signal.SIGTERM)
                assert await exit_code_within(process, CLEAN_EXIT_WITHIN_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def read_until(stream: asyncio.StreamReader, needle: bytes) -> None:
    async with asyncio.timeout(20):
        while needle not in await stream.readline():
            pass


async def test_second_sigint_exits_at_once_while_the_clean_shutdown_is_stuck(tmp_path: Path):
    # A vendor that stops answering (SIGSTOP) leaves the WebSocket close handshake waiting for its timeout, so the
    # clean path is stuck for seconds; the second SIGINT must end the process without waiting for it.
    vendor = await asyncio.create_subprocess_exec(
        str(SCRIPT), "simulate", "--rest-port", "0", "--ws-port", "0", stdout=asyncio.subprocess.PIPE, env={}
    )
    server: asyncio.subprocess.Process | None = None
    try:
        assert vendor.stdout is not None
        banner = dict(line.split(None, 1) for line in [(await vendor.stdout.readline()).decode() for _ in range(3)])
        server = await asyncio.create_subprocess_exec(
            str(SCRIPT),
            env={
                "POLYGON_DATA_DIR": str(tmp_path / "data"),
                "POLYGON_REST_URL": banner["REST"].strip(),
                "POLYGON_WS_URL": banner["WebSocket"].strip().removesuffix("/<market>"),
                "POLYGON_API_KEY": banner["API"].split()[-1],
            },
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        peer = StdioPeer(server)
        await peer.initialize()
        await peer.call("start_crypto_stream", channels=["XT.*"])
        os.kill(vendor.pid, signal.SIGSTOP)
        server.send_signal(signal.SIGINT)
        assert server.stderr is not None
        await read_until(server.stderr, b"SIGINT received")
        server.send_signal(signal.SIGINT)
        # Killed by the signal itself (not a clean 0 after the stuck close handshake), and promptly.
        assert await exit_code_within(server, 1.5) == -signal.SIGINT
    finally:
        os.kill(vendor.pid, signal.SIGCONT)
        for process in (server, vendor):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
