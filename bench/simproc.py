"""The WebSocket simulator in a child process, driven over stdin/stdout with one JSON object per line.

Why a child process: the firehose must not share a GIL (or, on two cores, a CPU) with the client being measured,
otherwise the figure is half the simulator's cost. The child pins itself to the last CPU and the parent to the
others, so each gets a core of its own.

Protocol: the parent writes {"id": n, "call": "<WsSimulator method>", "args": [...]}; the child runs the call as
its own task (so a long `paced` run does not block a `drop`) and answers {"id": n, "result": ...} or
{"id": n, "error": "..."}. The first line the child prints is {"port": <port>}.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import os
import sys
from pathlib import Path

from mcp_polygon.simulator import DEFAULT_API_KEY
from mcp_polygon.simulator.ws import WsSimulator

# Only what the benchmarks need: a typo in a bench fails loudly instead of calling something odd.
ALLOWED = frozenset(
    {
        "firehose",
        "paced",
        "drop",
        "restart",
        "set_rate",
        "wait_subscribed",
        "wait_connections",
        "connections",
        "connect_count",
    }
)
CALL_TIMEOUT = 120.0  # seconds; the longest call is a firehose of a few million events
ROOT = Path(__file__).resolve().parent.parent


def _split_cpus() -> tuple[set[int], set[int]] | None:
    """(parent CPUs, child CPUs), or None when there is only one CPU (or no affinity API)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:-1]), {cpus[-1]}


class SimProcess:
    """Parent side: start the child, call simulator methods in it, stop it."""

    def __init__(self, rate: float = 0.0) -> None:
        self.rate = rate
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._affinity: set[int] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SimProcess:
        split = _split_cpus()
        if split is not None:
            self._affinity = os.sched_getaffinity(0)
            os.sched_setaffinity(0, split[0])
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.simproc",
            str(self.rate),
            *([str(next(iter(split[1])))] if split else []),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        first = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        self.port = json.loads(first)["port"]
        self._reader = asyncio.create_task(self._read_replies())
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionResetError):
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._affinity is not None:
            os.sched_setaffinity(0, self._affinity)

    async def call(self, name: str, *args):
        """Run `WsSimulator.<name>(*args)` in the child and return its (JSON) result."""
        assert self._proc is not None, "use `async with SimProcess()`"
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._proc.stdin.write(json.dumps({"id": request_id, "call": name, "args": list(args)}).encode() + b"\n")
        await self._proc.stdin.drain()
        return await asyncio.wait_for(future, CALL_TIMEOUT)

    async def _read_replies(self) -> None:
        while line := await self._proc.stdout.readline():
            reply = json.loads(line)
            future = self._waiting.pop(reply["id"], None)
            if future is None or future.done():
                continue
            if "error" in reply:
                future.set_exception(RuntimeError(f"simulator: {reply['error']}"))
            else:
                future.set_result(reply["result"])
        for future in self._waiting.values():  # the child died: fail every pending call at once
            if not future.done():
                future.set_exception(RuntimeError("the simulator process exited"))


# -- child side ----------------------------------------------------------------------------------------------------


async def _serve(rate: float) -> None:
    sim = WsSimulator(api_key=DEFAULT_API_KEY, rate=rate)
    await sim.start()
    _reply({"port": sim.port})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task] = set()
    while line := await reader.readline():  # EOF (the parent closed stdin) ends the child
        task = asyncio.create_task(_run(sim, json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in tasks:
        task.cancel()
    await sim.stop()


async def _run(sim: WsSimulator, request: dict) -> None:
    name = request["call"]
    try:
        if name not in ALLOWED:
            raise ValueError(f"{name} is not a simulator call the benchmarks may use")
        result = getattr(sim, name)(*request["args"])
        if inspect.isawaitable(result):
            result = await result
        _reply({"id": request["id"], "result": result})
    except Exception as exc:
        _reply({"id": request["id"], "error": f"{type(exc).__name__}: {exc}"})


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    rate = float(argv[0]) if argv else 0.0
    if len(argv) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(argv[1])})
    asyncio.run(_serve(rate))


if __name__ == "__main__":
    main(sys.argv[1:])
