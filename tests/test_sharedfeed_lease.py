"""One owner per market, against a real redis-server: exclusive grants, fencing tokens that only go up, renewal,
loss noticed within one TTL, failover after a kill -9 of the owner process, rejoining after Redis came back empty."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator

from mcp_polygon.sharedfeed import FeedKeys, LeaseGrant, LeaseKeeper, MarketLease, RedisLink
from redis_server import RedisServer

KEYS = FeedKeys("test", "stocks")


@contextlib.asynccontextmanager
async def running(keeper: LeaseKeeper, *, release: bool = True) -> AsyncIterator[LeaseKeeper]:
    keeper.start()
    try:
        yield keeper
    finally:
        await keeper.stop(release=release)


async def test_only_one_holder_and_tokens_only_go_up(link: RedisLink) -> None:
    a, b = MarketLease(link, KEYS, "proc-a"), MarketLease(link, KEYS, "proc-b")
    grant_a = await a.acquire()
    assert grant_a is not None
    assert await b.acquire() is None
    assert await a.acquire() == grant_a  # asking again renews the same grant
    owner = await b.owner()
    assert owner is not None and owner.holder == "proc-a" and owner.token == grant_a.token
    assert 0 < owner.expires_in <= a.ttl
    assert await b.release(LeaseGrant("stocks", grant_a.token, "proc-b")) is False  # not b's to release
    assert await a.release(grant_a) is True
    grant_b = await b.acquire()
    assert grant_b is not None and grant_b.token > grant_a.token
    assert await a.renew(grant_a) is False


async def test_many_contenders_at_once_get_exactly_one_grant(link: RedisLink) -> None:
    leases = [MarketLease(link, KEYS, f"proc-{i}") for i in range(30)]
    grants = await asyncio.gather(*(lease.acquire() for lease in leases))
    assert sum(grant is not None for grant in grants) == 1


async def test_an_expired_lease_goes_to_the_next_process_with_a_newer_token(link: RedisLink) -> None:
    a, b = MarketLease(link, KEYS, "proc-a", ttl=0.2), MarketLease(link, KEYS, "proc-b", ttl=0.2)
    grant_a = await a.acquire()
    assert grant_a is not None
    deadline = time.monotonic() + 2.0
    while (grant_b := await b.acquire()) is None:
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.02)
    assert grant_b.token > grant_a.token
    assert await a.renew(grant_a) is False  # the old owner learns it was deposed


async def test_a_keeper_renews_while_healthy(link: RedisLink) -> None:
    lease = MarketLease(link, KEYS, "proc-a", ttl=0.3)
    async with running(LeaseKeeper(lease)) as keeper:
        grant = await asyncio.wait_for(keeper.wait_held(), 2.0)
        other = MarketLease(link, KEYS, "proc-b", ttl=0.3)
        for _ in range(10):  # 1 s, more than three TTLs: renewal keeps it
            assert await other.acquire() is None
            await asyncio.sleep(0.1)
        assert keeper.grant == grant and keeper.losses == 0


async def test_a_clean_stop_releases_at_once(link: RedisLink) -> None:
    lease = MarketLease(link, KEYS, "proc-a", ttl=30.0)
    async with running(LeaseKeeper(lease)) as keeper:
        await asyncio.wait_for(keeper.wait_held(), 2.0)
    assert await MarketLease(link, KEYS, "proc-b").acquire() is not None  # no 30 s wait


async def test_losing_redis_is_noticed_within_one_ttl(redis: RedisServer, link: RedisLink) -> None:
    changes: list[LeaseGrant | None] = []
    lease = MarketLease(link, KEYS, "proc-a", ttl=0.6)
    async with running(LeaseKeeper(lease, on_change=changes.append)) as keeper:
        await asyncio.wait_for(keeper.wait_held(), 2.0)
        await redis.stop()
        stopped = time.monotonic()
        await asyncio.wait_for(keeper.wait_lost(), 2.0)
        assert time.monotonic() - stopped <= lease.ttl + 0.1
        assert keeper.grant is None and keeper.losses == 1
        assert changes[-1] is None and isinstance(changes[0], LeaseGrant)


async def test_being_deposed_is_noticed_at_the_next_renewal(link: RedisLink) -> None:
    lease = MarketLease(link, KEYS, "proc-a", ttl=1.0)
    async with running(LeaseKeeper(lease)) as keeper:
        grant = await asyncio.wait_for(keeper.wait_held(), 2.0)
        await link.run(lambda r: r.delete(KEYS.lease))  # an operator, or an expiry we did not see coming
        assert await MarketLease(link, KEYS, "proc-b", ttl=1.0).acquire() is not None
        started = time.monotonic()
        await asyncio.wait_for(keeper.wait_lost(), 2.0)
        assert time.monotonic() - started <= keeper.renew_every + 0.1
        assert keeper.grant is None and grant.token > 0


async def test_a_keeper_takes_over_when_the_owner_stops_renewing(link: RedisLink) -> None:
    a = LeaseKeeper(MarketLease(link, KEYS, "proc-a", ttl=0.5), contend_every=0.05)
    b = LeaseKeeper(MarketLease(link, KEYS, "proc-b", ttl=0.5), contend_every=0.05)
    async with running(a):
        grant_a = await asyncio.wait_for(a.wait_held(), 2.0)
        async with running(b):
            await asyncio.sleep(0)
            await a.stop(release=False)  # like a crash: the lease is left to expire
            crashed = time.monotonic()
            grant_b = await asyncio.wait_for(b.wait_held(), 3.0)
            assert time.monotonic() - crashed <= 0.5 + 0.2
            assert grant_b.token > grant_a.token


CHILD = """
import asyncio, sys
from mcp_polygon.sharedfeed import SharedFeed, SharedFeedConfig

async def main():
    config = SharedFeedConfig(sys.argv[1], namespace="test", lease_ttl=float(sys.argv[2]))
    async with SharedFeed(config) as feed:
        keeper = feed.keeper("stocks")
        keeper.start()
        grant = await keeper.wait_held()
        print(grant.token, feed.process, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_kill_9_of_the_owner_process_hands_the_lease_over_within_one_ttl(
    redis: RedisServer, link: RedisLink
) -> None:
    ttl = 1.0
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, redis.url, str(ttl), stdout=asyncio.subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 20.0)  # type: ignore[union-attr]
        token, process = line.decode().split()
        here = MarketLease(link, KEYS, "this-test", ttl=ttl)
        owner = await here.owner()
        assert owner is not None and owner.holder == process
        async with running(LeaseKeeper(here, contend_every=0.05)) as keeper:
            child.send_signal(signal.SIGKILL)
            await child.wait()
            killed = time.monotonic()
            grant = await asyncio.wait_for(keeper.wait_held(), 5.0)
            assert time.monotonic() - killed <= ttl + 0.3
            assert grant.token > int(token)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_a_keeper_rejoins_when_redis_comes_back_empty(redis: RedisServer, link: RedisLink) -> None:
    watch = asyncio.create_task(link.keep_watch(probe_every=0.05))
    try:
        lease = MarketLease(link, KEYS, "proc-a", ttl=0.5)
        async with running(LeaseKeeper(lease, contend_every=0.05)) as keeper:
            first = await asyncio.wait_for(keeper.wait_held(), 2.0)
            await redis.restart_empty()
            await asyncio.wait_for(keeper.wait_lost(), 3.0)
            second = await asyncio.wait_for(keeper.wait_held(), 5.0)
            # A new counter starts at the server's clock, so the new grant is still newer than every earlier one.
            assert second.token > first.token
            assert (await lease.owner()) is not None
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
