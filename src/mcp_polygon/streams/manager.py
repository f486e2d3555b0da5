"""StreamManager: one supervised connection, one buffer and one recorder per market, for the whole process.

Every MCP session of the process shares it: two agents asking for stocks share one socket (the vendor allows
one connection per market per key). Nothing here formats text for agents; tools.py does that. Errors an agent
can act on are raised as StreamError with one actionable sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mcp_polygon.config import Settings
from mcp_polygon.redaction import Redactor
from mcp_polygon.streams import recorder as rec
from mcp_polygon.streams.buffer import MessageBuffer, ReadResult
from mcp_polygon.streams.connection import Connection, ConnectionState, Pulse
from mcp_polygon.streams.formatting import clip
from mcp_polygon.streams.markets import (
    MARKETS,
    ChannelError,
    ChannelFilter,
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


# -- where the API key may go ------------------------------------------------------------------------------------
# The protocol sends the key in its first message to whatever host the socket reaches, so the host is checked
# before a connection exists: the configured POLYGON_WS_URL's host, the vendor's own feed hosts (wss:// only)
# and loopback (the simulator, local testing). Nothing an agent passes can send it anywhere else.

VENDOR_DOMAINS = ("massive.com", "polygon.io")  # the vendor's name, and its old one


class Feed(StrEnum):
    """The vendor's feeds, by the short names `endpoint` accepts."""

    REALTIME = "realtime"
    DELAYED = "delayed"
    BUSINESS = "business"


# On the vendor's domains each feed has its own host; elsewhere (the simulator, a proxy) the feeds are paths
# under the configured URL: <url>/delayed/<market>, <url>/business/<market>.
FEED_HOSTS = {Feed.REALTIME: "socket", Feed.DELAYED: "delayed", Feed.BUSINESS: "business"}
VENDOR_FEED_HOSTS = frozenset(f"{FEED_HOSTS[feed]}.{domain}" for feed in Feed for domain in VENDOR_DOMAINS)
FUTURES_EXCHANGES = ("cme", "cbot", "nymex", "comex")  # futures also stream one exchange: <url>/futures/<exchange>
_FEED_NAMES = frozenset(feed.value for feed in Feed)
_ECHO_CHARS = 100  # how much of a refused endpoint an error repeats


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").rstrip(".")


@dataclass(frozen=True)
class EndpointPolicy:
    """Resolves the `endpoint` argument of start_<market>_stream to a URL the API key may be sent to."""

    configured: str  # POLYGON_WS_URL: the default feed, and a host the operator chose
    redact: Redactor  # a refused value is echoed masked, then clipped (clipping first could cut the key in two)

    def default(self, market: Market) -> str:
        return resolve_endpoint(self.configured, market)

    def resolve(self, value: str | None, market: Market) -> str:
        """The URL for `value`: none or blank -> the configured feed (every time, so nothing sticks); a short
        name -> that feed; a URL -> itself, if its host may receive the key. Raises StreamError otherwise."""
        text = (value or "").strip()
        if not text:
            return self.default(market)
        named = self._named(text.lower(), market)
        if named is not None:
            return named
        shown = clip(self.redact(text), _ECHO_CHARS)
        if any(ch.isspace() or not ch.isprintable() for ch in text):
            raise StreamError(f"endpoint '{shown}' contains whitespace or control characters; {self.choices(market)}.")
        try:
            url = resolve_endpoint(text, market)
            parts = urlsplit(url)
            _ = parts.port  # urlsplit checks the port only when it is read
        except (StreamError, ValueError):
            raise StreamError(f"endpoint '{shown}' is not a WebSocket URL; {self.choices(market)}.") from None
        if parts.username is not None or parts.password is not None:
            raise StreamError(f"endpoint '{shown}' carries a user name or password; {self.choices(market)}.")
        self._check_host(parts.scheme, _host(url), shown, market)
        return url

    def _named(self, name: str, market: Market) -> str | None:
        if name in _FEED_NAMES:
            return self.feed_url(Feed(name), market, market.path)
        if market.name == "futures" and name in FUTURES_EXCHANGES:
            return self.feed_url(Feed.REALTIME, market, f"futures/{name}")
        return None

    def feed_url(self, feed: Feed, market: Market, path: str) -> str:
        default = self.default(market)
        if feed is Feed.REALTIME and path == market.path:
            return default
        base = urlsplit(default)
        host = _host(default)
        if host in VENDOR_FEED_HOSTS:
            return f"wss://{FEED_HOSTS[feed]}.{host.partition('.')[2]}/{path}"
        prefix = "" if feed is Feed.REALTIME else f"/{feed.value}"
        return urlunsplit((base.scheme, base.netloc, f"{prefix}/{path}", base.query, ""))

    def _check_host(self, scheme: str, host: str, shown: str, market: Market) -> None:
        if is_loopback(host):
            return
        configured = urlsplit(self.default(market))
        at_configured = host == _host(self.default(market))
        if not at_configured and host not in VENDOR_FEED_HOSTS:
            raise StreamError(
                f"endpoint '{shown}' is not a host this server sends the API key to; {self.choices(market)}."
            )
        # ws:// only where the operator configured it: anywhere else off loopback the key would travel in clear.
        if scheme != "wss" and not (at_configured and configured.scheme == scheme):
            raise StreamError(
                f"endpoint '{shown}' would send the API key unencrypted (ws://); off loopback use wss:// "
                f"(e.g. wss://{host}/{market.path}), or {self.choices(market)}."
            )

    def choices(self, market: Market) -> str:
        """The allowed values, as the second half of an error sentence."""
        names = ", ".join(f"'{feed.value}'" for feed in Feed)
        if market.name == "futures":
            names += ", or an exchange: " + ", ".join(f"'{x}'" for x in FUTURES_EXCHANGES)
        hosts = ", ".join(sorted(VENDOR_FEED_HOSTS))
        configured = _host(self.default(market))
        if configured not in VENDOR_FEED_HOSTS and not is_loopback(configured):
            hosts = f"{configured} (configured), {hosts}"
        return (
            f"pass one of {names}; a wss:// URL on {hosts}; a ws:// URL on 127.0.0.1 or localhost for local "
            f"testing; or omit endpoint for the configured feed {self.default(market)}"
        )


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
    switched_from: str | None = None  # the endpoint a running connection left for this call's endpoint
    error: str | None = None
    retry_at: float | None = None


async def _tend_recording(recorder: rec.Recorder) -> None:
    """While a stream runs: hand written lines to the OS every flush interval, frames or not (a quiet feed's last
    events reach the disk; a kill -9 loses at most that interval), and retry a failed recording when it is due."""
    while True:
        await asyncio.sleep(recorder.flush_interval)
        try:
            recorder.tick()
        except Exception:  # this task must outlive any surprise, or flushing would stop without a word
            log.exception("recording upkeep failed for %s", recorder.directory)


def _recording_fields(status: rec.RecordingStatus) -> dict[str, object]:
    failure = status.failure
    return {
        "state": status.state.value,
        "enabled": status.state is rec.RecordingState.ON,
        "summary": status.describe(),
        "directory": str(status.directory),
        "bytes_written": status.bytes_written,
        "error": failure.reason if failure else None,
        "failed_at": failure.at if failure else None,
        "retry_at": failure.retry_at if failure else None,
    }


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
        self.record_task: asyncio.Task[None] | None = None  # flushes and retries the recorder while started
        self.connection: Connection | None = None
        self.endpoint = resolve_endpoint(settings.ws_url, market)
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.lock = asyncio.Lock()
        self.connection_options: dict = {}

    # -- recording ---------------------------------------------------------------------------------------------

    def recording_status(self) -> rec.RecordingStatus:
        """The one truth about this market's recording, for the status and replay tools alike."""
        if self.recorder is None:
            return rec.RecordingStatus(rec.RecordingState.OFF_BY_SETTING, self.record_dir)
        return self.recorder.status()

    def start_recording(self) -> None:
        """At every stream start: retry a failed recording now, and tend the recorder while the stream runs."""
        recorder = self.recorder
        if recorder is None:
            return
        recorder.resume()
        if self.record_task is None or self.record_task.done():
            self.record_task = asyncio.create_task(_tend_recording(recorder), name=f"record-{self.market.name}")

    async def stop_recording(self) -> None:
        """Stop tending and close the open segment (flushed, named by its range): a clean stop loses nothing."""
        task, self.record_task = self.record_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # (not `await task`: that would also swallow a cancellation of our own)
        if self.recorder is not None:
            self.recorder.close()

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
        # The one redaction step for text leaving the streams: tools.py masks every answer and error with it, and
        # StreamError messages that carry outside text (agent input, vendor messages, URLs) pass through it too.
        self.redact = Redactor(settings.api_key)
        self.endpoints = EndpointPolicy(settings.ws_url, self.redact)
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

    def refusal(self, text: str) -> StreamError:
        """A StreamError for text that may carry outside words (agent input, vendor messages, URLs), masked."""
        return StreamError(self.redact(text))

    def _channels(self, stream: MarketStream, channels) -> list[str]:
        try:
            return normalize_channels(stream.market, channels)
        except ChannelError as exc:
            raise self.refusal(str(exc)) from None

    def _check_limits(self, stream: MarketStream, topics: list[str]) -> None:
        try:
            check_limits(stream.market, list({**stream.session.topics, **dict.fromkeys(topics)}))
        except ChannelError as exc:
            raise self.refusal(str(exc)) from None

    def _filter(self, stream: MarketStream, channel_filter: str | list[str] | None) -> ChannelFilter:
        try:
            return parse_filter(stream.market, channel_filter)
        except ChannelError as exc:
            raise self.refusal(str(exc)) from None

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
        url = self.endpoints.resolve(endpoint, stream.market)
        async with stream.lock:
            self._check_limits(stream, topics)
            conn = stream.connection
            # No endpoint means the configured feed every time: an earlier call's endpoint never sticks.
            switched_from = stream.endpoint if conn is not None and conn.running and url != stream.endpoint else None
            restart = url != stream.endpoint
            stream.endpoint = url
            if conn is not None and (restart or not conn.running):
                await conn.stop()
                conn = stream.connection = None
                stream.session.connection_lost()
            already = conn is not None and all(
                t in stream.session.topics and stream.session.topics[t].state == "acknowledged" for t in topics
            )
            stream.session.subscribe(topics)
            stream.start_recording()
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
        out = stream.outcome(topics, already=already, switched_from=switched_from)
        if stream.session.auth is AuthState.FAILED or stream.state == ConnectionState.AUTH_FAILED:
            raise self.refusal(self._auth_failed_text(stream))
        if stream.state == ConnectionState.FAILED:
            raise self.refusal(
                f"Cannot use the {market} endpoint {stream.endpoint}: "
                f"{clip(self.redact(conn.last_error or 'no reason given'), 300)}; "
                f"{self.endpoints.choices(stream.market)}."
            )
        if stream.session.auth is not AuthState.OK:
            out.error = conn.last_error
        return out

    def _auth_failed_text(self, stream: MarketStream) -> str:
        msg = stream.session.auth_message or "authentication failed"
        m = stream.market.name
        if stream.session.plan_lacks_websocket:
            return (
                f'The {m} WebSocket refused the API key: "{msg}" - your plan has no WebSocket access for {m}; '
                "upgrade the plan, try the 15-minute delayed feed (endpoint='delayed'), "
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
            shown = clip(self.redact(repr(topics)), 200)
            raise self.refusal(
                f"The {market} stream is not running; call start_{market}_stream(channels={shown}) instead."
            )
        async with stream.lock:
            self._check_limits(stream, topics)
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
            await stream.stop_recording()
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
            with contextlib.suppress(Exception):
                await s.stop_recording()

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
        flt = self._filter(stream, channel_filter)
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
        flt = self._filter(stream, channel_filter)
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
        """Everything an agent (or a benchmark) may want to know about one market's stream. Raw: the texts may
        carry outside words, so anything shown passes `self.redact` (the stream tools do it at their boundary)."""
        return self._status(market)

    def _status(self, market: str) -> dict:
        stream = self.stream(market)
        conn = stream.connection
        session = stream.session
        buf = stream.buffer
        now = time.time()
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
            "recording": _recording_fields(stream.recording_status()),
            "started_at": stream.started_at,
            "stopped_at": stream.stopped_at,
        }
