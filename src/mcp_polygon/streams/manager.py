"""StreamManager: one supervised connection, one buffer and one recorder per market, for the whole process.

Every MCP session of the process shares it: two agents asking for stocks share one socket (the vendor allows
one connection per market per key). The manager is control only: it drives the protocol session through its
methods and hands tools.py frozen, typed snapshots (ChangeOutcome, StreamStatus, SubscriptionList, BufferStatus)
whose states are enums; tools.py renders them. Errors an agent can act on are raised as StreamError with one
actionable sentence.

Redaction: the texts in snapshots and errors are raw (the session and the connection mask what the vendor says
before they keep it); tools.py masks every answer and error once, at its boundary. Here the key is masked only
where a text is cut short (a cut could split the key and leave half of it for no later mask to find), and in the
agent's channel names before they are validated (see `_masked_input`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from mcp_polygon.config import Settings
from mcp_polygon.redaction import Redactor
from mcp_polygon.streams import recorder as rec
from mcp_polygon.streams.buffer import MessageBuffer, ReadResult, StoredFrame
from mcp_polygon.streams.connection import (
    NEVER_STARTED,
    Connection,
    ConnectionOptions,
    ConnectionState,
    ConnectionStatus,
    Pulse,
)
from mcp_polygon.streams.formatting import clip
from mcp_polygon.streams.markets import MARKETS, ChannelError, Market, check_limits, normalize_channels
from mcp_polygon.streams.protocol import AuthState, EventCounts, Frame, ProtocolSession, TopicStatus
from mcp_polygon.streams.query import ChannelFilter, Direction, parse_filter, read_plan

if TYPE_CHECKING:
    from mcp_polygon.streams.shared import SharedStreams

log = logging.getLogger(__name__)

RATE_WINDOW = 10  # seconds

# What the tools pass as `channels`: one comma-separated string or a list of channel strings.
ChannelList = str | list[str] | tuple[str, ...]


class StreamError(Exception):
    """A stream request that cannot be done; the message is one actionable sentence for the agent."""


class StreamStats:
    """Event counters and a recent rate, updated once per frame."""

    __slots__ = ("_buckets", "_cur_n", "_cur_sec", "first_at", "frames", "last_at", "per_channel", "total")

    def __init__(self) -> None:
        self.total = 0
        self.frames = 0
        self.per_channel: Counter[str] = Counter()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._buckets: deque[tuple[int, int]] = deque(maxlen=RATE_WINDOW + 1)
        self._cur_sec = 0
        self._cur_n = 0

    def add(self, counts: EventCounts, n: int, t: float) -> None:
        self.total += n
        self.frames += 1
        per = self.per_channel
        for k, v in counts.items():  # a handful of keys; bytes on the protocol's fast path
            per[k.decode("utf-8", "replace") if isinstance(k, bytes) else k] += v
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


@dataclass(frozen=True, slots=True)
class ControlWaits:
    """How long a control tool waits for the server before it answers with what is known (seconds)."""

    auth: float = 10.0  # start: for the answer to the auth message
    ack: float = 3.0  # start, subscribe: for the subscribe acknowledgements
    unsubscribe_ack: float = 2.0  # unsubscribe: for its acknowledgements


@dataclass(frozen=True, slots=True)
class Rejection:
    topic: str
    reason: str  # the server's words


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    """What a start/subscribe/unsubscribe call achieved, for the tool to report."""

    market: str
    state: ConnectionState
    auth: AuthState
    endpoint: str
    requested: tuple[str, ...]
    acknowledged: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    unknown: tuple[str, ...] = ()  # unsubscribe of topics that were not subscribed
    already: bool = False  # nothing new: everything was subscribed before
    switched_from: str | None = None  # the endpoint a running connection left for this call's endpoint
    error: str | None = None  # why the stream is not authenticated yet, when it is not
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionStatus:
    acknowledged: tuple[str, ...]
    pending: tuple[str, ...]
    rejected: tuple[Rejection, ...]
    unsubscribing: tuple[str, ...]  # unsubscribe sent, not yet acknowledged


@dataclass(frozen=True, slots=True)
class ChannelGroup:
    """The subscriptions of one channel prefix (`T`, `Q`...), in the order added."""

    prefix: str
    acknowledged: tuple[str, ...]
    pending: tuple[str, ...]
    rejected: tuple[Rejection, ...]


@dataclass(frozen=True, slots=True)
class SubscriptionList:
    state: ConnectionState
    total: int
    groups: tuple[ChannelGroup, ...]


@dataclass(frozen=True, slots=True)
class BufferStatus:
    size: int  # events held
    capacity: int
    oldest_seq: int | None  # None while nothing was received
    newest_seq: int  # 0 until the first event; the since_seq that returns only what comes next
    overwritten: int  # events pushed out of the ring since the process started


@dataclass(frozen=True, slots=True)
class EventStatus:
    total: int
    frames: int
    per_channel: tuple[tuple[str, int], ...]  # (event type, events), in the order first seen
    rate_per_s: float  # over the last RATE_WINDOW seconds
    last_at: float | None


@dataclass(frozen=True, slots=True)
class InputStatus:
    """What the server said and what of its input was unusable."""

    last_status: str | None
    status_counts: tuple[tuple[str, int], ...]  # (status kind, times seen)
    malformed_frames: int
    malformed_events: int
    last_malformed: str | None


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Everything an agent (or a benchmark) may want to know about one market's stream, taken at `at`."""

    market: str
    at: float  # Unix s: when the snapshot was taken (the "now" of every "ago" in the answer)
    state: ConnectionState
    simulated: bool
    endpoint: str
    auth: AuthState
    auth_message: str | None
    subscriptions: SubscriptionStatus
    events: EventStatus
    buffer: BufferStatus
    connection: ConnectionStatus
    input: InputStatus
    last_error: str | None  # the newest of the session's and the connection's
    last_error_at: float | None
    recording: rec.RecordingStatus
    started_at: float | None
    stopped_at: float | None


async def _tend_recording(recorder: rec.Recorder) -> None:
    """While a stream runs: hand written lines to the OS every flush interval, frames or not (a quiet feed's last
    events reach the disk; a kill -9 loses at most that interval), and retry a failed recording when it is due."""
    while True:
        await asyncio.sleep(recorder.flush_interval)
        try:
            recorder.tick()
        except Exception:  # this task must outlive any surprise, or flushing would stop without a word
            log.exception("recording upkeep failed for %s", recorder.directory)


class MarketStream:
    """One market: its buffer, recorder, protocol session and (while started) its connection."""

    def __init__(self, market: Market, settings: Settings, redact: Redactor | None = None) -> None:
        self.market = market
        self.settings = settings
        self.buffer = MessageBuffer(settings.buffer_size)
        self.session = ProtocolSession(settings.api_key, redact)
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
        """Append a frame's data events: buffer, recorder, counters. Called once per frame."""
        raw, counts = frame.raw, frame.counts
        if raw is None or counts is None:  # no data events (the connection hands on only frames with some)
            return
        t = recv_ns / 1e9
        recorder = self.recorder
        # The buffer keeps the recorder's exact stamp: SQL counts a buffered frame only when it is not on disk yet.
        stamp = recv_ns if recorder is None else recorder.write(raw, frame.count, recv_ns)
        self.buffer.append(raw, frame.count, t, stamp, frame.flat)
        self.stats.add(counts, frame.count, t)

    def feed(self, data: bytes | str, recv_ns: int | None = None) -> Frame:
        """Classify and ingest one wire frame without a socket (benchmarks, tests)."""
        now_ns = time.time_ns() if recv_ns is None else recv_ns
        frame = self.session.receive(data, now_ns)
        self.ingest(frame, now_ns)
        return frame

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self.connection.state if self.connection is not None else ConnectionState.IDLE

    @property
    def active(self) -> bool:
        """Started and not given up (it may be reconnecting or cooling down)."""
        return self.connection is not None and self.connection.running

    def topic_names(self) -> tuple[str, ...]:
        """The subscriptions, in the order added."""
        return tuple(self.session.topics)

    def buffer_status(self) -> BufferStatus:
        buf = self.buffer
        return BufferStatus(len(buf), buf.capacity, buf.oldest if buf.head else None, buf.head, buf.overwritten)

    def outcome(
        self,
        requested: list[str],
        *,
        already: bool = False,
        switched_from: str | None = None,
        error: str | None = None,
    ) -> ChangeOutcome:
        """Where each requested topic stands after a start or a subscribe."""
        topics = self.session.topics
        states = {t: topics[t].status for t in requested if t in topics}
        reasons = self.session.rejections()
        return ChangeOutcome(
            self.market.name,
            self.state,
            self.session.auth,
            self.endpoint,
            tuple(requested),
            acknowledged=tuple(t for t, status in states.items() if status is TopicStatus.ACKNOWLEDGED),
            pending=tuple(t for t, status in states.items() if status is TopicStatus.PENDING),
            rejected=tuple(Rejection(t, reasons[t]) for t, status in states.items() if status is TopicStatus.REJECTED),
            already=already,
            switched_from=switched_from,
            error=error,
            retry_at=self.connection.retry_at if self.connection else None,
        )

    def unsubscribe_outcome(self, known: list[str], unknown: list[str]) -> ChangeOutcome:
        """Which of the `known` topics the server confirmed as unsubscribed; `unknown` were never subscribed."""
        waiting = self.session.unsubscribing
        return ChangeOutcome(
            self.market.name,
            self.state,
            self.session.auth,
            self.endpoint,
            tuple(known),
            acknowledged=tuple(t for t in known if t not in waiting),
            pending=tuple(t for t in known if t in waiting),
            unknown=tuple(unknown),
            retry_at=self.connection.retry_at if self.connection else None,
        )

    def subscription_list(self) -> SubscriptionList:
        """The subscriptions grouped by channel prefix, groups in the order their first topic was added."""
        groups: dict[str, dict[TopicStatus, list[str]]] = {}
        for topic, st in self.session.topics.items():
            prefix = topic.partition(".")[0]
            groups.setdefault(prefix, {status: [] for status in TopicStatus})[st.status].append(topic)
        reasons = self.session.rejections()
        return SubscriptionList(
            self.state,
            len(self.session.topics),
            tuple(
                ChannelGroup(
                    prefix,
                    tuple(g[TopicStatus.ACKNOWLEDGED]),
                    tuple(g[TopicStatus.PENDING]),
                    tuple(Rejection(t, reasons[t]) for t in g[TopicStatus.REJECTED]),
                )
                for prefix, g in groups.items()
            ),
        )

    def status(self, now: float) -> StreamStatus:
        """The snapshot the status tool renders; `now` is the time it is taken at (for the event rate)."""
        session = self.session
        conn = self.connection.status() if self.connection is not None else NEVER_STARTED
        errors = [(session.last_error_at, session.last_error), (conn.last_error_at, conn.last_error)]
        last_error_at, last_error = max((e for e in errors if e[1]), default=(None, None), key=lambda e: e[0] or 0.0)
        stats = self.stats
        return StreamStatus(
            market=self.market.name,
            at=now,
            state=self.state,
            simulated=self.settings.simulated,
            endpoint=self.endpoint,
            auth=session.auth,
            auth_message=session.auth_message,
            subscriptions=SubscriptionStatus(
                tuple(session.by_status(TopicStatus.ACKNOWLEDGED)),
                tuple(session.by_status(TopicStatus.PENDING)),
                tuple(Rejection(t, r) for t, r in session.rejections().items()),
                tuple(session.unsubscribing),
            ),
            events=EventStatus(
                stats.total, stats.frames, tuple(stats.per_channel.items()), stats.rate(now), stats.last_at
            ),
            buffer=self.buffer_status(),
            connection=conn,
            input=InputStatus(
                session.last_status.describe() if session.last_status else None,
                tuple(session.status_counts.items()),
                session.malformed_frames,
                session.malformed_events,
                session.last_malformed,
            ),
            last_error=last_error,
            last_error_at=last_error_at,
            recording=self.recording_status(),
            started_at=self.started_at,
            stopped_at=self.stopped_at,
        )


# Connection states in which start stops waiting for an auth answer: none is coming on this attempt.
_AUTH_WILL_NOT_COME = frozenset(
    {
        ConnectionState.AUTH_FAILED,
        ConnectionState.FAILED,
        ConnectionState.STOPPED,
        ConnectionState.COOLDOWN,
        ConnectionState.RECONNECTING,
    }
)


class StreamManager:
    """One connection per market per process, shared by every MCP session."""

    def __init__(
        self,
        settings: Settings,
        *,
        connection: ConnectionOptions | None = None,
        waits: ControlWaits | None = None,
    ) -> None:
        self.settings = settings
        self._streams: dict[str, MarketStream] = {}
        self._closed = False
        # The one Redactor of the streams: tools.py masks every answer and error with it at its boundary, and the
        # protocol sessions mask what the vendor says with it before they keep or log it.
        self.redact = Redactor(settings.api_key)
        self.endpoints = EndpointPolicy(settings.ws_url, self.redact)
        # The product's values unless a test or a benchmark passes shorter ones.
        self.connection_options = connection if connection is not None else ConnectionOptions()
        self.waits = waits if waits is not None else ControlWaits()
        # Told every segment a recorder closes (the app sets it to its Parquet compaction queue); None: none.
        self.on_segment_closed: rec.SegmentSink | None = None
        # POLYGON_REDIS_URL: one upstream socket per market for every process (streams/shared.py); the stream tools
        # hand control to it. Unset (the embedded default): nothing of it, not even the redis import, is loaded.
        self.shared: SharedStreams | None = None
        if settings.redis_url:
            from mcp_polygon.streams.shared import SharedStreams

            self.shared = SharedStreams(self)

    # -- access ------------------------------------------------------------------------------------------------

    @property
    def markets(self) -> tuple[str, ...]:
        return self.settings.stream_markets

    def stream(self, market: str) -> MarketStream:
        s = self._streams.get(market)
        if s is None:
            if market not in MARKETS:
                raise StreamError(f"unknown market '{market}'; valid: {', '.join(MARKETS)}.")
            s = self._streams[market] = MarketStream(MARKETS[market], self.settings, self.redact)
            if s.recorder is not None:
                s.recorder.on_closed = self.on_segment_closed
        return s

    def buffered_frames(self, market: str) -> list[StoredFrame]:
        """The market's buffered frames with their exact stamps, oldest first ([] before its stream exists): what
        the SQL views take as the part not on disk yet. On the loop thread: the buffer is not thread-safe."""
        s = self._streams.get(market)
        return [] if s is None else s.buffer.stamped_frames()

    def _masked_input(self, channels: ChannelList) -> str | list[str]:
        """The agent's channel names with the key masked, before they are validated: a refusal quotes a bad name cut
        short (a cut could leave half the key for no later mask to find), and a channel is upper-cased (which no
        mask would find at all). No channel has the key in it, so a masked one is refused, which is right too."""
        redact = self.redact
        if not redact.active:
            return channels if isinstance(channels, str) else list(channels)
        return redact(channels) if isinstance(channels, str) else [redact(str(c)) for c in channels]

    def _channels(self, stream: MarketStream, channels: ChannelList) -> list[str]:
        try:
            return normalize_channels(stream.market, self._masked_input(channels))
        except ChannelError as exc:
            raise StreamError(str(exc)) from None

    def _check_limits(self, stream: MarketStream, topics: list[str]) -> None:
        try:
            check_limits(stream.market, list(dict.fromkeys([*stream.session.topics, *topics])))
        except ChannelError as exc:
            raise StreamError(str(exc)) from None

    def _filter(self, stream: MarketStream, channel_filter: str | list[str] | None) -> ChannelFilter:
        try:
            return parse_filter(stream.market, None if channel_filter is None else self._masked_input(channel_filter))
        except ChannelError as exc:
            raise StreamError(str(exc)) from None

    def _require_key(self) -> None:
        if not self.settings.api_key:
            raise StreamError(
                "No API key is configured: set POLYGON_API_KEY (or MASSIVE_API_KEY) in the MCP server's "
                "environment, or run the server with --simulate for synthetic data."
            )

    # -- control -----------------------------------------------------------------------------------------------

    async def start(self, market: str, channels: ChannelList, endpoint: str | None = None) -> ChangeOutcome:
        """Connect if needed, authenticate, subscribe; returns once auth and acks are known (or time is up)."""
        if self._closed:
            raise StreamError("the server is shutting down.")
        stream = self.stream(market)
        topics = self._channels(stream, channels)
        self._require_key()
        url = self.endpoints.resolve(endpoint, stream.market)
        session = stream.session
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
                session.connection_lost()
            already = conn is not None and session.all_acknowledged(topics)
            session.subscribe(topics)
            stream.start_recording()
            if conn is None:
                session.reset_auth_failure()  # the agent asked to start: the key is tried again, once
                conn = stream.connection = Connection(
                    stream.endpoint, session, stream.ingest, stream.pulse, self.connection_options, label=market
                )
                stream.started_at = time.time()
                conn.start()
            else:
                await conn.flush()
        await self._wait_settled(stream, topics)
        if session.auth is AuthState.FAILED or stream.state is ConnectionState.AUTH_FAILED:
            raise StreamError(self._auth_failed_text(stream))
        if stream.state is ConnectionState.FAILED:
            raise StreamError(
                f"Cannot use the {market} endpoint {stream.endpoint}: "
                f"{clip(conn.last_error or 'no reason given', 300)}; "  # masked by the connection already
                f"{self.endpoints.choices(stream.market)}."
            )
        error = conn.last_error if session.auth is not AuthState.OK else None
        return stream.outcome(topics, already=already, switched_from=switched_from, error=error)

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
            if session.auth in (AuthState.OK, AuthState.FAILED):
                return True
            return stream.state in _AUTH_WILL_NOT_COME

        await pulse.wait_for(auth_known, self.waits.auth)
        if session.auth is AuthState.OK:

            def acked() -> bool:
                return session.auth is not AuthState.OK or session.settled(topics)

            await pulse.wait_for(acked, self.waits.ack)

    async def subscribe(self, market: str, channels: ChannelList) -> ChangeOutcome:
        stream = self.stream(market)
        topics = self._channels(stream, channels)
        session = stream.session
        async with stream.lock:  # (a start under way finishes first: then the stream may be running)
            conn = stream.connection
            if conn is None or not conn.running:
                shown = clip(repr(topics), 200)  # (the topics were masked on the way in: the cut cannot split the key)
                raise StreamError(
                    f"The {market} stream is not running; call start_{market}_stream(channels={shown}) instead."
                )
            self._check_limits(stream, topics)
            already = session.all_acknowledged(topics)
            session.subscribe(topics)
            await conn.flush()
        if session.auth is AuthState.OK:
            await stream.pulse.wait_for(
                lambda: session.auth is not AuthState.OK or session.settled(topics), self.waits.ack
            )
        return stream.outcome(topics, already=already)

    async def unsubscribe(self, market: str, channels: ChannelList) -> ChangeOutcome:
        stream = self.stream(market)
        topics = self._channels(stream, channels)
        session = stream.session
        async with stream.lock:
            known = [t for t in topics if t in session.topics]
            unknown = [t for t in topics if t not in session.topics]
            session.unsubscribe(known)
            if stream.connection is not None:
                await stream.connection.flush()
        if known and session.auth is AuthState.OK:
            await stream.pulse.wait_for(
                lambda: not any(t in session.unsubscribing for t in known), self.waits.unsubscribe_ack
            )
        return stream.unsubscribe_outcome(known, unknown)

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
            stream.session.reset_auth_failure()
            await stream.stop_recording()
            stream.stopped_at = time.time()
            return was

    async def aclose(self) -> None:
        """Stop every stream and close recordings. Safe from any task and more than once."""
        self._closed = True
        if self.shared is not None:
            await self.shared.aclose()  # withdraws this process's wants, hands the sockets it owns to others
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
        since_ns: int | None = None,
    ) -> ReadResult:
        """Buffered events: the newest `limit`, or with since_seq / since_ns (receive time) the oldest after it."""
        stream = self.stream(market)
        plan = read_plan(
            stream.market, self._filter(stream, channel_filter), limit=limit, since_seq=since_seq, from_ns=since_ns
        )
        return stream.buffer.read(plan)

    async def replay(
        self,
        market: str,
        from_ns: int,
        to_ns: int,
        *,
        channel_filter: str | list[str] | None = None,
        limit: int = 1000,
    ) -> rec.ReplayResult:
        """Recorded events received from_ns <= time <= to_ns, oldest first, read in a worker thread."""
        stream = self.stream(market)
        plan = read_plan(
            stream.market, self._filter(stream, channel_filter), limit=limit, from_ns=from_ns, to_ns=to_ns,
            direction=Direction.FORWARD,
        )  # fmt: skip
        if stream.recorder is not None:
            stream.recorder.flush()
        return await asyncio.to_thread(rec.replay, stream.record_dir, plan)

    # -- status ------------------------------------------------------------------------------------------------

    def subscriptions(self, market: str) -> SubscriptionList:
        """The market's subscriptions grouped by channel prefix."""
        return self.stream(market).subscription_list()

    def status(self, market: str) -> StreamStatus:
        """A snapshot of one market's stream. Raw: its texts may carry outside words, so anything shown passes
        `self.redact` (the stream tools do it at their boundary)."""
        return self.stream(market).status(time.time())
