"""The REST side under attack (issue 7): where the key may go, what may echo it, body caps, path arguments that
try to change the endpoint, oversized arguments, and failures that must still read as one sentence.

Agent-visible behaviour is tested through a real MCP client session against the simulator; the client's own
guards (origin, dot segments, URL length) are tested on RestClient directly, since no tool argument reaches them.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx2
import pytest
from mcp.client import Client
from mcp.server.mcpserver.exceptions import ToolError

from conftest import mcp_session, text_of
from mcp_polygon.config import Settings
from mcp_polygon.rest import tables
from mcp_polygon.rest.client import RestClient, retry_after_seconds
from mcp_polygon.rest.endpoints import load_endpoints
from mcp_polygon.rest.tools import RestTool
from mcp_polygon.server import build_app
from mcp_polygon.simulator import Simulator
from mcp_polygon.simulator.rest import RestSimulator
from mcp_polygon.simulator.rest_data import encode_cursor

# '/', '+' and '=' are spelled differently raw, percent-encoded and form-encoded: all three must be masked.
KEY = "sk-LEAK/9+f=3a-0123456789"
ENCODED_KEYS = (KEY, quote(KEY, safe=""), quote_plus(KEY), quote(KEY))
ENDPOINTS = {e.name: e for e in load_endpoints()}
AGGS = {"ticker": "AAPL", "multiplier": 1, "timespan": "day", "from_": "2024-01-01", "to": "2024-01-31"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_key=KEY) as simulator:
        yield simulator


@pytest.fixture
async def evil() -> AsyncIterator[RestSimulator]:
    """Another host on loopback: it must never see a request, least of all one with the key."""
    async with RestSimulator(api_key="not-our-key") as other:
        yield other


def settings_for(sim: Simulator, tmp_path: Path, **changes: Any) -> Settings:
    base = Settings(api_key=KEY, rest_url=sim.rest_url, ws_url=sim.ws_url, data_dir=tmp_path / "data", max_retries=1)
    return base.with_overrides(**changes)


@contextlib.asynccontextmanager
async def session(settings: Settings) -> AsyncIterator[Client]:
    async with build_app(settings) as app, mcp_session(app.server) as client:
        app.rest.backoff_base = 0.001  # attempts are counted, not waited for
        yield client


@pytest.fixture
async def client(sim: Simulator, tmp_path: Path) -> AsyncIterator[Client]:
    async with session(settings_for(sim, tmp_path)) as mcp_client:
        yield mcp_client


async def call(client: Client, tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool(tool, args)
    text = text_of(result)
    assert not any(spelling in text for spelling in ENCODED_KEYS), text
    return bool(result.is_error), text


async def error_of(client: Client, tool: str, args: dict[str, Any]) -> str:
    """The one actionable sentence an agent reads for a failed call."""
    is_error, text = await call(client, tool, args)
    prefix = f"Error executing tool {tool}: "
    assert is_error and text.startswith(prefix), text
    message = text[len(prefix) :]
    assert message.endswith(".") and "\n" not in message and len(message) < 400, message
    return message


def next_page_args(text: str) -> dict[str, str]:
    hint = text.splitlines()[-1]
    assert hint.startswith("# next page: call "), text
    return dict(re.findall(r'(\w+)="([^"]*)"', hint))


def make_client(url: str, **changes: Any) -> RestClient:
    settings = Settings(api_key=KEY, rest_url=url, max_retries=1, request_timeout=5.0).with_overrides(**changes)
    return RestClient(settings, backoff_base=0.001)


async def client_failure(rest: RestClient, path: str, params: dict[str, Any] | None = None) -> str:
    with pytest.raises(ToolError) as info:
        await rest.get_json(path, params or {})
    message = str(info.value)
    assert not any(spelling in message for spelling in ENCODED_KEYS) and message.endswith("."), message
    return message


# ---- 1. the key only goes to POLYGON_REST_URL -----------------------------------------------------------------


async def test_a_next_url_naming_another_host_is_followed_on_the_configured_host(
    client: Client, sim: Simulator, evil: RestSimulator
):
    cursor = encode_cursor({"offset": 1, "limit": 1})
    page = {"status": "OK", "results": [{"id": "1"}], "next_url": f"{evil.url}/v3/trades/AAPL?cursor={cursor}"}
    sim.rest.inject("/v3/trades", body=page)
    _, text = await call(client, "list_trades", {"ticker": "AAPL"})
    assert next_page_args(text) == {"ticker": "AAPL", "cursor": cursor}
    is_error, _ = await call(client, "list_trades", next_page_args(text))
    assert not is_error and sim.rest.requests[-1].params == {"cursor": cursor}
    assert evil.requests == []


async def test_a_page_walk_never_leaves_the_configured_host(client: Client, sim: Simulator, evil: RestSimulator):
    # An http:// link to another host: neither the host nor the scheme of next_url is used, only its path.
    link = evil.url + "/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-31?limit=9"
    sim.rest.inject("/v2/aggs", body={"status": "OK", "results": [{"t": 1}], "next_url": link})
    is_error, _ = await call(client, "list_aggs", {**AGGS, "max_rows": 5})
    assert not is_error
    assert [r.path for r in sim.rest.requests] == [
        "/v2/aggs/ticker/AAPL/range/1/day/2024-01-01/2024-01-31",
        "/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-31",
    ]
    assert evil.requests == []


@pytest.mark.parametrize("form", ["absolute", "network-path"])
async def test_the_client_sends_nothing_off_the_configured_origin(sim: Simulator, evil: RestSimulator, form: str):
    rest = make_client(sim.rest_url)
    target = f"{evil.url}/v3/trades/AAPL" if form == "absolute" else f"//127.0.0.1:{evil.port}/v3/trades/AAPL"
    message = await client_failure(rest, target)
    assert "the API key only goes to POLYGON_REST_URL" in message
    assert evil.requests == [] and sim.rest.requests == []
    await rest.aclose()


async def test_a_redirect_is_reported_not_followed_and_not_read_as_data(
    client: Client, sim: Simulator, evil: RestSimulator
):
    sim.rest.inject(status=307, headers={"Location": f"{evil.url}/v3/trades/AAPL"})
    message = await error_of(client, "list_trades", {"ticker": "AAPL"})
    assert message.startswith("The market-data API redirected /v3/trades/AAPL (307 to http://127.0.0.1:")
    assert "POLYGON_REST_URL" in message and evil.requests == []


# ---- 3. the key in echoes and cursors ---------------------------------------------------------------------------


async def test_rows_that_echo_the_key_are_masked_in_every_spelling(client: Client, sim: Simulator):
    rows = [{"id": str(i), "note": f"echo {spelling}"} for i, spelling in enumerate(ENCODED_KEYS)]
    sim.rest.inject("/v3/trades", body={"status": "OK", "results": rows})
    _, text = await call(client, "list_trades", {"ticker": "AAPL"})  # call() asserts no spelling survives
    assert text.count("echo ***") == len(ENCODED_KEYS)


async def test_errors_mask_the_url_encoded_key(client: Client, sim: Simulator):
    sim.rest.inject(status=400, message=f"bad request /v3/trades?k={quote(KEY, safe='')} from {KEY}")
    message = await error_of(client, "list_trades", {"ticker": "AAPL"})
    assert message.startswith("The request was rejected as invalid (400: bad request /v3/trades?k=*** from ***")


async def test_credentials_in_a_next_url_never_reach_the_cursor(client: Client, sim: Simulator):
    link = (
        f"{sim.rest_url}/v3/trades/AAPL?cursor=abc&limit=5&token={quote(KEY, safe='')}&access_token=t0k"
        f"&X-Api-Key=k3y&client_secret=s3c&innocent={quote(KEY, safe='')}"
    )
    sim.rest.inject("/v3/trades", body={"status": "OK", "results": [{"id": "1"}], "next_url": link})
    _, text = await call(client, "list_trades", {"ticker": "AAPL"})
    cursor = next_page_args(text)["cursor"]
    # The cursor carries the query base64-encoded, where masking the text could not see a key: it is left out.
    assert tables.params_from_token(cursor) == {"cursor": "abc", "limit": "5"}


def test_page_tokens_drop_credential_parameters_in_any_spelling():
    for name in ("apiKey", "api_key", "API-KEY", "token", "access_token", "refresh_token", "X-Api-Key", "sig"):
        assert tables.is_credential_param(name), name
    for name in ("ticker", "timestamp.gte", "session_end_date", "limit", "cursor", "sort", "order"):
        assert not tables.is_credential_param(name), name
    # A forged token cannot carry a credential to the vendor either.
    forged = tables.page_token("https://x/v3/trades/A?limit=1&note=n")
    assert forged is not None
    assert tables.params_from_token(forged[1]) == {"limit": "1", "note": "n"}
    assert tables.page_token("https://x/v3/trades/A?token=abc&apiKey=def") is None


# ---- 9. body size cap -------------------------------------------------------------------------------------------


async def test_a_body_over_the_cap_is_refused_with_the_cap_and_how_to_narrow(sim: Simulator, tmp_path: Path):
    sim.rest.inject("/v3/trades", body_bytes=1 << 20)
    async with session(settings_for(sim, tmp_path, max_body_bytes=64 << 10)) as mcp_client:
        message = await error_of(mcp_client, "list_trades", {"ticker": "AAPL"})
    assert message == (
        "The answer for /v3/trades/AAPL is larger than the 65,536 bytes cap on response bodies: narrow the request "
        "(a smaller limit or a shorter date range) or raise POLYGON_MAX_BODY_MB in the server's environment."
    )


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
):
    reads = []
    real = httpx2.Response.aiter_bytes

    def spy(self: httpx2.Response, *args: Any) -> Any:
        reads.append(self.status_code)
        return real(self, *args)

    monkeypatch.setattr(httpx2.Response, "aiter_bytes", spy)
    sim.rest.inject(body_bytes=1 << 20)
    rest = make_client(sim.rest_url, max_body_bytes=64 << 10)
    assert "larger than the 65,536 bytes cap" in await client_failure(rest, "/v3/trades/AAPL")
    assert reads == []
    await rest.aclose()


async def test_a_compressed_body_is_cut_while_reading_and_memory_returns(sim: Simulator):
    # 32 MB of JSON gzip-compressed to ~130 KB: Content-Length passes the 1 MB cap, the decoded bytes do not.
    sim.rest.inject("/v3/trades", body_bytes=32 << 20, compress=True)
    rest = make_client(sim.rest_url, max_body_bytes=1 << 20)
    await rest.get_json("/v1/marketstatus/now")  # pool and imports warmed outside the measurement
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        message = await client_failure(rest, "/v3/trades/AAPL")
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "larger than the 1 MB cap" in message
    assert peak - before < 8 << 20, f"peak {peak - before:,} bytes: the body was read whole"
    assert after - before < 1 << 20, f"{after - before:,} bytes still held after the refusal"
    await rest.aclose()


async def test_a_body_under_the_cap_is_served(sim: Simulator, tmp_path: Path):
    sim.rest.inject("/v3/trades", body_bytes=32 << 10, compress=True)
    async with session(settings_for(sim, tmp_path, max_body_bytes=64 << 10)) as mcp_client:
        is_error, text = await call(mcp_client, "list_trades", {"ticker": "AAPL"})
    assert not is_error and text.startswith("t,pad\n1704067200000,xxx")


# ---- 10. no argument changes which vendor path is called --------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "named"),
    [
        ("get_ticker_details", {"ticker": ".."}, "ticker"),
        ("get_ticker_details", {"ticker": "."}, "ticker"),
        ("get_ticker_details", {"ticker": ""}, "ticker"),
        ("get_ticker_details", {"ticker": " .. "}, "ticker"),
        ("get_ticker_details", {"ticker": "%2e%2e"}, "ticker"),
        ("get_ticker_details", {"ticker": "AAPL/../MSFT"}, "ticker"),
        ("get_ticker_details", {"ticker": "A?B"}, "ticker"),
        ("get_aggs", {**AGGS, "from_": "..", "to": ".."}, "from_"),
        ("get_aggs", {**AGGS, "to": "."}, "to"),
        ("get_aggs", {**AGGS, "to": "2024/01/31"}, "to"),
        ("get_daily_open_close_agg", {"ticker": "AAPL", "date": ".."}, "date"),
        ("get_snapshot_option", {"underlying_asset": "..", "option_contract": "O:EVRI260116C00015000"}, "underlying"),
        ("get_snapshot_option", {"underlying_asset": "EVRI", "option_contract": "."}, "option_contract"),
    ],
)
async def test_path_arguments_that_would_change_the_endpoint_are_refused(
    client: Client, sim: Simulator, tool: str, args: dict[str, Any], named: str
):
    message = await error_of(client, tool, args)
    assert message.startswith(named), message
    assert sim.rest.requests == []  # nothing was called at all


@pytest.mark.parametrize(
    ("ticker", "path"),
    [
        ("BRK.B", "/v3/reference/tickers/BRK.B"),
        ("X:BTC-USD", "/v3/reference/tickers/X:BTC-USD"),
        ("C:EURUSD", "/v3/reference/tickers/C:EURUSD"),
        ("I:NDX", "/v3/reference/tickers/I:NDX"),
        ("O:SPY251219C00650000", "/v3/reference/tickers/O:SPY251219C00650000"),
        ("GCJ5", "/v3/reference/tickers/GCJ5"),
    ],
)
async def test_vendor_symbols_reach_exactly_their_path(client: Client, sim: Simulator, ticker: str, path: str):
    await call(client, "get_ticker_details", {"ticker": ticker})
    assert [r.path for r in sim.rest.requests] == [path]


async def test_the_client_refuses_dot_segments_whatever_their_spelling(sim: Simulator):
    rest = make_client(sim.rest_url)
    for path in ("/v3/reference/tickers/..", "/v3/reference/tickers/.", "/v3/reference/tickers/%2E%2e", "v3/x"):
        assert "POLYGON_REST_URL" in await client_failure(rest, path)
    assert sim.rest.requests == []
    await rest.aclose()


def _aggs_page(next_url: str) -> dict[str, Any]:
    return {"status": "OK", "results": [{"t": 1}], "next_url": next_url}


class FakeRest:
    def __init__(self, *bodies: Any) -> None:
        self.bodies = list(bodies)
        self.calls: list[str] = []

    async def get_json(self, path: str, params: dict[str, Any], *, not_found_hint: str | None = None) -> Any:
        self.calls.append(path)
        return self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]


@pytest.mark.parametrize("moved", ["..", "%2e%2e", "a%2Fb"])
async def test_a_next_url_whose_values_would_leave_the_endpoint_is_not_followed_nor_hinted(moved: str):
    link = f"https://api.massive.com/v2/aggs/ticker/AAPL/range/1/day/{moved}/2024-01-31?cursor=c1"
    rest = FakeRest(_aggs_page(link), _aggs_page(link))
    walked = await RestTool(ENDPOINTS["list_aggs"], rest, Settings(api_key="k"))(**AGGS, max_rows=5)  # type: ignore[arg-type]
    assert len(rest.calls) == 1 and "# next page" not in walked
    hinted = await RestTool(ENDPOINTS["get_aggs"], rest, Settings(api_key="k"))(**AGGS)  # type: ignore[arg-type]
    assert "# next page" not in hinted and "cannot be passed back as a cursor" in hinted


# ---- 11. sizes: arguments, cursors, answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("get_ticker_details", {"ticker": "A" * 1_000_000}, "ticker is too long (1,000,000 characters, at most 40)"),
        ("list_trades", {"ticker": "AAPL", "cursor": "A" * 1_000_000}, "cursor is too long (1,000,000 characters"),
        ("list_tickers", {"search": "x" * 100_000}, "search is too long (100,000 characters, at most 256)"),
        ("list_universal_snapshots", {"ticker": "AAPL," * 2000}, "ticker is too long"),
        ("list_universal_snapshots", {"ticker": "AAPL,MS FT"}, "ticker 'MS FT' is not a ticker"),
        ("list_tickers", {"search": "apple\ninc"}, "search contains control characters"),
        ("list_trades", {"ticker": "AAPL", "cursor": "abc def"}, "cursor is not a page token"),
        ("get_ticker_details", {"ticker": "BRK/B"}, "ticker 'BRK/B' is not a ticker (share classes take a dot"),
        ("get_ticker_details", {"ticker": "Ä" * 30}, "ticker 'ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ' is not a ticker"),
    ],
)
async def test_oversized_or_malformed_arguments_get_one_short_sentence(
    client: Client, sim: Simulator, tool: str, args: dict[str, Any], expected: str
):
    assert expected in await error_of(client, tool, args)
    assert sim.rest.requests == []


async def test_errors_quote_a_bad_value_only_in_part(client: Client):
    message = await error_of(client, "get_ticker_details", {"ticker": "#" * 39})
    assert "'#######################################' is not a ticker" in message
    message = await error_of(client, "get_aggs", {**AGGS, "to": "#" * 60})
    assert f"to '{'#' * 40}'… (60 characters) has characters a path value cannot have" in message


@pytest.mark.parametrize("vendor_cursor", ["c" * 20_000, "two%20words"], ids=["too-long", "with-a-space"])
async def test_a_vendor_cursor_that_could_not_be_passed_back_is_not_hinted(
    sim: Simulator, tmp_path: Path, vendor_cursor: str
):
    link = f"{sim.rest_url}/v3/trades/AAPL?cursor={vendor_cursor}"
    sim.rest.inject("/v3/trades", body={"status": "OK", "results": [{"id": "1"}], "next_url": link})
    async with session(settings_for(sim, tmp_path, max_response_chars=4000)) as mcp_client:
        _, text = await call(mcp_client, "list_trades", {"ticker": "AAPL"})
    assert len(text) <= 4000
    assert text.splitlines()[-1].startswith("# more rows exist, but the API's link to them cannot be passed back")


async def test_a_huge_cell_stays_within_the_answer_budget(sim: Simulator, tmp_path: Path):
    rows = [{"id": "1", "note": "n" * 1_000_000}, {"id": "2", "note": "short"}]
    sim.rest.inject("/v3/trades", body={"status": "OK", "results": rows})
    async with session(settings_for(sim, tmp_path, max_response_chars=4000)) as mcp_client:
        _, text = await call(mcp_client, "list_trades", {"ticker": "AAPL"})
    assert len(text) <= 4000 and "# truncated: 2 more rows not shown" in text and "smaller limit" in text


# ---- 12. failures that used to say nothing ----------------------------------------------------------------------


async def test_a_non_ascii_key_is_one_sentence_that_does_not_echo_it(sim: Simulator, tmp_path: Path):
    async with session(settings_for(sim, tmp_path, api_key="sk-ключ-0123")) as mcp_client:
        result = await mcp_client.call_tool("get_market_status", {})
    message = text_of(result)
    assert result.is_error and "contains a character an API key cannot have" in message
    assert "ключ" not in message and sim.rest.requests == []


async def test_a_url_too_long_to_send_is_one_sentence(sim: Simulator):
    rest = make_client(sim.rest_url)
    message = await client_failure(rest, "/v3/reference/tickers", {"search": "x" * 70_000})
    assert message.startswith("The request for /v3/reference/tickers could not be sent (URL component 'query' too")
    await rest.aclose()


async def test_an_unexpected_failure_is_still_one_sentence():
    class Broken:
        async def get_json(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"internal detail with {KEY}")

    with pytest.raises(ToolError) as info:
        await RestTool(ENDPOINTS["list_trades"], Broken(), Settings(api_key=KEY))(ticker="AAPL")  # type: ignore[arg-type]
    assert str(info.value) == (
        "list_trades failed unexpectedly (RuntimeError): call again, and if it keeps failing report it with the "
        "server's log (stderr)."
    )


async def test_a_rest_url_that_is_not_http_is_named(sim: Simulator):
    rest = make_client("ftp://127.0.0.1:1")
    assert "POLYGON_REST_URL 'ftp://127.0.0.1:1' is not an http(s) address" in await client_failure(rest, "/v1/x")
    await rest.aclose()


@pytest.mark.parametrize(
    ("retry_after", "said"),
    [
        (100_000, "asks to wait 27.8 h (Retry-After: 100000)"),
        (email.utils.formatdate(time.time() + 3 * 3600, usegmt=True), "asks to wait 3.0 h (Retry-After: "),
    ],
    ids=["seconds", "http-date"],
)
async def test_a_retry_after_beyond_the_call_budget_is_reported_at_once(
    client: Client, sim: Simulator, retry_after: Any, said: str
):
    sim.rest.inject(status=429, retry_after=retry_after, times=None)
    started = time.monotonic()
    message = await error_of(client, "list_trades", {"ticker": "AAPL"})
    assert time.monotonic() - started < 2 and len(sim.rest.requests) == 1
    assert message.startswith("Rate limit reached (429): the market-data API") and said in message


async def test_a_503_retry_after_beyond_the_budget_is_reported_at_once(client: Client, sim: Simulator):
    sim.rest.inject(status=503, retry_after=3600, times=None)
    message = await error_of(client, "list_trades", {"ticker": "AAPL"})
    assert message == (
        "The market-data API is unavailable (503): the market-data API asks to wait 60 min (Retry-After: 3600): "
        "call again after that wait."
    )
    assert len(sim.rest.requests) == 1


async def test_a_short_retry_after_is_honoured_and_the_final_message_repeats_it(client: Client, sim: Simulator):
    sim.rest.inject(status=429, retry_after=0.05, times=None)
    message = await error_of(client, "list_trades", {"ticker": "AAPL"})
    assert len(sim.rest.requests) == 2  # max_retries=1: bounded
    assert "still limited after 1 retries: wait 1 s (the API's Retry-After)" in message


def test_retry_after_parses_seconds_and_http_dates():
    now = 1_700_000_000.0
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds(email.utils.formatdate(now + 90, usegmt=True), now) == pytest.approx(90, abs=1)
    assert retry_after_seconds(email.utils.formatdate(now - 90, usegmt=True), now) == 0
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None
