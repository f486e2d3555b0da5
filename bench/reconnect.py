"""5. Time from an abrupt drop (WsSimulator.drop: TCP abort, no close frame) to data flowing again.

Measured from just before the drop is requested to the receive time of the first frame that came over the new
connection (ours: the receive time the buffer stores for it; vendor: when its handler is called).

Two series per client:
- after a healthy stream: a fresh client per round, so each drop is the first after a good connection (ours
  resets its backoff after `healthy_after` = 30 s of streaming; a fresh connection is in that same state);
- back to back: one client, dropped again as soon as data flows; ours then backs off further each time.
Baseline: massive.WebSocketClient, which reconnects at once (no backoff) when a connection it had drops.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import MARKET, median, our_settings, our_stream, vendor_stream, wait_until
from bench.report import Row
from bench.simproc import SimProcess

ROUNDS = 5
TOPICS = ["T.*"]  # three streams
RATE = 200.0  # events/s per stream: a frame every 10 ms, so "flowing again" is seen within one tick
TIMEOUT = 15.0


class Watch:
    """For the vendor client: the time of the first handler call over a connection newer than the one current
    when armed."""

    def __init__(self, current_connection) -> None:
        self.current = current_connection  # () -> an identity of the current connection
        self.armed_at = None
        self.first_ns: int | None = None

    def arm(self) -> int:
        self.armed_at = self.current()
        self.first_ns = None
        return time.time_ns()

    def seen(self, recv_ns: int) -> None:
        if self.armed_at is not None and self.first_ns is None and self.current() != self.armed_at:
            self.first_ns = recv_ns


async def _ours_drop(sim: SimProcess, manager, stream) -> float:
    """Seconds from the drop to the receive time of the first event that came over the new socket."""
    conn = stream.connection
    before = conn.connects
    t_drop = time.time_ns()
    await sim.call("drop", MARKET)
    # The new socket counts as opened before it can carry data (auth and subscribe take two round trips and the
    # simulator's next tick), so the buffer's head when it opens separates old events from new ones.
    await wait_until(lambda: conn.connects > before, TIMEOUT, poll=0.0002)
    head = stream.buffer.head
    await wait_until(lambda: stream.buffer.head > head, TIMEOUT)
    _, recv_s, _ = manager.read(MARKET, limit=1, since_seq=head).events[0]
    return recv_s - t_drop / 1e9


async def _ours(sim: SimProcess, data_dir: Path, *, back_to_back: bool) -> list[float]:
    settings = our_settings(sim.url, data_dir=data_dir)
    samples: list[float] = []
    for _ in range(1 if back_to_back else ROUNDS):
        async with our_stream(settings, TOPICS) as (manager, stream):
            await wait_until(lambda s=stream: s.buffer.head > 0, TIMEOUT)
            for _ in range(ROUNDS if back_to_back else 1):
                samples.append(await _ours_drop(sim, manager, stream))
        await sim.call("wait_connections", MARKET, 0)
    return samples


async def _vendor_client(sim: SimProcess, drops: int) -> list[float]:
    """One vendor client, dropped `drops` times."""
    received = 0
    watch = Watch(lambda: None)  # told which connection is current once the client exists

    async def handler(messages: list) -> None:
        nonlocal received
        received += len(messages)
        watch.seen(time.time_ns())

    samples = []
    async with vendor_stream(sim.port, handler, TOPICS) as client:
        watch.current = lambda: id(client.websocket)  # the vendor replaces .websocket when it reconnects
        await wait_until(lambda: received > 0, TIMEOUT)
        for _ in range(drops):
            t_drop = watch.arm()
            await sim.call("drop", MARKET)
            await wait_until(lambda: watch.first_ns is not None, TIMEOUT)
            samples.append((watch.first_ns - t_drop) / 1e9)
    await sim.call("wait_connections", MARKET, 0)
    return samples


async def _vendor(sim: SimProcess, *, back_to_back: bool) -> list[float]:
    if back_to_back:
        return await _vendor_client(sim, ROUNDS)
    return [s for _ in range(ROUNDS) for s in await _vendor_client(sim, 1)]


async def run() -> list[Row]:
    async with SimProcess(rate=RATE) as sim:
        with tempfile.TemporaryDirectory(prefix="bench-reconnect-") as tmp:
            ours = await _ours(sim, Path(tmp), back_to_back=False)
            ours_b2b = await _ours(sim, Path(tmp), back_to_back=True)
        vendor = await _vendor(sim, back_to_back=False)
        vendor_b2b = await _vendor(sim, back_to_back=True)
    series = ", ".join(f"{s:.2f}" for s in ours_b2b)
    return [
        Row(f"5. drop -> data again, median of {ROUNDS} (vs massive client)", "s", median(ours), median(vendor),
            target=1.0),
        Row(f"   same, {ROUNDS} drops back to back [{series} s]", "s", median(ours_b2b), median(vendor_b2b)),
    ]  # fmt: skip
