"""Turn the REST table into MCP tools: one generic implementation, one typed signature per table row.

Each tool is a function whose `__signature__` is built from its Endpoint, so the SDK derives the JSON schema
(types, enums as Literal, required arguments) and validates arguments before our code runs. The body is shared:
resolve the path, build the query, call the vendor, render CSV with paging hints.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from mcp_polygon.config import Settings
from mcp_polygon.redaction import Redactor
from mcp_polygon.rest import arguments, errors, tables
from mcp_polygon.rest.client import RestClient
from mcp_polygon.rest.endpoints import (
    MARKET_TYPES,
    PATH_ARG_NAMES,
    TICKER_PREFIX_MARKET,
    Arg,
    Endpoint,
    load_endpoints,
)

log = logging.getLogger(__name__)

SIMULATED_HEADER = "# SIMULATED DATA (mcp-polygon --simulate): not real market data"
MAX_PAGE_LIMIT = 50_000  # the vendor's largest page
MAX_PAGES_PER_CALL = 20  # list_aggs: bound the requests one call can make
ROWS_CEILING = 50_000

_PY_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool, "array": str}
_PLACEHOLDER = re.compile(r"\{([^}]+)\}")
_ANNOTATIONS = ToolAnnotations(read_only_hint=True, open_world_hint=True)


# ---------------------------------------------------------------------------------------------------------------
# Signatures


def _tidy_schema(schema: dict[str, Any]) -> None:
    """Trim what costs the agent tokens but tells it nothing: per-field titles, `null` branches, null defaults."""
    schema.pop("title", None)
    any_of = schema.get("anyOf")
    if isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of:
        other = next(s for s in any_of if s != {"type": "null"})
        del schema["anyOf"]
        schema.update(other)
    if "default" in schema and schema["default"] is None:
        del schema["default"]


def _annotation(arg: Arg) -> Any:
    base: Any = Literal[arg.enum] if arg.enum else _PY_TYPES.get(arg.type, str)
    constraints: dict[str, Any] = {}
    if arg.name in ("limit", "max_rows"):
        constraints = {"ge": 1, "le": ROWS_CEILING}
    description = arg.description
    if arg.type == "array":
        description = f"{description} Comma-separated.".strip()
    field = Field(description=description, json_schema_extra=_tidy_schema, **constraints)
    if arg.required:
        return Annotated[base, field]
    return Annotated[base | None, field]


def build_signature(endpoint: Endpoint) -> inspect.Signature:
    params = []
    for arg in endpoint.args:
        default = inspect.Parameter.empty if arg.required else arg.default
        params.append(
            inspect.Parameter(arg.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=_annotation(arg))
        )
    return inspect.Signature(params, return_annotation=str)


def describe(endpoint: Endpoint) -> str:
    lines = [endpoint.purpose, "Returns CSV."]
    if endpoint.paginated:
        lines.append("If more rows exist, the last line is the call for the next page.")
    if endpoint.max_rows and not endpoint.follow_pages:
        lines.append(f"Shows max_rows rows (default {endpoint.max_rows}).")
    return " ".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# One call


def _market(endpoint: Endpoint, args: Mapping[str, Any]) -> str | None:
    """The market whose path to call, validated against the ticker prefix and market-only arguments."""
    if not endpoint.market_paths:
        return None
    given = args.get("market_type")
    # The ticker (or the first of a tickers list) tells the market by its prefix: X:BTCUSD, C:EURUSD.
    ticker = args.get("ticker") or (args.get("tickers") or "").split(",")[0].strip()
    inferred = TICKER_PREFIX_MARKET.get(ticker[:2].upper())
    if given and inferred and given != inferred:
        raise ToolError(
            f"ticker {ticker!r} is a {inferred} ticker but market_type is {given!r}: pass "
            f"market_type={inferred!r} or omit market_type (valid: {', '.join(MARKET_TYPES)})."
        )
    market = given or inferred or MARKET_TYPES[0]
    if market in ("forex", "crypto") and ticker and not inferred:
        prefix = "C:" if market == "forex" else "X:"
        raise ToolError(
            f"{market} tickers start with {prefix} (e.g. {prefix}{'EURUSD' if market == 'forex' else 'BTCUSD'}): "
            f"pass ticker={prefix + ticker.upper()!r}."
        )
    for arg in endpoint.args:
        if arg.markets is not None and args.get(arg.name) is not None and market not in arg.markets:
            allowed = ", ".join(sorted(arg.markets))
            raise ToolError(
                f"{arg.name} applies only to market_type {allowed}, not {market!r}: drop {arg.name} or change "
                f"market_type (valid: {', '.join(MARKET_TYPES)})."
            )
    return market


def _fill_path(template: str, args: Mapping[str, Any]) -> str:
    """The template with each placeholder replaced by its argument (checked by arguments.check_arguments)."""

    def value(match: re.Match[str]) -> str:
        name = PATH_ARG_NAMES.get(match.group(1), match.group(1))
        text = str(args[name]).strip()
        # A second guard behind the argument checks: only that alphabet reaches the path, never a dot segment.
        if not arguments.is_safe_path_value(text):
            raise ToolError(f"{name} {arguments.quoted(text)} cannot stand in an API path: pass a value such as AAPL.")
        return quote(text, safe=":")

    return _PLACEHOLDER.sub(value, template)


def _path_args(endpoint: Endpoint, args: Mapping[str, Any]) -> dict[str, Any]:
    return {a.name: args[a.name] for a in endpoint.args if a.where == "path"}


def _path_values(template: str, path: str) -> dict[str, str] | None:
    """Path argument values in `path` if it has the shape of `template` ({from} -> from_), else None."""
    names, pattern, pos = [], "", 0
    for m in _PLACEHOLDER.finditer(template):
        pattern += re.escape(template[pos : m.start()]) + "([^/]+)"
        names.append(PATH_ARG_NAMES.get(m.group(1), m.group(1)))
        pos = m.end()
    match = re.fullmatch(pattern + re.escape(template[pos:]), path)
    if not match:
        return None
    return dict(zip(names, (unquote(v) for v in match.groups()), strict=True))


def _query(endpoint: Endpoint, args: Mapping[str, Any]) -> dict[str, Any]:
    query: dict[str, Any] = dict(endpoint.fixed)
    for arg in endpoint.args:
        if arg.where != "query":
            continue
        value = args.get(arg.name)
        if value is None:
            value = arg.default
        if value is not None:
            query[arg.wire] = value
    return query


def _cursor_query(cursor: str) -> dict[str, str]:
    try:
        return tables.params_from_token(cursor.strip())
    except ValueError:
        raise ToolError(
            "cursor is not a page token from this server: copy it exactly from the '# next page' line, or omit it."
        ) from None


def _next_url(body: Any) -> str | None:
    """The vendor's link to the next page, if the body has one that is a URL at all."""
    link = body.get("next_url") if isinstance(body, Mapping) else None
    return link if isinstance(link, str) and link else None


def _not_found_hint(endpoint: Endpoint, args: Mapping[str, Any]) -> str:
    named = [f"{k}={v!r}" for k, v in _path_args(endpoint, args).items()]
    if not named:
        return "the filter values (symbols are case-sensitive)"
    return " and ".join(named) + " (symbols are case-sensitive; dates are YYYY-MM-DD)"


class RestTool:
    """Everything one tool call needs: the endpoint, the client, the settings."""

    def __init__(self, endpoint: Endpoint, rest: RestClient, settings: Settings) -> None:
        self.endpoint = endpoint
        self.rest = rest
        self.settings = settings
        self.redact = Redactor(settings.api_key)

    async def __call__(self, **args: Any) -> str:
        """The answer, with the key masked on every way out: the text, its cursors, and every error."""
        try:
            text = await self._answer(args)
        except ToolError as exc:
            raise ToolError(self.redact(str(exc))) from None
        except Exception as exc:
            # Anything else would reach the agent as a bare "Error executing tool X"; the log keeps the traceback.
            log.exception("%s failed unexpectedly", self.endpoint.name)
            raise ToolError(self.redact(errors.unexpected_error(self.endpoint.name, type(exc).__name__))) from None
        return self.redact(text)

    async def _answer(self, args: Mapping[str, Any]) -> str:
        ep = self.endpoint
        arguments.check_arguments(ep, args)
        market = _market(ep, args)
        template = ep.market_paths[market] if ep.market_paths and market else ep.path
        path = _fill_path(template, args)
        cursor = args.get("cursor")
        query = _cursor_query(cursor) if cursor else _query(ep, args)
        hint_404 = _not_found_hint(ep, args)

        footer: list[str] = []
        if ep.follow_pages:
            body, next_url, note = await self._walk(template, path, query, args, hint_404)
            footer += [note] if note else []
            max_rows = None
        else:
            body = await self.rest.get_json(path, query, not_found_hint=hint_404)
            next_url = _next_url(body)
            max_rows = (args.get("max_rows") or ep.max_rows) if ep.max_rows else None

        if next_url and ep.paginated:
            footer += self._next_page_hint(template, args, market, next_url)
        rendered = tables.render(
            tables.extract_sections(body),
            max_chars=self.settings.max_response_chars,
            max_rows=max_rows,
            header=[SIMULATED_HEADER] if self.settings.simulated else [],
            footer=footer,
            narrow_hint=self._narrow_hint(),
            more_rows_hint=f"pass max_rows (up to {ROWS_CEILING}) to see more" if max_rows else "",
        )
        return rendered.text

    def _narrow_hint(self) -> str:
        names = {a.name for a in self.endpoint.args}
        if "limit" in names:
            return "a smaller limit or narrower filters"
        if "max_rows" in names:
            return "a smaller max_rows or narrower filters"
        return "narrower arguments"

    def _next_page_hint(self, template: str, args: Mapping[str, Any], market: str | None, next_url: str) -> list[str]:
        token = tables.page_token(next_url, self.redact)
        if token is None:
            return []
        next_path, cursor = token
        # A token too long to pass back, or path values that could not be called, would make a hint that fails.
        longest = min(arguments.MAX_CURSOR_CHARS, self.settings.max_response_chars // 4)
        moved = _path_values(template, next_path) or {}
        fits = len(cursor) <= longest and arguments.is_acceptable_cursor(cursor)
        if not fits or not all(map(arguments.is_safe_path_value, moved.values())):
            return [
                "# more rows exist, but the API's link to them cannot be passed back as a cursor: narrow the request "
                f"with {self._narrow_hint()} to see them"
            ]
        hint_args: dict[str, Any] = dict(_path_args(self.endpoint, args))
        # The vendor may move path values forward in next_url (aggs: `from` becomes the next bar's timestamp).
        for name, value in moved.items():
            if str(hint_args.get(name)) != value:
                integer = self.endpoint.arg(name).type == "integer" and value.isdigit()
                hint_args[name] = int(value) if integer else value
        if market and args.get("market_type"):
            hint_args["market_type"] = market
        if self.endpoint.follow_pages and args.get("max_rows"):
            hint_args["max_rows"] = args["max_rows"]
        hint_args["cursor"] = cursor
        return [f"# next page: {tables.call_hint(self.endpoint.name, hint_args)}"]

    async def _walk(
        self, template: str, path: str, query: dict[str, Any], args: Mapping[str, Any], hint_404: str
    ) -> tuple[dict[str, Any], str | None, str | None]:
        """Follow next_url until max_rows rows (list_aggs); only paths of this endpoint's shape are followed."""
        target = args.get("max_rows") or self.endpoint.max_rows or ROWS_CEILING
        rows: list[Any] = []
        next_url: str | None = None
        note = None
        for _ in range(MAX_PAGES_PER_CALL):
            if "cursor" not in query:
                query["limit"] = min(target - len(rows), MAX_PAGE_LIMIT)
            body = await self.rest.get_json(path, query, not_found_hint=hint_404)
            page = body.get("results") if isinstance(body, Mapping) else None
            rows.extend(page or [])
            next_url = _next_url(body)
            if len(rows) >= target or not next_url:
                break
            token = tables.page_token(next_url, self.redact)
            moved = _path_values(template, token[0]) if token else None
            # Only a link of this endpoint's shape, with values that keep it there, is followed.
            if token is None or moved is None or not all(map(arguments.is_safe_path_value, moved.values())):
                break
            try:
                query = tables.params_from_token(token[1])
            except ValueError:
                break
            path = token[0]
        else:
            note = f"# stopped after {MAX_PAGES_PER_CALL} pages ({len(rows)} bars); continue with the cursor below"
        if len(rows) > target:
            # The cut rows are not reachable through the vendor's cursor, so say how to get them instead.
            note = (
                f"# stopped at max_rows={target} bars ({len(rows) - target} more fetched, not shown): raise "
                "max_rows, or call again with from_ just after the last bar's t"
            )
            rows, next_url = rows[:target], None
        return {"results": rows}, next_url, note


def _make_tool(endpoint: Endpoint, rest: RestClient, settings: Settings) -> Callable[..., Any]:
    runner = RestTool(endpoint, rest, settings)

    async def tool(**kwargs: Any) -> str:
        return await runner(**kwargs)

    tool.__name__ = tool.__qualname__ = endpoint.name
    tool.__doc__ = describe(endpoint)
    tool.__signature__ = build_signature(endpoint)  # type: ignore[attr-defined]
    return tool


def register_rest_tools(server: MCPServer, rest: RestClient, settings: Settings) -> None:
    """Register the REST tools of the toolsets in settings.toolsets."""
    for endpoint in load_endpoints():
        if endpoint.toolset not in settings.toolsets:
            continue
        server.add_tool(
            _make_tool(endpoint, rest, settings),
            name=endpoint.name,
            description=describe(endpoint),
            annotations=_ANNOTATIONS,
            structured_output=False,
        )
