"""The vendor WebSocket protocol for all six markets on 127.0.0.1, with fault injection.

Endpoints: `<url>/<market>` for stocks, options, futures, indices, forex, crypto; also `<url>/futures/<exchange>`
(cme, cbot, nymex, comex) and the business / delayed feeds as `<url>/business/<market>`, `<url>/delayed/<market>`.
Each distinct path is its own cluster for the one-connection-per-key rule; every other fault targets a market and
hits all of its paths. Every channel is served on every path (the real business feed carries FMV only).

Data: while subscribed, a connection receives `rate` events per second for every (channel, ticker) it streams,
batched per tick into one frame. `<CHANNEL>.*` streams the market's few wildcard tickers (events.MARKETS), tickers
starting with "ZZZ" are unknown: acknowledged, never streamed.

Benchmarks: `firehose()` resends pre-encoded frames as fast as the socket drains; `paced()` builds each event at
send time and adds `sim_ns`, the wall clock (`time.time_ns()`) just before the frame is written, so a client can
measure end-to-end latency with `time.time_ns() - event["sim_ns"]` (same host). Both pause the regular flow on
the connections they use, so the counts a benchmark sees are exactly theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from mcp_polygon.simulator.events import MARKETS, EventFactory, is_known_ticker, ticker_key

FEEDS = ("business", "delayed")
FUTURES_EXCHANGES = ("cme", "cbot", "nymex", "comex")
OPTION_QUOTE_LIMIT = 1000

MSG_CONNECTED = "Connected Successfully"
MSG_AUTHENTICATED = "authenticated"
MSG_AUTH_FAILED = "authentication failed"
MSG_NO_WS_PLAN = "Your plan doesn't include websocket access. Visit https://massive.com/pricing to upgrade."
MSG_AUTH_TIMEOUT = "No authentication request received."
MSG_AUTH_REQUIRED = "authentication required"  # not documented by the vendor; clients key on the status
MSG_NOT_AUTHORIZED = "not authorized"
MSG_LIMIT = "Subscription limit reached for feed. Please remove some subscriptions and try again."
MSG_MAX_CONNECTIONS = "Maximum number of connections exceeded."
MSG_SLOW_CONSUMER = "Consumer too slow; disconnecting."

MALFORMED_KINDS = ("non_json", "non_array", "missing_fields", "no_ev_first", "nested_ev", "non_object")


def status(status_: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": status_, "message": message}


def parse_path(path: str) -> tuple[str, str] | None:
    """(market, cluster) for a request path such as "/stocks", "/futures/cme", "/business/crypto"; None if unknown."""
    parts = [part for part in path.split("?", 1)[0].strip("/").lower().split("/") if part]
    cluster = "/".join(parts)
    if parts and parts[0] in FEEDS:
        parts = parts[1:]
    if len(parts) == 1 and parts[0] in MARKETS:
        return parts[0], cluster
    if len(parts) == 2 and parts[0] == "futures" and parts[1] in FUTURES_EXCHANGES:
        return "futures", cluster
    return None


@dataclass(eq=False)
class Session:
    """One client connection: its auth state, its topics and the (channel, ticker) streams they expand to."""

    ws: ServerConnection
    market: str
    cluster: str
    key: str | None = None
    topics: dict[str, None] = field(default_factory=dict)  # acknowledged topics, in subscription order
    # (channel, ticker) -> event credit; a credit reaching 1 is an event due.
    streams: dict[tuple[str, str], float] = field(default_factory=dict)
    paused: int = 0  # > 0 while a firehose or paced run owns the connection
    pump: asyncio.Task[None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def authenticated(self) -> bool:
        return self.key is not None

    def limited_contracts(self) -> int:
        """Subscribed tickers on the market's limited channels (options quotes)."""
        limited = MARKETS[self.market].no_wildcard
        return sum(1 for topic in self.topics if topic.partition(".")[0] in limited)

    def rebuild_streams(self) -> None:
        spec = MARKETS[self.market]
        wanted: dict[tuple[str, str], None] = {}
        for topic in self.topics:
            channel, _, ticker = topic.partition(".")
            tickers = spec.wildcard_tickers if ticker == "*" else (ticker,)
            wanted.update(dict.fromkeys((channel, t) for t in tickers if is_known_ticker(t)))
        # Keep the credit of streams that stay; a new stream starts with one event due, so data flows at once.
        self.streams = {stream: self.streams.get(stream, 1.0) for stream in wanted}

    async def send(self, payload: list[Any] | dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(payload), text=True)


class WsSimulator:
    """A protocol-faithful fake of the vendor WebSocket feeds; see the module docstring for endpoints and data."""

    def __init__(
        self,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float = 5.0,
        seed: int = 7,
        auth_timeout: float = 10.0,
        restart_pause: float = 0.2,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.url = f"ws://{host}:{port}"
        self.keys: set[str] = {api_key}  # keys that authenticate; tests may add more
        self.no_ws_keys: set[str] = set()  # valid keys whose plan lacks websocket access
        self.deny: dict[str, set[str]] = defaultdict(set)  # market -> channel prefixes or full topics refused
        self.auth_timeout = auth_timeout
        self.restart_pause = restart_pause
        self.option_quote_limit = OPTION_QUOTE_LIMIT
        self.factory = EventFactory(seed)
        self._rates: dict[str, float] = dict.fromkeys(MARKETS, rate)
        self._server: Server | None = None
        self._sessions: dict[str, list[Session]] = {market: [] for market in MARKETS}
        self._owners: dict[tuple[str, str], Session] = {}  # (key, cluster) -> the connection holding the slot
        self._connects: dict[str, int] = dict.fromkeys(MARKETS, 0)
        self._auths: dict[str, int] = dict.fromkeys(MARKETS, 0)
        # Every TCP connection, including those still in the HTTP handshake, so restart() can abort them all.
        self._raw: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._background: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._listen(self.port)

    async def stop(self) -> None:
        """Close every connection (1001 going away) and the listener. Safe from any task, and idempotent."""
        await self._shutdown(abrupt=False)

    async def restart(self, pause: float | None = None) -> None:
        """A server restart: drop every connection without a close frame, refuse connections for `pause` seconds
        (default `restart_pause`), then listen again on the same port."""
        await self._shutdown(abrupt=True)
        await asyncio.sleep(self.restart_pause if pause is None else pause)
        await self._listen(self.port)

    async def _listen(self, port: int) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            port,
            process_request=self._check_path,
            compression=None,  # the firehose must not pay for deflate; the vendor client copes either way
            close_timeout=2,
            max_size=4 * 2**20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://{self.host}:{self.port}"

    async def _shutdown(self, *, abrupt: bool) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        for task in list(self._background):
            task.cancel()
        if abrupt:
            server.close(close_connections=False)
            for connection in list(self._raw):
                connection.transport.abort()
        else:
            server.close(code=1001)
        try:
            async with asyncio.timeout(5):
                await server.wait_closed()
        except TimeoutError:  # a peer that never answers the close handshake must not hang the caller
            for connection in list(self._raw):
                connection.transport.abort()
            await server.wait_closed()

    # -- fault injection -----------------------------------------------------------------------------------------

    def set_rate(self, market: str, events_per_second: float) -> None:
        """Events per second per streamed (channel, ticker) on `market`, from the next tick; 0 stops the flow."""
        self._rates[self._market(market)] = max(0.0, float(events_per_second))

    def rate(self, market: str) -> float:
        return self._rates[self._market(market)]

    async def drop(self, market: str) -> int:
        """Abrupt network drop of every connection on `market`: no close frame. Returns how many were dropped."""
        sessions = self._live(market)
        for session in sessions:
            session.ws.transport.abort()
        await self._wait_gone(sessions)
        return len(sessions)

    async def send_status(self, market: str, status_: str, message: str, *, close: bool = False) -> int:
        """Send a status event to every connection on `market`; with close=True, then close it (close frame)."""
        sessions = self._live(market)
        await asyncio.gather(*(self._notify_and_close(s, status_, message, close) for s in sessions))
        return len(sessions)

    async def slow_consumer(self, market: str) -> int:
        """What the vendor does to a reader that falls behind: `slow_consumer`, then disconnect."""
        return await self.send_status(market, "slow_consumer", MSG_SLOW_CONSUMER, close=True)

    async def malformed(self, market: str, kind: str) -> int:
        """Send one malformed frame to every authenticated connection on `market`. Kinds: "non_json" (text that is
        not JSON), "non_array" (one event as a bare JSON object), "missing_fields" (an array holding one event
        without its ticker and its main number, e.g. a trade without sym and p), and three arrays that mix real
        events with entries a client must not count as events: "no_ev_first" (an object without `ev`, then one
        event), "nested_ev" (one event holding an object with an `ev` key of its own), "non_object" (an event,
        the number 5, an event). Each of the last three carries 1, 1 and 2 readable events."""
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MALFORMED_KINDS)}, got {kind!r}")
        sessions = [s for s in self._live(market) if s.authenticated]
        for session in sessions:
            with contextlib.suppress(ConnectionClosed):
                await session.ws.send(self._malformed_frame(session, kind), text=True)
        return len(sessions)

    def _malformed_frame(self, session: Session, kind: str) -> bytes:
        channel, ticker = self._sample_stream(session)
        event = self.factory.event(session.market, channel, ticker)
        if kind == "non_json":
            return b'[{"ev":"T","sym":"AAPL","p":1'  # a frame cut short
        if kind == "non_array":
            return orjson.dumps(event)
        if kind == "missing_fields":
            return orjson.dumps([self.factory.broken_event(session.market, channel, ticker)])
        if kind == "no_ev_first":
            return orjson.dumps([{k: v for k, v in event.items() if k != "ev"}, event])
        if kind == "nested_ev":
            return orjson.dumps([{**event, "x": {"ev": channel, ticker_key(session.market, channel): ticker}}])
        return orjson.dumps([event, 5, self.factory.event(session.market, channel, ticker)])  # non_object

    async def firehose(self, market: str, n: int, batch: int = 1000) -> int:
        """Send `n` events of its streams to every authenticated connection on `market`, as fast as each socket
        drains, in frames of `batch` events. Returns the number of events written (n per streaming connection).
        Frames are encoded once and resent: the server side must outrun any client by far."""
        sessions = [s for s in self._live(market) if s.authenticated and s.streams]
        counts = await asyncio.gather(*(self._firehose_one(s, n, max(1, batch)) for s in sessions))
        return sum(counts)

    async def paced(self, market: str, events_per_second: float, duration: float, batch: int = 1) -> int:
        """Send events at a steady `events_per_second` for `duration` seconds to every authenticated connection on
        `market`, `batch` events per frame, each stamped `sim_ns` = time.time_ns() just before its frame is sent.
        Returns the number of events written."""
        total = int(events_per_second * duration)
        if total <= 0:
            return 0
        sessions = [s for s in self._live(market) if s.authenticated and s.streams]
        counts = await asyncio.gather(*(self._paced_one(s, events_per_second, total, max(1, batch)) for s in sessions))
        return sum(counts)

    # -- introspection -------------------------------------------------------------------------------------------

    def connections(self, market: str) -> int:
        """Open connections on `market` (all of its paths), authenticated or not."""
        return len(self._sessions[self._market(market)])

    def subscriptions(self, market: str) -> set[str]:
        """The acknowledged topics of the newest connection on `market`."""
        sessions = self._sessions[self._market(market)]
        return set(sessions[-1].topics) if sessions else set()

    def connect_count(self, market: str) -> int:
        """WebSocket connections accepted on `market` since the simulator was created."""
        return self._connects[self._market(market)]

    def auth_count(self, market: str | None = None) -> int:
        """Auth requests received (any outcome) on `market`, or on all markets."""
        return self._auths[self._market(market)] if market else sum(self._auths.values())

    async def wait_connections(self, market: str, count: int = 1) -> None:
        """Wait until exactly `count` connections are open on `market` (bound it with asyncio.timeout)."""
        await self._wait_until(lambda: self.connections(market) == count)

    async def wait_subscribed(self, market: str, topics: Iterable[str]) -> None:
        """Wait until the newest connection on `market` has every topic in `topics` acknowledged."""
        wanted = set(topics)
        await self._wait_until(lambda: wanted <= self.subscriptions(market))

    # -- connection handling -------------------------------------------------------------------------------------

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        self._raw.add(connection)
        if parse_path(request.path) is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        market, cluster = parse_path(ws.request.path)  # type: ignore[misc,union-attr]  # _check_path refused the rest
        session = Session(ws, market, cluster)
        self._sessions[market].append(session)
        self._connects[market] += 1
        self._changed_now()
        try:
            await session.send([status("connected", MSG_CONNECTED)])
            await self._serve(session)
        except ConnectionClosed:
            pass
        finally:
            if session.pump is not None:
                session.pump.cancel()
            self._sessions[market].remove(session)
            if session.key is not None and self._owners.get((session.key, cluster)) is session:
                del self._owners[(session.key, cluster)]
            session.closed.set()
            self._changed_now()

    async def _serve(self, session: Session) -> None:
        deadline = asyncio.get_running_loop().time() + self.auth_timeout
        while True:
            if session.authenticated:
                raw = await session.ws.recv()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        raw = await session.ws.recv()
                except TimeoutError:
                    await session.send([status("auth_timeout", MSG_AUTH_TIMEOUT)])
                    await session.ws.close()
                    return
            try:
                request = orjson.loads(raw)
                action, params = request["action"], request.get("params", "")
            except (orjson.JSONDecodeError, TypeError, KeyError):
                continue  # the vendor ignores what it cannot read
            if action == "auth":
                if not await self._authenticate(session, str(params)):
                    return
            elif action in ("subscribe", "unsubscribe"):
                topics = [t.strip() for t in str(params).split(",") if t.strip()]
                if not session.authenticated:
                    await session.send([status("auth_required", MSG_AUTH_REQUIRED)])
                elif action == "subscribe":
                    await self._subscribe(session, topics)
                else:
                    await self._unsubscribe(session, topics)

    async def _authenticate(self, session: Session, key: str) -> bool:
        self._auths[session.market] += 1
        if key in self.no_ws_keys or key not in self.keys:
            message = MSG_NO_WS_PLAN if key in self.no_ws_keys else MSG_AUTH_FAILED
            await session.send([status("auth_failed", message)])
            await self._abort_after_flush(session.ws)
            return False
        session.key = key
        await session.send([status("auth_success", MSG_AUTHENTICATED)])
        # One connection per key and cluster: the newcomer wins, the older one is told and closed.
        older = self._owners.get((key, session.cluster))
        self._owners[(key, session.cluster)] = session
        if older is not None and older is not session:
            self._spawn(self._notify_and_close(older, "max_connections", MSG_MAX_CONNECTIONS, True))
        if session.pump is None:
            session.pump = asyncio.create_task(self._pump(session))
        self._changed_now()
        return True

    async def _subscribe(self, session: Session, topics: list[str]) -> None:
        spec = MARKETS[session.market]
        denied = self.deny.get(session.market, set())
        limited = session.limited_contracts()
        acks = []
        for topic in topics:
            channel, _, ticker = topic.partition(".")
            if not ticker or channel not in spec.channels:
                continue  # unknown channel prefix: silently ignored, as the vendor does
            if channel in denied or topic in denied:
                acks.append(status("error", MSG_NOT_AUTHORIZED))
                continue
            if channel in spec.no_wildcard and topic not in session.topics:
                # Options quotes are per named contract, at most 1,000 of them; `*` would be all of them.
                if ticker == "*" or limited >= self.option_quote_limit:
                    acks.append(status("error", MSG_LIMIT))
                    continue
                limited += 1
            session.topics[topic] = None
            acks.append(status("success", f"subscribed to: {topic}"))
        session.rebuild_streams()
        if acks:
            await session.send(acks)
        self._changed_now()

    async def _unsubscribe(self, session: Session, topics: list[str]) -> None:
        spec = MARKETS[session.market]
        acks = []
        for topic in topics:
            channel, _, ticker = topic.partition(".")
            if not ticker or channel not in spec.channels:
                continue
            session.topics.pop(topic, None)
            acks.append(status("success", f"unsubscribed to: {topic}"))
        session.rebuild_streams()
        if acks:
            await session.send(acks)
        self._changed_now()

    # -- data ----------------------------------------------------------------------------------------------------

    async def _pump(self, session: Session) -> None:
        """The regular flow: every tick, each stream earns rate*dt credit; due events share one frame."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            rate = self._rates[session.market]
            # Tick at the event interval, within [10 ms, 100 ms]: prompt first events, few frames at low rates.
            await asyncio.sleep(min(0.1, max(0.01, 1.0 / rate)) if rate > 0 else 0.1)
            now = loop.time()
            elapsed, last = now - last, now
            if rate <= 0 or session.paused or not session.streams:
                continue
            events: list[dict[str, Any]] = []
            now_ns = time.time_ns()
            cap = max(1.0, rate)  # after a stall, catch up at most one second's worth
            for stream, credit in session.streams.items():
                credit = min(credit + elapsed * rate, cap)
                due = int(credit)
                session.streams[stream] = credit - due
                events.extend(self.factory.event(session.market, *stream, now_ns) for _ in range(due))
            if events:
                try:
                    await session.send(events)
                except ConnectionClosed:
                    return

    async def _firehose_one(self, session: Session, n: int, batch: int) -> int:
        streams = itertools.cycle(list(session.streams))
        market = session.market
        # A few distinct full frames (about 4,000 events, a few ms to build), cycled, so consecutive frames differ
        # without building n events. Their `t` is the build time.
        full, rest = divmod(n, batch)
        variants = [
            orjson.dumps([self.factory.event(market, *next(streams)) for _ in range(batch)])
            for _ in range(min(full, max(1, 4000 // batch)))
        ]
        tail = orjson.dumps([self.factory.event(market, *next(streams)) for _ in range(rest)]) if rest else b""
        sent = 0
        session.paused += 1
        try:
            for i in range(full):
                await session.ws.send(variants[i % len(variants)], text=True)
                sent += batch
                if i % 64 == 63:
                    await asyncio.sleep(0)  # send() yields only when the buffer is full; let others run
            if rest:
                await session.ws.send(tail, text=True)
                sent += rest
        except ConnectionClosed:
            pass
        finally:
            session.paused -= 1
        return sent

    async def _paced_one(self, session: Session, events_per_second: float, total: int, batch: int) -> int:
        streams = itertools.cycle(list(session.streams))
        market = session.market
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        session.paused += 1
        try:
            while sent < total:
                # Send what is due by now (catching up after a late wake-up), then sleep until the next one.
                due = min(total, int((loop.time() - start) * events_per_second) + 1)
                while sent < due:
                    size = min(batch, due - sent)
                    now_ns = time.time_ns()
                    events = [self.factory.event(market, *next(streams), now_ns) for _ in range(size)]
                    for event in events:
                        event["sim_ns"] = now_ns
                    await session.send(events)
                    sent += size
                delay = start + sent / events_per_second - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        except ConnectionClosed:
            pass
        finally:
            session.paused -= 1
        return sent

    # -- helpers -------------------------------------------------------------------------------------------------

    @staticmethod
    def _market(market: str) -> str:
        if market not in MARKETS:
            raise ValueError(f"unknown market {market!r}; markets: {', '.join(MARKETS)}")
        return market

    def _live(self, market: str) -> list[Session]:
        return list(self._sessions[self._market(market)])

    def _sample_stream(self, session: Session) -> tuple[str, str]:
        if session.streams:
            return next(iter(session.streams))
        spec = MARKETS[session.market]
        return spec.channels[0], spec.wildcard_tickers[0]

    async def _notify_and_close(self, session: Session, status_: str, message: str, close: bool) -> None:
        with contextlib.suppress(ConnectionClosed):
            await session.send([status(status_, message)])
            if close:
                await session.ws.close()

    @staticmethod
    async def _abort_after_flush(ws: ServerConnection) -> None:
        """Drop the TCP connection with no close frame, once the last frame has left our buffer."""
        transport = ws.transport
        for _ in range(100):
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.01)
        transport.abort()
        await ws.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _changed_now(self) -> None:
        # Wake every waiter; they re-check their condition against the new state.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    @staticmethod
    async def _wait_gone(sessions: list[Session]) -> None:
        # An aborted transport ends its handler within a loop iteration or two; 5 s only guards against a bug.
        async with asyncio.timeout(5):
            for session in sessions:
                await session.closed.wait()
