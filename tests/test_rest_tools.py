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
    # limit's range and its usual default (10) are said once, in the instructions; another default is shown.
    assert {k: v for k, v in props["limit"].items() if k != "title"} == {"type": "integer"}
    aggs_limit = listed["get_aggs"].input_schema["properties"]["limit"]
    assert {k: v for k, v in aggs_limit.items() if k != "title"} == {"type": "integer", "default": 120}
    assert "default" not in props["timestamp"] and props["timestamp"]["type"] == "string"
    assert not any(name.startswith("timestamp_") for name in props), "range variants fold into one argument"


async def test_every_rest_tool_has_a_title_and_read_only_idempotent_open_world_hints():
    server = MCPServer(name="t")
    register_rest_tools(server, FakeRest({}), Settings(api_key="k"))  # type: ignore[arg-type]
    listed = await server.list_tools()
    assert len(listed) == 81
    for tool in listed:
        assert tool.title and tool.title != tool.name, tool.name
        hints = tool.annotations
        assert hints is not None, tool.name
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint, hints.open_world_hint) == (
            True,
            False,
            True,
            True,
        ), tool.name
    assert {t.name: t.title for t in listed}["list_benzinga_earnings"] == "List Benzinga earnings"


async def test_descriptions_do_not_restate_type_enum_or_default():
    server = MCPServer(name="t")
    register_rest_tools(server, FakeRest({}), Settings(api_key="k"))  # type: ignore[arg-type]
    for tool in await server.list_tools():
        assert "Returns CSV" not in (tool.description or ""), tool.name
        for name, prop in tool.input_schema["properties"].items():
            text = prop.get("description", "")
            assert "default" not in text.lower(), (tool.name, name, text)
            assert "comma-separated." not in text.lower() or "all of" in text.lower(), (tool.name, name, text)
            for value in prop.get("enum", []):
                assert f"'{value}'" not in text and f"{value}, " not in text, (tool.name, name, text)


async def test_arguments_map_to_path_and_vendor_query_names():
    rest = FakeRest({"results": [{"id": "1"}], "status": "OK"})
    text = await run("list_trades", rest)(ticker="BRK.B", timestamp=">=2024-01-02", order="asc")
    assert rest.calls == [("/v3/trades/BRK.B", {"timestamp.gte": "2024-01-02", "order": "asc", "limit": 10})]
    assert text.splitlines()[-1] == "1"


FILTER_CASES = [
    ("2024-01-02", {"timestamp": "2024-01-02"}),
    (">=2024-01-02", {"timestamp.gte": "2024-01-02"}),
    (">2024-01-02", {"timestamp.gt": "2024-01-02"}),
    ("<=2024-01-02", {"timestamp.lte": "2024-01-02"}),
    ("<2024-01-02", {"timestamp.lt": "2024-01-02"}),
    ("2024-01-02..2024-01-31", {"timestamp.gte": "2024-01-02", "timestamp.lte": "2024-01-31"}),
    ("2024-01-02..", {"timestamp.gte": "2024-01-02"}),
    ("..2024-01-31", {"timestamp.lte": "2024-01-31"}),
    ("=2024-01-02", {"timestamp": "2024-01-02"}),
    (" >2024-01-02   <2024-01-31 ", {"timestamp.gt": "2024-01-02", "timestamp.lt": "2024-01-31"}),
    (1704153600000000000, {"timestamp": "1704153600000000000"}),
]


@pytest.mark.parametrize(("value", "sent"), FILTER_CASES, ids=[str(case[0]) for case in FILTER_CASES])
async def test_one_range_argument_reaches_every_vendor_variant(value: Any, sent: dict[str, str]):
    rest = FakeRest({"results": [], "status": "OK"})
    await run("list_trades", rest)(ticker="AAPL", timestamp=value)
    assert rest.calls[0][1] == {**sent, "limit": 10}


async def test_a_list_filter_becomes_any_of_and_numbers_are_checked():
    rest = FakeRest({"results": [], "status": "OK"})
    await run("list_benzinga_earnings", rest)(ticker="AAPL, MSFT", importance="3..5", fiscal_year=2024)
    assert rest.calls[0][1] == {
        "ticker.any_of": "AAPL,MSFT",
        "importance.gte": "3",
        "importance.lte": "5",
        "fiscal_year": "2024",
        "limit": 10,
    }
    with pytest.raises(ToolError, match=r"importance '>=high' has 'high', which is not an integer: pass a value"):
        await run("list_benzinga_earnings", rest)(importance=">=high")


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        (
            "list_trades",
            {"timestamp": "=>2024-01-02"},
            r"timestamp '=>2024-01-02' is not one of the forms: pass a value, >=v >v <=v <v, lo..hi \(e.g.",
        ),
        ("list_trades", {"timestamp": ">2024-01-02 2024-01-31"}, r"mixes comparisons with other text: pass"),
        ("list_trades", {"timestamp": ">1 >2"}, r"repeats a comparison"),
        ("list_trades", {"timestamp": ".."}, r"is not a range: pass"),
        ("list_trades", {"timestamp": "1..2..3"}, r"is not a range"),
        ("list_trades", {"timestamp": "1...3"}, r"is not a range"),
        ("list_trades", {"timestamp": "   "}, r"is empty: pass"),
        # list_trades has no timestamp.any_of: a list is not one of its forms, and the error names the forms it has.
        ("list_trades", {"timestamp": "a,b"}, None),
        ("list_futures_products", {"sector": "metals"}, r"sector 'metals' is not one of the valid values: pass one"),
        ("list_futures_products", {"sector": ">=asia"}, r"uses a form this filter does not take: pass a value, a,b,c"),
        ("list_benzinga_earnings", {"ticker": ">=AA/PL"}, r"ticker 'AA/PL' is not a ticker"),
    ],
)
async def test_bad_filter_syntax_is_one_sentence_naming_the_valid_forms(tool: str, args: dict[str, Any], message):
    rest = FakeRest({"results": [], "status": "OK"})
    base = {"ticker": "AAPL"} if tool == "list_trades" else {}
    if message is None:  # passed on as one value for the vendor to judge, as before folding
        await run(tool, rest)(**base, **args)
        assert rest.calls[0][1]["timestamp"] == "a,b"
        return
    with pytest.raises(ToolError, match=message) as caught:
        await run(tool, rest)(**base, **args)
    assert "\n" not in str(caught.value) and str(caught.value).endswith(".")
    assert rest.calls == [], "nothing is sent for a filter that does not parse"


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


async def test_a_range_filter_reaches_the_vendor_as_its_query_parameters(client, sim):
    """Through a real MCP session: the simulator sees the vendor's own `.gte/.lte/.any_of` parameters."""
    result = await client.call_tool(
        "list_benzinga_earnings", {"date": "2024-01-01..2024-03-31", "ticker": "AAPL,MSFT", "importance": ">3"}
    )
    assert not result.is_error, result.content[0].text
    params = sim.rest.requests[-1].params
    assert {k: v for k, v in params.items() if k != "limit"} == {
        "date.gte": "2024-01-01",
        "date.lte": "2024-03-31",
        "ticker.any_of": "AAPL,MSFT",
        "importance.gt": "3",
    }


async def test_bad_range_syntax_reaches_the_agent_as_one_sentence(client, sim):
    seen = len(sim.rest.requests)
    result = await client.call_tool("list_trades", {"ticker": "AAPL", "timestamp": "2024-01-01...2024-02-01"})
    text = result.content[0].text
    assert result.is_error and "\n" not in text
    assert "timestamp '2024-01-01...2024-02-01' is not a range: pass a value, >=v >v <=v <v, lo..hi (e.g." in text
    assert len(sim.rest.requests) == seen
