"""connection.py: backoff schedule, keep-alive on a dead peer, stop from another task; a tiny throwaway fake server."""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from websockets.asyncio.server import serve

from mcp_polygon.streams.connection import Connection, ConnectionState, Pulse
from mcp_polygon.streams.protocol import ProtocolSession


def make(url: str = "ws://127.0.0.1:9", **kw) -> tuple[Connection, list]:
    frames: list = []
    session = ProtocolSession("k3y-for-tests")
    return Connection(url, session, lambda f, ns: frames.append((f, ns)), Pulse(), **kw), frames


def test_backoff_starts_well_under_a_second_and_is_capped():
    conn, _ = make()
    first = [conn._backoff() for _ in range(200)]
    assert 0.125 <= min(first) and max(first) <= 0.25
    conn.attempts = 50
    late = [conn._backoff() for _ in range(200)]
    assert max(late) <= 30.0 and min(late) >= 15.0


@contextlib.asynccontextmanager
async def fake_server(behaviour):
    """A minimal vendor-like server: sends `connected`, answers auth with auth_success, then `behaviour(ws)`."""
    connects = []

    async def handler(ws):
        connects.append(ws)
        await ws.send(
            orjson.dumps([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]).decode()
        )
        await ws.recv()  # auth
        await ws.send(orjson.dumps([{"ev": "status", "status": "auth_success", "message": "authenticated"}]).decode())
        await behaviour(ws)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/stocks", connects


async def until(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_dead_peer_is_detected_by_keepalive_and_reconnected():
    async def go_silent(ws):
        await ws.send(orjson.dumps([{"ev": "T", "sym": "AAPL", "p": 1.0}]).decode())
        ws.transport.pause_reading()  # stops answering pings, keeps the TCP connection open
        await asyncio.sleep(1.5)
        ws.transport.abort()

    async with fake_server(go_silent) as (url, connects):
        conn, frames = make(url, ping_interval=0.2, ping_timeout=0.2, backoff_first=0.05)
        conn.start()
        try:
            await until(lambda: len(connects) >= 2 and conn.state == ConnectionState.STREAMING)
            assert "keep-alive" in (conn.last_disconnect or "")
            assert len(frames) >= 2
        finally:
            await conn.stop()
        assert conn.state == ConnectionState.STOPPED


async def test_stop_from_another_task_while_streaming():
    async def stream_forever(ws):
        while True:
            await ws.send(orjson.dumps([{"ev": "T", "sym": "AAPL", "p": 1.0}] * 10).decode())
            await asyncio.sleep(0.01)

    async with fake_server(stream_forever) as (url, _):
        conn, frames = make(url)
        conn.start()
        await until(lambda: len(frames) > 3)
        await asyncio.create_task(conn.stop())  # a different task than the one that started it
        assert not conn.running and conn.state == ConnectionState.STOPPED
        n = len(frames)
        await asyncio.sleep(0.1)
        assert len(frames) == n
        await conn.stop()  # idempotent


async def test_backoff_grows_while_the_server_keeps_closing():
    async with fake_server(lambda ws: ws.close()) as (url, connects):
        conn, _ = make(url, backoff_first=0.02, backoff_max=0.08, healthy_after=0.5)
        conn.start()
        try:
            await until(lambda: len(connects) >= 4)
            assert conn.attempts >= 3
        finally:
            await conn.stop()
