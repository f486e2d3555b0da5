"""analytics/schema.py: one table of views, derived from markets.py, typed as the vendor's WebSocket document says."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcp_polygon.analytics.eventsql import merge_key_orders
from mcp_polygon.analytics.schema import SCHEMAS, VIEWS, Kind
from mcp_polygon.streams.markets import MARKETS

SPEC = json.load(open("specs/massive_websocket_openapi.json"))

# The issue's list, verbatim.
ISSUE_VIEWS = (
    "stocks_trades, stocks_quotes, stocks_second_aggs, stocks_minute_aggs, stocks_luld, stocks_imbalances, "
    "stocks_fmv, options_trades, options_quotes, options_second_aggs, options_minute_aggs, options_fmv, "
    "futures_trades, futures_quotes, futures_second_aggs, futures_minute_aggs, indices_values, indices_second_aggs, "
    "indices_minute_aggs, forex_quotes, forex_second_aggs, forex_minute_aggs, forex_fmv, crypto_trades, "
    "crypto_quotes, crypto_second_aggs, crypto_minute_aggs, crypto_l2, crypto_fmv"
)


def test_one_view_per_market_and_event_type_named_as_the_issue_lists_them():
    assert sorted(VIEWS) == sorted(ISSUE_VIEWS.split(", "))
    assert {(e.market, e.ev) for e in VIEWS.values()} == {(m, p) for m, mk in MARKETS.items() for p in mk.prefixes}


def test_view_columns_are_the_stream_csv_names_with_symbol_received_and_timestamp():
    for event in VIEWS.values():
        csv_names = [name for _, name in MARKETS[event.market].events[event.ev].columns]
        columns = event.view_columns
        assert columns[0] == "received"
        assert "symbol" in columns and "pair" not in columns, event.view
        if any(c.startswith("timestamp") for c in csv_names):
            assert "timestamp" in columns, event.view
        assert not any(c.endswith(("_ms", "_ns")) for c in columns), event.view
        assert len(columns) == len(csv_names) + 1
        # Every name not renamed for its unit or the instrument is the CSV's.
        kept = [c for c in csv_names if not c.endswith(("_ms", "_ns")) and c not in ("pair", "timestamp")]
        assert set(kept) <= set(columns), event.view
    assert VIEWS["crypto_trades"].view_columns[-1] == "vendor_received"  # the vendor's `r`, not our `received`
    assert {"start_time", "end_time"} <= set(VIEWS["stocks_minute_aggs"].view_columns)  # END is reserved in SQL


def test_prices_and_sizes_are_double_counts_bigint_times_timestamp():
    trades = {c.view: c.kind for c in VIEWS["stocks_trades"].columns}
    assert trades["price"].view_type == trades["size"].view_type == "DOUBLE"
    assert trades["sequence"].view_type == trades["exchange"].view_type == "BIGINT"
    assert trades["timestamp"].view_type == "TIMESTAMP"
    aggs = {c.view: c.kind for c in VIEWS["stocks_minute_aggs"].columns}
    assert aggs["volume"].view_type == aggs["volume_decimal"].view_type == aggs["vwap"].view_type == "DOUBLE"
    assert {c.view: c.kind for c in VIEWS["futures_minute_aggs"].columns}["transactions"].view_type == "BIGINT"


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SPEC["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _spec_types(node: dict[str, Any]) -> dict[str, str]:
    node = _resolve(node)
    out: dict[str, str] = {}
    for part in node.get("allOf", []):
        out.update(_spec_types(part))
    for name, prop in node.get("properties", {}).items():
        prop = _resolve(prop)
        kind = prop.get("type")
        if kind == "array":
            kind = "array<" + str(_resolve(prop.get("items", {})).get("type")) + ">"
        if kind:
            out[name] = kind
    return out


_ALLOWED = {
    Kind.TEXT: {"string"},
    Kind.NUMBER: {"number"},
    Kind.WHOLE: {"integer"},
    Kind.INTEGER: {"integer"},
    Kind.INTEGER_LIST: {"array<integer>"},
    Kind.FLAG: {"boolean"},
    Kind.TIME_MS: {"integer"},
    Kind.TIME_NS: {"integer"},
    Kind.BOOK: {"array<array>"},
}


def _spec_path(market: str, ev: str) -> str:
    return f"/business/{market}/FMV" if ev == "FMV" else f"/{market}/{ev}"


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_every_column_kind_agrees_with_the_vendor_document(view):
    event = VIEWS[view]
    path = _spec_path(event.market, event.ev)
    if path not in SPEC["paths"]:
        assert event.market == "futures"  # the one market the document does not cover (markets.py lists it)
        return
    schema = SPEC["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    types = _spec_types(schema)
    checked = 0
    for column in event.columns:
        if column.wire in types:
            assert types[column.wire] in _ALLOWED[column.kind], (view, column.wire, types[column.wire], column.kind)
            checked += 1
    assert checked or event.ev in ("V", "FMV")  # these two document no types at all


def test_one_stored_type_per_column_name_in_each_market():
    for market in SCHEMAS.values():
        names = [n for n, _ in market.stored]
        assert len(names) == len(set(names))
        for event in market.events:
            stored = dict(market.stored)
            assert all(stored[c.stored].stored_type == c.kind.stored_type for c in event.columns)


def test_key_orders_merge_into_one_order_that_keeps_each_orders_places():
    merged = merge_key_orders(
        [["ev", "sym", "p", "t"], ["ev", "sym", "p", "t", "trfi", "trft"], ["ev", "sym", "x", "p", "t"]],
        ["sym", "p", "t", "trfi", "trft", "x"],
    )
    assert merged == ("ev", "sym", "x", "p", "t", "trfi", "trft")
    assert merge_key_orders([["ev", "zzz", "sym"]], ["sym"]) == ("ev", "sym")  # unknown keys are left out
