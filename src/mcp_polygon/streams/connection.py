"""The I/O around protocol.py: one asyncio supervisor task per market that owns the socket.

connect -> auth -> subscribe -> read frames forever; after any drop, reconnect with jittered exponential backoff
(first retry after 0.125-0.25 s, capped at 30 s, reset after a healthy period) and subscribe again to every
active topic. `auth_failed` stops the loop (retrying a bad key only gets the key blocked); `max_connections`
(another connection on the same key took the slot) waits a long cooldown instead of fighting for the slot.
Keep-alive pings detect a dead peer; a drop without a close frame is just another reconnect.

The read loop does the minimum per frame: receive bytes, `session.receive()` (one orjson.loads + one Counter),
hand the frame to the sink. Tools never touch the socket; they only send subscribe/unsubscribe messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

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


class ConnectionState:
    IDLE = "idle"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"  # waiting out a backoff delay
    COOLDOWN = "cooldown"  # max_connections: another connection holds the slot
    AUTH_FAILED = "auth_failed"
    FAILED = "failed"  # unusable endpoint; not retried
    STOPPED = "stopped"


@contextlib.contextmanager
def _quiet_cancel():
    try:
        yield
    except asyncio.CancelledError:
        pass


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
        *,
        label: str = "",
        backoff_first: float = 0.25,
        backoff_max: float = 30.0,
        healthy_after: float = 30.0,
        cooldown: float = 60.0,
        cooldown_max: float = 600.0,
        auth_timeout: float = 10.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        compression: str | None = None,
    ) -> None:
        self.url = url
        self.session = session
        self._sink = sink
        self.pulse = pulse
        self.label = label or url
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.cooldown = cooldown
        self.cooldown_max = cooldown_max
        self.auth_timeout = auth_timeout
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.compression = compression
        self.state = ConnectionState.IDLE
        self.connects = 0  # sockets opened
        self.reconnects = 0  # reconnect attempts after a drop
        self.connected_since: float | None = None  # wall time of the current socket
        self.last_disconnect: str | None = None
        self.last_disconnect_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.retry_at: float | None = None  # wall time of the next attempt while waiting
        self.attempts = 0
        self._cooldowns = 0
        self._ws = None
        self._task: asyncio.Task | None = None
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
        """Close the socket and end the supervisor. Safe from any task, and more than once."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with _quiet_cancel():
                await asyncio.wait({task}, timeout=grace)
        self.state = ConnectionState.STOPPED
        self.retry_at = None
        self.connected_since = None
        self.pulse.notify()

    def retry_now(self) -> None:
        """Skip the current backoff or cooldown wait (used when a tool asks to start again)."""
        self._wake.set()

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
        ceiling = min(self.backoff_max, self.backoff_first * (2 ** min(self.attempts, 16)))
        return random.uniform(ceiling / 2, ceiling)

    async def _supervise(self) -> None:
        try:
            while not self._stopping:
                healthy = await self._connect_once()
                if self._stopping:
                    break
                term = self.session.terminal
                if term is not None and term.kind is Status.AUTH_FAILED:
                    self.state = ConnectionState.AUTH_FAILED
                    self.pulse.notify()
                    return
                if self.state == ConnectionState.FAILED:
                    self.pulse.notify()
                    return
                if healthy:
                    self.attempts = 0
                    self._cooldowns = 0
                if term is not None and term.kind is Status.MAX_CONNECTIONS:
                    delay = min(self.cooldown_max, self.cooldown * (2**self._cooldowns))
                    self._cooldowns += 1
                    self.state = ConnectionState.COOLDOWN
                else:
                    delay = self._backoff()
                    self.attempts += 1
                    self.state = ConnectionState.RECONNECTING
                self.retry_at = time.time() + delay
                self.pulse.notify()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self.retry_at = None
                self.reconnects += 1
        finally:
            if self._stopping:
                self.state = ConnectionState.STOPPED
            self.pulse.notify()

    async def _connect_once(self) -> bool:
        """One socket's life. Returns True when it streamed long enough to count as healthy."""
        self.state = ConnectionState.CONNECTING
        self.pulse.notify()
        opened = None
        reason = None
        try:
            async with connect(
                self.url,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=2,
                max_size=64 << 20,
                max_queue=64,
                compression=self.compression,
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
        except ConnectionClosed as exc:
            reason = _describe_close(exc)
        except InvalidURI as exc:
            reason = f"invalid endpoint URL: {exc}"
            self.state = ConnectionState.FAILED
        except InvalidStatus as exc:
            code = exc.response.status_code
            reason = f"the server refused the WebSocket upgrade (HTTP {code})"
            if code == 404:
                reason += "; check the endpoint path"
        except InvalidHandshake as exc:
            reason = f"WebSocket handshake failed: {exc}"
        except TimeoutError:
            reason = f"no answer within {self.open_timeout:g} s"
        except OSError as exc:
            reason = f"cannot connect: {exc.strerror or exc}"
        except Exception as exc:  # never let the supervisor die silently
            log.exception("stream %s: unexpected error", self.label)
            reason = f"unexpected error: {type(exc).__name__}"
        finally:
            self._ws = None
            self.connected_since = None
            warning = self.session.warning
            if warning is not None and reason and warning.describe() not in reason:
                reason = f"{reason} after {warning.describe()}"
            self.session.connection_lost()
        self.last_disconnect = reason
        self.last_disconnect_at = time.time()
        if reason and not self._stopping:
            self.last_error, self.last_error_at = reason, time.time()
            log.info("stream %s: disconnected: %s", self.label, reason)
        return opened is not None and time.monotonic() - opened >= self.healthy_after

    async def _run_session(self, ws) -> str:
        session = self.session
        sink = self._sink
        session.connection_opened()
        self.state = ConnectionState.AUTHENTICATING
        self.pulse.notify()
        for message in session.data_to_send():
            await ws.send(message)
        recv = ws.recv
        receive = session.receive
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.auth_timeout
        while session.auth is AuthState.PENDING:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return f"no authentication answer within {self.auth_timeout:g} s"
            try:
                data = await asyncio.wait_for(recv(decode=False), remaining)
            except TimeoutError:
                return f"no authentication answer within {self.auth_timeout:g} s"
            reason = await self._after_frame(ws, receive(data), time.time_ns())
            if reason:
                return reason
        if session.auth is not AuthState.OK:
            return "not authenticated"
        self.state = ConnectionState.STREAMING
        self.pulse.notify()
        time_ns = time.time_ns
        while True:
            data = await recv(decode=False)
            now = time_ns()
            frame = receive(data)
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

    async def _after_frame(self, ws, frame: Frame, recv_ns: int | None) -> str | None:
        """Slow path: a frame with status events (or any frame during auth)."""
        if recv_ns is not None and frame.raw is not None:
            self._sink(frame, recv_ns)
        session = self.session
        for st in frame.statuses:
            if st.kind in (Status.SUCCESS, Status.CONNECTED):
                log.debug("stream %s: %s", self.label, st.describe())
            else:
                log.info("stream %s: %s", self.label, st.describe())
        for message in session.data_to_send():
            await ws.send(message)
        self.pulse.notify()
        term = session.terminal
        if term is not None:
            self.last_error, self.last_error_at = term.describe(), time.time()
            return term.describe()
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
