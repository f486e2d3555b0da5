"""The installed `mcp-polygon` console script over stdio, as an MCP host launches it, against the simulator."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from conftest import text_of
from mcp_polygon.rest.endpoints import load_endpoints
from mcp_polygon.rest.errors import NO_KEY
from mcp_polygon.simulator import Simulator

SCRIPT = Path(sys.executable).with_name("mcp-polygon")
REST_TOOLS = {e.name for e in load_endpoints()}


def server_params(sim: Simulator, tmp_path: Path, *, key: str | None) -> StdioServerParameters:
    env = {
        "POLYGON_REST_URL": sim.rest_url,
        "POLYGON_WS_URL": sim.ws_url,
        "POLYGON_DATA_DIR": str(tmp_path / "data"),
        "POLYGON_MAX_RETRIES": "0",
    }
    if key:
        env["POLYGON_API_KEY"] = key
    return StdioServerParameters(command=str(SCRIPT), args=["--log-level", "WARNING"], env=env)


pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed (pip install -e .)")


async def test_console_script_lists_and_calls_rest_tools(sim: Simulator, tmp_path: Path):
    async with Client(server_params(sim, tmp_path, key=sim.api_key)) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("get_market_status", {})
    assert REST_TOOLS <= listed
    assert not result.is_error
    header, row = text_of(result).splitlines()[:2]
    assert header.startswith("afterHours,currencies_crypto,currencies_fx") and row.startswith("true,open,open")
    seen = sim.rest.requests[-1]
    assert (seen.path, seen.auth) == ("/v1/marketstatus/now", "bearer")


async def test_console_script_answers_with_readable_columns_and_iso_times(sim: Simulator, tmp_path: Path):
    """The mapping ships with the package (rest/columns_data.json): the installed command reads it too."""
    async with Client(server_params(sim, tmp_path, key=sim.api_key)) as client:
        result = await client.call_tool("get_last_trade", {"ticker": "AAPL"})
    header, row = text_of(result).splitlines()[:2]
    columns = dict(zip(header.split(","), row.split(","), strict=True))
    assert columns["price"] == "129.8473" and columns["sip_timestamp"] == "2021-04-08T17:02:22.969834Z"


async def test_console_script_without_key_explains_how_to_set_it(sim: Simulator, tmp_path: Path):
    async with Client(server_params(sim, tmp_path, key=None)) as client:
        result = await client.call_tool("get_market_status", {})
    assert result.is_error and text_of(result).endswith(NO_KEY)
    assert sim.rest.requests == []


async def test_simulate_flag_marks_every_answer_as_synthetic(tmp_path: Path):
    params = StdioServerParameters(
        command=str(SCRIPT),
        args=["--log-level", "WARNING", "--simulate"],
        env={"POLYGON_DATA_DIR": str(tmp_path / "data")},
    )
    async with Client(params) as client:
        result = await client.call_tool("list_trades", {"ticker": "AAPL", "limit": 2})
    lines = text_of(result).splitlines()
    assert not result.is_error
    assert lines[0] == "# SIMULATED DATA (mcp-polygon --simulate): not real market data"
    assert lines[1].startswith("conditions,decimal_size,exchange,id") and len(lines) == 5  # header, 2 rows, next page
