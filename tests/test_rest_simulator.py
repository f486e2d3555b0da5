"""The REST simulator itself: auth like the vendor, paging without the key, faults, control endpoints, lifecycle."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx2
import pytest

from mcp_polygon.simulator.rest import RestSimulator

KEY = "sim-test-key-77"


@pytest.fixture
async def rest_sim() -> AsyncIterator[RestSimulator]:
    async with RestSimulator(api_key=KEY) as simulator:
        yield simulator


@pytest.fixture
async def http(rest_sim: RestSimulator) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=rest_sim.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


async def test_start_and_stop_in_different_tasks():
    simulator = RestSimulator(api_key=KEY)
    await asyncio.create_task(simulator.start())
    assert simulator.url.startswith("http://127.0.0.1:") and not simulator.url.endswith(":0")
    async with httpx2.AsyncClient() as client:
        response = await client.get(f"{simulator.url}/v1/marketstatus/now", params={"apiKey": KEY})
    assert response.status_code == 200
    await asyncio.create_task(simulator.stop())


async def test_stop_does_not_wait_for_a_delayed_response(rest_sim: RestSimulator, http: httpx2.AsyncClient):
    rest_sim.inject(delay=30)
    pending = asyncio.create_task(http.get("/v3/trades/AAPL"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await rest_sim.stop()
    assert time.monotonic() - started < 1
    with pytest.raises(httpx2.TransportError):
        await pending


async def test_query_key_auth_is_recorded_without_the_key(rest_sim: RestSimulator):
    async with httpx2.AsyncClient() as client:
        response = await client.get(f"{rest_sim.url}/v3/trades/AAPL", params={"apiKey": KEY, "limit": 2})
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    seen = rest_sim.requests[-1]
    assert (seen.path, seen.params, seen.auth) == ("/v3/trades/AAPL", {"limit": "2"}, "query")


@pytest.mark.parametrize(
    ("headers", "error"),
    [({}, "API Key was not provided"), ({"Authorization": "Bearer nope"}, "Unknown API Key")],
)
async def test_missing_or_wrong_key_is_a_vendor_style_401(rest_sim: RestSimulator, headers, error):
    async with httpx2.AsyncClient() as client:
        response = await client.get(f"{rest_sim.url}/v3/trades/AAPL", headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == "ERROR" and response.json()["error"] == error


async def test_list_pages_carry_a_cursor_on_the_simulator_host_and_never_the_key(
    rest_sim: RestSimulator, http: httpx2.AsyncClient
):
    ids, url, pages = [], "/v3/trades/AAPL?limit=10", 0
    while url:
        body = (await http.get(url)).json()
        ids += [row["id"] for row in body["results"]]
        url = body.get("next_url")
        pages += 1
        if url:
            assert url.startswith(rest_sim.url) and KEY not in url and "cursor=" in url
            url = url[len(rest_sim.url) :]
    assert pages == 3 and len(ids) == len(set(ids)) == 25
    assert ids[:2] == ["1", "2"]  # the vendor's own example rows come first


async def test_aggregate_pages_agree_with_one_big_page(http: httpx2.AsyncClient):
    path = "/v2/aggs/ticker/MSFT/range/1/day/2024-01-01/2024-03-31"
    whole = (await http.get(path, params={"limit": 5000})).json()["results"]
    paged, url = [], f"{path}?limit=20"
    while url:
        body = (await http.get(url)).json()
        paged += body["results"]
        url = body.get("next_url")
        url = urlsplit(url).path + "?" + urlsplit(url).query if url else None
    assert paged == whole and len(whole) == 65  # weekdays of Q1 2024
    assert all(bar["l"] <= min(bar["o"], bar["c"]) and bar["h"] >= max(bar["o"], bar["c"]) for bar in whole)


async def test_the_previous_close_is_yesterday_s_bar_of_the_same_price_path_as_the_stream(http: httpx2.AsyncClient):
    prev = (await http.get("/v2/aggs/ticker/AAPL/prev")).json()["results"][0]
    day = dt.datetime.fromtimestamp(prev["t"] / 1000, dt.UTC).date()
    assert day < dt.datetime.now(dt.UTC).date() and day.weekday() < 5
    bars = (await http.get(f"/v2/aggs/ticker/AAPL/range/1/day/{day}/{day}")).json()["results"]
    assert [(b["o"], b["c"], b["h"], b["l"]) for b in bars] == [(prev["o"], prev["c"], prev["h"], prev["l"])]
    assert prev["T"] == "AAPL" and abs(prev["c"] / 230.0 - 1) < 0.15  # near where the AAPL stream trades


async def test_descending_aggregates_start_at_the_end(http: httpx2.AsyncClient):
    body = (await http.get("/v2/aggs/ticker/MSFT/range/1/day/2024-01-01/2024-01-31", params={"sort": "desc"})).json()
    times = [bar["t"] for bar in body["results"]]
    assert times == sorted(times, reverse=True) and times[0] == 1706659200000  # 2024-01-31


async def test_faults_count_down_and_match_prefixes(rest_sim: RestSimulator, http: httpx2.AsyncClient):
    rest_sim.inject("/v3/quotes", status=503, times=2)
    assert (await http.get("/v3/trades/AAPL")).status_code == 200
    assert [(await http.get("/v3/quotes/AAPL")).status_code for _ in range(3)] == [503, 503, 200]
    rest_sim.inject(status=429, retry_after=2, times=None)
    limited = await http.get("/v1/marketstatus/now")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    rest_sim.clear_faults()
    assert (await http.get("/v1/marketstatus/now")).status_code == 200


async def test_control_endpoints_steer_faults(rest_sim: RestSimulator, http: httpx2.AsyncClient):
    created = await http.post("/_sim/faults", json={"path_prefix": "/v3/trades", "status": 403, "times": 5})
    assert created.status_code == 200 and created.json()["fault"]["status"] == 403
    assert (await http.get("/_sim/faults")).json()["faults"][0]["times"] == 5
    denied = await http.get("/v3/trades/AAPL")
    assert denied.status_code == 403 and denied.json()["status"] == "NOT_AUTHORIZED"
    assert (await http.delete("/_sim/faults")).status_code == 200
    assert (await http.get("/v3/trades/AAPL")).status_code == 200
    assert (await http.post("/_sim/faults", json={"colour": "red"})).status_code == 400
    seen = (await http.get("/_sim/requests")).json()["requests"]
    assert [r["path"] for r in seen] == ["/v3/trades/AAPL", "/v3/trades/AAPL"]


async def test_body_faults_serve_sized_crafted_and_compressed_bodies(rest_sim: RestSimulator, http: httpx2.AsyncClient):
    rest_sim.inject("/v3/trades", body_bytes=100_000, compress=True)
    sized = await http.get("/v3/trades/AAPL")
    assert sized.headers["content-encoding"] == "gzip" and int(sized.headers["content-length"]) < 10_000
    assert len(sized.content) == 100_000 and sized.json()["status"] == "OK"  # decoded: exactly the size asked
    rest_sim.inject(body={"results": [{"id": "x"}], "next_url": "http://elsewhere/v3/trades/A?cursor=c"})
    assert (await http.get("/v3/trades/AAPL")).json()["next_url"] == "http://elsewhere/v3/trades/A?cursor=c"
    rest_sim.inject(status=307, headers={"Location": "http://elsewhere/"})
    assert (await http.get("/v3/trades/AAPL")).headers["location"] == "http://elsewhere/"
    rest_sim.inject(status=429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    assert (await http.get("/v3/trades/AAPL")).headers["retry-after"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    created = await http.post("/_sim/faults", json={"body_bytes": 50, "times": 2})
    assert created.json()["fault"]["body_bytes"] == 50 and "payload" not in created.json()["fault"]
    assert len((await http.get("/v1/marketstatus/now")).content) == 50


async def test_unknown_route_and_unknown_ticker_are_404(http: httpx2.AsyncClient):
    assert (await http.get("/v9/nothing")).status_code == 404
    missing = await http.get("/v3/reference/tickers/NOTFOUND")
    assert missing.status_code == 404 and missing.json()["message"] == "Ticker not found."


async def test_whole_market_endpoints_are_bigger_than_a_page(http: httpx2.AsyncClient):
    grouped = (await http.get("/v2/aggs/grouped/locale/us/market/stocks/2024-01-02")).json()["results"]
    assert len(grouped) == 120 and len({row["T"] for row in grouped}) == 120
    listed = (await http.get("/v2/snapshot/locale/us/markets/stocks/tickers", params={"tickers": "AAPL,MSFT"})).json()
    assert [row["ticker"] for row in listed["tickers"]] == ["AAPL", "MSFT"]


async def test_cursor_carries_the_filters_like_the_vendor(http: httpx2.AsyncClient, rest_sim: RestSimulator):
    first = (await http.get("/futures/v1/contracts", params={"product_code": "ES", "limit": 10})).json()
    second = (await http.get(first["next_url"][len(rest_sim.url) :])).json()
    assert {row["product_code"] for row in first["results"] + second["results"]} == {"ES"}
    assert rest_sim.requests[-1].params.keys() == {"cursor"}
