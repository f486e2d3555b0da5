"""connection.py: backoff schedule, keep-alive on a dead peer, stop from another task; a tiny throwaway fake server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

import orjson
import pytest
from websockets.asyncio.server import serve

from mcp_polygon.simulator.ws import WsSimulator
from mcp_polygon.streams.connection import (
    Connection,
    ConnectionOptions,
    ConnectionState,
    EndpointError,
    Pulse,
    endpoint_problem,
)
from mcp_polygon.streams.protocol import ProtocolSession

KEY = "k3y-for-tests"


def make(url: str = "ws://127.0.0.1:9", **options) -> tuple[Connection, list]:
    """A connection with `options` (ConnectionOptions fields: shorter backoffs, pings...) and the frames it sinks."""
    frames: list = []
    session = ProtocolSession(KEY)
    return Connection(url, session, lambda f, ns: frames.append((f, ns)), Pulse(), ConnectionOptions(**options)), frames


def test_backoff_is_none_first_then_starts_well_under_a_second_and_is_capped():
    conn, _ = make()
    assert conn._backoff() == 0.0  # the first attempt after a healthy period goes at once
    conn.attempts = 1
    second = [conn._backoff() for _ in range(200)]
    assert 0.125 <= min(second) and max(second) <= 0.25
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
            await until(lambda: len(connects) >= 2 and conn.state is ConnectionState.STREAMING)
            assert "keep-alive" in (conn.last_disconnect or "")
            assert len(frames) >= 2
        finally:
            await conn.stop()
        assert conn.state is ConnectionState.STOPPED


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
        assert not conn.running and conn.state is ConnectionState.STOPPED
        # The supervisor task has ended and holds no socket: nothing is left that could hand on another frame.
        assert conn._task is not None and conn._task.done() and conn._ws is None
        await conn.stop()  # idempotent
        assert conn.status().state is ConnectionState.STOPPED and conn.status().connected_since is None


async def test_backoff_grows_while_the_server_keeps_closing():
    async with fake_server(lambda ws: ws.close()) as (url, connects):
        conn, _ = make(url, backoff_first=0.02, backoff_max=0.08, healthy_after=0.5)
        conn.start()
        try:
            await until(lambda: len(connects) >= 4)
            assert conn.attempts >= 3
        finally:
            await conn.stop()


def trade_frame() -> str:
    return orjson.dumps([{"ev": "T", "sym": "AAPL", "p": 1.0}]).decode()


async def test_first_reconnect_after_a_drop_is_immediate_and_the_second_backs_off():
    async def drop_abruptly(ws):
        await ws.send(trade_frame())
        await asyncio.sleep(0.05)
        ws.transport.abort()  # no close frame: a network drop

    async with fake_server(drop_abruptly) as (url, connects):
        # A 30 s backoff: any wait before the first reconnect would leave it undone for the whole test.
        conn, frames = make(url, backoff_first=30.0, backoff_max=60.0, healthy_after=1000.0)
        conn.start()
        try:
            await until(lambda: len(conn.retry_delays) == 2)
            assert conn.retry_delays[0] == 0.0 and 15.0 <= conn.retry_delays[1] <= 30.0
            assert len(connects) == 2 and conn.reconnects == 1 and len(frames) == 2
            assert conn.state is ConnectionState.RECONNECTING
        finally:
            await conn.stop()


async def test_every_drop_of_a_healthy_connection_reconnects_at_once():
    async def drop_abruptly(ws):
        await ws.send(trade_frame())
        await asyncio.sleep(0.02)
        ws.transport.abort()

    async with fake_server(drop_abruptly) as (url, connects):
        conn, _ = make(url, backoff_first=30.0, healthy_after=0.0)  # every connection counts as healthy
        conn.start()
        try:
            await until(lambda: len(connects) >= 4)
            assert set(conn.retry_delays) == {0.0}
        finally:
            await conn.stop()


async def test_a_task_cancelled_while_awaiting_stop_is_cancelled():
    conn, _ = make()
    release = asyncio.Event()

    async def slow_to_end() -> None:  # a supervisor whose socket takes long to close
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await release.wait()
            raise

    conn._task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(conn.stop(grace=30))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not stopper.done()  # it is waiting for the supervisor to end
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert stopper.cancelled() and conn.state is ConnectionState.STOPPED
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await conn._task


BAD_ENDPOINTS = [
    ("javascript:alert(1)", "its scheme is 'javascript', not ws or wss"),
    ("http://127.0.0.1:9/stocks", "its scheme is 'http'"),
    ("ws://" + "a" * 100_000 + "/stocks", "its host name is 100,000 characters long (at most 253)"),
    ("ws://" + "a" * 64 + ".example/stocks", "a label of 64 characters (at most 63)"),
    ("ws://exa mple.example/stocks", "contains ' ', which no host name has"),
    ("ws://bad!host.example/stocks", "contains '!'"),
    ("ws://x..y/stocks", "an empty label"),
    ("ws://127.0.0.1:99999/stocks", "cannot be parsed ('Port out of range 0-65535')"),
    ("ws:///stocks", "it has no host name"),
]


@pytest.mark.parametrize(("url", "needle"), BAD_ENDPOINTS)
async def test_an_unusable_endpoint_fails_at_once_with_one_sentence_and_no_retry(url, needle, caplog):
    caplog.set_level(logging.DEBUG, logger="mcp_polygon.streams")
    conn, _ = make(url, backoff_first=0.0)
    conn.start()
    await until(lambda: not conn.running)
    assert conn.state is ConnectionState.FAILED
    assert conn.connects == conn.reconnects == conn.attempts == 0 and not conn.retry_delays
    assert needle in conn.last_error and len(conn.last_error) < 200 and "\n" not in conn.last_error
    records = [r for r in caplog.records if r.name.startswith("mcp_polygon.streams")]
    assert len(records) == 1 and records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert len(records[0].getMessage()) < 300


async def test_a_path_without_a_websocket_fails_at_once():
    sim = WsSimulator(api_key=KEY)
    await sim.start()
    try:
        conn, _ = make(f"{sim.url}/bonds", backoff_first=0.0)
        conn.start()
        await until(lambda: not conn.running)
        assert conn.state is ConnectionState.FAILED and "HTTP 404" in conn.last_error
        assert sim.connect_count("stocks") == 0 and not conn.retry_delays
    finally:
        await sim.stop()


async def test_the_status_snapshot_is_frozen_and_says_why_it_failed():
    conn, _ = make("ws://bad!host.example/stocks")
    conn.start()
    await until(lambda: not conn.running)
    status = conn.status()
    assert status.state is ConnectionState.FAILED and status.connects == status.reconnects == 0
    assert "contains '!'" in status.last_error and status.last_error_at == status.last_disconnect_at
    with pytest.raises(AttributeError):
        status.state = ConnectionState.IDLE  # type: ignore[misc]


def test_options_are_explicit_and_the_product_values_by_default():
    conn, _ = make()
    assert conn.options == ConnectionOptions() and conn.options.cooldown == 60.0
    fast, _ = make(backoff_first=0.01, backoff_max=0.02)
    fast.attempts = 5
    assert all(fast._backoff() <= 0.02 for _ in range(50))


def test_errors_retrying_cannot_cure_are_told_apart_from_blips():
    conn, _ = make("ws://feed.example/stocks")
    no_such_host = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(EndpointError, match="does not resolve"):
        conn._describe_error(no_such_host, False)
    with pytest.raises(EndpointError, match="cannot be used"):
        conn._describe_error(UnicodeError("encoding with 'idna' codec failed (UnicodeError: label too long)"), False)
    assert "cannot resolve" in conn._describe_error(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), False)
    conn.connects = 1  # the host resolved before: now it is a network blip, retried
    assert "cannot resolve" in conn._describe_error(no_such_host, False)
    assert endpoint_problem("wss://socket.massive.com/stocks") is None
    assert endpoint_problem("ws://[::1]:8101/stocks") is None and endpoint_problem("ws://127.0.0.1:1/x") is None


async def test_the_key_the_vendor_echoes_is_masked_in_logs_and_errors(caplog):
    caplog.set_level(logging.DEBUG, logger="mcp_polygon.streams")

    async def echo_the_key(ws):
        await ws.send(
            orjson.dumps(
                [
                    {"ev": "status", "status": "error", "message": f"bad request: {KEY}"},
                    {"ev": "status", "status": "slow_consumer", "message": f"too slow, {KEY}"},
                ]
            ).decode()
        )
        await ws.close(code=4000, reason=f"bye {KEY}")

    async with fake_server(echo_the_key) as (url, _):
        conn, _ = make(url + f"?apiKey={KEY}", backoff_first=30.0, healthy_after=1000.0)
        conn.start()
        try:
            await until(lambda: len(conn.retry_delays) >= 2)
        finally:
            await conn.stop()
    session = conn.session
    texts = [
        caplog.text,
        conn.label,
        str(conn.last_error),
        str(conn.last_disconnect),
        str(session.last_error),
        repr(list(session.history)),
        repr(session.last_status),
    ]
    assert all(KEY not in text for text in texts), texts
    assert "bye ***" in conn.last_disconnect and "too slow, ***" in conn.last_disconnect
    assert "bad request: ***" in caplog.text
