"""The API key (and the Redis password) never reach Redis: a whole shared-feed run on ordinary frames from the
simulator's WebSocket, with a known key, then every key, member, field and stream entry in Redis is scanned."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import orjson
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from mcp_polygon.sharedfeed import SharedFeed, SharedFeedConfig
from mcp_polygon.simulator import Simulator
from redis_server import RedisServer

API_KEY = "Kx9+known/API=key_7f3a2b1c"  # characters that URL encoding changes, so every spelling is looked for
REDIS_PASSWORD = "redis-pw-4d5e6f"


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with RedisServer(tmp_path / "redis", password=REDIS_PASSWORD) as server:
        yield server


def data_frame(raw: bytes) -> tuple[bytes, int] | None:
    """What an owner appends: the frame's data events, status events removed (as the protocol layer does)."""
    events = orjson.loads(raw)
    data = [event for event in events if isinstance(event, dict) and event.get("ev") != "status"]
    if not data:
        return None
    return (raw if len(data) == len(events) else orjson.dumps(data)), len(data)


async def everything_in(client: Redis) -> list[bytes]:
    """Every key name and every value in the database, whatever its type."""
    found: list[bytes] = []
    async for key in client.scan_iter(count=1000):
        found.append(key)
        kind = await client.type(key)
        if kind == b"string":
            found.append(await client.get(key))
        elif kind == b"set":
            found.extend(await client.smembers(key))
        elif kind == b"hash":
            for field, value in (await client.hgetall(key)).items():
                found.extend((field, value))
        elif kind == b"list":
            found.extend(await client.lrange(key, 0, -1))
        elif kind == b"zset":
            found.extend(await client.zrange(key, 0, -1))
        elif kind == b"stream":
            for entry_id, fields in await client.xrange(key):
                found.append(entry_id)
                for field, value in fields.items():
                    found.extend((field, value))
        else:
            raise AssertionError(f"unexpected key type {kind!r} for {key!r}")
    return found


async def test_a_shared_feed_run_writes_vendor_data_and_nothing_secret(redis: RedisServer) -> None:
    async with Simulator(api_key=API_KEY, rate=200.0) as sim:
        async with SharedFeed(SharedFeedConfig(redis.url, namespace="secrets")) as feed:
            await feed.registry.want("stocks", ["T.*", "Q.*"])
            keeper = feed.keeper("stocks")
            keeper.start()
            try:
                grant = await asyncio.wait_for(keeper.wait_held(), 5.0)
                writer = feed.stream("stocks").writer(grant)
                flusher = asyncio.create_task(writer.run())
                async with connect(f"{sim.ws_url}/stocks") as ws:
                    await ws.send(orjson.dumps({"action": "auth", "params": API_KEY}).decode())
                    union = (await feed.registry.picture("stocks")).union
                    await ws.send(orjson.dumps({"action": "subscribe", "params": ",".join(sorted(union))}).decode())
                    deadline = time.monotonic() + 10.0
                    while writer.stats.events < 200:
                        assert time.monotonic() < deadline, "the simulator sent too little data"
                        raw = await asyncio.wait_for(ws.recv(decode=False), 5.0)
                        if (picked := data_frame(raw)) is not None:
                            writer.offer(picked[0], picked[1], time.time_ns())
                        await asyncio.sleep(0)
                while writer.stats.pending_frames:
                    assert not flusher.done()
                    await asyncio.sleep(0.01)
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
                reader = feed.stream("stocks").reader(block=0.2)
                assert (await reader.read()).frames  # readers get the data
                await reader.aclose()
                status = await feed.status("stocks")
                assert status.owned_here and status.head.head_seq >= 200
            finally:
                await keeper.stop(release=False)  # leave the lease in Redis too, so it is scanned
            # Scanned while this process is still registered, so its registrations are looked at too.
            scanner = Redis.from_url(redis.url)
            try:
                stored = await everything_in(scanner)
                clients = await scanner.execute_command("CLIENT", "LIST")
            finally:
                await scanner.aclose()

    kinds = {key.rsplit(b":", 1)[-1] for key in stored if key.startswith(b"secrets:{stocks}:")}
    assert {b"lease", b"fence", b"seq", b"epoch", b"frames", b"wants", b"lastbatch"} <= kinds  # the whole run
    assert any(key.startswith(b"secrets:{stocks}:want:") for key in stored)
    assert any(b'"ev":"T"' in value or b'"ev":"Q"' in value for value in stored)
    blob = b"\n".join(stored) + b"\n" + (clients if isinstance(clients, bytes) else str(clients).encode())
    for secret in (API_KEY, REDIS_PASSWORD):
        for spelling in {secret, quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)}:
            assert spelling.encode() not in blob, f"{spelling!r} was written to Redis"
