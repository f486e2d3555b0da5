"""1. Ingest throughput of one connection on the simulator's firehose (simulator in its own process).

Ours: StreamManager -> Connection -> ProtocolSession.receive (classify) -> buffer append -> recorder -> stats, with
recording off and on. Baseline: massive.WebSocketClient with a handler that only counts, on the same feed. A third
run, a bare websockets client that only receives frames, shows what the transport itself allows on this machine.

The clock runs from the first firehose frame seen to the last: the simulator's few ms of frame building and the
subscribe handshake are not the client's throughput. Single runs vary by +-20% on a shared 2-core VM, so there are
ROUNDS rounds, each running every client once on a fresh connection (interleaved, so a busy moment of the machine
hits all of them alike), and each client's median is reported.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from websockets.asyncio.client import connect

from bench.common import API_KEY, MARKET, TOPICS, median, our_settings, our_stream, vendor_stream, wait_until
from bench.report import HIGHER, Row
from bench.simproc import SimProcess

BATCH = 1000
OURS_EVENTS = 2_000_000
VENDOR_EVENTS = 400_000  # the vendor is several times slower; its rate is steady well before this
TIMEOUT = 90.0
ROUNDS = 3


async def _measure(sim: SimProcess, count, n: int) -> float:
    """Fire `n` events; the client's events/s, `count()` being its running event total."""
    base = count()
    fire = asyncio.create_task(sim.call("firehose", MARKET, n, BATCH))
    try:
        t0 = await wait_until(lambda: count() != base, TIMEOUT, poll=0.0005)
        seen0 = count() - base  # no await since the check: the same instant
        t1 = await wait_until(lambda: count() - base >= n, TIMEOUT)
    finally:
        await fire
    return (n - seen0) / (t1 - t0)


async def _ours(sim: SimProcess, *, record: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        async with our_stream(our_settings(sim.url, data_dir=Path(tmp), record=record)) as (_, stream):
            await sim.call("wait_subscribed", MARKET, TOPICS)
            rate = await _measure(sim, lambda: stream.stats.total, OURS_EVENTS)
    await sim.call("wait_connections", MARKET, 0)
    return rate


async def _vendor(sim: SimProcess) -> float:
    received = 0

    async def handler(messages: list) -> None:
        nonlocal received
        received += len(messages)

    async with vendor_stream(sim.port, handler):
        await sim.call("wait_subscribed", MARKET, TOPICS)
        rate = await _measure(sim, lambda: received, VENDOR_EVENTS)
    await sim.call("wait_connections", MARKET, 0)
    return rate


async def _transport(sim: SimProcess) -> float:
    """A websockets client that receives frames and does nothing else: the ceiling for any Python client here."""
    frames = 0

    async def reader(ws) -> None:
        nonlocal frames
        while True:
            await ws.recv(decode=False)
            frames += 1

    async with connect(f"{sim.url}/{MARKET}", compression=None, max_size=64 << 20) as ws:
        await ws.send(json.dumps({"action": "auth", "params": API_KEY}))
        await ws.send(json.dumps({"action": "subscribe", "params": ",".join(TOPICS)}))
        await sim.call("wait_subscribed", MARKET, TOPICS)
        await asyncio.sleep(0.05)  # let the status frames in before counting
        task = asyncio.create_task(reader(ws))
        try:
            rate = await _measure(sim, lambda: frames * BATCH, OURS_EVENTS)
        finally:
            task.cancel()
    await sim.call("wait_connections", MARKET, 0)
    return rate


async def run() -> list[Row]:
    clients = {
        "vendor": _vendor,
        "off": lambda sim: _ours(sim, record=False),
        "on": lambda sim: _ours(sim, record=True),
        "ceiling": _transport,
    }
    rates: dict[str, list[float]] = {name: [] for name in clients}
    async with SimProcess(rate=0) as sim:
        for _ in range(ROUNDS):
            for name, client in clients.items():
                rates[name].append(await client(sim))
    vendor, ours_off, ours_on, ceiling = (median(rates[name]) for name in clients)
    target = {"target": 1_000_000, "target_ratio": 3.0}
    return [
        Row("1. ingest, recording off (vs massive client)", "ev/s", ours_off, vendor, HIGHER, **target),
        Row("1. ingest, recording on  (vs massive client)", "ev/s", ours_on, vendor, HIGHER, **target),
        Row("   ingest ceiling: bare websockets recv (vs massive)", "ev/s", ceiling, vendor, HIGHER),
    ]
