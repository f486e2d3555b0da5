"""One owner per market: a lease in Redis with a TTL and a fencing token, and a keeper that holds it.

The lease is one string key, "<token>:<holder>", set with a TTL. Acquire, renew and release are Lua scripts, so
each is one atomic step: exactly one process holds a market at a time. The token comes from INCR on a counter
that only goes up (a new counter starts at the server's clock in ms, so it keeps going up across a Redis that
came back empty), so each grant is told apart from every earlier one; the append script (stream.py) compares
the whole "<token>:<holder>" value, so a deposed owner can never append.

`LeaseKeeper` runs in the background: it contends while the lease is free, renews it every TTL/4 while held, and
declares it lost no later than one TTL after the start of the last renewal that succeeded (Redis cannot
have expired it earlier than that), so a manager awaiting `wait_lost()` stops its socket before anyone else
can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from mcp_polygon.sharedfeed.errors import RedisUnavailable
from mcp_polygon.sharedfeed.keys import FeedKeys
from mcp_polygon.sharedfeed.link import RedisLink

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 2.0  # seconds: a dead owner's market is free again after this (failover must take < 5 s)
CONTEND_EVERY = 0.25  # seconds between attempts while another process holds the lease

# KEYS: lease, fence. ARGV: holder, ttl ms. -> {1, value} when granted (or already ours), {0, value, pttl} when not.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if sep and string.sub(current, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, current}
  end
  return {0, current, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
if token == 1 then
  -- A new counter (first use, or a Redis that came back empty): start it at the server's clock in ms, so tokens
  -- still only go up across an empty restart and no grant repeats an earlier one's value.
  local now = redis.call('TIME')
  token = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('SET', KEYS[2], string.format('%d', token))
end
local value = string.format('%d', token) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
"""

# KEYS: lease. ARGV: value, ttl ms. -> 1 renewed, 0 not ours any more.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: value. -> 1 released, 0 was not ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class LeaseGrant:
    """This process holds `market`: pass the grant to the stream writer, which appends only while it is current."""

    market: str
    token: int
    holder: str

    @property
    def value(self) -> str:
        return f"{self.token}:{self.holder}"


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds a market's lease, for status: the holder's process id, its token, and how long it has left."""

    holder: str
    token: int
    expires_in: float  # seconds


def _parse_value(raw: bytes | str) -> tuple[int, str] | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    token, sep, holder = text.partition(":")
    if not sep or not token.isdigit():
        return None
    return int(token), holder


class MarketLease:
    """The lease of one market, for one holder (this process). Each method is one atomic script call."""

    def __init__(self, link: RedisLink, keys: FeedKeys, holder: str, *, ttl: float = DEFAULT_LEASE_TTL) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.link = link
        self.keys = keys
        self.holder = holder
        self.ttl = ttl
        self._ttl_ms = max(1, round(ttl * 1000))
        client = link.client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def market(self) -> str:
        return self.keys.market

    async def acquire(self) -> LeaseGrant | None:
        """Take the lease if it is free (or already ours: then renew it); None when another process holds it."""
        reply = await self.link.run(
            lambda r: self._acquire(keys=[self.keys.lease, self.keys.fence], args=[self.holder, self._ttl_ms], client=r)
        )
        if int(reply[0]) != 1:
            return None
        parsed = _parse_value(reply[1])
        if parsed is None:  # cannot happen with our scripts; someone else wrote the key
            return None
        token, holder = parsed
        return LeaseGrant(market=self.market, token=token, holder=holder)

    async def renew(self, grant: LeaseGrant) -> bool:
        """Extend the lease by one TTL; False when it is no longer ours (expired, or taken by another process)."""
        reply = await self.link.run(
            lambda r: self._renew(keys=[self.keys.lease], args=[grant.value, self._ttl_ms], client=r)
        )
        return int(reply) == 1

    async def release(self, grant: LeaseGrant) -> bool:
        """Give the lease up at once (a clean shutdown), so another process need not wait out the TTL."""
        reply = await self.link.run(lambda r: self._release(keys=[self.keys.lease], args=[grant.value], client=r))
        return int(reply) == 1

    async def owner(self) -> LeaseOwner | None:
        """Who holds the lease now (None: nobody), for status."""

        async def read(r: Redis) -> tuple[bytes | None, int]:
            pipe = r.pipeline(transaction=True)
            pipe.get(self.keys.lease)
            pipe.pttl(self.keys.lease)
            value, pttl = await pipe.execute()
            return value, int(pttl)

        value, pttl = await self.link.run(read)
        if value is None:
            return None
        parsed = _parse_value(value)
        if parsed is None:
            return None
        token, holder = parsed
        return LeaseOwner(holder=holder, token=token, expires_in=max(0.0, pttl / 1000))


class LeaseKeeper:
    """Contends for one market's lease and keeps it while this process is healthy.

    `on_change(grant)` is called (in the keeper's task) with the new grant when the lease is won and with None
    when it is lost; `wait_held()` and `wait_lost()` are the same two moments to await.
    """

    def __init__(
        self,
        lease: MarketLease,
        *,
        renew_every: float | None = None,
        contend_every: float = CONTEND_EVERY,
        on_change: Callable[[LeaseGrant | None], None] | None = None,
    ) -> None:
        self.lease = lease
        self.renew_every = renew_every if renew_every is not None else lease.ttl / 4
        self.contend_every = contend_every
        self.on_change = on_change
        self._grant: LeaseGrant | None = None
        self._held = asyncio.Event()
        self._free = asyncio.Event()
        self._free.set()
        self._task: asyncio.Task[None] | None = None
        self.losses = 0  # times a held lease was lost (not released)

    @property
    def grant(self) -> LeaseGrant | None:
        return self._grant

    async def wait_held(self) -> LeaseGrant:
        while True:
            await self._held.wait()
            if self._grant is not None:
                return self._grant

    async def wait_lost(self) -> None:
        await self._free.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"lease-{self.lease.market}")

    async def stop(self, *, release: bool = True) -> None:
        """Stop contending; give the lease back at once when held (release=False: let it expire, like a crash)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        grant = self._grant
        if grant is not None:
            self._set(None)
            if release:
                with contextlib.suppress(RedisUnavailable):
                    await self.lease.release(grant)

    def _set(self, grant: LeaseGrant | None) -> None:
        self._grant = grant
        if grant is None:
            self._held.clear()
            self._free.set()
        else:
            self._free.clear()
            self._held.set()
        if self.on_change is not None:
            self.on_change(grant)

    async def run(self) -> None:
        while True:
            grant = await self._contend()
            self._set(grant)
            log.info("holding the %s lease (token %d)", self.lease.market, grant.token)
            await self._keep(grant)
            self.losses += 1
            self._set(None)
            log.warning("lost the %s lease (token %d)", self.lease.market, grant.token)

    async def _contend(self) -> LeaseGrant:
        while True:
            try:
                grant = await self.lease.acquire()
            except RedisUnavailable:
                grant = None
            if grant is not None:
                return grant
            await asyncio.sleep(self.contend_every)

    async def _keep(self, grant: LeaseGrant) -> None:
        """Renew until the lease is not ours or could not be renewed for one TTL; returns when it is lost."""
        # The lease lives at least one TTL from the moment a successful renewal (or the grant) was sent.
        valid_until = time.monotonic() + self.lease.ttl
        while True:
            await asyncio.sleep(max(0.0, min(self.renew_every, valid_until - time.monotonic())))
            left = valid_until - time.monotonic()
            if left <= 0:
                return
            sent = time.monotonic()
            try:
                async with asyncio.timeout(left):
                    renewed = await self.lease.renew(grant)
            except (RedisUnavailable, TimeoutError):
                continue  # try again until valid_until; the loop returns once it has passed
            if not renewed:
                return
            valid_until = sent + self.lease.ttl
