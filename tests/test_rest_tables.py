"""JSON body -> CSV: every response shape the vendor uses, flattening, caps, truncation and paging hints."""

from __future__ import annotations

import csv
import io

import pytest

from mcp_polygon.rest.tables import (
    Section,
    call_hint,
    extract_sections,
    flatten,
    format_cell,
    page_token,
    params_from_token,
    render,
)


def table(text: str) -> list[dict[str, str]]:
    """Parse the first CSV block of an answer (comment lines skipped)."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def rows_of(body) -> list[dict]:
    return extract_sections(body)[0].rows


# ---- shapes ------------------------------------------------------------------------------------------------------


def test_results_list_drops_envelope():
    body = {"status": "OK", "request_id": "r", "count": 2, "next_url": "u", "results": [{"a": 1}, {"a": 2}]}
    assert rows_of(body) == [{"a": 1}, {"a": 2}]


def test_results_object_is_one_row():
    body = {"status": "OK", "results": {"ticker": "AAPL", "address": {"city": "Cupertino"}}}
    assert rows_of(body) == [{"ticker": "AAPL", "address_city": "Cupertino"}]


def test_single_snapshot_ticker_object():
    body = {"status": "OK", "ticker": {"ticker": "AAPL", "day": {"o": 1.5, "c": 2.5}}}
    assert rows_of(body) == [{"ticker": "AAPL", "day_o": 1.5, "day_c": 2.5}]


def test_tickers_list():
    body = {"status": "OK", "tickers": [{"ticker": "A", "day": {"c": 1}}, {"ticker": "B", "day": {"c": 2}}]}
    assert rows_of(body) == [{"ticker": "A", "day_c": 1}, {"ticker": "B", "day_c": 2}]


def test_bare_array():
    body = [{"date": "2020-11-26", "status": "closed"}, {"date": "2020-11-27", "status": "early-close", "open": "x"}]
    sections = extract_sections(body)
    assert sections[0].rows[1] == {"date": "2020-11-27", "status": "early-close", "open": "x"}


def test_flat_object_keeps_fields_without_envelope():
    body = {"status": "OK", "from": "2023-01-09", "symbol": "AAPL", "open": 324.66, "close": 325.12}
    assert rows_of(body) == [{"from": "2023-01-09", "symbol": "AAPL", "open": 324.66, "close": 325.12}]


def test_last_object_is_inlined():
    body = {"last": {"price": 16835.42, "size": 0.5}, "request_id": "r", "status": "success", "symbol": "BTC-USD"}
    assert rows_of(body) == [{"price": 16835.42, "size": 0.5, "symbol": "BTC-USD"}]


def test_last_trade_in_results_object():
    body = {"results": {"T": "AAPL", "p": 129.8, "c": [37]}, "status": "OK"}
    assert rows_of(body) == [{"T": "AAPL", "p": 129.8, "c": [37]}]


def test_per_item_errors_become_rows_with_error_columns():
    body = {
        "results": [
            {"ticker": "AAPL", "value": 1.0},
            {"error": "NOT_FOUND", "message": "Ticker not found.", "ticker": "ZZZ"},
        ]
    }
    sections = extract_sections(body)
    out = render(sections, max_chars=10_000).text
    parsed = table(out)
    assert list(parsed[0]) == ["ticker", "value", "error", "message"]
    assert parsed[1] == {"ticker": "ZZZ", "value": "", "error": "NOT_FOUND", "message": "Ticker not found."}


def test_indicator_values_and_underlying_aggregates():
    body = {
        "results": {
            "underlying": {"url": "https://x/v2/aggs", "aggregates": [{"c": 1.0, "t": 5}]},
            "values": [{"timestamp": 2, "value": 140.1}, {"timestamp": 1, "value": 139.9}],
        },
        "status": "OK",
    }
    sections = extract_sections(body)
    assert [s.title for s in sections] == [None, "underlying aggregates"]
    assert sections[0].rows == [{"timestamp": 2, "value": 140.1}, {"timestamp": 1, "value": 139.9}]
    assert "url" not in render(sections, max_chars=10_000).text


def test_indicator_without_aggregates_has_one_section():
    body = {"results": {"underlying": {"url": "u"}, "values": [{"timestamp": 1, "value": 2}]}}
    assert len(extract_sections(body)) == 1


def test_object_with_lists_of_objects_becomes_sections():
    body = {
        "data": {
            "ticker": "X:BTCUSD",
            "spread": -1.5,
            "asks": [{"p": 11454, "x": {"2": 1}}],
            "bids": [{"p": 16303.17, "x": {"1": 2}}],
        },
        "status": "OK",
    }
    sections = extract_sections(body)
    assert [s.title for s in sections] == [None, "asks", "bids"]
    assert sections[0].rows == [{"ticker": "X:BTCUSD", "spread": -1.5}]
    assert sections[1].rows == [{"p": 11454, "x_2": 1}]
    text = render(sections, max_chars=10_000).text
    assert "# asks\np,x_2\n11454,1\n# bids\n" in text


def test_options_chain_flattens_nested_objects():
    body = {
        "results": [
            {
                "details": {"ticker": "O:AAPL1", "strike_price": 150},
                "greeks": {"delta": 0.5},
                "implied_volatility": 0.3,
                "open_interest": 10,
            }
        ]
    }
    assert rows_of(body) == [
        {
            "details_ticker": "O:AAPL1",
            "details_strike_price": 150,
            "greeks_delta": 0.5,
            "implied_volatility": 0.3,
            "open_interest": 10,
        }
    ]


def test_data_list():
    assert rows_of({"data": [{"a": 1}], "status": "OK"}) == [{"a": 1}]


def test_empty_results_say_so():
    text = render(extract_sections({"results": [], "status": "OK"}), max_chars=1000).text
    assert text == "# no rows returned for these arguments"


# ---- flattening and cells ----------------------------------------------------------------------------------------


def test_flatten_nested_lists_and_datapoints():
    row = flatten(
        {
            "day": {"o": 1, "inner": {"x": 2}},
            "conditions": [12, 41],
            "insights": [{"ticker": "UBS", "sentiment": "positive"}],
            "financials": {"balance_sheet": {"assets": {"label": "Assets", "order": 100, "unit": "USD", "value": 5}}},
            "empty": {},
        }
    )
    assert row == {
        "day_o": 1,
        "day_inner_x": 2,
        "conditions": [12, 41],
        "insights": [{"ticker": "UBS", "sentiment": "positive"}],  # lists stay lists; the cell rule writes them
        "financials_balance_sheet_assets": 5,
    }
    assert table(render([Section(None, [row])], max_chars=10_000).text) == [
        {
            "day_o": "1",
            "day_inner_x": "2",
            "conditions": "12|41",
            "insights": '[{"ticker":"UBS","sentiment":"positive"}]',
            "financials_balance_sheet_assets": "5",
        }
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (135647456.0, "135647456"),
        (74.6099, "74.6099"),
        (1517562000015577000, "1517562000015577000"),
        ([12, 41], "12|41"),
        ("a,b", "a,b"),
    ],
)
def test_format_cell(value, text):
    assert format_cell(value) == text


def test_columns_are_union_in_first_seen_order_and_csv_quotes():
    sections = [Section(None, [{"a": 1, "b": "x,y"}, {"c": 3, "a": 2}])]
    text = render(sections, max_chars=10_000).text
    assert text.splitlines() == ["a,b,c", '1,"x,y",', "2,,3"]


def test_rest_cells_follow_the_shared_rules():
    """The rules stream answers use too (mcp_polygon/cells.py): before issue 8 a bare CR went out unquoted and a
    list of lists became JSON here, while streams wrote `0 12` and `100.0`."""
    row = {"a": "x\ry", "b": [[1.0, 2], [0.5, 3]], "c": 100.0, "d": [True, None, "s p"], "e": 'say "hi"'}
    text = render([Section(None, [row])], max_chars=10_000).text
    assert text.split("\n") == ["a,b,c,d,e", '"x\ry",1:2|0.5:3,100,true||s p,"say ""hi"""']


def test_a_row_of_one_empty_cell_is_not_a_blank_line():
    text = render([Section(None, [{"v": None}, {"v": 1}])], max_chars=10_000).text
    assert text.splitlines() == ["v", '""', "1"]


# ---- caps and truncation -----------------------------------------------------------------------------------------


def test_max_rows_caps_and_says_how_many():
    sections = [Section(None, [{"n": i} for i in range(250)])]
    out = render(sections, max_chars=100_000, max_rows=10, more_rows_hint="pass max_rows to see more")
    lines = out.text.splitlines()
    assert lines[1:11] == [str(i) for i in range(10)]
    assert lines[-1] == "# showing 10 of 250 rows; pass max_rows to see more"
    assert (out.shown, out.dropped_by_cap) == (10, 240)


def test_truncation_marker_counts_dropped_rows_and_keeps_header_and_footer():
    rows = [{"ticker": f"T{i:04d}", "price": 100.25 + i} for i in range(1000)]
    out = render(
        [Section(None, rows)],
        max_chars=2_000,
        header=["# SIMULATED"],
        footer=['# next page: call x with cursor="c"'],
        narrow_hint="a smaller limit",
    )
    assert len(out.text) <= 2_000
    lines = out.text.splitlines()
    assert lines[0] == "# SIMULATED"
    assert lines[-1] == '# next page: call x with cursor="c"'
    marker = lines[-2]
    assert marker.startswith(f"# truncated: {1000 - out.shown} more rows not shown (output capped at 2000 characters)")
    assert marker.endswith("narrow the request with a smaller limit")
    assert out.shown == len(table(out.text)) and 0 < out.shown < 1000


def test_truncation_counts_rows_of_later_sections():
    sections = [Section(None, [{"a": "x" * 50}] * 30), Section("more", [{"b": 1}] * 5)]
    out = render(sections, max_chars=600)
    assert out.dropped_by_size == 35 - out.shown
    assert f"# truncated: {35 - out.shown} more rows" in out.text


# ---- paging hints ------------------------------------------------------------------------------------------------


def test_page_token_is_the_vendor_cursor():
    assert page_token("https://api.massive.com/v3/trades/AAPL?cursor=YWJj") == ("/v3/trades/AAPL", "YWJj")
    assert params_from_token("YWJj") == {"cursor": "YWJj"}


def test_page_token_never_carries_the_api_key():
    url = "https://api.massive.com/v3/trades/AAPL?cursor=YWJj&apiKey=SECRET123"
    assert page_token(url) == ("/v3/trades/AAPL", "YWJj")
    path, token = page_token("https://api.massive.com/v2/x?limit=5&page=2&apikey=SECRET123")
    assert path == "/v2/x" and "SECRET123" not in token
    assert params_from_token(token) == {"limit": "5", "page": "2"}


def test_page_token_without_query_is_none():
    assert page_token("https://api.massive.com/vX/reference/financials?") is None


def test_params_from_token_rejects_garbage():
    with pytest.raises(ValueError):
        params_from_token("~***")


def test_call_hint_is_ready_to_copy():
    assert call_hint("list_trades", {"ticker": "AAPL", "limit": 5, "cursor": 'a"b'}) == (
        'call list_trades with ticker="AAPL", limit=5, cursor="a\\"b"'
    )


def test_only_rows_that_can_be_shown_are_flattened(monkeypatch: pytest.MonkeyPatch):
    # Whole-market answers have 10,000+ rows; flattening all of them would stall the event loop.
    from mcp_polygon.rest import tables

    calls = []
    real_row = tables._row
    monkeypatch.setattr(tables, "_row", lambda item: calls.append(1) or real_row(item))
    sections = extract_sections({"tickers": [{"ticker": f"T{i}", "day": {"c": i}} for i in range(20_000)]})
    assert render(sections, max_chars=100_000, max_rows=50).shown == 50
    assert len(calls) == 50
    calls.clear()
    out = render(sections, max_chars=2_000)
    assert out.dropped_by_size == 20_000 - out.shown and len(calls) <= out.shown + 3  # header not estimated


# ---- readable columns ------------------------------------------------------------------------------------------


def test_every_section_reads_through_the_view():
    """An order book: the summary row and each side's levels, renamed and with ISO times."""
    from mcp_polygon.rest.columns import view_for

    body = {"data": {"ticker": "X:BTCUSD", "updated": 1605295074162, "asks": [{"p": 11454, "x": {"2": 1}}]}}
    view = view_for("/v2/snapshot/locale/global/markets/crypto/tickers/{ticker}/book")
    text = render(extract_sections(body, view), max_chars=10_000).text
    assert text.splitlines() == [
        "ticker,updated",
        "X:BTCUSD,2020-11-13T19:17:54.162Z",
        "# asks",
        "price,size_by_exchange_2",
        "11454,1",
    ]


def test_the_size_cap_counts_the_readable_text():
    """ISO times are longer than the epoch numbers they replace: the cap must hold for the text written."""
    from mcp_polygon.rest.columns import view_for

    view = view_for("/v3/trades/{stockTicker}")
    items = [{"price": 1.5, "sip_timestamp": 1517562000016036600 + i} for i in range(200)]
    rendered = render([Section(None, items, view)], max_chars=1_000, footer=["# next page: call x"])
    assert len(rendered.text) <= 1_000 and rendered.text.endswith("# next page: call x")
    assert "2018-02-02T09:00:00.0160366Z" in rendered.text and "# truncated:" in rendered.text
    assert rendered.shown + rendered.dropped_by_size == 200
