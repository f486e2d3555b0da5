"""manager.py as plain method calls: start / subscribe / unsubscribe / stop against the simulator (or a tiny fake
server), the typed outcome and status snapshots, and how outcomes are classified.

Every wait is injected short (ConnectionOptions, ControlWaits) and polled with a deadline; an absence (no retry,
no storm) is shown by counting attempts or by the supervisor's state, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from mcp_polygon.config import Settings
from mcp_polygon.streams.connection import ConnectionOptions, ConnectionState
from mcp_polygon.streams.manager import (
    BufferStatus,
    ChangeOutcome,
    ControlWaits,
    MarketStream,
    Rejection,
    StreamError,
    StreamManager,
)
from mcp_polygon.streams.markets import MARKETS
from mcp_polygon.streams.protocol import AuthState
from mcp_polygon.streams.recorder import RecordingState

FAST = ConnectionOptions(
    backoff_first=0.02, backoff_max=0.05, cooldown=0.05, cooldown_max=0.1, auth_timeout=2.0, open_timeout=2.0
)
SHORT = ControlWaits(auth=5.0, ack=2.0, unsubscribe_ack=2.0)
T0_NS = 1_700_000_000 * 10**9


async def until(predicate: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *, connection: ConnectionOptions = FAST, waits: ControlWaits = SHORT
) -> AsyncIterator[StreamManager]:
    manager = StreamManager(settings, connection=connection, waits=waits)
    try:
        yield manager
    finally:
        await manager.aclose()


@pytest.fixture
async def manager(settings: Settings) -> AsyncIterator[StreamManager]:
    async with running(settings) as m:
        yield m


def trades(n: int, first_q: int = 1) -> bytes:
    return orjson.dumps([{"ev": "T", "sym": "AAPL", "p": 1.0, "q": first_q + i} for i in range(n)])


def status_frame(status: str, message: str) -> bytes:
    return orjson.dumps([{"ev": "status", "status": status, "message": message}])


# -- control against the simulator -----------------------------------------------------------------------------


async def test_start_subscribes_and_the_outcome_says_what_the_server_acknowledged(manager, sim):
    out = await manager.start("stocks", ["T.AAPL", "q.msft"])
    assert out == ChangeOutcome(
        "stocks",
        ConnectionState.STREAMING,
        AuthState.OK,
        f"{sim.ws_url}/stocks",
        ("T.AAPL", "Q.MSFT"),
        acknowledged=("T.AAPL", "Q.MSFT"),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.already = True  # type: ignore[misc]
    again = await manager.start("stocks", "T.AAPL")
    assert again.already and again.acknowledged == ("T.AAPL",) and again.requested == ("T.AAPL",)
    assert sim.ws.connect_count("stocks") == 1
    assert manager.stream("stocks").connection.options is FAST  # the options reach every connection


async def test_subscribe_classifies_acknowledged_and_rejected_topics(manager, sim):
    sim.ws.deny["stocks"].add("FMV")
    await manager.start("stocks", ["T.AAPL"])
    out = await manager.subscribe("stocks", ["FMV.AAPL", "AM.MSFT"])
    assert out.acknowledged == ("AM.MSFT",) and out.pending == () and not out.already
    assert out.rejected == (Rejection("FMV.AAPL", "not authorized"),)
    listing = manager.subscriptions("stocks")
    assert listing.state is ConnectionState.STREAMING and listing.total == 3
    assert [(g.prefix, g.acknowledged, g.rejected) for g in listing.groups] == [
        ("T", ("T.AAPL",), ()),
        ("FMV", (), (Rejection("FMV.AAPL", "not authorized"),)),
        ("AM", ("AM.MSFT",), ()),
    ]


async def test_subscribe_to_a_stream_that_is_not_running_names_the_start_call(manager):
    with pytest.raises(StreamError, match=r"call start_stocks_stream\(channels=\['T.AAPL'\]\) instead"):
        await manager.subscribe("stocks", "T.AAPL")


async def test_unsubscribe_tells_unsubscribed_from_never_subscribed(manager, sim):
    await manager.start("stocks", ["T.AAPL", "Q.AAPL"])
    out = await manager.unsubscribe("stocks", ["T.AAPL", "Q.NOPE"])
    assert (out.requested, out.acknowledged, out.pending, out.unknown) == (("T.AAPL",), ("T.AAPL",), (), ("Q.NOPE",))
    assert manager.stream("stocks").topic_names() == ("Q.AAPL",)
    await until(lambda: sim.ws.subscriptions("stocks") == {"Q.AAPL"})


async def test_stop_closes_forgets_the_subscriptions_and_keeps_the_buffer(manager, sim):
    await manager.start("stocks", ["T.AAPL"])
    stream = manager.stream("stocks")
    stream.feed(trades(5), T0_NS)
    assert await manager.stop("stocks") is True
    assert await manager.stop("stocks") is False  # it was not running any more
    assert stream.state is ConnectionState.STOPPED and not stream.active and stream.topic_names() == ()
    assert stream.buffer_status() == BufferStatus(size=5, capacity=stream.buffer.capacity, oldest_seq=1,
                                                  newest_seq=5, overwritten=0)  # fmt: skip
    await until(lambda: sim.ws.connections("stocks") == 0)
    status = manager.status("stocks")
    assert status.state is ConnectionState.STOPPED and status.stopped_at is not None
    assert status.subscriptions.acknowledged == () and status.recording.state is RecordingState.ON


async def test_the_status_snapshot_is_typed_frozen_and_complete(manager, sim):
    sim.ws.set_rate("stocks", 0)
    await manager.start("stocks", ["T.AAPL"])
    stream = manager.stream("stocks")
    now_ns = time.time_ns()
    stream.feed(trades(3), now_ns)
    stream.feed(orjson.dumps([{"ev": "Q", "sym": "AAPL"}] * 2), now_ns + 1_000_000)
    stream.feed(b"not json", now_ns + 2_000_000)
    s = manager.status("stocks")
    assert (s.market, s.state, s.auth, s.simulated) == ("stocks", ConnectionState.STREAMING, AuthState.OK, False)
    assert s.endpoint == f"{sim.ws_url}/stocks" and s.auth_message == "authenticated"
    assert s.subscriptions.acknowledged == ("T.AAPL",) and s.subscriptions.pending == ()
    assert (s.events.total, s.events.frames, s.events.per_channel) == (5, 2, (("T", 3), ("Q", 2)))
    assert s.events.rate_per_s > 0 and s.events.last_at == pytest.approx((now_ns + 1_000_000) / 1e9)
    assert s.buffer == BufferStatus(5, stream.buffer.capacity, 1, 5, 0)
    assert s.connection.state is ConnectionState.STREAMING and s.connection.connects == 1
    assert s.connection.connected_since is not None and s.connection.retry_at is None
    assert s.input.malformed_frames == 1 and "not JSON" in s.input.last_malformed
    assert dict(s.input.status_counts)["auth_success"] == 1
    assert s.recording.state is RecordingState.ON and s.started_at is not None and s.stopped_at is None
    assert abs(s.at - time.time()) < 60
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.buffer.size = 0  # type: ignore[misc]


async def test_a_stream_never_started_has_an_idle_snapshot(manager, sim):
    s = manager.status("crypto")
    assert s.state is ConnectionState.IDLE and s.connection.state is ConnectionState.IDLE
    assert s.connection.connects == 0 and s.buffer == BufferStatus(0, s.buffer.capacity, None, 0, 0)
    assert s.last_error is None and s.auth is AuthState.DISCONNECTED
    assert sim.ws.connect_count("crypto") == 0


async def test_a_rejected_key_is_refused_once_and_a_new_start_tries_it_again(sim, tmp_path: Path):
    key = "a-wrong-key-123"
    settings = Settings(api_key=key, ws_url=sim.ws_url, data_dir=tmp_path)
    async with running(settings) as manager:
        with pytest.raises(StreamError, match="rejected the API key"):
            await manager.start("stocks", ["T.AAPL"])
        stream = manager.stream("stocks")
        await until(lambda: not stream.active)  # the supervisor ended: no retry can follow
        assert stream.state is ConnectionState.AUTH_FAILED and sim.ws.connect_count("stocks") == 1
        assert stream.connection.reconnects == 0 and not stream.connection.retry_delays
        sim.ws.keys.add(key)  # the operator fixed the key: the next start must try it, not repeat the refusal
        out = await manager.start("stocks", ["T.AAPL"])
        assert out.auth is AuthState.OK and out.acknowledged == ("T.AAPL",) and sim.ws.connect_count("stocks") == 2


async def test_max_connections_waits_the_injected_cooldown_not_an_immediate_retry(sim, settings):
    async with running(settings) as ours, running(settings, connection=ConnectionOptions()) as other:
        await ours.start("indices", ["V.I:SPX"])
        await other.start("indices", ["V.I:SPX"])  # the same key takes the slot; ours is told max_connections
        conn = ours.stream("indices").connection
        # Ours sits out its (injected, 0.05 s) cooldown, then takes the slot back; the other, on the product's
        # 60 s cooldown, does not fight back within the test.
        # The other hears its own max_connections a moment after ours streams again: wait for both facts.
        await until(
            lambda: (
                sim.ws.connect_count("indices") == 3
                and conn.state is ConnectionState.STREAMING
                and other.status("indices").connection.state is ConnectionState.COOLDOWN
            )
        )
        assert list(conn.retry_delays) == [FAST.cooldown]
        other_conn = other.status("indices").connection
        assert other_conn.retry_at is not None and other_conn.retry_at - time.time() > 50


# -- control against a server that does not answer ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_server(after_connect: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[tuple[str, list]]:
    """A vendor-like server that says `connected`, then runs `after_connect(ws)`; yields (ws URL, connections)."""
    connects: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connects.append(ws)
        await ws.send(status_frame("connected", "Connected Successfully").decode())
        await after_connect(ws)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", connects


async def authenticate_then_ignore_everything(ws: ServerConnection) -> None:
    await ws.recv()  # auth
    await ws.send(status_frame("auth_success", "authenticated").decode())
    async for _ in ws:  # subscribes are never answered
        pass


async def never_answer(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


async def test_topics_the_server_never_answers_come_back_pending_after_the_injected_wait(tmp_path: Path):
    async with fake_server(authenticate_then_ignore_everything) as (url, connects):
        settings = Settings(api_key="k3y-k3y", ws_url=url, data_dir=tmp_path)
        async with running(settings, waits=ControlWaits(auth=5.0, ack=0.05)) as manager:
            started = time.monotonic()
            out = await manager.start("stocks", ["T.AAPL", "Q.AAPL"])
            assert time.monotonic() - started < 2.5  # not the product's 3 s wait
            assert out.state is ConnectionState.STREAMING and out.auth is AuthState.OK
            assert out.pending == ("T.AAPL", "Q.AAPL") and out.acknowledged == () and out.error is None
            assert len(connects) == 1


async def test_no_auth_answer_backs_off_and_retries_with_the_injected_timings(tmp_path: Path):
    options = dataclasses.replace(FAST, auth_timeout=0.05)
    async with fake_server(never_answer) as (url, connects):
        settings = Settings(api_key="k3y-k3y", ws_url=url, data_dir=tmp_path)
        async with running(settings, connection=options) as manager:
            out = await manager.start("stocks", ["T.AAPL"])
            assert out.auth is not AuthState.OK and out.error == "no authentication answer within 0.05 s"
            assert out.pending == ("T.AAPL",)
            conn = manager.stream("stocks").connection
            await until(lambda: len(connects) >= 4)
            delays = list(conn.retry_delays)
            # The first retry goes at once; the later ones back off, within the injected 0.05 s cap.
            assert delays[0] == 0.0 and all(0 < d <= options.backoff_max for d in delays[1:3])
            assert conn.attempts >= 3


# -- outcome classification as plain calls -----------------------------------------------------------------------


def test_outcomes_are_classified_from_the_session_state(settings):
    stream = MarketStream(MARKETS["stocks"], settings)
    session = stream.session
    session.subscribe(["T.AAPL", "Q.AAPL", "AM.AAPL"])
    session.connection_opened()
    session.receive(status_frame("auth_success", "authenticated"), T0_NS)
    session.receive(
        orjson.dumps(
            [
                {"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"},
                {"ev": "status", "status": "error", "message": "not authorized"},
            ]
        ),
        T0_NS,
    )
    out = stream.outcome(["T.AAPL", "Q.AAPL", "AM.AAPL", "T.UNKNOWN"], already=False)
    assert out.state is ConnectionState.IDLE and out.auth is AuthState.OK
    assert out.acknowledged == ("T.AAPL",) and out.pending == ("AM.AAPL",)
    assert out.rejected == (Rejection("Q.AAPL", "not authorized"),)
    assert out.requested == ("T.AAPL", "Q.AAPL", "AM.AAPL", "T.UNKNOWN")  # an unknown topic is in no group
    session.unsubscribe(["T.AAPL", "AM.AAPL"])  # AM.AAPL was sent too; no ack for either yet
    session.receive(status_frame("success", "unsubscribed to: T.AAPL"), T0_NS)
    gone = stream.unsubscribe_outcome(["T.AAPL", "AM.AAPL"], ["X.Y"])
    assert (gone.acknowledged, gone.pending, gone.unknown) == (("T.AAPL",), ("AM.AAPL",), ("X.Y",))


def test_ingest_ignores_a_frame_without_data_and_counts_every_event_type(settings):
    stream = MarketStream(MARKETS["stocks"], settings.with_overrides(record=False))
    assert stream.feed(status_frame("slow_consumer", "too slow"), T0_NS).raw is None
    stream.feed(orjson.dumps([{"ev": "T", "sym": "A"}, {"ev": "Q", "sym": "A"}, {"ev": "T", "sym": "B"}]), T0_NS)
    stream.feed(b'[{"ev": "T", "sym": "C"}]', T0_NS + 1)  # the slow path: str keys instead of bytes
    assert stream.stats.total == 4 and dict(stream.stats.per_channel) == {"T": 3, "Q": 1}
    assert stream.buffer_status().newest_seq == 4
