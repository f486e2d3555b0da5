"""The generic tool layer without HTTP: schemas built from the table, argument -> request mapping, page walking."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from mcp_polygon.config import Settings
from mcp_polygon.rest import tools
from mcp_polygon.rest.endpoints import load_endpoints
from mcp_polygon.rest.tools import RestTool, register_rest_tools

ENDPOINTS = {e.name: e for e in load_endpoints()}


class FakeRest:
    """Answers get_json from a list of bodies and records what was asked."""

    def __init__(self, *bodies: Any) -> None:
        self.bodies = list(bodies)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def get_json(self, path: str, params: dict[str, Any], *, not_found_hint: str | None = None) -> Any:
        self.calls.append((path, dict(params)))
        return self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]


def run(name: str, rest: FakeRest, **settings: Any) -> RestTool:
    return RestTool(ENDPOINTS[name], rest, Settings(api_key="k", **settings))  # type: ignore[arg-type]


async def test_schema_is_typed_with_required_path_args_enums_and_no_null_noise():
    server = MCPServer(name="t")
    register_rest_tools(server, FakeRest({}), Settings(api_key="k", toolsets=frozenset({"stocks"})))  # type: ignore[arg-type]
    listed = {t.name: t for t in await server.list_tools()}
    assert len(listed) == 42
    schema = listed["list_trades"].input_schema
    assert schema["required"] == ["ticker"]
    props = schema["properties"]
    assert props["order"]["enum"] == ["asc", "desc"] and "anyOf" not in props["order"]
    assert props["limit"] == {**props["limit"], "type": "integer", "default": 10, "minimum": 1}
    assert "default" not in props["timestamp_gte"] and props["timestamp_gte"]["type"] == "string"
    assert listed["list_trades"].annotations.read_only_hint is True


async def test_arguments_map_to_path_and_vendor_query_names():
    rest = FakeRest({"results": [{"id": "1"}], "status": "OK"})
    text = await run("list_trades", rest)(ticker="BRK.B", timestamp_gte="2024-01-02", order="asc")
    assert rest.calls == [("/v3/trades/BRK.B", {"timestamp.gte": "2024-01-02", "order": "asc", "limit": 10})]
    assert text == "id\n1"


async def test_fixed_parameters_are_always_sent():
    rest = FakeRest({"results": {"name": "Meta", "events": []}})
    await run("get_ticker_changes", rest)(ticker="META")
    assert rest.calls == [("/vX/reference/tickers/META/events", {"types": "ticker_change"})]


async def test_market_type_is_inferred_from_a_tickers_list():
    rest = FakeRest({"tickers": []})
    await run("get_snapshot_all", rest)(tickers="X:BTCUSD,X:ETHUSD")
    assert rest.calls[0][0] == "/v2/snapshot/locale/global/markets/crypto/tickers"


async def test_forex_ticker_without_prefix_is_refused_with_the_fix():
    with pytest.raises(ToolError, match=r"pass ticker='C:EURUSD'"):
        await run("get_snapshot_ticker", FakeRest({}))(ticker="eurusd", market_type="forex")


def _page(n: int, start: int, more: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"results": [{"t": start + i} for i in range(n)], "status": "OK"}
    if more:
        body["next_url"] = (
            f"https://api.massive.com/v2/aggs/ticker/AAPL/range/1/day/{start + n}/2024-12-31?cursor=c{start}"
        )
    return body


AGGS = {"ticker": "AAPL", "multiplier": 1, "timespan": "day", "from_": "2024-01-01", "to": "2024-12-31"}


async def test_walk_follows_next_url_and_hints_the_continuation():
    rest = FakeRest(_page(3, 0, True), _page(3, 3, True))
    text = await run("list_aggs", rest)(**AGGS, max_rows=6)
    assert [c[0] for c in rest.calls] == [
        "/v2/aggs/ticker/AAPL/range/1/day/2024-01-01/2024-12-31",
        "/v2/aggs/ticker/AAPL/range/1/day/3/2024-12-31",
    ]
    assert rest.calls[0][1]["limit"] == 6 and rest.calls[1][1] == {"cursor": "c0"}
    assert text.splitlines()[1:7] == [str(i) for i in range(6)]
    assert text.splitlines()[-1] == (
        '# next page: call list_aggs with ticker="AAPL", multiplier=1, timespan="day", from_="6", to="2024-12-31", '
        'max_rows=6, cursor="c3"'
    )


async def test_walk_cuts_an_oversized_page_and_says_how_to_continue():
    rest = FakeRest(_page(10, 0, True))
    text = await run("list_aggs", rest)(**AGGS, max_rows=4)
    lines = text.splitlines()
    assert lines[1:5] == ["0", "1", "2", "3"] and "cursor" not in text
    assert lines[-1].startswith("# stopped at max_rows=4 bars (6 more fetched, not shown)")


async def test_walk_is_bounded_in_pages(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tools, "MAX_PAGES_PER_CALL", 3)
    rest = FakeRest(_page(1, 0, True), _page(1, 1, True), _page(1, 2, True), _page(1, 3, True))
    text = await run("list_aggs", rest)(**AGGS, max_rows=100)
    assert len(rest.calls) == 3
    assert "# stopped after 3 pages (3 bars); continue with the cursor below" in text
    assert text.splitlines()[-1].startswith("# next page: call list_aggs with")


async def test_walk_never_follows_a_next_url_of_another_shape():
    page = _page(2, 0, False)
    page["next_url"] = "https://elsewhere.example/v3/trades/AAPL?cursor=x"
    rest = FakeRest(page)
    await run("list_aggs", rest)(**AGGS, max_rows=10)
    assert len(rest.calls) == 1
