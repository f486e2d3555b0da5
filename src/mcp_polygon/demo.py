"""`make demo`: a short scripted MCP session against the built-in simulator, printed as an agent sees it.

It launches the installed `mcp-polygon --simulate` over stdio, exactly as Claude Desktop or Claude Code would,
so what it shows is the real server, not a shortcut. No API key, no internet.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

NEXT_SEQ = re.compile(r"since_seq=(\d+)")


def out(text: str = "") -> None:
    # The demo is for a human at a terminal: stdout is not a protocol channel here.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def show(text: str, max_lines: int = 14) -> None:
    lines = text.rstrip("\n").splitlines()
    shown = lines[:max_lines]
    if len(lines) > max_lines:
        shown.append(f"... ({len(lines) - max_lines} more lines)")
    out(textwrap.indent("\n".join(shown), "    "))


def server_command() -> str:
    """The installed console script next to this interpreter, else whatever is on PATH."""
    beside = Path(sys.executable).with_name("mcp-polygon")
    return str(beside) if beside.exists() else (shutil.which("mcp-polygon") or "mcp-polygon")


async def call(client: Client, tool: str, **arguments: object) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    out(f"\n>>> {tool}({args})")
    result = await client.call_tool(tool, arguments)
    text = "".join(getattr(block, "text", "") for block in result.content)
    if result.is_error:
        out("    [tool error]")
    show(text)
    return text


def next_seq(text: str) -> int | None:
    found = NEXT_SEQ.findall(text)
    return int(found[-1]) if found else None


async def run_demo(data_dir: str) -> None:
    env = {"POLYGON_DATA_DIR": data_dir, "PATH": os.environ.get("PATH", "")}
    params = StdioServerParameters(command=server_command(), args=["--simulate", "--log-level", "WARNING"], env=env)
    started = time.monotonic()
    async with Client(params) as client:
        tools = await client.list_tools()
        out(
            f"Connected to {client.server_info.name if client.server_info else 'server'} over stdio; "
            f"{len(tools.tools)} tools."
        )

        out("\n== REST: daily bars for a stock")
        await call(client, "get_aggs", ticker="AAPL", multiplier=1, timespan="day", from_="2024-01-02", to="2024-01-12")

        out("\n== Streams: start stocks and crypto")
        await call(client, "start_stocks_stream", channels=["T.AAPL", "Q.AAPL", "AM.MSFT"])
        await call(client, "start_crypto_stream", channels=["XT.BTC-USD", "XQ.ETH-USD"])
        await asyncio.sleep(1.5)

        out("\n== Read the newest messages, then only what is new since then")
        for market in ("stocks", "crypto"):
            first = await call(client, f"get_{market}_stream_messages", limit=5)
            await asyncio.sleep(1.0)
            seq = next_seq(first)
            if seq is None:
                await call(client, f"get_{market}_stream_messages", limit=5)
            else:
                await call(client, f"get_{market}_stream_messages", limit=5, since_seq=seq)

        out("\n== Status with rates")
        await call(client, "get_stocks_stream_status")

        out("\n== Replay the last seconds from the recording on disk")
        now = time.time()
        await call(
            client,
            "replay_stocks_stream_messages",
            from_timestamp=str(int(now - 30)),
            to_timestamp=str(int(now + 1)),
            limit=5,
        )

        out("\n== Answers, not rows: where each symbol is now")
        await call(client, "get_stream_summary", market="stocks")

        out("\n== Save a REST result as a table, then join it with the live trades in SQL")
        await call(client, "get_previous_close_agg", ticker="AAPL", store_as="aapl_prev")
        await call(
            client,
            "query_market_data",
            sql="WITH live AS (SELECT symbol, count(*) AS trades, sum(price * size) / sum(size) AS live_vwap "
            "FROM stocks_trades GROUP BY symbol) "
            "SELECT l.symbol, l.trades, round(l.live_vwap, 2) AS live_vwap, p.close AS prev_close, "
            "round(100 * (l.live_vwap / p.close - 1), 2) AS pct_from_prev_close "
            "FROM live l JOIN aapl_prev p ON p.ticker = l.symbol",
        )

        out("\n== Clean shutdown")
        await call(client, "stop_stocks_stream")
        await call(client, "stop_crypto_stream")
    out(f"\nDemo finished in {time.monotonic() - started:.1f} s. All data above came from the simulator.")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mcp-polygon-demo-") as data_dir:
        asyncio.run(run_demo(data_dir))


if __name__ == "__main__":
    main()
