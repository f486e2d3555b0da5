"""The REST tools end to end: MCP client -> server -> RestClient -> simulator, for every one of the 81 tools.

Expected rows come from the vendor examples the simulator serves (simulator/data/rest_examples.json), read here
with a small independent reading of the documented CSV contract (nested keys joined by '_', lists of scalars
joined by '|', lists of objects as JSON), under the readable names and ISO times of rest/columns.py (whose
mapping tests/test_rest_columns.py checks against the vendor spec).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import socket
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import pytest
from mcp.client import Client

from conftest import mcp_session, text_of
from mcp_polygon.config import Settings
from mcp_polygon.rest.columns import view_for
from mcp_polygon.rest.endpoints import PATH_ARG_NAMES, Endpoint, load_endpoints
from mcp_polygon.rest.errors import NO_KEY
from mcp_polygon.rest.tools import SIMULATED_HEADER
from mcp_polygon.server import App, build_app
from mcp_polygon.simulator import Simulator
from mcp_polygon.simulator.rest import RestSimulator

ENDPOINTS = {e.name: e for e in load_endpoints()}
EXAMPLES = json.loads(resources.files("mcp_polygon.simulator").joinpath("data/rest_examples.json").read_text("utf-8"))[
    "paths"
]
# Required arguments the vendor document gives no example for.
EXTRA_ARGS = {
    "list_benzinga_consensus_ratings": {"ticker": "AAPL"},
    "get_futures_contract_details": {"ticker": "ESZ5"},
    "get_futures_product_details": {"product_code": "ES"},
    "list_futures_quotes": {"ticker": "GCJ5"},
    "list_futures_trades": {"ticker": "ESZ4"},
    "list_futures_schedules_by_product_code": {"product_code": "ERL"},
}
# Bars are generated per request, not vendor examples (tests/test_rest_simulator.py checks the previous close).
GENERATED_BARS = {"get_aggs", "list_aggs"}
GENERATED_CLOSE = {"get_previous_close_agg"}
ENVELOPE = {"status", "request_id", "count", "next_url", "resultsCount", "queryCount", "adjusted"}
DATAPOINT = {"value", "unit", "label", "order", "source", "derived_from", "formula", "xpath"}


def call_args(ep: Endpoint) -> dict[str, Any]:
    """Arguments for a plain call: the vendor's example path values, so the fixture rows come back unchanged."""
    examples = EXAMPLES[ep.path]["path_examples"]
    args = {PATH_ARG_NAMES.get(k, k): v for k, v in examples.items()}
    return {**args, **EXTRA_ARGS.get(ep.name, {})}


def csv_rows(text: str) -> list[dict[str, str]]:
    """Rows of the first CSV block (comment lines are hints, not data)."""
    block = []
    for line in text.splitlines():
        if line.startswith("#"):
            if block:
                break
            continue
        block.append(line)
    return list(csv.DictReader(io.StringIO("\n".join(block))))


def _is_object_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def first_fixture_row(body: Any) -> dict[str, Any]:
    if isinstance(body, list):
        return body[0]
    for key in ("results", "tickers", "data"):
        if isinstance(body.get(key), list):
            return body[key][0]
    for key in ("results", "data", "ticker"):
        if isinstance(body.get(key), dict):
            obj = body[key]
            if isinstance(obj.get("values"), list):
                return obj["values"][0]
            return {k: v for k, v in obj.items() if not _is_object_list(v)}
    row: dict[str, Any] = {}
    for key, value in body.items():
        if key == "last":
            row.update(value)
        elif key not in ENVELOPE:
            row[key] = value
    return row


def leaves(obj: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        name = f"{prefix}_{key}" if prefix else key
        if isinstance(value, dict):
            if "value" in value and set(value) <= DATAPOINT:
                yield name, value["value"]
            else:
                yield from leaves(value, name)
        else:
            yield name, value


def same(cell: str, value: Any) -> bool:
    if _is_object_list(value):
        return json.loads(cell) == value
    if isinstance(value, list):
        return cell == "|".join(str(v) for v in value)
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return cell == str(int(value))
    return cell == str(value)


def unix_ms(text: str) -> int:
    """A bar's ISO time ('2024-01-02' for daily bars, '2024-01-02T14:30:00Z' finer) as Unix milliseconds."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


async def call(client: Client, name: str, args: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool(name, args)
    return bool(result.is_error), text_of(result)


@pytest.fixture
def fast_retries(app: App) -> App:
    app.rest.backoff_base = 0.01  # the retry count is what is tested, not the waiting
    return app


# ---- every tool ------------------------------------------------------------------------------------------------


async def test_every_tool_returns_the_fixture_rows(client: Client, sim: Simulator):
    listed = {t.name for t in (await client.list_tools()).tools}
    assert set(ENDPOINTS) <= listed
    problems = []
    for name, ep in ENDPOINTS.items():
        args = call_args(ep)
        is_error, text = await call(client, name, args)
        if is_error:
            problems.append(f"{name}: error {text}")
            continue
        assert sim.api_key not in text
        rows = csv_rows(text)
        if not rows:
            problems.append(f"{name}: no rows in {text[:200]!r}")
            continue
        if name in GENERATED_CLOSE:
            bar = rows[0]
            if not float(bar["low"]) <= float(bar["close"]) <= float(bar["high"]) or len(rows) != 1:
                problems.append(f"{name}: bad generated bar {rows}")
            continue
        if name in GENERATED_BARS:
            bars = rows
            ok = all(float(b["low"]) <= float(b["open"]) <= float(b["high"]) for b in bars) and len(bars) == 20
            if not ok:
                problems.append(f"{name}: bad generated bars {bars[:2]}")
            continue
        expected = first_fixture_row(EXAMPLES[ep.path]["body"])
        view = view_for(ep.path, args)
        for vendor_column, vendor_value in leaves(expected):
            if vendor_column in args:
                continue  # filters the simulator applied on purpose
            column, value = view.name(vendor_column), view.value(vendor_column, vendor_value)
            if column not in rows[0] or not same(rows[0][column], value):
                problems.append(f"{name}: {column}={rows[0].get(column)!r}, fixture {value!r}")
        assert not {"request_id", "next_url"} & set(rows[0]), name
    assert not problems, "\n".join(problems)


async def test_paginated_tools_end_with_a_ready_to_use_next_page_call(client: Client):
    for name, ep in ENDPOINTS.items():
        if not ep.paginated or name in GENERATED_BARS or not EXAMPLES[ep.path]["has_limit"]:
            continue
        args = call_args(ep)
        _, text = await call(client, name, args)
        last = text.splitlines()[-1]
        assert last.startswith(f"# next page: call {name} with "), (name, last)
        for arg in (a for a in ep.args if a.where == "path"):
            assert f"{arg.name}=" in last, (name, last)


async def test_following_the_cursor_walks_every_row(client: Client, sim: Simulator):
    ids, args = [], {"ticker": "AAPL", "limit": 10}
    for _ in range(5):
        is_error, text = await call(client, "list_trades", args)
        assert not is_error
        ids += [row["id"] for row in csv_rows(text)]
        hint = re.search(r'# next page: call list_trades with ticker="AAPL", cursor="([^"]+)"$', text)
        if not hint:
            break
        args = {"ticker": "AAPL", "cursor": hint.group(1)}
    assert len(ids) == len(set(ids)) == 25
    assert all(r.params.keys() == {"cursor"} for r in sim.rest.requests[1:])


async def test_aggs_next_page_moves_from_and_continues_the_bars(client: Client):
    args = {"ticker": "AAPL", "multiplier": 1, "timespan": "day", "from_": "2024-01-01", "to": "2024-03-31"}
    bars: list[dict[str, str]] = []
    args["limit"] = 30
    for _ in range(5):
        is_error, text = await call(client, "get_aggs", args)
        assert not is_error
        bars += csv_rows(text)
        hint = re.search(r"# next page: call get_aggs with (.+)$", text)
        if not hint:
            break
        args = {k: json.loads(v) for k, v in re.findall(r'(\w+)=("[^"]*"|\d+)', hint.group(1))}
        # The vendor moves `from` to the next bar (in Unix ms) and carries limit/sort in the cursor.
        assert int(args["from_"]) > unix_ms(bars[-1]["window_start"])
        assert args["to"] == "2024-03-31" and "cursor" in args
    times = [unix_ms(b["window_start"]) for b in bars]
    assert len(bars) == 65 and times == sorted(times) and len(set(times)) == 65


async def test_list_aggs_walks_pages_up_to_max_rows(client: Client, sim: Simulator):
    args = {"ticker": "AAPL", "multiplier": 5, "timespan": "minute", "from_": "2024-01-02", "to": "2024-01-04"}
    is_error, text = await call(client, "list_aggs", {**args, "max_rows": 300})
    assert not is_error
    bars = csv_rows(text)
    times = [unix_ms(b["window_start"]) for b in bars]
    assert len(bars) == 300 and times == sorted(times) and len(set(times)) == 300
    assert len(sim.rest.requests) == 5  # 300 base aggregates per page = 60 five-minute bars
    assert text.splitlines()[-1].startswith("# next page: call list_aggs with ")


async def test_whole_market_tools_cap_rows_and_say_so(client: Client):
    _, text = await call(client, "get_grouped_daily_aggs", {"date": "2024-01-02"})
    assert len(csv_rows(text)) == 50
    assert text.splitlines()[-1] == "# showing 50 of 120 rows; pass max_rows (up to 50000) to see more"
    _, text = await call(client, "get_grouped_daily_aggs", {"date": "2024-01-02", "max_rows": 500})
    assert len(csv_rows(text)) == 120 and "# showing" not in text


async def test_snapshot_market_type_follows_the_ticker_prefix(client: Client, sim: Simulator):
    is_error, text = await call(client, "get_snapshot_ticker", {"ticker": "C:EURUSD"})
    assert not is_error and csv_rows(text)[0]["ticker"] == "C:EURUSD"
    assert sim.rest.requests[-1].path == "/v2/snapshot/locale/global/markets/forex/tickers/C:EURUSD"
    await call(client, "get_snapshot_direction", {"direction": "losers", "market_type": "crypto"})
    assert sim.rest.requests[-1].path == "/v2/snapshot/locale/global/markets/crypto/losers"


async def test_universal_snapshot_shows_per_ticker_errors(client: Client):
    is_error, text = await call(client, "list_universal_snapshots", {"ticker": "AAPL,I:NOTFOUND,X:BTCUSD"})
    assert not is_error
    rows = {row["ticker"]: row for row in csv_rows(text)}
    assert rows["I:NOTFOUND"]["error"] == "NOT_FOUND" and rows["I:NOTFOUND"]["message"] == "Ticker not found."
    assert rows["AAPL"]["error"] == "" and rows["X:BTCUSD"]["type"] == "crypto"


async def test_output_is_capped_with_a_truncation_marker(settings: Settings):
    async with build_app(settings.with_overrides(max_response_chars=1500)) as app, mcp_session(app.server) as client:
        is_error, text = await call(client, "get_grouped_daily_aggs", {"date": "2024-01-02", "max_rows": 120})
    assert not is_error and len(text) <= 1500
    shown = len(csv_rows(text))
    assert f"# truncated: {120 - shown} more rows not shown (output capped at 1500 characters)" in text


async def test_simulated_servers_say_so_on_every_answer(settings: Settings):
    async with build_app(settings.with_overrides(simulated=True)) as app, mcp_session(app.server) as client:
        _, text = await call(client, "get_market_status", {})
        is_error, error = await call(client, "get_ticker_details", {"ticker": "NOTFOUND"})
    assert text.splitlines()[0] == SIMULATED_HEADER
    assert is_error and SIMULATED_HEADER not in error


# ---- errors ----------------------------------------------------------------------------------------------------


def one_sentence(text: str, tool: str) -> str:
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), text
    message = text[len(prefix) :]
    assert message.endswith(".") and "\n" not in message, message
    return message


async def test_server_starts_without_a_key_and_says_how_to_set_it(sim: Simulator, settings: Settings):
    async with build_app(settings.with_overrides(api_key=None)) as app, mcp_session(app.server) as client:
        assert len((await client.list_tools()).tools) >= 81
        is_error, text = await call(client, "get_market_status", {})
    assert is_error and one_sentence(text, "get_market_status") == NO_KEY
    assert sim.rest.requests == []


async def test_wrong_key(settings: Settings):
    async with build_app(settings.with_overrides(api_key="not-the-key")) as app, mcp_session(app.server) as client:
        is_error, text = await call(client, "get_market_status", {})
    assert is_error and "401: Unknown API Key" in one_sentence(text, "get_market_status")
    assert "not-the-key" not in text


@pytest.mark.parametrize(
    ("fault", "tool", "args", "expected"),
    [
        ({"status": 403}, "list_trades", {"ticker": "AAPL"}, "Your plan does not include this data (403"),
        ({"status": 429, "retry_after": 0, "times": None}, "list_quotes", {"ticker": "AAPL"}, "Rate limit reached"),
        ({"status": 503, "times": None}, "get_last_trade", {"ticker": "AAPL"}, "failed (503) after 2 retries"),
        ({"status": 500, "times": None}, "get_last_quote", {"ticker": "AAPL"}, "(500: Internal server error)"),
        ({"invalid_json": True}, "list_splits", {}, "not valid JSON (HTTP 200, application/json)"),
        (
            {"status": 400, "message": "Bad timestamp"},
            "list_trades",
            {"ticker": "AAPL"},
            "invalid (400: Bad timestamp)",
        ),
    ],
)
async def test_vendor_failures_become_one_actionable_sentence(
    client: Client, sim: Simulator, fast_retries: App, fault, tool, args, expected
):
    sim.rest.inject(**fault)
    is_error, text = await call(client, tool, args)
    assert is_error and expected in one_sentence(text, tool)
    assert sim.api_key not in text


async def test_natural_404_and_400(client: Client):
    is_error, text = await call(client, "get_ticker_details", {"ticker": "NOTFOUND"})
    assert is_error and one_sentence(text, "get_ticker_details") == (
        "Nothing found (404: Ticker not found): check ticker='NOTFOUND' (symbols are case-sensitive; dates are "
        "YYYY-MM-DD)."
    )
    args = {"ticker": "AAPL", "multiplier": 1, "timespan": "day", "from_": "yesterday", "to": "2024-01-05"}
    is_error, text = await call(client, "get_aggs", args)
    assert is_error and "invalid (400: Could not parse 'yesterday'" in one_sentence(text, "get_aggs")


async def test_timeout_is_reported(sim: Simulator, settings: Settings):
    sim.rest.inject(delay=1.0, times=None)
    tight = settings.with_overrides(request_timeout=0.2, max_retries=1)
    async with build_app(tight) as app, mcp_session(app.server) as client:
        is_error, text = await call(client, "get_market_status", {})
    assert is_error and "did not answer within 0.2 s (tried 2 times)" in one_sentence(text, "get_market_status")


async def test_connection_refused_is_reported(settings: Settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = settings.with_overrides(rest_url=f"http://127.0.0.1:{port}", max_retries=0)
    async with build_app(dead) as app, mcp_session(app.server) as client:
        is_error, text = await call(client, "get_market_status", {})
    assert is_error and "connection refused" in one_sentence(text, "get_market_status")


async def test_bad_arguments_name_the_valid_choices(client: Client):
    is_error, text = await call(client, "list_trades", {"ticker": "AAPL", "order": "up"})
    assert is_error and "'asc' or 'desc'" in text
    is_error, text = await call(client, "get_snapshot_ticker", {"ticker": "X:BTCUSD", "market_type": "forex"})
    assert is_error and "market_type='crypto'" in one_sentence(text, "get_snapshot_ticker")
    is_error, text = await call(client, "get_snapshot_all", {"market_type": "crypto", "include_otc": True})
    assert is_error and "include_otc applies only to market_type stocks" in one_sentence(text, "get_snapshot_all")
    is_error, text = await call(client, "list_trades", {"ticker": "AAPL", "cursor": "~%%%"})
    assert is_error and "copy it exactly" in one_sentence(text, "list_trades")


async def test_the_key_appears_in_no_output_or_error():
    key = "sk-LEAKCHECK-0123456789abcdef"
    async with RestSimulator(api_key=key) as rest_sim:
        settings = Settings(api_key=key, rest_url=rest_sim.url, max_retries=0)
        async with build_app(settings) as app, mcp_session(app.server) as client:
            outputs = [text_of(await client.call_tool("list_trades", {"ticker": "AAPL"}))]
            for fault in ({"status": 400, "message": f"bad apiKey={key}"}, {"status": 401}, {"status": 502}):
                rest_sim.inject(**fault)
                outputs.append(text_of(await client.call_tool("list_trades", {"ticker": "AAPL"})))
    assert all(key not in out for out in outputs)
    assert "apiKey=***" in outputs[1]


# ---- toolsets and concurrency ----------------------------------------------------------------------------------


async def test_toolset_filter_registers_only_those_tools(settings: Settings):
    async with build_app(settings.with_overrides(toolsets=frozenset({"crypto", "economy"}))) as app:
        async with mcp_session(app.server) as client:
            listed = {t.name for t in (await client.list_tools()).tools}
    wanted = {n for n, e in ENDPOINTS.items() if e.toolset in ("crypto", "economy")}
    assert listed & set(ENDPOINTS) == wanted and len(wanted) == 9


async def test_a_slow_call_does_not_hold_up_others(client: Client, sim: Simulator):
    sim.rest.inject("/v3/trades", delay=2.0)
    started = time.monotonic()
    slow = asyncio.create_task(client.call_tool("list_trades", {"ticker": "AAPL"}))
    await asyncio.sleep(0.05)
    fast_calls = [
        ("get_market_status", {}),
        ("list_quotes", {"ticker": "AAPL"}),
        ("get_last_trade", {"ticker": "AAPL"}),
        ("list_inflation", {}),
        ("get_snapshot_ticker", {"ticker": "AAPL"}),
    ]
    results = await asyncio.gather(*(client.call_tool(n, a) for n, a in fast_calls))
    fast_done = time.monotonic() - started
    assert not any(r.is_error for r in results)
    assert not slow.done() and fast_done < 1.5
    slow_result = await slow
    assert not slow_result.is_error and time.monotonic() - started >= 2.0
