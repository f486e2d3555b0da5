"""StreamManager: one supervised connection, one buffer and one recorder per market, for the whole process.

Every MCP session of the process shares it: two agents asking for stocks share one socket (the vendor allows
one connection per market per key). Nothing here formats text for agents; tools.py does that. Errors an agent
can act on are raised as StreamError with one actionable sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mcp_polygon.config import Settings
from mcp_polygon.streams import recorder as rec
from mcp_polygon.streams.buffer import MessageBuffer, ReadResult
from mcp_polygon.streams.connection import Connection, ConnectionState, Pulse
from mcp_polygon.streams.markets import (
    MARKETS,
    ChannelError,
    Market,
    Selector,
    check_limits,
    make_matcher,
    normalize_channels,
    parse_filter,
)
from mcp_polygon.streams.protocol import AuthState, Frame, ProtocolSession

log = logging.getLogger(__name__)

RATE_WINDOW = 10  # seconds


class StreamError(Exception):
    """A stream request that cannot be done; the message is one actionable sentence for the agent."""


def redactor(api_key: str | None):
    """A function that masks the API key in any text (an endpoint with ?apiKey=..., an echoed message)."""
    if not api_key or len(api_key) < 4:
        return lambda text: text
    return lambda text: text.replace(api_key, "***") if isinstance(text, str) else text


class StreamStats:
    """Event counters and a recent rate, updated once per frame."""

    __slots__ = ("_buckets", "_cur_n", "_cur_sec", "first_at", "frames", "last_at", "per_channel", "total")

    def __init__(self) -> None:
        self.total = 0
        self.frames = 0
        self.per_channel: Counter = Counter()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._buckets: deque[tuple[int, int]] = deque(maxlen=RATE_WINDOW + 1)
        self._cur_sec = 0
        self._cur_n = 0

    def add(self, counts: Counter, n: int, t: float) -> None:
        self.total += n
        self.frames += 1
        per = self.per_channel
        for k, v in counts.items():  # a handful of keys; bytes on the protocol's fast path
            per[k.decode("utf-8", "replace") if type(k) is bytes else k] += v
        self.last_at = t
        if self.first_at is None:
            self.first_at = t
        sec = int(t)
        if sec != self._cur_sec:
            if self._cur_n:
                self._buckets.append((self._cur_sec, self._cur_n))
            self._cur_sec, self._cur_n = sec, 0
        self._cur_n += n

    def rate(self, now: float | None = None) -> float:
        """Events per second over the last RATE_WINDOW seconds (or since the first event, if more recent)."""
        now = time.time() if now is None else now
        if self.first_at is None:
            return 0.0
        start = now - RATE_WINDOW
        n = sum(c for s, c in self._buckets if s + 1 > start)
        if self._cur_sec + 1 > start:
            n += self._cur_n
        span = min(RATE_WINDOW, max(now - self.first_at, 1.0))
        return n / span


def resolve_endpoint(value: str, market: Market) -> str:
    """A full ws(s) URL for `market`: a base URL gets the market path appended; a URL with a path is kept."""
    raw = (value or "").strip()
    if not raw:
        raise StreamError("endpoint is empty; pass e.g. wss://delayed.massive.com or omit it.")
    if "://" not in raw:
        raw = "wss://" + raw
    parts = urlsplit(raw)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise StreamError(
            f"endpoint '{value}' is not a WebSocket URL; use e.g. wss://socket.massive.com, "
            f"wss://delayed.massive.com or a full URL like wss://socket.massive.com/{market.path}."
        )
    path = parts.path.rstrip("/")
    if not path:
        path = "/" + market.path
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


@dataclass
class ChangeOutcome:
    """What a start/subscribe/unsubscribe call achieved, for the tool to report."""

    market: str
    requested: list[str]
    acknowledged: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # unsubscribe of topics that were not subscribed
    state: str = ""
    auth: str = ""
    endpoint: str = ""
    already: bool = False  # nothing new: everything was subscribed before
    error: str | None = None
    retry_at: float | None = None


class MarketStream:
    """One market: its buffer, recorder, protocol session and (while started) its connection."""

    def __init__(self, market: Market, settings: Settings) -> None:
        self.market = market
        self.settings = settings
        self.buffer = MessageBuffer(settings.buffer_size)
        self.session = ProtocolSession(settings.api_key)
        self.stats = StreamStats()
        self.pulse = Pulse()
        self.record_dir = Path(settings.data_dir) / market.name
        self.recorder: rec.Recorder | None = (
            rec.Recorder(self.record_dir, settings.record_max_bytes) if settings.record else None
        )
        self.connection: Connection | None = None
        self.endpoint = resolve_endpoint(settings.ws_url, market)
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.lock = asyncio.Lock()
        self.connection_options: dict = {}

    # -- ingest (the hot path) ----------------------------------------------------------------------------------

    def ingest(self, frame: Frame, recv_ns: int) -> None:
        """Append a decoded frame's data events: buffer, recorder, counters. Called once per frame."""
        t = recv_ns / 1e9
        self.buffer.append(frame.raw, frame.count, t)
        recorder = self.recorder
        if recorder is not None:
            recorder.write(frame.raw, frame.count, recv_ns)
        self.stats.add(frame.counts, frame.count, t)

    def feed(self, data: bytes | str, recv_ns: int | None = None) -> Frame:
        """Decode and ingest one wire frame without a socket (benchmarks, tests)."""
        frame = self.session.receive(data)
        if frame.raw is not None:
            self.ingest(frame, time.time_ns() if recv_ns is None else recv_ns)
        return frame

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.connection.state if self.connection is not None else ConnectionState.IDLE

    @property
    def active(self) -> bool:
        """Started and not given up (it may be reconnecting or cooling down)."""
        return self.connection is not None and self.connection.running

    def outcome(self, requested: list[str], **kw) -> ChangeOutcome:
        topics = self.session.topics
        out = ChangeOutcome(
            market=self.market.name,
            requested=requested,
            state=self.state,
            auth=self.session.auth.value,
            endpoint=self.endpoint,
            retry_at=self.connection.retry_at if self.connection else None,
            **kw,
        )
        for t in requested:
            st = topics.get(t)
            if st is None:
                continue
            if st.state == "acknowledged":
                out.acknowledged.append(t)
            elif st.state == "rejected":
                out.rejected[t] = st.reason or "rejected"
            else:
                out.pending.append(t)
        return out


class StreamManager:
    """One connection per market per process, shared by every MCP session."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._streams: dict[str, MarketStream] = {}
        self._closed = False
        self.redact = redactor(settings.api_key)
        # Timeouts (seconds) for tool calls; the tests shorten nothing, these are the product's values.
        self.auth_wait = 10.0
        self.ack_wait = 3.0
        self.connection_options: dict = {}

    # -- access ------------------------------------------------------------------------------------------------

    @property
    def markets(self) -> tuple[str, ...]:
        return self.settings.stream_markets

    def stream(self, market: str) -> MarketStream:
        s = self._streams.get(market)
        if s is None:
            if market not in MARKETS:
                raise StreamError(f"unknown market '{market}'; valid: {', '.join(MARKETS)}.")
            s = self._streams[market] = MarketStream(MARKETS[market], self.settings)
        return s

    def _channels(self, stream: MarketStream, channels) -> list[str]:
        try:
            return normalize_channels(stream.market, channels)
        except ChannelError as exc:
            raise StreamError(self.redact(str(exc))) from None

    def _require_key(self) -> None:
        if not self.settings.api_key:
            raise StreamError(
                "No API key is configured: set POLYGON_API_KEY (or MASSIVE_API_KEY) in the MCP server's "
                "environment, or run the server with --simulate for synthetic data."
            )

    # -- control -----------------------------------------------------------------------------------------------

    async def start(self, market: str, channels, endpoint: str | None = None) -> ChangeOutcome:
        """Connect if needed, authenticate, subscribe; returns once auth and acks are known (or time is up)."""
        if self._closed:
            raise StreamError("the server is shutting down.")
        stream = self.stream(market)
        topics = self._channels(stream, channels)
        self._require_key()
        url = resolve_endpoint(endpoint, stream.market) if endpoint else None
        async with stream.lock:
            try:
                check_limits(stream.market, list({**stream.session.topics, **dict.fromkeys(topics)}))
            except ChannelError as exc:
                raise StreamError(str(exc)) from None
            conn = stream.connection
            restart = False
            if url is not None and url != stream.endpoint:
                stream.endpoint = url
                restart = True
            elif endpoint is None and conn is None:
                stream.endpoint = resolve_endpoint(self.settings.ws_url, stream.market)
            if conn is not None and (restart or not conn.running):
                await conn.stop()
                conn = stream.connection = None
                stream.session.connection_lost()
            already = conn is not None and all(
                t in stream.session.topics and stream.session.topics[t].state == "acknowledged" for t in topics
            )
            stream.session.subscribe(topics)
            if conn is None:
                if stream.session.auth is AuthState.FAILED:
                    stream.session.auth = AuthState.DISCONNECTED
                conn = stream.connection = Connection(
                    stream.endpoint,
                    stream.session,
                    stream.ingest,
                    stream.pulse,
                    label=market,
                    **{**self.connection_options, **stream.connection_options},
                )
                stream.started_at = time.time()
                conn.start()
            else:
                await conn.flush()
        await self._wait_settled(stream, topics)
        out = stream.outcome(topics, already=already)
        out.endpoint = self.redact(out.endpoint)
        if stream.session.auth is AuthState.FAILED or stream.state == ConnectionState.AUTH_FAILED:
            raise StreamError(self.redact(self._auth_failed_text(stream)))
        if stream.state == ConnectionState.FAILED:
            raise StreamError(
                self.redact(
                    f"Cannot use the {market} endpoint {stream.endpoint}: {conn.last_error}; "
                    "pass a valid wss:// URL as endpoint."
                )
            )
        if stream.session.auth is not AuthState.OK:
            out.error = self.redact(conn.last_error)
        return out

    def _auth_failed_text(self, stream: MarketStream) -> str:
        msg = stream.session.auth_message or "authentication failed"
        m = stream.market.name
        if stream.session.plan_lacks_websocket:
            return (
                f'The {m} WebSocket refused the API key: "{msg}" - your plan has no WebSocket access for {m}; '
                "upgrade the plan, try the 15-minute delayed feed (endpoint='wss://delayed.massive.com'), "
                "or run the server with --simulate."
            )
        return (
            f'The {m} WebSocket rejected the API key ("{msg}"): check POLYGON_API_KEY in the server\'s '
            "environment; the stream was not started and will not retry."
        )

    async def _wait_settled(self, stream: MarketStream, topics: list[str]) -> None:
        session = stream.session
        pulse = stream.pulse

        def auth_known() -> bool:
            state = stream.state
            if session.auth in (AuthState.OK, AuthState.FAILED):
                return True
            return state in (
                ConnectionState.AUTH_FAILED,
                ConnectionState.FAILED,
                ConnectionState.STOPPED,
                ConnectionState.COOLDOWN,
                ConnectionState.RECONNECTING,
            )

        await pulse.wait_for(auth_known, self.auth_wait)
        if session.auth is AuthState.OK:

            def acked() -> bool:
                return session.auth is not AuthState.OK or session.settled(topics)

            await pulse.wait_for(acked, self.ack_wait)

    async def subscribe(self, market: str, channels) -> ChangeOutcome:
        stream = self.stream(market)
        topics = self._channels(stream, channels)
        if not stream.active:
            raise StreamError(
                f"The {market} stream is not running; call start_{market}_stream(channels={topics!r}) instead."
            )
        async with stream.lock:
            try:
                check_limits(stream.market, list({**stream.session.topics, **dict.fromkeys(topics)}))
            except ChannelError as exc:
                raise StreamError(str(exc)) from None
            already = all(
                t in stream.session.topics and stream.session.topics[t].state == "acknowledged" for t in topics
            )
            stream.session.subscribe(topics)
            await stream.connection.flush()
        if stream.session.auth is AuthState.OK:
            await stream.pulse.wait_for(
                lambda: stream.session.auth is not AuthState.OK or stream.session.settled(topics), self.ack_wait
            )
        return stream.outcome(topics, already=already)

    async def unsubscribe(self, market: str, channels) -> ChangeOutcome:
        stream = self.stream(market)
        topics = self._channels(stream, channels)
        async with stream.lock:
            known = [t for t in topics if t in stream.session.topics]
            unknown = [t for t in topics if t not in stream.session.topics]
            stream.session.unsubscribe(known)
            if stream.connection is not None:
                await stream.connection.flush()
        if known and stream.session.auth is AuthState.OK:
            await stream.pulse.wait_for(
                lambda: not any(t in stream.session.unsubscribing for t in known), min(self.ack_wait, 2.0)
            )
        out = stream.outcome([], unknown=unknown)
        out.requested = known
        out.pending = [t for t in known if t in stream.session.unsubscribing]
        out.acknowledged = [t for t in known if t not in stream.session.unsubscribing]
        return out

    async def stop(self, market: str) -> bool:
        """Close the market's socket and forget its subscriptions; its buffer stays readable. True if it ran."""
        stream = self.stream(market)
        async with stream.lock:
            conn = stream.connection
            was = conn is not None and conn.running
            if conn is not None:
                await conn.stop()
            stream.session.clear()
            stream.session.connection_lost()
            if stream.session.auth is AuthState.FAILED:
                stream.session.auth = AuthState.DISCONNECTED
            if stream.recorder is not None:
                stream.recorder.close()
            stream.stopped_at = time.time()
            return was

    async def aclose(self) -> None:
        """Stop every stream and close recordings. Safe from any task and more than once."""
        self._closed = True
        streams = list(self._streams.values())
        conns = [s.connection for s in streams if s.connection is not None]
        if conns:
            await asyncio.gather(*(c.stop() for c in conns), return_exceptions=True)
        for s in streams:
            if s.recorder is not None:
                with contextlib.suppress(Exception):
                    s.recorder.close()

    # -- reading -----------------------------------------------------------------------------------------------

    def read(
        self,
        market: str,
        *,
        limit: int = 100,
        channel_filter: str | list[str] | None = None,
        since_seq: int | None = None,
        since_time: float | None = None,
    ) -> ReadResult:
        stream = self.stream(market)
        try:
            flt = parse_filter(stream.market, channel_filter)
        except ChannelError as exc:
            raise StreamError(str(exc)) from None
        return stream.buffer.read(
            limit, since_seq=since_seq, since_time=since_time, selector=Selector(stream.market, flt)
        )

    async def replay(
        self,
        market: str,
        from_ns: int,
        to_ns: int,
        *,
        channel_filter: str | list[str] | None = None,
        limit: int = 1000,
    ) -> rec.ReplayResult:
        stream = self.stream(market)
        try:
            flt = parse_filter(stream.market, channel_filter)
        except ChannelError as exc:
            raise StreamError(str(exc)) from None
        if stream.recorder is not None:
            stream.recorder.flush()
        return await asyncio.to_thread(
            rec.replay,
            stream.record_dir,
            from_ns,
            to_ns,
            limit=limit,
            match=make_matcher(stream.market, flt),
            needles=flt.needles(),
        )

    # -- status ------------------------------------------------------------------------------------------------

    def subscriptions(self, market: str) -> dict:
        """Topics grouped by channel prefix: {prefix: {"acknowledged": [...], "pending": [...], "rejected": {}}}."""
        stream = self.stream(market)
        groups: dict[str, dict] = {}
        for topic, st in stream.session.topics.items():
            prefix = topic.partition(".")[0]
            g = groups.setdefault(prefix, {"acknowledged": [], "pending": [], "rejected": {}})
            if st.state == "rejected":
                g["rejected"][topic] = st.reason or "rejected"
            else:
                g[st.state if st.state in g else "pending"].append(topic)
        return groups

    def status(self, market: str) -> dict:
        """Everything an agent (or a benchmark) may want to know about one market's stream (key masked)."""
        return _redact_tree(self._status(market), self.redact)

    def _status(self, market: str) -> dict:
        stream = self.stream(market)
        conn = stream.connection
        session = stream.session
        buf = stream.buffer
        now = time.time()
        recorder = stream.recorder
        errors = [(session.last_error_at, session.last_error)]
        if conn is not None:
            errors.append((conn.last_error_at, conn.last_error))
        last_error = max((e for e in errors if e[1]), default=(None, None), key=lambda e: e[0] or 0)
        return {
            "market": market,
            "state": stream.state,
            "simulated": self.settings.simulated,
            "endpoint": stream.endpoint,
            "auth": session.auth.value,
            "auth_message": session.auth_message,
            "subscriptions": {
                "acknowledged": session.by_state("acknowledged"),
                "pending": session.by_state("pending"),
                "rejected": {t: s.reason for t, s in session.topics.items() if s.state == "rejected"},
                "unsubscribing": list(session.unsubscribing),
            },
            "events_total": stream.stats.total,
            "frames_total": stream.stats.frames,
            "events_per_channel": dict(stream.stats.per_channel),
            "rate_per_s": stream.stats.rate(now),
            "last_event_at": stream.stats.last_at,
            "buffer": {
                "size": len(buf),
                "capacity": buf.capacity,
                "oldest_seq": buf.oldest if buf.head else None,
                "newest_seq": buf.head,
                "overwritten": buf.overwritten,
            },
            "connects": conn.connects if conn else 0,
            "reconnects": conn.reconnects if conn else 0,
            "connected_since": conn.connected_since if conn else None,
            "retry_at": conn.retry_at if conn else None,
            "last_disconnect": conn.last_disconnect if conn else None,
            "last_disconnect_at": conn.last_disconnect_at if conn else None,
            "last_status": session.last_status.describe() if session.last_status else None,
            "last_error": last_error[1],
            "last_error_at": last_error[0],
            "connection_error": conn.last_error if conn else None,
            "status_counts": dict(session.status_counts),
            "malformed_frames": session.malformed_frames,
            "malformed_events": session.malformed_events,
            "last_malformed": session.last_malformed,
            "recording": {
                "enabled": recorder is not None and recorder.enabled,
                "directory": str(stream.record_dir),
                "bytes_written": recorder.bytes_written if recorder else 0,
                "error": recorder.error if recorder else None,
            },
            "started_at": stream.started_at,
            "stopped_at": stream.stopped_at,
        }


def _redact_tree(value, redact):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: _redact_tree(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_tree(v, redact) for v in value]
    return value
