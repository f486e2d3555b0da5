"""The I/O around protocol.py: one asyncio supervisor task per market that owns the socket.

connect -> auth -> subscribe -> read frames forever; after any drop, reconnect at once, and if that fails too, with
jittered exponential backoff (0.125-0.25 s, doubling, capped at 30 s, reset after a healthy period); then subscribe
again to every active topic. `auth_failed` stops the loop (retrying a bad key only gets the key blocked);
`max_connections` (another connection on the same key took the slot) waits a long cooldown instead of fighting for
the slot. An endpoint that no retry can cure (not a ws/wss URL, a host name that cannot exist or does not resolve
before any connection succeeded) ends the loop at once in FAILED, with one sentence and no traceback.
Keep-alive pings detect a dead peer; a drop without a close frame is just another reconnect.

Everything this module writes (log lines, last_error, last_disconnect) passes through the session's Redactor: the
vendor's status and close messages may echo what it was sent, the key included.

The read loop does the minimum per frame: receive bytes, read the clock once, `session.receive(data, now_ns)` (for a
frame of data events only: two regex scans and a Counter, no JSON decoding), hand the frame to the sink. This is
the only place that reads the clock for the session. Tools never touch the socket; they only send
subscribe/unsubscribe messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from mcp_polygon.streams.markets import shown
from mcp_polygon.streams.protocol import AuthState, Frame, ProtocolSession, Status

log = logging.getLogger(__name__)
# The websockets library logs every frame at DEBUG, the auth message (with the API key) included. Its client
# logger for our sockets is pinned at INFO, so no log level set from outside can make it print a frame.
wire_log = logging.getLogger("mcp_polygon.streams.wire")
wire_log.setLevel(logging.INFO)

Sink = Callable[[Frame, int], None]


class Pulse:
    """Wake every waiter when something changed (auth, acks, state). Waiters re-check their condition."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            event = self._event
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 0.25))
        return True


class ConnectionState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"  # waiting out a backoff delay
    COOLDOWN = "cooldown"  # max_connections: another connection holds the slot
    AUTH_FAILED = "auth_failed"
    FAILED = "failed"  # unusable endpoint; not retried
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How a connection waits, times out and keeps alive (seconds). The defaults are the product's values; tests
    and benchmarks pass shorter ones explicitly."""

    backoff_first: float = 0.25  # the ceiling of the second reconnect's jittered wait (the first goes at once)
    backoff_max: float = 30.0
    healthy_after: float = 30.0  # a socket that streamed this long resets the backoff
    cooldown: float = 60.0  # after max_connections, doubling per repeat up to cooldown_max
    cooldown_max: float = 600.0
    auth_timeout: float = 10.0
    open_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    compression: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """A snapshot of one connection's life, for the status tool. Texts are masked already; times are Unix s."""

    state: ConnectionState = ConnectionState.IDLE
    connects: int = 0  # sockets opened
    reconnects: int = 0  # reconnect attempts after a drop
    connected_since: float | None = None
    retry_at: float | None = None  # the next attempt, while waiting out a backoff or a cooldown
    last_disconnect: str | None = None
    last_disconnect_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


NEVER_STARTED = ConnectionStatus()


# getaddrinfo answers that say the name does not exist (as opposed to EAI_AGAIN, "try again later").
_NO_SUCH_HOST = frozenset(
    code for code in (getattr(socket, name, None) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_SERVICE")) if code
)
MAX_HOST_LENGTH = 253  # RFC 1035: a name of at most 253 characters, in labels of at most 63
MAX_LABEL_LENGTH = 63


class EndpointError(Exception):
    """The endpoint can never be connected to; the message is a clause that says why."""


def endpoint_problem(url: str) -> str | None:
    """Why `url` can never be connected to, as a clause; None when it may work. No I/O."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        return f"the endpoint URL cannot be parsed ({shown(str(exc))})"
    if parts.scheme.lower() not in ("ws", "wss"):
        scheme = shown(parts.scheme) if parts.scheme else "missing"
        return f"its scheme is {scheme}, not ws or wss"
    host = parts.hostname
    if not host:
        return "it has no host name"
    return host_problem(host)


def host_problem(host: str) -> str | None:
    """Why `host` cannot be a host name or an IP address, as a clause; None when it can."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return None
    if len(host) > MAX_HOST_LENGTH:
        return f"its host name is {len(host):,} characters long (at most {MAX_HOST_LENGTH})"
    for label in host.rstrip(".").split("."):
        if not label:
            return f"its host name {shown(host)} has an empty label (two dots in a row)"
        if len(label) > MAX_LABEL_LENGTH:
            return f"its host name has a label of {len(label):,} characters (at most {MAX_LABEL_LENGTH})"
        odd = next((ch for ch in label if not (ch.isalnum() or ch in "-_")), None)
        if odd is not None:
            return f"its host name {shown(host)} contains {shown(odd)}, which no host name has"
    try:
        host.encode("idna")
    except UnicodeError:
        return f"its host name {shown(host)} is not a valid internationalised name"
    return None


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class Connection:
    """Supervises one market's WebSocket: (re)connects, authenticates, resubscribes, reads."""

    def __init__(
        self,
        url: str,
        session: ProtocolSession,
        sink: Sink,
        pulse: Pulse,
        options: ConnectionOptions | None = None,
        *,
        label: str = "",
    ) -> None:
        self.url = url
        self.session = session
        self._sink = sink
        self.pulse = pulse
        self.options = options if options is not None else ConnectionOptions()
        self._redact = session.redact
        self.label = label or shown(self._redact(url))  # masked before it is cut
        self.state = ConnectionState.IDLE
        self.connects = 0  # sockets opened
        self.reconnects = 0  # reconnect attempts after a drop
        self.connected_since: float | None = None  # wall time of the current socket
        self.last_disconnect: str | None = None
        self.last_disconnect_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.retry_at: float | None = None  # wall time of the next attempt while waiting
        self.retry_delays: deque[float] = deque(maxlen=16)  # the recent waits before a new attempt (s), newest last
        self.attempts = 0  # failed attempts since the last healthy connection: the backoff's exponent
        self._cooldowns = 0
        self._last_unexpected: str | None = None  # the unexpected error last logged with its traceback
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"stream:{self.label}")

    async def stop(self, grace: float = 5.0) -> None:
        """Close the socket and end the supervisor. Safe from any task, and more than once.

        A caller cancelled while it waits here is cancelled still (the CancelledError propagates): the supervisor
        has been told to end either way, and the state says STOPPED.
        """
        self._stopping = True
        self._wake.set()
        task = self._task
        try:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=grace)  # raises only when the caller itself is cancelled
        finally:
            self.state = ConnectionState.STOPPED
            self.retry_at = None
            self.connected_since = None
            self.pulse.notify()

    def status(self) -> ConnectionStatus:
        return ConnectionStatus(
            self.state,
            self.connects,
            self.reconnects,
            self.connected_since,
            self.retry_at,
            self.last_disconnect,
            self.last_disconnect_at,
            self.last_error,
            self.last_error_at,
        )

    async def flush(self) -> None:
        """Send what the session queued (subscribe/unsubscribe) if a socket is up; else it is resent on connect."""
        ws = self._ws
        messages = self.session.data_to_send()
        if ws is None:
            return
        for message in messages:
            try:
                await ws.send(message)
            except ConnectionClosed:
                return  # the reconnect resubscribes everything

    # -- the supervisor ----------------------------------------------------------------------------------------

    def _backoff(self) -> float:
        """The wait before the next attempt: none for the first after a healthy period (a drop is usually a blip,
        and the vendor's own client reconnects at once), then jittered doubling from backoff_first."""
        if self.attempts == 0:
            return 0.0
        options = self.options
        ceiling = min(options.backoff_max, options.backoff_first * (2 ** min(self.attempts - 1, 16)))
        return random.uniform(ceiling / 2, ceiling)

    async def _supervise(self) -> None:
        try:
            problem = endpoint_problem(self._redact(self.url))  # the key in a query string changes nothing here
            if problem is not None:
                self._fail(problem)
                return
            while not self._stopping:
                healthy = await self._connect_once()
                if self._stopping:
                    break
                term = self.session.terminal
                if term is not None and term.kind is Status.AUTH_FAILED:
                    self.state = ConnectionState.AUTH_FAILED
                    self.pulse.notify()
                    return
                if self.state is ConnectionState.FAILED:
                    self.pulse.notify()
                    return
                if healthy:
                    self.attempts = 0
                    self._cooldowns = 0
                if term is not None and term.kind is Status.MAX_CONNECTIONS:
                    delay = min(self.options.cooldown_max, self.options.cooldown * (2**self._cooldowns))
                    self._cooldowns += 1
                    self.state = ConnectionState.COOLDOWN
                else:
                    delay = self._backoff()
                    self.attempts += 1
                    self.state = ConnectionState.RECONNECTING
                self.retry_delays.append(delay)
                self.retry_at = time.time() + delay
                self.pulse.notify()
                self._wake.clear()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                else:
                    await asyncio.sleep(0)  # still a point where stop() can end the loop
                self.retry_at = None
                self.reconnects += 1
        finally:
            if self._stopping:
                self.state = ConnectionState.STOPPED
            self.pulse.notify()

    def _fail(self, problem: str) -> None:
        """The endpoint can never work: FAILED at once, one log line, no retry (the caller returns)."""
        self.state = ConnectionState.FAILED
        reason = self._redact(problem)
        now = time.time()
        self.last_disconnect, self.last_disconnect_at = reason, now
        self.last_error, self.last_error_at = reason, now
        log.warning("stream %s: endpoint unusable, not retrying: %s", self.label, reason)

    async def _connect_once(self) -> bool:
        """One socket's life. Returns True when it streamed long enough to count as healthy."""
        self.state = ConnectionState.CONNECTING
        self.pulse.notify()
        opened: float | None = None
        reason: str | None = None
        options = self.options
        try:
            async with connect(
                self.url,
                open_timeout=options.open_timeout,
                ping_interval=options.ping_interval,
                ping_timeout=options.ping_timeout,
                close_timeout=2,
                max_size=64 << 20,
                max_queue=64,
                compression=options.compression,
                proxy=None if _is_loopback(self.url) else True,
                user_agent_header="mcp-polygon",
                logger=wire_log,
            ) as ws:
                opened = time.monotonic()
                self._ws = ws
                self.connects += 1
                self.connected_since = time.time()
                reason = await self._run_session(ws)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            try:
                reason = self._describe_error(exc, opened is not None)
            except EndpointError as bad:
                reason = str(bad)
                self.state = ConnectionState.FAILED
        finally:
            self._ws = None
            self.connected_since = None
            warning = self.session.warning
            if warning is not None and reason and warning.describe() not in reason:
                reason = f"{reason} after {warning.describe()}"
            self.session.connection_lost()
        reason = self._redact(reason) if reason else reason
        self.last_disconnect = reason
        self.last_disconnect_at = time.time()
        if reason and not self._stopping:
            self.last_error, self.last_error_at = reason, time.time()
            if self.state is ConnectionState.FAILED:
                log.warning("stream %s: endpoint unusable, not retrying: %s", self.label, reason)
            else:
                log.info("stream %s: disconnected: %s", self.label, reason)
        return opened is not None and time.monotonic() - opened >= options.healthy_after

    def _describe_error(self, exc: Exception, opened: bool) -> str:
        """One clause for why a socket ended. Raises EndpointError (with the clause) when retrying cannot help:
        the URL or host name is unusable, or, before this endpoint ever answered, the host does not resolve or
        has no WebSocket at the path. After one success the same errors are a network blip and are retried."""
        never_connected = not opened and self.connects == 0
        if isinstance(exc, ConnectionClosed):
            return _describe_close(exc)
        if isinstance(exc, InvalidURI):
            raise EndpointError("it is not a valid ws:// or wss:// URL")
        if isinstance(exc, InvalidStatus):
            code = exc.response.status_code
            if code == 404 and never_connected:
                raise EndpointError("the server has no WebSocket at its path (HTTP 404)")
            return f"the server refused the WebSocket upgrade (HTTP {code})"
        if isinstance(exc, InvalidHandshake):
            return f"WebSocket handshake failed: {shown(self._redact(str(exc)), 160)}"
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.options.open_timeout:g} s"
        if isinstance(exc, socket.gaierror):
            host = shown(urlsplit(self._redact(self.url)).hostname or "", 80)
            if exc.errno in _NO_SUCH_HOST and never_connected:
                raise EndpointError(f"its host {host} does not resolve ({exc.strerror or 'unknown host'})")
            return f"cannot resolve {host}: {exc.strerror or exc}"
        if isinstance(exc, OSError):
            return f"cannot connect: {exc.strerror or exc}"
        if isinstance(exc, ValueError) and not opened:
            # Raised while opening: the idna codec on a bad host name ("label too long"), a port out of range.
            raise EndpointError(f"it cannot be used ({shown(self._redact(str(exc)), 120)})")
        return self._unexpected(exc)

    def _unexpected(self, exc: Exception) -> str:
        """Never let the supervisor die silently; a traceback once, not once per retry."""
        kind = type(exc).__name__
        if kind != self._last_unexpected:
            self._last_unexpected = kind
            log.error("stream %s: unexpected error", self.label, exc_info=exc)
        return f"unexpected error: {kind}"

    async def _run_session(self, ws: ClientConnection) -> str:
        session = self.session
        sink = self._sink
        session.connection_opened()
        self.state = ConnectionState.AUTHENTICATING
        self.pulse.notify()
        for message in session.data_to_send():
            await ws.send(message)
        recv = ws.recv
        receive = session.receive
        time_ns = time.time_ns
        loop = asyncio.get_running_loop()
        auth_timeout = self.options.auth_timeout
        deadline = loop.time() + auth_timeout
        while session.auth is AuthState.PENDING:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return f"no authentication answer within {auth_timeout:g} s"
            try:
                data = await asyncio.wait_for(recv(decode=False), remaining)
            except TimeoutError:
                return f"no authentication answer within {auth_timeout:g} s"
            now = time_ns()
            reason = await self._after_frame(ws, receive(data, now), now)
            if reason:
                return reason
        if session.auth is not AuthState.OK:
            return "not authenticated"
        self.state = ConnectionState.STREAMING
        self.pulse.notify()
        while True:
            data = await recv(decode=False)
            now = time_ns()
            frame = receive(data, now)
            if frame.raw is not None:
                sink(frame, now)
                if not frame.statuses:
                    continue
            if frame.statuses:
                reason = await self._after_frame(ws, frame, None)
                if reason:
                    return reason
            elif frame.malformed:
                self.pulse.notify()

    async def _after_frame(self, ws: ClientConnection, frame: Frame, recv_ns: int | None) -> str | None:
        """Slow path: a frame with status events (or any frame during auth)."""
        if recv_ns is not None and frame.raw is not None:
            self._sink(frame, recv_ns)
        session = self.session
        for st in frame.statuses:  # the session masked the key in them already
            if st.kind in (Status.SUCCESS, Status.CONNECTED):
                log.debug("stream %s: %s", self.label, st.describe())
            else:
                log.info("stream %s: %s", self.label, st.describe())
        for message in session.data_to_send():
            await ws.send(message)
        self.pulse.notify()
        term = session.terminal
        if term is not None:
            text = self._redact(term.describe())
            self.last_error, self.last_error_at = text, time.time()
            return text
        return None


def _describe_close(exc: ConnectionClosed) -> str:
    rcvd = exc.rcvd
    sent = exc.sent
    if rcvd is None and sent is not None and sent.code == 1011 and "keepalive" in (sent.reason or ""):
        return "the server stopped answering keep-alive pings (dead connection)"
    if rcvd is None:
        return "connection dropped without a close frame"
    text = f"server closed the connection (code {rcvd.code}"
    return text + (f": {rcvd.reason})" if rcvd.reason else ")")
