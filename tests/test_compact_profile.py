"""The compact profile (POLYGON_TOOLSETS=compact) through real MCP client sessions: its budget, find_tools,
call_tool answering exactly what the direct tool answers, the stream verbs with a `market` argument, the
annotations of every tool in both profiles, and the README's stated sizes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client

from conftest import mcp_session, text_of
from mcp_polygon.config import ALL_TOOLSETS, ConfigError, Profile, Settings, parse_profile_and_toolsets
from mcp_polygon.profiles import PASSTHROUGH_TOOLS
from mcp_polygon.server import App, build_app
from mcp_polygon.sizes import ProfileSize, listed_bytes, stated
from mcp_polygon.streams.tools import STREAM_VERBS, VERBS

COMPACT_MAX_TOOLS = 12
COMPACT_MAX_BYTES = 10_000
README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.fixture
async def compact_app(settings: Settings) -> AsyncIterator[App]:
    async with build_app(settings.with_overrides(profile=Profile.COMPACT)) as application:
        yield application


@pytest.fixture
async def compact(compact_app: App) -> AsyncIterator[Client]:
    async with mcp_session(compact_app.server) as session:
        yield session


@pytest.fixture
async def direct(compact_app: App) -> AsyncIterator[Client]:
    """A session on the full profile's tools of the same process (same streams, same REST client)."""
    async with mcp_session(compact_app.catalogue) as session:
        yield session


# -- configuration -----------------------------------------------------------------------------------------


def test_compact_is_a_profile_not_an_asset_class() -> None:
    assert parse_profile_and_toolsets("compact") == (Profile.COMPACT, frozenset(ALL_TOOLSETS))
    assert parse_profile_and_toolsets(" Compact , stocks") == (Profile.COMPACT, frozenset({"stocks"}))
    assert parse_profile_and_toolsets("compact,all") == (Profile.COMPACT, frozenset(ALL_TOOLSETS))
    assert parse_profile_and_toolsets("stocks,crypto") == (Profile.FULL, frozenset({"stocks", "crypto"}))
    assert parse_profile_and_toolsets(None) == (Profile.FULL, frozenset(ALL_TOOLSETS))
    settings = Settings.from_env({"POLYGON_TOOLSETS": "compact,crypto"})
    assert (settings.profile, settings.toolsets) == (Profile.COMPACT, frozenset({"crypto"}))


def test_an_unknown_toolset_names_compact_among_the_valid_words() -> None:
    with pytest.raises(ConfigError, match="compact") as raised:
        parse_profile_and_toolsets("compact,bonds")
    assert "bonds" in str(raised.value) and "stocks" in str(raised.value)


# -- the budget --------------------------------------------------------------------------------------------


async def test_compact_tools_list_stays_within_its_budget(compact: Client, compact_app: App) -> None:
    tools = (await compact.list_tools()).tools
    size = ProfileSize.of(Profile.COMPACT, tools)
    assert size.tools <= COMPACT_MAX_TOOLS, [tool.name for tool in tools]
    assert size.total_bytes <= COMPACT_MAX_BYTES, {tool.name: listed_bytes(tool) for tool in tools}
    names = {tool.name for tool in tools}
    present = {name for name in PASSTHROUGH_TOOLS if compact_app.catalogue._tool_manager.get_tool(name)}
    assert names == {"find_tools", "call_tool", *STREAM_VERBS, *present}


async def test_the_budget_check_counts_what_the_client_receives(compact: Client) -> None:
    """listed_bytes measures the JSON of a tool as it arrives; a longer description costs its length."""
    (tool,) = [tool for tool in (await compact.list_tools()).tools if tool.name == "find_tools"]
    longer = tool.model_copy(update={"description": (tool.description or "") + "x" * 100})
    assert listed_bytes(longer) == listed_bytes(tool) + 100


async def test_compact_instructions_say_how_to_reach_the_other_tools(compact_app: App, app: App) -> None:
    assert "find_tools(query)" in (compact_app.server.instructions or "")
    assert "call_tool(name, arguments)" in (compact_app.server.instructions or "")
    assert "find_tools" not in (app.server.instructions or "")


# -- find_tools --------------------------------------------------------------------------------------------


async def test_find_tools_returns_the_best_matches_with_their_full_schemas(compact: Client, direct: Client) -> None:
    result = await compact.call_tool("find_tools", {"query": "crypto stream messages"})
    assert not result.is_error, text_of(result)
    text = text_of(result)
    assert "## get_crypto_stream_messages" in text.split("\n\n")[1], text[:500]
    full = {tool.name: tool for tool in (await direct.list_tools()).tools}
    schema_line = next(line for line in text.splitlines() if line.startswith("input schema: "))
    assert json.loads(schema_line.removeprefix("input schema: ")) == full["get_crypto_stream_messages"].input_schema


async def test_find_tools_searches_parameters_too(compact: Client) -> None:
    text = text_of(await compact.call_tool("find_tools", {"query": "aggregates multiplier timespan", "limit": 3}))
    assert "## get_aggs" in text
    assert text.count("## ") == 3


async def test_find_tools_says_what_to_try_when_nothing_matches(compact: Client) -> None:
    result = await compact.call_tool("find_tools", {"query": "zzqx"})
    assert not result.is_error
    assert "No tool matches 'zzqx'" in text_of(result) and "\n" not in text_of(result)


# -- call_tool answers what the direct call answers -------------------------------------------------------

REST_SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("get_market_status", {}),
    ("get_aggs", {"ticker": "AAPL", "multiplier": 1, "timespan": "day", "from_": "2024-01-02", "to": "2024-01-31"}),
    ("list_tickers", {"limit": 3}),
    ("get_last_trade", {"ticker": "AAPL"}),
    # Failures: a bad enum value, a missing argument, an argument the tool refuses before any request.
    ("get_aggs", {"ticker": "AAPL", "multiplier": 1, "timespan": "days", "from_": "2024-01-02", "to": "2024-01-05"}),
    ("get_aggs", {"ticker": "AAPL", "timespan": "day"}),
    ("get_ticker_details", {"ticker": "../v2/x"}),
]


def _answer(result: Any) -> tuple[bool, str]:
    return bool(result.is_error), text_of(result)


@pytest.mark.parametrize(("name", "arguments"), REST_SAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REST_SAMPLES)])
async def test_call_tool_answers_exactly_what_the_direct_rest_tool_answers(
    compact: Client, direct: Client, name: str, arguments: dict[str, Any]
) -> None:
    expected = _answer(await direct.call_tool(name, arguments))
    assert _answer(await compact.call_tool("call_tool", {"name": name, "arguments": arguments})) == expected


def _per_market(text: str) -> str:
    """A compact verb's answer with its tool calls written as the full profile writes them."""
    for verb in VERBS:
        name = verb.name_for("crypto")
        text = text.replace(f'{verb.verb}(market="crypto", ', f"{name}(").replace(f'{verb.verb}(market="crypto")', name)
    return text


async def test_call_tool_answers_exactly_what_the_direct_stream_tools_answer(
    compact: Client, direct: Client, compact_app: App
) -> None:
    # A stream error first: a crypto channel on the stocks stream.
    bad = {"channels": ["XT.BTC-USD"]}
    expected = _answer(await direct.call_tool("start_stocks_stream", bad))
    assert expected[0]
    assert _answer(await compact.call_tool("call_tool", {"name": "start_stocks_stream", "arguments": bad})) == expected
    # Then a stream with events, stopped so that the buffer holds still while the answers are compared.
    started = await compact.call_tool("start_stream", {"market": "crypto", "channels": ["XT.BTC-USD", "XQ.BTC-USD"]})
    assert not started.is_error, text_of(started)
    buffer = compact_app.streams.stream("crypto").buffer
    deadline = time.monotonic() + 10
    while buffer.head < 5:  # polls for events to arrive; never used to prove an absence
        assert time.monotonic() < deadline, "no crypto events arrived"
        await asyncio.sleep(0.05)
    assert not (await compact.call_tool("stop_stream", {"market": "crypto"})).is_error
    samples: list[tuple[str, dict[str, Any]]] = [
        ("get_crypto_stream_messages", {"since_seq": 0, "limit": 5}),
        ("get_crypto_stream_messages", {"since_seq": 0, "limit": 5, "format": "json", "channel_filter": "XT.*"}),
        ("list_crypto_subscriptions", {}),
        ("get_crypto_stream_messages", {"limit": 0}),
    ]
    for name, arguments in samples:
        expected = _answer(await direct.call_tool(name, arguments))
        through_call_tool = _answer(await compact.call_tool("call_tool", {"name": name, "arguments": arguments}))
        assert through_call_tool == expected, name
        # The generic verb runs the same code. Its answer names the tools as the compact list does, and the SDK's
        # error prefix names the tool that was called: written the per-market way, the answers are the same.
        verb = next(verb.verb for verb in VERBS if verb.name_for("crypto") == name)
        is_error, text = _answer(await compact.call_tool(verb, {"market": "crypto", **arguments}))
        assert (is_error, _per_market(text.replace(f"tool {verb}:", f"tool {name}:", 1))) == expected, verb
        assert not any(v.name_for("crypto") in text for v in VERBS), text  # no hint names an unlisted tool


async def test_call_tool_suggests_names_for_an_unknown_tool(compact: Client) -> None:
    result = await compact.call_tool("call_tool", {"name": "get_agg", "arguments": {}})
    assert result.is_error
    assert "did you mean get_aggs" in text_of(result) and "\n" not in text_of(result)


async def test_a_toolset_filter_limits_what_call_tool_and_the_verbs_reach(settings: Settings) -> None:
    narrowed = settings.with_overrides(profile=Profile.COMPACT, toolsets=frozenset({"stocks"}))
    async with build_app(narrowed) as app, mcp_session(app.server) as session:
        other = await session.call_tool("call_tool", {"name": "get_crypto_stream_status", "arguments": {}})
        assert other.is_error and "Unknown tool" in text_of(other)
        verb = await session.call_tool("get_stream_status", {"market": "crypto"})
        assert verb.is_error and "not loaded" in text_of(verb) and "stocks" in text_of(verb)
        assert not (await session.call_tool("get_stream_status", {"market": "stocks"})).is_error


async def test_a_bad_market_is_one_sentence_naming_the_markets(compact: Client) -> None:
    result = await compact.call_tool("list_subscriptions", {"market": "bonds"})
    assert result.is_error
    text = text_of(result)
    assert "market" in text and "'crypto'" in text and "(got 'bonds')" in text and "\n" not in text


# -- annotations -------------------------------------------------------------------------------------------

READS = {"get_stream_status", "list_subscriptions", "get_stream_messages", "replay_stream_messages"}
REMOVES = {"stop_stream", "unsubscribe_channels"}


def _stream_verb_of(name: str) -> str | None:
    for verb in VERBS:
        if name == verb.verb or any(name == verb.name_for(market) for market in ALL_TOOLSETS):
            return verb.verb
    return None


@pytest.mark.parametrize("profile", [Profile.FULL, Profile.COMPACT])
async def test_every_tool_has_a_title_and_the_hints_of_what_it_does(settings: Settings, profile: Profile) -> None:
    async with build_app(settings.with_overrides(profile=profile)) as app, mcp_session(app.server) as session:
        tools = (await session.list_tools()).tools
    checked = 0
    for tool in tools:
        hints = tool.annotations
        assert tool.title and hints is not None, tool.name
        verb = _stream_verb_of(tool.name)
        if verb is None:
            continue
        checked += 1
        assert hints.read_only_hint is (verb in READS), tool.name
        assert hints.destructive_hint is (verb in REMOVES), tool.name
        assert hints.idempotent_hint is True, tool.name
        assert hints.open_world_hint is (verb not in READS), tool.name  # control talks to the vendor; reads do not
    assert checked == (48 if profile is Profile.FULL else 8)


async def test_find_tools_is_a_read_and_call_tool_claims_nothing_it_cannot_promise(compact: Client) -> None:
    tools = {tool.name: tool for tool in (await compact.list_tools()).tools}
    find, call = tools["find_tools"].annotations, tools["call_tool"].annotations
    assert find is not None and find.read_only_hint and not find.open_world_hint
    assert call is not None and not call.read_only_hint and call.destructive_hint and not call.idempotent_hint


# -- the README's stated sizes -----------------------------------------------------------------------------


async def test_readme_states_both_profiles_measured_sizes(client: Client, compact: Client) -> None:
    claimed = stated(README)
    assert claimed is not None, "README has no sizes line between <!-- sizes:begin --> and <!-- sizes:end -->"
    measured = (
        ProfileSize.of(Profile.FULL, (await client.list_tools()).tools),
        ProfileSize.of(Profile.COMPACT, (await compact.list_tools()).tools),
    )
    for said, real in zip(claimed, measured, strict=True):
        assert said.tools == real.tools, f"{real.profile}: run `make catalogue` to restate the sizes"
        assert abs(said.total_bytes - real.total_bytes) <= 0.05 * real.total_bytes, (
            f"{real.profile}: README says {said.kb} KB, measured {real.kb} KB; run `make catalogue`"
        )
