"""Every REST tool against the vendor OpenAPI document: names, paths, and every parameter a tool can send.

The expected names and paths below are the project's tool specification (81 tools); the parameters are checked
against specs/massive_rest_openapi.json directly, not against the generated data the server uses.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import re
from pathlib import Path

import pytest

from mcp_polygon.rest.endpoints import INDICATOR_DEFAULTS, PATH_ARG_NAMES, TOOLS, Endpoint, load_endpoints

ROOT = Path(__file__).resolve().parent.parent
SPEC = json.loads((ROOT / "specs" / "massive_rest_openapi.json").read_text())

EXPECTED = [
    ("stocks", "get_aggs", "/v2/aggs/ticker/{stocksTicker}/range/{multiplier}/{timespan}/{from}/{to}"),
    ("stocks", "list_aggs", "/v2/aggs/ticker/{stocksTicker}/range/{multiplier}/{timespan}/{from}/{to}"),
    ("stocks", "get_grouped_daily_aggs", "/v2/aggs/grouped/locale/us/market/stocks/{date}"),
    ("stocks", "get_daily_open_close_agg", "/v1/open-close/{stocksTicker}/{date}"),
    ("stocks", "get_previous_close_agg", "/v2/aggs/ticker/{stocksTicker}/prev"),
    ("stocks", "list_trades", "/v3/trades/{stockTicker}"),
    ("stocks", "get_last_trade", "/v2/last/trade/{stocksTicker}"),
    ("stocks", "list_quotes", "/v3/quotes/{stockTicker}"),
    ("stocks", "get_last_quote", "/v2/last/nbbo/{stocksTicker}"),
    ("stocks", "list_universal_snapshots", "/v3/snapshot"),
    ("stocks", "get_snapshot_all", "/v2/snapshot/locale/us/markets/stocks/tickers"),
    ("stocks", "get_snapshot_direction", "/v2/snapshot/locale/us/markets/stocks/{direction}"),
    ("stocks", "get_snapshot_ticker", "/v2/snapshot/locale/us/markets/stocks/tickers/{stocksTicker}"),
    ("stocks", "get_market_holidays", "/v1/marketstatus/upcoming"),
    ("stocks", "get_market_status", "/v1/marketstatus/now"),
    ("stocks", "list_tickers", "/v3/reference/tickers"),
    ("stocks", "get_ticker_details", "/v3/reference/tickers/{ticker}"),
    ("stocks", "list_ticker_news", "/v2/reference/news"),
    ("stocks", "get_related_companies", "/v1/related-companies/{ticker}"),
    ("stocks", "get_ticker_changes", "/vX/reference/tickers/{id}/events"),
    ("stocks", "list_ticker_events", "/vX/reference/tickers/{id}/events"),
    ("stocks", "get_ticker_types", "/v3/reference/tickers/types"),
    ("stocks", "list_splits", "/v3/reference/splits"),
    ("stocks", "list_dividends", "/v3/reference/dividends"),
    ("stocks", "list_conditions", "/v3/reference/conditions"),
    ("stocks", "get_exchanges", "/v3/reference/exchanges"),
    ("stocks", "list_stock_financials", "/vX/reference/financials"),
    ("stocks", "list_ipos", "/vX/reference/ipos"),
    ("stocks", "list_short_interest", "/stocks/v1/short-interest"),
    ("stocks", "list_short_volume", "/stocks/v1/short-volume"),
    ("stocks", "list_benzinga_analyst_insights", "/benzinga/v1/analyst-insights"),
    ("stocks", "list_benzinga_analysts", "/benzinga/v1/analysts"),
    ("stocks", "list_benzinga_consensus_ratings", "/benzinga/v1/consensus-ratings/{ticker}"),
    ("stocks", "list_benzinga_earnings", "/benzinga/v1/earnings"),
    ("stocks", "list_benzinga_firms", "/benzinga/v1/firms"),
    ("stocks", "list_benzinga_guidance", "/benzinga/v1/guidance"),
    ("stocks", "list_benzinga_news", "/benzinga/v2/news"),
    ("stocks", "list_benzinga_ratings", "/benzinga/v1/ratings"),
    ("stocks", "get_sma", "/v1/indicators/sma/{stockTicker}"),
    ("stocks", "get_ema", "/v1/indicators/ema/{stockTicker}"),
    ("stocks", "get_macd", "/v1/indicators/macd/{stockTicker}"),
    ("stocks", "get_rsi", "/v1/indicators/rsi/{stockTicker}"),
    ("options", "get_snapshot_option", "/v3/snapshot/options/{underlyingAsset}/{optionContract}"),
    ("options", "list_options_contracts", "/v3/reference/options/contracts"),
    ("options", "get_options_contract", "/v3/reference/options/contracts/{options_ticker}"),
    ("options", "get_options_chain", "/v3/snapshot/options/{underlyingAsset}"),
    ("options", "get_options_sma", "/v1/indicators/sma/{optionsTicker}"),
    ("options", "get_options_ema", "/v1/indicators/ema/{optionsTicker}"),
    ("options", "get_options_macd", "/v1/indicators/macd/{optionsTicker}"),
    ("options", "get_options_rsi", "/v1/indicators/rsi/{optionsTicker}"),
    ("futures", "list_futures_aggregates", "/futures/v1/aggs/{ticker}"),
    ("futures", "list_futures_contracts", "/futures/v1/contracts"),
    ("futures", "get_futures_contract_details", "/futures/v1/contracts"),
    ("futures", "list_futures_products", "/futures/v1/products"),
    ("futures", "get_futures_product_details", "/futures/v1/products"),
    ("futures", "list_futures_quotes", "/futures/v1/quotes/{ticker}"),
    ("futures", "list_futures_trades", "/futures/v1/trades/{ticker}"),
    ("futures", "list_futures_schedules", "/futures/v1/schedules"),
    ("futures", "list_futures_schedules_by_product_code", "/futures/v1/schedules"),
    ("futures", "list_futures_market_statuses", "/futures/v1/market-status"),
    ("futures", "get_futures_snapshot", "/futures/v1/snapshot"),
    ("crypto", "get_last_crypto_trade", "/v1/last/crypto/{from}/{to}"),
    ("crypto", "get_snapshot_crypto_book", "/v2/snapshot/locale/global/markets/crypto/tickers/{ticker}/book"),
    ("crypto", "get_crypto_sma", "/v1/indicators/sma/{cryptoTicker}"),
    ("crypto", "get_crypto_ema", "/v1/indicators/ema/{cryptoTicker}"),
    ("crypto", "get_crypto_macd", "/v1/indicators/macd/{cryptoTicker}"),
    ("crypto", "get_crypto_rsi", "/v1/indicators/rsi/{cryptoTicker}"),
    ("forex", "get_last_forex_quote", "/v1/last_quote/currencies/{from}/{to}"),
    ("forex", "get_real_time_currency_conversion", "/v1/conversion/{from}/{to}"),
    ("forex", "get_forex_sma", "/v1/indicators/sma/{fxTicker}"),
    ("forex", "get_forex_ema", "/v1/indicators/ema/{fxTicker}"),
    ("forex", "get_forex_macd", "/v1/indicators/macd/{fxTicker}"),
    ("forex", "get_forex_rsi", "/v1/indicators/rsi/{fxTicker}"),
    ("economy", "list_treasury_yields", "/fed/v1/treasury-yields"),
    ("economy", "list_inflation", "/fed/v1/inflation"),
    ("economy", "list_inflation_expectations", "/fed/v1/inflation-expectations"),
    ("indices", "get_indices_snapshot", "/v3/snapshot/indices"),
    ("indices", "get_index_sma", "/v1/indicators/sma/{indicesTicker}"),
    ("indices", "get_index_ema", "/v1/indicators/ema/{indicesTicker}"),
    ("indices", "get_index_macd", "/v1/indicators/macd/{indicesTicker}"),
    ("indices", "get_index_rsi", "/v1/indicators/rsi/{indicesTicker}"),
]
EXPECTED_COUNTS = {"stocks": 42, "options": 8, "futures": 11, "crypto": 6, "forex": 6, "economy": 3, "indices": 5}
ENDPOINTS = load_endpoints()


def spec_params(path: str) -> dict[str, dict]:
    out = {}
    for raw in SPEC["paths"][path]["get"].get("parameters", []):
        if "$ref" in raw:
            raw = SPEC["components"]["parameters"][raw["$ref"].rsplit("/", 1)[-1]]
        out[raw["name"]] = raw
    return out


def declares_next_url(path: str) -> bool:
    return "next_url" in json.dumps(SPEC["paths"][path]["get"]["responses"].get("200", {}))


def markets_of(ep: Endpoint) -> dict[str, str]:
    return dict(ep.market_paths) if ep.market_paths else {"": ep.path}


def test_tool_names_paths_and_counts_match_the_specification():
    assert [(e.toolset, e.name, e.path) for e in ENDPOINTS] == EXPECTED
    assert collections.Counter(e.toolset for e in ENDPOINTS) == EXPECTED_COUNTS
    assert len(ENDPOINTS) == 81 == len({e.name for e in ENDPOINTS})


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: e.name)
def test_every_path_exists_and_every_parameter_is_declared(ep: Endpoint):
    for market, path in markets_of(ep).items():
        assert "get" in SPEC["paths"].get(path, {}), f"{ep.name}: {path} is not a GET path of the spec"
        declared = spec_params(path)
        sendable = {w for a in ep.args if a.markets is None or market in a.markets for w in a.wires()}
        sendable |= set(ep.fixed)
        undeclared = {name for name in sendable if name not in declared or declared[name]["in"] != "query"}
        assert not undeclared, f"{ep.name} ({path}) may send undeclared query parameters {sorted(undeclared)}"
        # Path placeholders: each is filled from exactly one argument.
        placeholders = re.findall(r"\{([^}]+)\}", path)
        path_args = {a.name for a in ep.args if a.where == "path"}
        assert {PATH_ARG_NAMES.get(p, p) for p in placeholders} == path_args
        for p in placeholders:
            assert declared[p]["in"] == "path"


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: e.name)
def test_types_enums_and_required_flags_follow_the_spec(ep: Endpoint):
    path = markets_of(ep)[next(iter(markets_of(ep)))]
    declared = spec_params(path)
    for arg in ep.args:
        if arg.where == "local" or arg.wire not in declared:
            continue  # market-only parameters are checked on their own path above
        schema = declared[arg.wire].get("schema", {})
        assert arg.enum == (tuple(schema["enum"]) if schema.get("enum") else None), arg.name
        if schema.get("type") in ("integer", "number", "boolean", "string", "array"):
            assert arg.type == schema["type"], arg.name
        if declared[arg.wire].get("required"):
            assert arg.required, f"{ep.name}: {arg.name} is required by the spec"
        # Range filters keep the vendor's name with '.' -> '_'.
        assert arg.name == arg.wire.replace(".", "_") or arg.where == "path"


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: e.name)
def test_cursor_only_where_the_vendor_pages_with_next_url(ep: Endpoint):
    has_cursor = any(a.name == "cursor" for a in ep.args)
    if has_cursor:
        assert all(declares_next_url(p) for p in markets_of(ep).values()), ep.name
    assert has_cursor == ep.paginated


def test_range_variants_fold_into_one_argument_per_field():
    trades = next(e for e in ENDPOINTS if e.name == "list_trades")
    timestamp = trades.arg("timestamp")
    assert timestamp.wires() == ("timestamp", "timestamp.gt", "timestamp.gte", "timestamp.lt", "timestamp.lte")
    assert not any(a.name.startswith("timestamp_") for a in trades.args)
    news = next(e for e in ENDPOINTS if e.name == "list_benzinga_news")
    assert set(news.arg("tickers").wires()) >= {"tickers", "tickers.any_of"}
    assert news.arg("tickers_all_of").wires() == ("tickers.all_of",)  # all_of and search keep their own argument


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: e.name)
def test_every_vendor_query_parameter_is_still_reachable(ep: Endpoint):
    """Folding four range parameters into one argument must not lose any: each is sent by some argument."""
    only = {e.name: t.only for e, t in zip(ENDPOINTS, TOOLS, strict=True)}[ep.name]
    for market, path in markets_of(ep).items():
        sendable = {w for a in ep.args if a.markets is None or market in a.markets for w in a.wires()}
        wanted = {
            name
            for name, raw in spec_params(path).items()
            if raw["in"] == "query" and name not in ep.fixed and (only is None or name in only)
        }
        assert wanted <= sendable, f"{ep.name} ({path}) cannot send {sorted(wanted - sendable)}"


def test_limits_default_small():
    for ep in ENDPOINTS:
        for arg in ep.args:
            if arg.name == "limit":
                assert arg.default is not None and arg.default <= 120, ep.name


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("script", "generated"),
    [
        ("build_endpoints", "src/mcp_polygon/rest/endpoints_data.json"),
        ("build_rest_examples", "src/mcp_polygon/simulator/data/rest_examples.json"),
    ],
)
def test_generated_files_are_up_to_date(script: str, generated: str):
    fresh = _load_script(script).generate()
    assert (ROOT / generated).read_text(encoding="utf-8") == fresh, f"rerun scripts/{script}.py"


def test_indicator_defaults_said_in_the_instructions_match_the_spec():
    """The schemas leave the indicators' defaults to the server instructions, so those must stay the vendor's."""
    from mcp_polygon.server import INSTRUCTIONS

    said = " ".join(INSTRUCTIONS.split())
    for ep in ENDPOINTS:
        if "/v1/indicators/" not in ep.path:
            continue
        declared = spec_params(ep.path)
        for arg in ep.args:
            if arg.name not in INDICATOR_DEFAULTS:
                continue
            assert arg.shared and arg.implied_default == declared[arg.wire]["schema"].get("default"), (ep.name, arg)
            stated = INDICATOR_DEFAULTS[arg.name]
            expected = {"window": 14 if "/rsi/" in ep.path else 50}.get(arg.name, stated)
            assert arg.implied_default == expected, (ep.name, arg.name)
            assert arg.name in said
    assert "(default day)" in said and "window (default 50, rsi 14)" in said and "(close)" in said
