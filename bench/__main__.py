"""`python -m bench [section ...]`: run the benchmarks and print one table of figures with their baselines.

Sections: ingest, reads, replay, memory, reconnect, latency (default: all, in that order). Figures, not a test:
the exit status is 0 unless a section crashed (its rows then say why and the others still run).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import platform
import sys
import time
import traceback

from bench.report import Row, render

# Each section is a module `bench.<name>` with run() -> list[Row] (or a coroutine of it). Imported when it runs, so
# code under test that does not import (being edited) costs the sections that need it, not the whole run.
SECTIONS = ("ingest", "reads", "replay", "memory", "reconnect", "latency", "sharedfeed", "analytics")

LEGEND = """\
ratio = how many times better ours is than the baseline (> 1 better; for times and memory: baseline / ours).
Baselines: 1 massive.WebSocketClient counting events in its handler, same firehose (1000-event frames);
           2 newest 1,000 matches of a list comprehension over the same events as a list of dicts
             (tool rows: plus json.dumps of them; ours is the real tool call minus the JSON-RPC transport);
           3 one flat JSONL file (event + time per line), every line parsed with orjson;
           4 the same 100k events as a list of dicts / as massive's model objects (tracemalloc);
           5 massive.WebSocketClient, first handler call after the drop;
           6 massive.WebSocketClient, handler call time minus sim_ns.
           7 the embedded default's least cost: the same frames appended to an in-memory list.
The simulator runs in its own process, pinned to its own CPU when there are two or more."""


def _run_section(name: str) -> tuple[list[Row], float, str | None]:
    t0 = time.perf_counter()
    try:
        result = importlib.import_module(f"bench.{name}").run()
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        return result, time.perf_counter() - t0, None
    except Exception as exc:
        traceback.print_exc()
        reason = f"n/a: {name} crashed: {type(exc).__name__}: {exc}".splitlines()[0][:160]
        figure = f"{SECTIONS.index(name) + 1}. {name}"
        return [Row(figure, "", None, None, note=reason)], time.perf_counter() - t0, reason


def main(argv: list[str]) -> int:
    names = argv or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    # The load average tells a reader whether something else (a test run) competed for the CPUs.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"mcp-polygon benchmarks - Python {platform.python_version()}, {os.cpu_count()} CPU(s), "
        f"{platform.machine()}, load average {load}",
        flush=True,
    )
    rows: list[Row] = []
    crashed = False
    start = time.perf_counter()
    for name in names:
        print(f"  running {name} ...", end="", flush=True, file=sys.stderr)
        section_rows, elapsed, error = _run_section(name)
        print(f" {elapsed:.1f} s", file=sys.stderr, flush=True)
        rows.extend(section_rows)
        crashed = crashed or error is not None
    print()
    print(render(rows))
    print()
    print(LEGEND)
    print(f"Total {time.perf_counter() - start:.0f} s.")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
