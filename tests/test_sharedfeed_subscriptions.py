"""Shared subscriptions against a real redis-server: the union of live registrations, an unsubscribe that removes
only the caller's own wants, expiry of a dead process's wants within 3 s, and re-registering after Redis came back
empty."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from mcp_polygon.sharedfeed import RedisLink, RedisUnavailable, SubscriptionPicture, SubscriptionRegistry
from redis_server import RedisServer

NS = "test"


def registry(link: RedisLink, process: str, ttl: float = 2.0) -> SubscriptionRegistry:
    return SubscriptionRegistry(link, process, namespace=NS, ttl=ttl)


@contextlib.asynccontextmanager
async def refreshing(*registries: SubscriptionRegistry) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(r.keep_fresh()) for r in registries]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_union_and_who_wants_what(link: RedisLink) -> None:
    a, b = registry(link, "proc-a"), registry(link, "proc-b")
    await a.want("stocks", ["T.AAPL", "Q.AAPL"])
    await b.want("stocks", ["T.AAPL", "AM.*"])
    await b.want("crypto", ["XT.*"])
    picture = await a.picture("stocks")
    assert picture.union == {"T.AAPL", "Q.AAPL", "AM.*"}
    assert picture.wanted_by("T.AAPL") == ("proc-a", "proc-b")
    assert picture.wanted_by("AM.*") == ("proc-b",)
    assert [p.process for p in picture.processes] == ["proc-a", "proc-b"]
    assert (await a.picture("crypto")).union == {"XT.*"}  # markets do not mix


async def test_an_unsubscribe_keeps_a_channel_another_process_still_needs(link: RedisLink) -> None:
    a, b = registry(link, "proc-a"), registry(link, "proc-b")
    await a.want("stocks", ["T.AAPL", "Q.AAPL"])
    await b.want("stocks", ["T.AAPL"])
    assert await a.drop("stocks", ["T.AAPL"]) == {"Q.AAPL"}
    picture = await b.picture("stocks")
    assert picture.union == {"T.AAPL", "Q.AAPL"} and picture.wanted_by("T.AAPL") == ("proc-b",)
    await b.drop("stocks", ["T.AAPL"])  # the last process that wanted it: gone from the union at once
    assert (await b.picture("stocks")).union == {"Q.AAPL"}
    await a.drop("stocks", ["Q.AAPL"])
    assert (await a.picture("stocks")).processes == ()
    assert await link.run(lambda r: r.smembers(f"{NS}:{{stocks}}:wants")) == set()  # nothing left behind


async def test_a_dead_process_s_wants_leave_the_union_within_3_seconds(link: RedisLink) -> None:
    alive, dead = registry(link, "alive", ttl=2.0), registry(link, "dead", ttl=2.0)
    await alive.want("stocks", ["T.AAPL"])
    await dead.want("stocks", ["Q.MSFT"])
    async with refreshing(alive):  # the dead one never refreshes again, like a process after kill -9
        died = time.monotonic()
        while "Q.MSFT" in (await alive.picture("stocks")).union:
            assert time.monotonic() - died < 3.0, "a dead process's channel outlived 3 s"
            await asyncio.sleep(0.05)
        assert time.monotonic() - died >= 1.5  # it lasted about its TTL: refreshes are what keep a live one
        picture = await alive.picture("stocks")
        assert picture.union == {"T.AAPL"}  # the live one, refreshed, stays
        assert [p.process for p in picture.processes] == ["alive"]  # status no longer lists the dead one


async def test_a_living_process_keeps_its_wants_past_many_ttls(link: RedisLink) -> None:
    a = registry(link, "proc-a", ttl=0.3)
    await a.want("stocks", ["T.AAPL"])
    async with refreshing(a):
        for _ in range(10):  # 1 s, more than three TTLs
            assert (await a.picture("stocks")).union == {"T.AAPL"}
            await asyncio.sleep(0.1)


async def test_withdraw_removes_every_registration_at_once(link: RedisLink) -> None:
    a, b = registry(link, "proc-a"), registry(link, "proc-b")
    await a.want("stocks", ["T.AAPL"])
    await a.want("crypto", ["XT.*"])
    await b.want("stocks", ["Q.AAPL"])
    await a.withdraw()
    assert (await b.picture("stocks")).union == {"Q.AAPL"}
    assert (await b.picture("crypto")).union == frozenset()


async def test_wants_made_while_redis_is_away_are_kept_and_registered_when_it_returns(redis: RedisServer) -> None:
    link = RedisLink(redis.url, timeout=0.3)
    watch = asyncio.create_task(link.keep_watch(probe_every=0.05))
    a = SubscriptionRegistry(link, "proc-a", namespace=NS, ttl=0.8)
    try:
        await a.want("stocks", ["T.AAPL"])
        await redis.stop()
        with pytest.raises(RedisUnavailable, match=r"^Redis at 127\.0\.0\.1:\d+ is unreachable: "):
            await a.want("stocks", ["Q.AAPL"])
        assert a.wanted("stocks") == {"T.AAPL", "Q.AAPL"}  # the local truth kept the change
        async with refreshing(a):
            await redis.start()  # empty
            deadline = time.monotonic() + 5.0
            while True:
                with contextlib.suppress(RedisUnavailable):
                    if (await a.picture("stocks")).union == {"T.AAPL", "Q.AAPL"}:
                        break
                assert time.monotonic() < deadline, "the registration never came back"
                await asyncio.sleep(0.05)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await link.aclose()


async def test_the_owner_sees_each_change_of_the_union(link: RedisLink) -> None:
    owner, reader = registry(link, "owner"), registry(link, "reader")
    seen: list[frozenset[str]] = []

    async def watch() -> None:
        picture: SubscriptionPicture
        async for picture in owner.union_changes("stocks", every=0.02):
            seen.append(picture.union)

    task = asyncio.create_task(watch())
    try:
        await _until(lambda: seen == [frozenset()])
        await reader.want("stocks", ["T.AAPL"])
        await _until(lambda: seen[-1] == {"T.AAPL"})
        await owner.want("stocks", ["T.AAPL"])  # the union is unchanged: nothing new to do upstream
        await reader.drop("stocks", ["T.AAPL"])  # still wanted by the owner itself
        await owner.want("stocks", ["Q.AAPL"])
        await _until(lambda: seen[-1] == {"T.AAPL", "Q.AAPL"})
        assert seen == [frozenset(), {"T.AAPL"}, {"T.AAPL", "Q.AAPL"}]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
