"""Readable REST columns: checked against the vendor spec's own words, and seen by an agent through MCP.

The mapping (rest/columns.py MEANINGS, applied per path in columns_data.json) must never call a column something
the vendor did not mean: every rename is checked here against the description the spec gives that field, with a
keyword table of this test's own, and every epoch unit against the description or the spec's example value.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from mcp.client import Client

from conftest import text_of
from mcp_polygon.rest import tables
from mcp_polygon.rest.columns import MEANINGS, ColumnView, TimeUnit, iso_time, meaning_for, view_for
from mcp_polygon.rest.endpoints import all_vendor_paths, load_endpoints
from test_rest_e2e import call_args

ROOT = Path(__file__).resolve().parent.parent
DATA = json.loads((ROOT / "src/mcp_polygon/rest/columns_data.json").read_text("utf-8"))["paths"]
SPEC = json.loads((ROOT / "specs/massive_rest_openapi.json").read_text("utf-8"))
EXAMPLES = json.loads((ROOT / "src/mcp_polygon/simulator/data/rest_examples.json").read_text("utf-8"))["paths"]
ENDPOINTS = {e.name: e for e in load_endpoints()}

# This test's own reading of each readable name: words the vendor's description of the field must contain.
SUPPORTED_BY = {
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume",),
    "vwap": ("volume weighted",),
    "transactions": ("transactions",),
    "ticker": ("symbol",),
    "conditions": ("condition",),
    "window_start": ("start", "window"),
    "window_end": ("end", "window"),
    "sip_timestamp": ("sip",),
    "participant_timestamp": ("participant",),
    "trf_timestamp": ("trf",),
    "timestamp": ("timestamp",),
    "sequence_number": ("sequence",),
    "id": ("id",),
    "indicators": ("indicator",),
    "correction": ("correction",),
    "trf_id": ("trade reporting facility",),
    "tape": ("tape",),
    "exchange": ("exchange",),
    "bid_exchange": ("exchange",),
    "ask_exchange": ("exchange",),
    "size_by_exchange": ("exchange", "shares"),
    "price": ("price",),
    "bid_price": ("bid",),
    "ask_price": ("ask",),
    "size": ("size",),
    "bid_size": ("bid",),
    "ask_size": ("ask",),
    "decimal_size": ("size", "fractional"),
    "decimal_volume": ("volume", "fractional"),
    "accumulated_volume": ("accumulated volume",),
    "decimal_accumulated_volume": ("accumulated volume", "fractional"),
}
ISO = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z)?")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_columns", ROOT / "scripts" / "build_columns.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BUILD = _load_script()


def spec_fields(path: str) -> dict[str, Any]:
    """column -> the spec's leaf for it, in the response of `path` (walked as tables.py makes rows)."""
    schema = BUILD._response_schema(path, SPEC)
    return {leaf.column: leaf for leaf in BUILD._row_leaves(schema, SPEC)}


def renamed() -> Iterator[tuple[str, str, str]]:
    for path, entry in DATA.items():
        for column, rule in entry["columns"].items():
            if "name" in rule:
                yield path, column, rule["name"]


# ---- the mapping against the spec ------------------------------------------------------------------------------


def test_generated_columns_are_up_to_date():
    fresh = BUILD.spec_derived.generate(BUILD.build)
    assert (ROOT / "src/mcp_polygon/rest/columns_data.json").read_text("utf-8") == fresh, "rerun build_columns.py"


def test_every_path_a_tool_calls_has_an_entry():
    assert set(DATA) == set(all_vendor_paths())


@pytest.mark.parametrize(("path", "column", "readable"), list(renamed()))
def test_every_rename_is_what_the_vendor_describes(path: str, column: str, readable: str):
    prefix = column.rpartition("_")[0]  # a parent object's name (lastQuote_P): kept as it is
    meaning = readable[len(prefix) + 1 :] if prefix else readable
    assert readable == (f"{prefix}_{meaning}" if prefix else meaning), "only the vendor key part is renamed"
    leaf = spec_fields(path).get(column)
    if leaf is None:  # not in this path's schema: the same column where the spec describes it
        descriptions = [f[column].description for p in DATA if column in (f := spec_fields(p))]
        assert descriptions, f"{path}: {column} is described nowhere in the spec"
    else:
        descriptions = [leaf.description]
    for description in descriptions:
        words = SUPPORTED_BY[meaning]
        assert all(w in description.lower() for w in words), f"{path} {column} -> {readable}: {description!r}"


def test_every_terse_vendor_key_in_a_response_schema_is_renamed_or_kept_on_purpose():
    for path in DATA:
        for column, leaf in spec_fields(path).items():
            if leaf.key in MEANINGS and not leaf.is_map:
                assert DATA[path]["columns"].get(column, {}).get("name"), f"{path}: {column} kept terse"


@pytest.mark.parametrize("path", sorted(DATA))
def test_time_units_are_the_ones_the_spec_states(path: str):
    fields = spec_fields(path)
    for column, rule in DATA[path]["columns"].items():
        if "unit" not in rule:
            continue
        description = fields[column].description.lower()
        if rule["unit_from"] == "description":
            said = {"ns": "nanosecond", "ms": ("millisecond", "msec")}[rule["unit"]]
            assert any(w in description for w in ([said] if isinstance(said, str) else said)), (column, description)
        else:  # the description is silent: the example value's digit count
            assert not re.search("nanosecond|millisecond|msec", description)
            value = next(
                row[column] for s in tables.extract_sections(EXAMPLES[path]["body"]) for row in s.rows if column in row
            )
            assert len(str(int(value))) == {"s": 10, "ms": 13, "ns": 19}[rule["unit"]], (column, value)


def test_nanoseconds_for_trades_and_quotes_milliseconds_for_bars():
    trades = DATA["/v3/trades/{stockTicker}"]["columns"]
    assert trades["sip_timestamp"]["unit"] == trades["participant_timestamp"]["unit"] == "ns"
    assert DATA["/v2/last/trade/{stocksTicker}"]["columns"]["t"] == {
        "name": "sip_timestamp",
        "unit": "ns",
        "unit_from": "description",
    }
    bars = DATA["/v2/aggs/ticker/{stocksTicker}/range/{multiplier}/{timespan}/{from}/{to}"]["columns"]
    assert bars["t"]["unit"] == "ms" and bars["t"]["name"] == "window_start" and bars["t"]["bar"]


def test_a_terse_key_without_a_supporting_description_keeps_its_name():
    assert meaning_for("c", "The close price for the symbol in the given time period.").readable == "close"
    assert meaning_for("c", "The trade conditions.").readable == "conditions"
    assert meaning_for("c", "Something else entirely.") is None
    assert meaning_for("x", "The exchange ID.", {"X", "p"}).readable == "bid_exchange"
    assert meaning_for("x", "The exchange ID.", {"p"}).readable == "exchange"


# ---- epoch -> ISO ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "date_only", "text"),
    [
        (1617901342969834000, TimeUnit.NANOSECONDS, False, "2021-04-08T17:02:22.969834Z"),
        (1617901342969834123, TimeUnit.NANOSECONDS, False, "2021-04-08T17:02:22.969834123Z"),
        (1762128000000, TimeUnit.MILLISECONDS, False, "2025-11-03T00:00:00Z"),
        (1762128000000, TimeUnit.MILLISECONDS, True, "2025-11-03"),
        (1517562000016, TimeUnit.MILLISECONDS, False, "2018-02-02T09:00:00.016Z"),
        (1605042000000.0, TimeUnit.MILLISECONDS, False, "2020-11-10T21:00:00Z"),
        (1605042000, TimeUnit.SECONDS, False, "2020-11-10T21:00:00Z"),
    ],
)
def test_iso_time(value: Any, unit: TimeUnit, date_only: bool, text: str):
    assert iso_time(value, unit, date_only) == text


@pytest.mark.parametrize("value", [None, True, "2024-01-01", 0, 1.5, 10**30, 1617901342969834000 * 1000])
def test_values_that_are_not_a_plausible_time_stay_as_sent(value: Any):
    assert iso_time(value, TimeUnit.NANOSECONDS) == value


def test_a_milliseconds_value_read_as_nanoseconds_is_not_shown_as_1970():
    assert iso_time(1762128000000, TimeUnit.NANOSECONDS) == 1762128000000


def test_daily_and_coarser_bars_read_as_dates_finer_bars_as_times():
    path = "/v2/aggs/ticker/{stocksTicker}/range/{multiplier}/{timespan}/{from}/{to}"
    row = {"t": 1762128000000, "c": 1.5}
    assert view_for(path, {"timespan": "week"}).readable_row(row) == {"window_start": "2025-11-03", "close": 1.5}
    assert view_for(path, {"timespan": "minute"}).readable_row(row)["window_start"] == "2025-11-03T00:00:00Z"
    # Indicators default to daily bars, as the vendor does; a snapshot's minute bar is never a date.
    assert view_for("/v1/indicators/sma/{stockTicker}").readable_row({"timestamp": 1517562000016}) == {
        "timestamp": "2018-02-02"
    }
    snapshot = view_for("/v2/snapshot/locale/us/markets/stocks/tickers/{stocksTicker}", {"timespan": "day"})
    assert snapshot.readable_row({"min_t": 1684428600000}) == {"min_window_start": "2023-05-18T16:50:00Z"}


def test_unknown_paths_and_columns_are_unchanged():
    assert view_for("/no/such/path").readable_row({"c": 1, "t": 5}) == {"c": 1, "t": 5}
    view = view_for("/v2/last/trade/{stocksTicker}")
    assert view.readable_row({"extra": 1}) == {"extra": 1}


def test_data_keyed_objects_keep_their_keys_under_a_readable_prefix():
    view = view_for("/v2/snapshot/locale/global/markets/crypto/tickers/{ticker}/book")
    row = tables.flatten({"p": 16302.94, "x": {"1": 0.5, "2": 1}})
    assert view.readable_row(row) == {"price": 16302.94, "size_by_exchange_1": 0.5, "size_by_exchange_2": 1}


def test_readable_table_is_the_rows_the_csv_shows():
    body = {"status": "OK", "results": [{"T": "AAPL", "c": 1.5, "t": 1605042000000, "v": 10}, {"T": "MSFT"}]}
    view = view_for("/v2/aggs/grouped/locale/us/market/stocks/{date}")
    table = tables.readable_table(body, view)
    assert table.columns == ("ticker", "close", "window_end", "volume")
    assert table.rows == (("AAPL", 1.5, "2020-11-10", 10), ("MSFT", None, None, None))
    text = tables.render(tables.extract_sections(body, view), max_chars=10_000).text
    assert text.splitlines() == ["ticker,close,window_end,volume", "AAPL,1.5,2020-11-10,10", "MSFT,,,"]


def test_the_default_view_changes_nothing():
    assert ColumnView(rules={}).readable_row({"c": 1}) == {"c": 1}
    assert tables.readable_table({"results": [{"c": 1}]}).columns == ("c",)


# ---- what an agent sees ----------------------------------------------------------------------------------------


def csv_blocks(text: str) -> Iterator[list[dict[str, str]]]:
    """Every CSV block of an answer (the main table and its sections); comment lines separate them."""
    block: list[str] = []
    for line in [*text.splitlines(), "#"]:
        if line.startswith("#"):
            if block:
                yield list(csv.DictReader(io.StringIO("\n".join(block))))
            block = []
        else:
            block.append(line)


def csv_headers(text: str) -> Iterator[list[str]]:
    block: list[str] = []
    for line in [*text.splitlines(), "#"]:
        if line.startswith("#"):
            if block:
                yield next(csv.reader(io.StringIO(block[0])))
            block = []
        else:
            block.append(line)


async def test_every_rest_tool_answers_with_readable_columns(client: Client):
    terse = set(MEANINGS)
    problems = []
    for name, ep in ENDPOINTS.items():
        result = await client.call_tool(name, call_args(ep))
        text = text_of(result)
        assert not result.is_error, (name, text)
        rules = {c: r for p in [ep.path, *(ep.market_paths or {}).values()] for c, r in DATA[p]["columns"].items()}
        kept = {column for column, rule in rules.items() if "kept" in rule}
        times = {rule.get("name", column) for column, rule in rules.items() if "unit" in rule}
        for header in csv_headers(text):
            for column in header:
                if column not in kept and terse & set(column.split("_")):
                    problems.append(f"{name}: column {column!r} is a terse vendor key")
        for rows in csv_blocks(text):
            for row in rows:
                for column in times & set(row):
                    if row[column] and not ISO.fullmatch(row[column]):
                        problems.append(f"{name}: {column}={row[column]!r} is not ISO 8601")
    assert not problems, "\n".join(problems)


async def test_an_agent_reads_bars_trades_and_quotes_in_words(client: Client):
    daily = text_of(
        await client.call_tool(
            "get_aggs",
            {"ticker": "AAPL", "multiplier": 1, "timespan": "day", "from_": "2025-11-03", "to": "2025-11-07"},
        )
    )
    header, first = daily.splitlines()[:2]
    assert header.split(",") == ["volume", "vwap", "open", "close", "high", "low", "window_start", "transactions"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", first.split(",")[6]), first
    minute = text_of(
        await client.call_tool(
            "get_aggs",
            {"ticker": "AAPL", "multiplier": 1, "timespan": "minute", "from_": "2025-11-03", "to": "2025-11-03"},
        )
    )
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", minute.splitlines()[1].split(",")[6])
    trade = next(csv_blocks(text_of(await client.call_tool("get_last_trade", {"ticker": "AAPL"}))))[0]
    assert trade["price"] == "129.8473" and trade["size"] == "25" and trade["exchange"] == "4"
    assert trade["sip_timestamp"] == "2021-04-08T17:02:22.969834Z"
    quote = next(csv_blocks(text_of(await client.call_tool("get_last_quote", {"ticker": "AAPL"}))))[0]
    sides = (quote["bid_price"], quote["bid_size"], quote["ask_price"], quote["ask_size"])
    assert sides == ("127.96", "1", "127.98", "7")
