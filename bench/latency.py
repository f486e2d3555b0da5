"""6. Latency from the simulator's send to our buffer, on a paced feed of 10,000 events/s.

The simulator (own process, same host clock) stamps every event with `sim_ns` = time.time_ns() just before its
frame is written. Ours: the receive time the buffer stores for the frame (stamped as recv() returns, before decode
and append) minus sim_ns, read back from the buffer after the run, so nothing is added to the hot path. Recording
is on, as it is by default in the server.
Baseline: massive.WebSocketClient, time.time_ns() when its handler is called minus sim_ns (its models drop
unknown fields, so sim_ns is read from the frame the vendor just decoded with its own json; see JsonSpy).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import MARKET, JsonSpy, median, our_settings, our_stream, quantile, vendor_stream, wait_until
from bench.report import Row
from bench.simproc import SimProcess

EVENTS_PER_SECOND = 10_000
DURATION = 0.75  # per client and round
ROUNDS = 4  # ours, vendor, ours, vendor...: a busy moment of the (shared) machine hits both alike
BATCH = 1  # one event per frame: every event pays the full per-frame path, the worst case for latency
TOPICS = ["T.*", "Q.*"]


async def _paced(sim: SimProcess) -> int:
    """Run the paced feed; refuse a run where the simulator could not keep the pace (the figure would lie)."""
    t0 = time.perf_counter()
    sent = await sim.call("paced", MARKET, EVENTS_PER_SECOND, DURATION, BATCH)
    elapsed = time.perf_counter() - t0
    if elapsed > DURATION * 1.1:
        raise RuntimeError(f"the simulator sent {sent} events in {elapsed:.2f} s, not {DURATION:g} s: too slow")
    return sent


async def _ours(sim: SimProcess, data_dir: Path) -> list[float]:
    async with our_stream(our_settings(sim.url, data_dir=data_dir, record=True), TOPICS) as (manager, stream):
        await sim.call("wait_subscribed", MARKET, TOPICS)
        head = stream.buffer.head
        base = stream.stats.total
        sent = await _paced(sim)
        await wait_until(lambda: stream.stats.total - base >= sent, 10)
        got = manager.read(MARKET, limit=sent, since_seq=head).events
    await sim.call("wait_connections", MARKET, 0)
    return [recv_s - ev["sim_ns"] / 1e9 for _, recv_s, ev in got if "sim_ns" in ev]


async def _vendor(sim: SimProcess) -> list[float]:
    spy = JsonSpy()
    latencies: list[float] = []

    async def handler(messages: list) -> None:
        now = time.time_ns()
        for event in spy.last:
            if "sim_ns" in event:
                latencies.append((now - event["sim_ns"]) / 1e9)

    async with vendor_stream(sim.port, handler, TOPICS, custom_json=spy):
        await sim.call("wait_subscribed", MARKET, TOPICS)
        sent = await _paced(sim)
        await wait_until(lambda: len(latencies) >= sent, 10)
    await sim.call("wait_connections", MARKET, 0)
    return latencies


async def run() -> list[Row]:
    ours: list[float] = []
    vendor: list[float] = []
    async with SimProcess(rate=0) as sim:
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            for _ in range(ROUNDS):
                ours += await _ours(sim, Path(tmp))
                vendor += await _vendor(sim)
    return [
        Row(
            f"6. send -> buffer at {EVENTS_PER_SECOND:,} ev/s (vs massive handler)",
            "s",
            median(ours),
            median(vendor),
            ours_p99=quantile(ours, 0.99),
            baseline_p99=quantile(vendor, 0.99),
            target=5e-3,
            target_on="tail",
        )
    ]
