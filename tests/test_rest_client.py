"""RestClient against the REST simulator: auth, error mapping to one actionable sentence, bounded retries."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest
from mcp.server.mcpserver.exceptions import ToolError

from mcp_polygon.config import Settings
from mcp_polygon.rest.client import RestClient
from mcp_polygon.rest.errors import NO_KEY
from mcp_polygon.simulator.rest import RestSimulator

KEY = "sk-test-SECRET-9f3a"


@pytest.fixture
async def rest_sim() -> AsyncIterator[RestSimulator]:
    async with RestSimulator(api_key=KEY) as simulator:
        yield simulator


def make_client(url: str, *, key: str | None = KEY, retries: int = 2, timeout: float = 5.0, **kw) -> RestClient:
    settings = Settings(api_key=key, rest_url=url, max_retries=retries, request_timeout=timeout)
    return RestClient(settings, backoff_base=kw.pop("backoff_base", 0.01), **kw)


@pytest.fixture
async def rest(rest_sim: RestSimulator) -> AsyncIterator[RestClient]:
    client = make_client(rest_sim.url)
    yield client
    await client.aclose()


async def failure(client: RestClient, path: str = "/v3/trades/AAPL", params=None, **kw) -> str:
    with pytest.raises(ToolError) as info:
        await client.get_json(path, params or {}, **kw)
    message = str(info.value)
    assert KEY not in message
    assert message.count(". ") == 0 or message.endswith("."), message  # one sentence
    return message


async def test_ok_uses_bearer_auth_and_drops_none_params(rest: RestClient, rest_sim: RestSimulator):
    body = await rest.get_json("/v3/reference/tickers", {"active": True, "search": None, "limit": 3})
    assert len(body["results"]) == 3
    seen = rest_sim.requests[-1]
    assert (seen.path, seen.params, seen.auth) == ("/v3/reference/tickers", {"active": "true", "limit": "3"}, "bearer")


async def test_missing_key_says_how_to_set_it_without_calling_out(rest_sim: RestSimulator):
    client = make_client(rest_sim.url, key=None)
    assert await failure(client) == NO_KEY
    assert rest_sim.requests == []
    await client.aclose()


async def test_wrong_key_is_401_with_what_to_check(rest_sim: RestSimulator):
    client = make_client(rest_sim.url, key="wrong-key")
    message = await failure(client)
    assert "401" in message and "POLYGON_API_KEY" in message and "Unknown API Key" in message
    assert "wrong-key" not in message
    await client.aclose()


async def test_403_points_to_the_plan(rest: RestClient, rest_sim: RestSimulator):
    rest_sim.inject("/v3/trades", status=403)
    message = await failure(rest)
    assert "403 NOT_AUTHORIZED" in message and "/v3/trades/AAPL" in message and "https://massive.com/pricing" in message


async def test_404_names_what_to_check(rest: RestClient):
    message = await failure(rest, "/v3/reference/tickers/ZZNOTFOUND", not_found_hint="ticker='ZZNOTFOUND'")
    assert message == "Nothing found (404: Ticker not found): check ticker='ZZNOTFOUND'."


async def test_400_quotes_the_vendor_message_scrubbed(rest: RestClient, rest_sim: RestSimulator):
    rest_sim.inject(status=400, message=f"Bad 'timestamp'\x00 for apiKey={KEY}&x=1 (Bearer {KEY})")
    message = await failure(rest)
    assert message.startswith("The request was rejected as invalid (400: Bad 'timestamp' for apiKey=***&x=1")
    assert "\x00" not in message and "fix the arguments" in message


async def test_natural_400_from_bad_arguments(rest: RestClient):
    message = await failure(rest, "/v2/aggs/ticker/AAPL/range/1/day/yesterday/2024-01-05")
    assert "400: Could not parse 'yesterday'" in message


async def test_429_retry_after_is_honoured_then_succeeds(rest: RestClient, rest_sim: RestSimulator):
    rest_sim.inject(status=429, retry_after=0.3, times=1)
    started = time.monotonic()
    body = await rest.get_json("/v3/trades/AAPL", {"limit": 1})
    assert time.monotonic() - started >= 0.3
    assert body["status"] == "OK" and len(rest_sim.requests) == 2


async def test_429_retry_after_beyond_the_budget_is_reported_at_once(rest_sim: RestSimulator):
    client = make_client(rest_sim.url, max_retry_wait=0.2)
    rest_sim.inject(status=429, retry_after=30, times=1)
    started = time.monotonic()
    message = await failure(client)
    assert time.monotonic() - started < 1 and len(rest_sim.requests) == 1  # no waiting, no second attempt
    assert "asks to wait 30 s (Retry-After: 30)" in message and "longer than one call waits (0.2 s)" in message
    await client.aclose()


async def test_429_after_retries_says_wait(rest: RestClient, rest_sim: RestSimulator):
    rest_sim.inject(status=429, retry_after=0, times=None)
    message = await failure(rest)
    assert message.startswith("Rate limit reached (429) and still limited after 2 retries")
    assert len(rest_sim.requests) == 3


async def test_5xx_is_retried_with_backoff(rest: RestClient, rest_sim: RestSimulator):
    rest_sim.inject(status=503, times=2)
    body = await rest.get_json("/v3/trades/AAPL", {})
    assert body["status"] == "OK" and len(rest_sim.requests) == 3


async def test_5xx_after_retries_reports_without_html(rest: RestClient, rest_sim: RestSimulator):
    rest_sim.inject(status=502, times=None)
    message = await failure(rest)
    assert message == "The market-data API failed (502) after 2 retries: try again in a minute."


async def test_500_quotes_vendor_error(rest: RestClient, rest_sim: RestSimulator):
    rest_sim.inject(status=500, times=None)
    assert "(500: Internal server error) after 2 retries" in await failure(rest)


async def test_timeout_is_retried_then_reported(rest_sim: RestSimulator):
    client = make_client(rest_sim.url, retries=1, timeout=0.2)
    rest_sim.inject(delay=1.0, times=None)
    message = await failure(client)
    assert message.startswith("The market-data API did not answer within 0.2 s (tried 2 times)")
    assert len(rest_sim.requests) == 2
    await client.aclose()


async def test_timeout_then_success(rest_sim: RestSimulator):
    client = make_client(rest_sim.url, retries=1, timeout=0.3)
    rest_sim.inject(delay=1.0, times=1)
    assert (await client.get_json("/v1/marketstatus/now", {}))["market"] == "extended-hours"
    await client.aclose()


async def test_invalid_json(rest: RestClient, rest_sim: RestSimulator):
    rest_sim.inject(invalid_json=True)
    message = await failure(rest)
    assert message.startswith("The market-data API returned a body that is not valid JSON (HTTP 200, application/json)")


async def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    client = make_client(f"http://127.0.0.1:{port}", retries=1)
    message = await failure(client)
    assert "connection refused" in message and "POLYGON_REST_URL" in message and "tried 2 times" in message
    await client.aclose()


async def test_client_is_created_lazily_and_closes_twice(rest_sim: RestSimulator):
    client = make_client(rest_sim.url)
    await client.aclose()  # never used: nothing to close
    await client.get_json("/v1/marketstatus/now", {})
    await client.aclose()
    await client.aclose()


async def test_large_bodies_are_decoded_off_the_event_loop(rest: RestClient, monkeypatch: pytest.MonkeyPatch):
    from mcp_polygon.rest import client as client_module

    threads = []
    real_to_thread = client_module.asyncio.to_thread

    async def spy(fn, *args):
        threads.append(fn)
        return await real_to_thread(fn, *args)

    monkeypatch.setattr(client_module, "BIG_BODY", 100)
    monkeypatch.setattr(client_module.asyncio, "to_thread", spy)
    body = await rest.get_json("/v3/reference/tickers", {"limit": 5})
    assert len(body["results"]) == 5 and threads
