"""Shared subscriptions: each process registers the channels its agents want; the owner serves their union.

A process's channels for a market are one Redis set under its own key, with a TTL it refreshes while alive (every
TTL/4), plus its id in the market's index set. Registering replaces the whole set in one script, so a process's
`unsubscribe` only ever removes its own wants; the union is computed in one script that also prunes the ids
whose registration expired. A channel nobody wants drops out of the union as soon as the last registration
holding it is removed, or at most one TTL (2 s by default) after its process died.

The registry keeps this process's wants locally too: they are the truth it re-registers from, so a Redis that
comes back empty has them again within one refresh, and a change made while Redis is away is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from mcp_polygon.sharedfeed.errors import RedisUnavailable
from mcp_polygon.sharedfeed.keys import DEFAULT_NAMESPACE, FeedKeys
from mcp_polygon.sharedfeed.link import RedisLink

DEFAULT_WANT_TTL = 2.0  # seconds a dead process's wants outlive it: a channel no one wants goes within 3 s
_CHUNK = 500  # channels per SADD inside the script (Lua's unpack has a stack limit)

# KEYS: index, own key. ARGV: process id, ttl ms, channel... -> 1
_REGISTER = f"""
redis.call('DEL', KEYS[2])
if #ARGV < 3 then
  redis.call('SREM', KEYS[1], ARGV[1])
  return 1
end
for i = 3, #ARGV, {_CHUNK} do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + {_CHUNK} - 1, #ARGV)))
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# KEYS: index. ARGV: key prefix of the per-process sets. -> {process id, {channel...}, ...} of live registrations
_PICTURE = """
local out = {}
for _, process in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local channels = redis.call('SMEMBERS', ARGV[1] .. process)
  if #channels == 0 then
    redis.call('SREM', KEYS[1], process)
  else
    out[#out + 1] = process
    out[#out + 1] = channels
  end
end
return out
"""


@dataclass(frozen=True)
class ProcessWants:
    process: str
    channels: frozenset[str]


@dataclass(frozen=True)
class SubscriptionPicture:
    """Who wants what in one market, across every live process; `union` is what the owner subscribes upstream."""

    market: str
    processes: tuple[ProcessWants, ...]  # sorted by process id

    @property
    def union(self) -> frozenset[str]:
        return frozenset().union(*(p.channels for p in self.processes))

    def wanted_by(self, channel: str) -> tuple[str, ...]:
        return tuple(p.process for p in self.processes if channel in p.channels)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_picture(market: str, reply: list[object]) -> SubscriptionPicture:
    processes = [
        ProcessWants(process=_text(process), channels=frozenset(_text(c) for c in channels if isinstance(c, bytes)))
        for process, channels in zip(reply[::2], reply[1::2], strict=True)
        if isinstance(process, bytes) and isinstance(channels, list)
    ]
    return SubscriptionPicture(market=market, processes=tuple(sorted(processes, key=lambda p: p.process)))


class SubscriptionRegistry:
    """This process's registrations, in every market; `keep_fresh()` (a task) refreshes them while it is alive."""

    def __init__(
        self,
        link: RedisLink,
        process: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float = DEFAULT_WANT_TTL,
        refresh_every: float | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the registration TTL must be positive")
        self.link = link
        self.process = process
        self.namespace = namespace
        self.ttl = ttl
        self.refresh_every = refresh_every if refresh_every is not None else ttl / 4
        self._ttl_ms = max(1, round(ttl * 1000))
        self._wanted: dict[str, frozenset[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._register = link.client.register_script(_REGISTER)
        self._picture = link.client.register_script(_PICTURE)

    def keys(self, market: str) -> FeedKeys:
        return FeedKeys(self.namespace, market)

    def wanted(self, market: str) -> frozenset[str]:
        """What this process wants in `market` (its local truth, whatever Redis holds right now)."""
        return self._wanted.get(market, frozenset())

    async def want(self, market: str, channels: Iterable[str]) -> frozenset[str]:
        """Add `channels` to this process's wants; returns them all. Kept locally even if Redis is away."""
        return await self.replace(market, self.wanted(market) | frozenset(channels))

    async def drop(self, market: str, channels: Iterable[str]) -> frozenset[str]:
        """Remove `channels` from this process's wants only; another process's wants are untouched."""
        return await self.replace(market, self.wanted(market) - frozenset(channels))

    async def replace(self, market: str, channels: Iterable[str]) -> frozenset[str]:
        """Set this process's wants in `market` to `channels`; raises RedisUnavailable after keeping them locally."""
        wanted = frozenset(channels)
        if wanted:
            self._wanted[market] = wanted
        else:
            self._wanted.pop(market, None)
        await self._push(market)
        return wanted

    async def _push(self, market: str) -> None:
        # One push at a time per market, each sending the newest local set: two calls that race cannot leave
        # Redis holding the older of the two.
        lock = self._locks.setdefault(market, asyncio.Lock())
        async with lock:
            keys = self.keys(market)
            args: list[str | int] = [self.process, self._ttl_ms, *sorted(self.wanted(market))]
            await self.link.run(
                lambda r: self._register(keys=[keys.wants, keys.want(self.process)], args=args, client=r)
            )

    async def picture(self, market: str) -> SubscriptionPicture:
        """The shared picture of `market`: every live process and what it wants."""
        keys = self.keys(market)

        async def read(r: Redis) -> list[object]:
            reply: list[object] = await self._picture(keys=[keys.wants], args=[keys.want_prefix], client=r)
            return reply

        return _parse_picture(market, await self.link.run(read))

    async def refresh(self) -> None:
        """Re-register every market this process wants something in (also after Redis came back empty)."""
        for market in list(self._wanted):
            await self._push(market)

    async def keep_fresh(self) -> None:
        """Run as a task while the process lives: refresh every `refresh_every` seconds, riding out Redis trouble."""
        while True:
            with contextlib.suppress(RedisUnavailable):
                await self.refresh()
            await asyncio.sleep(self.refresh_every)

    async def withdraw(self) -> None:
        """Remove every registration of this process (a clean shutdown): its channels go from the union at once."""
        markets = list(self._wanted)
        self._wanted.clear()
        for market in markets:
            await self._push(market)

    async def union_changes(self, market: str, *, every: float = 0.5) -> AsyncIterator[SubscriptionPicture]:
        """For the owner: the picture now, then again each time the union changes (polled every `every` s).

        While Redis is away nothing is yielded; the owner keeps what it is subscribed to.
        """
        last: frozenset[str] | None = None
        while True:
            try:
                picture = await self.picture(market)
            except RedisUnavailable:
                picture = None
            if picture is not None and picture.union != last:
                last = picture.union
                yield picture
            await asyncio.sleep(every)
