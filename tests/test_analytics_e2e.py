"""SQL, summaries and store_as through a real MCP client against the simulator (issue 9, end to end).

References are computed in Python from the events the agent read with get_<market>_stream_messages format=json,
which are the events the simulator sent. Waits poll with a deadline; time limits are injected short, never slept.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
import time
from pathlib import Path

import orjson
import pytest

from conftest import mcp_session, ok, text_of, until
from mcp_polygon.analytics import list_compacted
from mcp_polygon.config import Settings
from mcp_polygon.server import build_app
from mcp_polygon.simulator.events import EventFactory
from mcp_polygon.streams import recorder as rec


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(simulated=True)


async def refused(client, name: str, **arguments) -> str:
    result = await client.call_tool(name, arguments)
    assert result.is_error, f"{name} answered: {text_of(result)[:300]}"
    return text_of(result)


def table(text: str) -> list[dict[str, str]]:
    """The CSV rows of an answer (comment lines dropped)."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return list(csv.DictReader(io.StringIO(body)))


async def buffered(client, market: str) -> list[dict]:
    """Every buffered event, paged with since_seq (an answer is capped in size)."""
    events: list[dict] = []
    since = 0
    while True:
        body = orjson.loads(
            await ok(client, f"get_{market}_stream_messages", format="json", limit=1000, since_seq=since)
        )
        if not body["events"]:
            return events
        events += body["events"]
        since = body["next_since_seq"]


async def feed(sim, client, market: str, channels: list[str], events: int) -> list[dict]:
    """Start the stream, send `events` events, and return them once the agent can read them all."""
    sim.ws.set_rate(market, 0)
    await ok(client, f"start_{market}_stream", channels=channels)
    sent = await sim.ws.paced(market, 2000, events / 2000)
    seen: list[dict] = []

    async def all_seen() -> bool:
        seen[:] = await buffered(client, market)
        return len(seen) >= sent

    await until(all_seen)
    return seen


async def replayed_events(client) -> list[dict]:
    """Every recorded stocks event, paged with from_timestamp."""
    events: list[dict] = []
    start: object = "-1h"
    while True:
        body = orjson.loads(
            await ok(client, "replay_stocks_stream_messages", from_timestamp=start, format="json", limit=1000)
        )
        events += [{k: v for k, v in e.items() if k != "received_at"} for e in body["events"]]
        start = body.get("next_from_timestamp")
        if not start or not body["events"]:
            return events


def vwap(trades: list[dict]) -> float:
    return sum(t["p"] * t["s"] for t in trades) / sum(t["s"] for t in trades)


async def test_sql_and_summary_equal_a_reference_computed_from_the_events_sent(sim, settings):
    async with build_app(settings) as app, mcp_session(app.server) as client:
        events = await feed(sim, client, "stocks", ["T.AAPL", "T.MSFT", "Q.AAPL"], 200)
        trades = [e for e in events if e["ev"] == "T"]
        answer = await ok(
            client,
            "query_market_data",
            sql="SELECT symbol, count(*) AS n, sum(price * size) / sum(size) AS vwap, max(price) AS high "
            "FROM stocks_trades GROUP BY symbol ORDER BY symbol",
        )
        rows = table(answer)
        assert [r["symbol"] for r in rows] == sorted({t["sym"] for t in trades})
        for row in rows:
            mine = [t for t in trades if t["sym"] == row["symbol"]]
            assert int(row["n"]) == len(mine)
            assert float(row["vwap"]) == pytest.approx(vwap(mine), rel=1e-12)
            assert float(row["high"]) == max(t["p"] for t in mine)

        summary = {r["symbol"]: r for r in table(await ok(client, "get_stream_summary", market="stocks"))}
        aapl = [t for t in trades if t["sym"] == "AAPL"]
        last_quote = [e for e in events if e["ev"] == "Q"][-1]
        assert float(summary["AAPL"]["last_price"]) == aapl[-1]["p"]
        assert int(summary["AAPL"]["trades"]) == len(aapl)
        assert float(summary["AAPL"]["volume"]) == sum(t["s"] for t in aapl)
        assert float(summary["AAPL"]["vwap"]) == pytest.approx(vwap(aapl), rel=1e-12)
        assert float(summary["AAPL"]["bid"]) == last_quote["bp"] and float(summary["AAPL"]["ask"]) == last_quote["ap"]
        assert summary["MSFT"]["bid"] == ""  # no MSFT quotes subscribed: empty, the column stays for AAPL


async def test_crypto_views_and_stream_csv_call_the_instrument_symbol(sim, settings):
    async with build_app(settings) as app, mcp_session(app.server) as client:
        events = await feed(sim, client, "crypto", ["XT.BTC-USD"], 40)
        csv_text = await ok(client, "get_crypto_stream_messages", limit=5)
        assert "seq,symbol,price" in csv_text and ",pair," not in csv_text
        rows = table(
            await ok(client, "query_market_data", sql="SELECT symbol, count(*) AS n FROM crypto_trades GROUP BY 1")
        )
        assert rows == [{"symbol": "BTC-USD", "n": str(len(events))}]
        described = await ok(client, "query_market_data", sql="DESCRIBE crypto_trades")
        assert "received,TIMESTAMP" in described and "price,DOUBLE" in described


async def test_a_restarted_server_answers_over_the_earlier_recordings_compacted_to_parquet(sim, settings):
    settings = settings.with_overrides(record_max_bytes=512 << 10)  # 64 KB segments: rotations and compactions
    async with build_app(settings) as app, mcp_session(app.server) as client:
        events = await feed(sim, client, "stocks", ["T.*"], 900)
        await ok(client, "stop_stocks_stream")  # closes the open segment: it is queued for compaction too
        assert app.analytics is not None
        await asyncio.to_thread(app.analytics.compactor.wait, 20)
        replayed_before = await replayed_events(client)
    directory = settings.data_dir / "stocks"
    assert list_compacted(directory) and not [s for s in rec.list_segments(directory) if s.closed]
    async with build_app(settings) as app, mcp_session(app.server) as client:
        rows = table(
            await ok(client, "query_market_data", sql="SELECT count(*) AS n, sum(size) AS v FROM stocks_trades")
        )
        assert rows == [{"n": str(len(events)), "v": str(sum(e["s"] for e in events))}]
        replayed = await replayed_events(client)
        assert replayed == replayed_before  # Parquet replays exactly what JSONL did
        assert [e["i"] for e in replayed] == [e["i"] for e in events]


async def test_a_restart_compacts_what_an_earlier_run_left_even_if_no_stream_starts(settings):
    # An earlier run recorded and stopped before compacting: closed segments, and one left open by a process that
    # is gone (kill -9). This run never starts a stream, yet its compactor finishes them, and SQL answers the
    # same before and after.
    directory = settings.data_dir / "stocks"
    factory = EventFactory(3)
    recorder = rec.Recorder(directory, 1 << 30, segment_bytes=16 << 10)
    sizes = []
    for i in range(400):
        ns = time.time_ns() - 3600 * 10**9 + i * 10**6
        events = [factory.event("stocks", "T", "AAPL", ns), factory.event("stocks", "T", "MSFT", ns)]
        sizes += [e["s"] for e in events]
        recorder.write(orjson.dumps(events), len(events), ns)
    recorder.flush()  # the open segment stays open, named with this pid: give it a pid that is gone
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    (open_segment,) = [s for s in rec.list_segments(directory) if not s.closed]
    dead_name = open_segment.path.name.replace(f"-{os.getpid()}.", f"-{gone.pid}.")
    open_segment.path.rename(open_segment.path.with_name(dead_name))  # (its file is left unclosed, as a kill leaves it)
    assert len([s for s in rec.list_segments(directory) if s.closed]) >= 3
    want = [{"n": str(len(sizes)), "v": str(sum(sizes))}]
    sql = "SELECT count(*) AS n, sum(size) AS v FROM stocks_trades"
    async with build_app(settings) as app, mcp_session(app.server) as client:
        assert table(await ok(client, "query_market_data", sql=sql)) == want  # JSONL, or Parquet where done
        assert app.analytics is not None
        assert await asyncio.to_thread(app.analytics.compactor.wait, 30)
        assert not rec.list_segments(directory) and len(list_compacted(directory)) >= 4
        assert table(await ok(client, "query_market_data", sql=sql)) == want


@pytest.mark.parametrize(
    "sql",
    [
        "COPY stocks_trades TO '/tmp/x.csv'",
        "ATTACH '/tmp/x.duckdb' AS x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET memory_limit = '10GB'",
        "PRAGMA version",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT getenv('HOME')",
        "CREATE TABLE t AS SELECT 1",
        "DROP VIEW stocks_trades",
        "SELECT 1; SELECT 2",
    ],
)
async def test_every_refused_statement_class_is_refused_with_one_clear_sentence(client, sim, sql):
    text = await refused(client, "query_market_data", sql=sql)
    assert sim.api_key not in text
    assert text.count("\n") == 0 and len(text) < 1500, text


async def test_errors_say_where_and_what_exists(client, sim):
    assert "line 1, column" in await refused(client, "query_market_data", sql="SELEC 1")
    unknown = await refused(client, "query_market_data", sql="SELECT nope FROM stocks_trades")
    assert "nope" in unknown and "price" in unknown
    assert "stocks_trades" in await refused(client, "query_market_data", sql="SELECT * FROM no_such_table")
    for text in (unknown, await ok(client, "query_market_data", sql="SHOW TABLES")):
        assert sim.api_key not in text


async def test_the_time_limit_interrupts_a_runaway_query_and_the_next_call_answers_at_once(sim, settings):
    settings = settings.with_overrides(query_timeout=0.3)
    async with build_app(settings) as app, mcp_session(app.server) as client:
        started = time.monotonic()
        text = await refused(
            client, "query_market_data", sql="SELECT count(*) FROM range(100000000000) a, range(1000) b"
        )
        assert "0.3 s" in text and "stopped" in text
        assert time.monotonic() - started < 5
        started = time.monotonic()
        assert table(await ok(client, "query_market_data", sql="SELECT 42 AS x")) == [{"x": "42"}]
        assert time.monotonic() - started < 1


async def test_a_running_query_does_not_stall_ingest(sim, settings):
    settings = settings.with_overrides(query_timeout=3.0)
    async with build_app(settings) as app, mcp_session(app.server) as client:
        await ok(client, "start_stocks_stream", channels=["T.AAPL"])
        sim.ws.set_rate("stocks", 200)
        stream = app.streams.stream("stocks")
        await until(lambda: stream.buffer.head > 0)
        slow = asyncio.create_task(
            client.call_tool("query_market_data", {"sql": "SELECT count(*) FROM range(100000000000) a, range(1000) b"})
        )
        before = stream.buffer.head
        await until(lambda: stream.buffer.head >= before + 20)  # events keep arriving while the query runs
        assert not slow.done()
        assert "AAPL" in await ok(client, "get_stocks_stream_messages", limit=3)  # other tools answer too
        assert (await slow).is_error


async def test_store_as_saves_every_page_and_joins_with_a_stream_view(sim, settings):
    async with build_app(settings) as app, mcp_session(app.server) as client:
        events = await feed(sim, client, "stocks", ["T.AAPL"], 30)
        direct = await ok(client, "list_trades", ticker="AAPL", limit=10)
        saved = await ok(client, "list_trades", ticker="AAPL", limit=10, store_as="aapl_trades")
        assert "as table aapl_trades" in saved and "price DOUBLE" in saved
        count = int(table(await ok(client, "query_market_data", sql="SELECT count(*) AS n FROM aapl_trades"))[0]["n"])
        assert count > 10  # every page, whatever the tool's own limit
        assert count == int(saved.split("# saved ")[1].split(" rows")[0].replace(",", ""))
        first = table(direct)[0]
        assert (
            table(await ok(client, "query_market_data", sql="SELECT * FROM aapl_trades LIMIT 1"))[0]["price"]
            == first["price"]
        )

        await ok(client, "get_previous_close_agg", ticker="AAPL", store_as="aapl_prev")
        rows = table(
            await ok(
                client,
                "query_market_data",
                sql="SELECT t.symbol, round(last(t.price ORDER BY t.received) - any_value(p.close), 6) AS gap "
                "FROM stocks_trades t JOIN aapl_prev p ON p.ticker = t.symbol GROUP BY t.symbol",
            )
        )
        prev = table(await ok(client, "get_previous_close_agg", ticker="AAPL"))[0]
        assert rows == [{"symbol": "AAPL", "gap": str(round(events[-1]["p"] - float(prev["close"]), 6))}]
        # Saving again replaces; a view's name or a bad name is refused with what would do.
        await ok(client, "get_previous_close_agg", ticker="MSFT", store_as="aapl_prev")
        assert table(await ok(client, "query_market_data", sql="SELECT ticker FROM aapl_prev")) == [{"ticker": "MSFT"}]
        assert "stream view" in await refused(client, "list_trades", ticker="AAPL", store_as="stocks_trades")
        assert "valid table name" in await refused(client, "list_trades", ticker="AAPL", store_as="Bad-Name")
    async with build_app(settings) as app, mcp_session(app.server) as client:  # saved tables survive restarts
        assert table(await ok(client, "query_market_data", sql="SELECT ticker FROM aapl_prev")) == [{"ticker": "MSFT"}]


async def test_buffered_frames_carry_the_recorders_exact_stamps(sim, settings):
    async with build_app(settings) as app, mcp_session(app.server) as client:
        await feed(sim, client, "stocks", ["T.AAPL"], 20)
        stream = app.streams.stream("stocks")
        assert stream.recorder is not None
        stream.recorder.flush()
        on_disk = [
            int(line.split(b" ", 1)[0])
            for seg in rec.list_segments(Path(settings.data_dir) / "stocks")
            for line in seg.path.read_bytes().splitlines()
        ]
        assert [f.recv_ns for f in app.streams.buffered_frames("stocks")] == on_disk
