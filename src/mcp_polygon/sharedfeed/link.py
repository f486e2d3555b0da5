"""The connection to the one Redis every process shares: short timeouts, one typed error, a rejoin loop.

Every call goes through `RedisLink.run`, which bounds it in time and turns any Redis trouble into
`RedisUnavailable` ("Redis at host:port is unreachable: <reason>; serving what this process holds."). While
`keep_watch` runs (a background task), a link that has failed answers at once with that error instead of
waiting on a socket again, and a PING probe notices when Redis is back (even empty) and opens the link again;
`generation` then goes up by one (readers need not watch it: they check the stream's epoch on every read).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mcp_polygon.sharedfeed.errors import RedisUnavailable

T = TypeVar("T")

DEFAULT_TIMEOUT = 0.5  # seconds for a connect or a reply: long for a LAN round trip, short for an agent waiting
PROBE_EVERY = 0.25  # seconds between PINGs while Redis is down (doubling up to PROBE_MAX)
PROBE_MAX = 1.0
HEALTH_EVERY = 1.0  # seconds between PINGs while Redis is up, so the state is known before a call needs it

# Failures that mean "Redis is not there for us right now", as opposed to a bug in a command (which propagates).
_TROUBLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # refused, reset, closed; AuthenticationError and BusyLoadingError are subclasses
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica, or a primary demoted under us
    redis_errors.OutOfMemoryError,
    redis_errors.NoPermissionError,  # an ACL user without the commands this layer needs
    OSError,  # socket and TLS errors that redis-py lets through
    TimeoutError,  # asyncio.timeout around a call
)


class LinkState(Enum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class RedisEndpoint:
    """Where Redis is, as safe to show: host, port, TLS or not, database; never the user name or the password."""

    host: str
    port: int
    tls: bool
    db: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> RedisEndpoint:
        """Parse a redis:// or rediss:// URL; a ValueError names what is wrong without echoing the URL."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise ValueError(
                "the Redis URL must start with redis:// or rediss:// (TLS), like redis://:password@host:6379/0"
            )
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError("the Redis URL has an invalid port; use 1-65535, like redis://host:6379") from None
        if not parts.hostname:
            raise ValueError("the Redis URL names no host; write it like redis://host:6379")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError("the Redis URL's path must be a database number, like redis://host:6379/0")
        return cls(host=parts.hostname, port=port, tls=scheme == "rediss", db=int(path or 0))


_NAME_ERRORS = ("name or service not known", "nodename nor servname", "temporary failure in name resolution")


def describe_trouble(exc: BaseException, timeout: float) -> str:
    """A short reason from a fixed vocabulary: the exception's own text may quote a URL, so it is never shown."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.NoPermissionError):
        return "it refused the user name or password in the URL (check POLYGON_REDIS_URL)"
    if isinstance(exc, redis_errors.BusyLoadingError):
        return "it is still loading its data set"
    if isinstance(exc, redis_errors.ReadOnlyError):
        return "it is a read-only replica, not the primary"
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return "it is out of memory (maxmemory reached)"
    if isinstance(exc, redis_errors.TimeoutError | TimeoutError):
        return f"no answer within {timeout:g} s"
    if _caused_by(exc, ssl.SSLError):
        return "the TLS handshake failed (check the certificate, or use redis:// for a plain port)"
    text = str(exc).lower()  # matched against, never shown
    # redis-py words a failed connect "Error <errno> connecting to host:port. <strerror>."; the OSError itself is
    # not always in the chain (after a retry, the chain holds the first attempt's error instead).
    if _caused_by(exc, ConnectionRefusedError) or f"error {errno.ECONNREFUSED} connecting" in text:
        return "connection refused"
    if _caused_by(exc, socket.gaierror) or any(words in text for words in _NAME_ERRORS):
        return "its host name does not resolve"
    if _caused_by(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if "closed" in text or "reset" in text or "broken pipe" in text or "lost" in text:
        return "the connection was lost"
    if isinstance(exc, ConnectionResetError | BrokenPipeError) or _caused_by(exc, ConnectionResetError):
        return "the connection was lost"
    return "the connection failed"


def _cancels() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _raise_if_cancelled(before: int, exc: BaseException | None = None) -> None:
    """redis-py (8.1) can swallow a cancellation that lands mid-command: it closes the connection, and its retry
    then runs the command again on a new one (or it reports ConnectionError). A task being cancelled (stop(),
    shutdown) must still end, so a cancel request that arrived during the call is raised here."""
    if _cancels() > before:
        raise asyncio.CancelledError() from exc


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # a short walk: chains are two or three deep
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RedisLink:
    """One Redis, for every part of the shared feed in this process."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_ca_certs: str | None = None,
        client_name: str | None = None,
    ) -> None:
        self.endpoint = RedisEndpoint.from_url(url)
        self.timeout = timeout
        self._url = url
        self._ssl_ca_certs = ssl_ca_certs
        self._client_name = client_name
        self.client = self._make_client(timeout)
        self._blocking: list[Redis] = []
        self._state = LinkState.UP  # optimistic until a call or a probe says otherwise
        self._last_error: RedisUnavailable | None = None
        self._watching = False
        self._up = asyncio.Event()
        self._up.set()
        self._down = asyncio.Event()
        self.generation = 0  # +1 each time Redis answers again after trouble

    # -- clients ---------------------------------------------------------------------------------------------

    def _make_client(self, socket_timeout: float, *, retries: int = 1) -> Redis:
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": self.timeout,
            # One immediate retry: a pooled connection that died with a restarted Redis is replaced at once,
            # while a Redis that is really gone costs one more refused connect, not seconds of backoff.
            "retry": Retry(NoBackoff(), retries),
            "decode_responses": False,
            # RESP2: every Redis since 2.x speaks it, and replies keep one shape whatever redis-py's default.
            "protocol": 2,
            "client_name": self._client_name,
        }
        if self.endpoint.tls and self._ssl_ca_certs:
            options["ssl_ca_certs"] = self._ssl_ca_certs
        return Redis.from_url(self._url, **options)

    def blocking_client(self, block_seconds: float) -> Redis:
        """A client of its own for XREAD BLOCK: its reply may take `block_seconds`, longer than a command may.

        It never retries on its own: a blocking read sent again would only wait again; the reader decides.
        """
        client = self._make_client(block_seconds + self.timeout, retries=0)
        self._blocking.append(client)
        return client

    async def close_client(self, client: Redis) -> None:
        """Close a client from blocking_client() (a reader that stops)."""
        if client in self._blocking:
            self._blocking.remove(client)
        await client.aclose()

    async def aclose(self) -> None:
        for client in (self.client, *self._blocking):
            await client.aclose()
        self._blocking.clear()

    # -- calls -----------------------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def last_error(self) -> RedisUnavailable | None:
        """The error of the last failure while the link is down; None while it is up."""
        return self._last_error if self._state is LinkState.DOWN else None

    def unavailable(self, reason: str) -> RedisUnavailable:
        return RedisUnavailable(self.endpoint.address, reason)

    async def run(
        self,
        op: Callable[[Redis], Awaitable[T]],
        *,
        client: Redis | None = None,
        deadline: float | None = None,
    ) -> T:
        """Await `op(client)`, bounded by `deadline` seconds (default: what a connect, a retry and a reply take).

        Raises RedisUnavailable on any Redis trouble, at once (without touching a socket) while `keep_watch`
        runs and knows Redis is down.
        """
        if self._watching and self._state is LinkState.DOWN and self._last_error is not None:
            raise self.unavailable(self._last_error.reason)
        limit = deadline if deadline is not None else 3 * self.timeout
        scope = asyncio.timeout(limit)
        cancels = _cancels()
        try:
            async with scope:
                result = await op(client or self.client)
        except _TROUBLE as exc:
            _raise_if_cancelled(cancels, exc)
            reason = f"no answer within {limit:g} s" if scope.expired() else describe_trouble(exc, self.timeout)
            error = self.unavailable(reason)
            self._mark_down(error)
            raise error from exc
        _raise_if_cancelled(cancels)
        self._mark_up()
        return result

    def _mark_down(self, error: RedisUnavailable) -> None:
        self._last_error = error
        if self._state is LinkState.UP:
            self._state = LinkState.DOWN
            self._up.clear()
            self._down.set()

    def _mark_up(self) -> None:
        if self._state is LinkState.DOWN:
            self._state = LinkState.UP
            self._last_error = None
            self.generation += 1
            self._down.clear()
            self._up.set()

    async def wait_up(self) -> None:
        await self._up.wait()

    # -- the rejoin loop -------------------------------------------------------------------------------------

    async def _probe(self) -> bool:
        # Through a fresh attempt even while down: bypass the short-circuit in run().
        cancels = _cancels()
        try:
            async with asyncio.timeout(3 * self.timeout):
                await self.client.ping()
        except _TROUBLE as exc:
            _raise_if_cancelled(cancels, exc)
            self._mark_down(self.unavailable(describe_trouble(exc, self.timeout)))
            return False
        _raise_if_cancelled(cancels)
        self._mark_up()
        return True

    async def keep_watch(self, *, probe_every: float = PROBE_EVERY, health_every: float = HEALTH_EVERY) -> None:
        """Run as a task for the life of the process: fail fast while Redis is down, rejoin when it is back."""
        self._watching = True
        delay = probe_every
        try:
            while True:
                if await self._probe():
                    delay = probe_every
                    await self._sleep_while_up(health_every)
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, PROBE_MAX)
        finally:
            self._watching = False

    async def _sleep_while_up(self, seconds: float) -> None:
        """Sleep `seconds`, or less when a call marks the link down meanwhile (then probe at once)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._down.wait()
