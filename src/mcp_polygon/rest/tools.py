"""Turn the REST table into MCP tools: one generic implementation, one typed signature per table row.

Each tool is a function whose `__signature__` is built from its Endpoint, so the SDK derives the JSON schema
(types, enums as Literal, required arguments) and validates arguments before our code runs. The body is shared:
resolve the path, build the query, call the vendor, render CSV with paging hints.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from mcp_polygon.config import Settings
from mcp_polygon.redaction import Redactor
from mcp_polygon.rest import arguments, columns, errors, tables
from mcp_polygon.rest.client import RestClient
from mcp_polygon.rest.endpoints import (
    DEFAULT_LIMIT,
    MARKET_TYPES,
    PATH_ARG_NAMES,
    TICKER_PREFIX_MARKET,
    Arg,
    Endpoint,
    Operator,
    load_endpoints,
)

log = logging.getLogger(__name__)

SIMULATED_HEADER = "# SIMULATED DATA (mcp-polygon --simulate): not real market data"
MAX_PAGE_LIMIT = 50_000  # the vendor's largest page
MAX_PAGES_PER_CALL = 20  # list_aggs: bound the requests one call can make
ROWS_CEILING = 50_000

_PY_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool, "array": str}
_PLACEHOLDER = re.compile(r"\{([^}]+)\}")
# store_as: (table name, columns, rows, the tool's name) -> the answer (rows, columns, a 5-row preview).
TableStore = Callable[[str, Sequence[str], Sequence[Sequence[Any]], str], Awaitable[str]]
STORE_DEFAULT_ROWS = 10_000  # rows store_as saves without max_rows
STORE_MAX_PAGES = 200  # bound the requests one store_as call can make
# Every REST tool reads vendor data and changes nothing, here or at the vendor: calling it twice is harmless.
_ANNOTATIONS = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True)


# ---------------------------------------------------------------------------------------------------------------
# Signatures: the schema says the type, the enum and the default; a description says only what they cannot.


def _marker(arg: Arg) -> str:
    """The tag that tells an agent which value forms an argument takes (the instructions explain each tag once)."""
    tags = []
    if arg.operators & RANGE_OPERATORS:
        tags.append("range")
    if Operator.ANY_OF in arg.operators or arg.type == "array":
        tags.append("list")
    return f"[{', '.join(tags)}]" if tags else ""


def schema_description(arg: Arg) -> str:
    """The description an argument's schema carries: the vendor's meaning, what a filter takes, its choices."""
    if arg.is_filter and arg.enum:
        # A filter's schema is a string (it takes lists too), so its choices are said here instead; they also say
        # what the field is, better than the vendor's "The sector to which the product belongs".
        return f"{_marker(arg)} {'|'.join(map(str, arg.enum))}"
    return " ".join(part for part in (arg.description, _marker(arg)) if part)


def _tidy(arg: Arg) -> Callable[[dict[str, Any]], None]:
    """A schema hook trimming what costs the agent tokens but tells it nothing (titles, null branches)."""

    def tidy(schema: dict[str, Any]) -> None:
        schema.pop("title", None)
        any_of = schema.pop("anyOf", None)
        if arg.is_filter:
            # Numbers are accepted too (an agent may send importance=3), but the documented form is text.
            schema["type"] = "string"
        elif isinstance(any_of, list):
            others = [s for s in any_of if s != {"type": "null"}]
            schema.update(others[0] if len(others) == 1 else {"anyOf": others})
        # The row caps and limit's default are said once in the instructions; the signature still applies them.
        schema.pop("minimum", None)
        schema.pop("maximum", None)
        if arg.name == "limit" and arg.default == DEFAULT_LIMIT:
            schema.pop("default", None)
        if schema.get("default") is None:
            schema.pop("default", None)
            # The vendor's own default order applies when sort/order are omitted (said once in the instructions).
            if (
                arg.implied_default is not None
                and not (arg.enum and len(arg.enum) == 1)
                and not arg.shared
                and arg.name not in ("sort", "order")
            ):
                schema["default"] = arg.implied_default
        description = schema_description(arg)
        if description:
            schema["description"] = description
        else:
            schema.pop("description", None)

    return tidy


def _annotation(arg: Arg) -> Any:
    base: Any
    if arg.is_filter:
        base = str | int | float
    else:
        base = Literal[arg.enum] if arg.enum else _PY_TYPES.get(arg.type, str)
    constraints: dict[str, Any] = {}
    if arg.name in ("limit", "max_rows"):
        constraints = {"ge": 1, "le": ROWS_CEILING}
    field = Field(json_schema_extra=_tidy(arg), **constraints)
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
    """What the tool answers; how every answer reads (CSV, next-page hints) is said once in the instructions."""
    return endpoint.purpose


# ---------------------------------------------------------------------------------------------------------------
# Filters: one argument per vendor field, `>=v`, `lo..hi`, `a,b` or a bare value


RANGE_OPERATORS = frozenset({Operator.GT, Operator.GTE, Operator.LT, Operator.LTE})
# Two-character signs first, so that `>=5` is not read as `>` and `=5`.
_COMPARISONS = ((">=", Operator.GTE), ("<=", Operator.LTE), (">", Operator.GT), ("<", Operator.LT))
_SHOWN_COMPARISONS = ((">=", Operator.GTE), (">", Operator.GT), ("<=", Operator.LTE), ("<", Operator.LT))


@dataclass(frozen=True)
class Condition:
    """One vendor parameter a filter argument fills: `timestamp.gte=2024-01-01` is (GTE, "2024-01-01")."""

    operator: Operator
    value: str


def filter_forms(arg: Arg) -> str:
    """The value forms this filter takes, for error messages: only those its vendor parameters allow."""
    forms = []
    if Operator.EQ in arg.operators:
        forms.append("a value")
    comparisons = [f"{sign}v" for sign, op in _SHOWN_COMPARISONS if op in arg.operators]
    if comparisons:
        forms.append(" ".join(comparisons))
    if {Operator.GTE, Operator.LTE} <= arg.operators:
        forms.append("lo..hi")
    if Operator.ANY_OF in arg.operators:
        forms.append("a,b,c")
    return ", ".join(forms)


def _example(arg: Arg) -> str:
    if not arg.operators & RANGE_OPERATORS:
        values = [str(v) for v in (arg.enum or ("A", "B"))[:2]]
        return f"{arg.name}='{','.join(values)}'"
    if arg.type in ("integer", "number"):
        return f"{arg.name}='>=3' or '1..5'"
    return f"{arg.name}='>=2024-01-01' or '2024-01-01..2024-01-31'"


def _bad_filter(arg: Arg, value: str, why: str) -> ToolError:
    return ToolError(f"{arg.name} {arguments.quoted(value)} {why}: pass {filter_forms(arg)} (e.g. {_example(arg)}).")


def _conditions(arg: Arg, text: str) -> list[Condition]:
    """The conditions one filter value stands for, in the forms the instructions describe."""
    if ".." in text:
        low, _, high = text.partition("..")
        pairs = [(Operator.GTE, low.strip()), (Operator.LTE, high.strip())]
        conditions = [Condition(op, value) for op, value in pairs if value]
        if not conditions or "..." in text or any(".." in c.value for c in conditions):
            raise _bad_filter(arg, text, "is not a range")
        return conditions
    if text[:1] in "<>":
        conditions = []
        for term in text.split():
            match = next(((op, term[len(sign) :]) for sign, op in _COMPARISONS if term.startswith(sign)), None)
            if match is None or not match[1]:
                raise _bad_filter(arg, text, "mixes comparisons with other text")
            conditions.append(Condition(*match))
        if len({c.operator for c in conditions}) < len(conditions):
            raise _bad_filter(arg, text, "repeats a comparison")
        return conditions
    if "," in text and Operator.ANY_OF in arg.operators:
        items = [item.strip() for item in text.split(",") if item.strip()]
        return [Condition(Operator.ANY_OF, ",".join(items))]
    return [Condition(Operator.EQ, text.removeprefix("=").strip())]


def _is_number(text: str, *, integer: bool) -> bool:
    try:
        int(text) if integer else float(text)
    except ValueError:
        return False
    return True


def _check_operand(arg: Arg, whole: str, value: str) -> None:
    """A condition's value against the field's type, its choices and (for symbols) the ticker alphabet."""
    for item in value.split(",") if value else [value]:
        if arg.enum and item not in map(str, arg.enum):
            choices = ", ".join(map(str, arg.enum))
            raise ToolError(
                f"{arg.name} {arguments.quoted(item)} is not one of the valid values: pass one of {choices}."
            )
        if arg.type in ("integer", "number") and not _is_number(item, integer=arg.type == "integer"):
            kind = "an integer" if arg.type == "integer" else "a number"
            raise _bad_filter(arg, whole, f"has {arguments.quoted(item)}, which is not {kind}")
        if arguments.kind_of(arg) is arguments.ValueKind.TICKER:
            arguments.check_value(arg.name, item, arguments.ValueKind.TICKER, path=True)


def parse_filter(arg: Arg, value: object) -> tuple[Condition, ...]:
    """A filter argument's value -> the vendor parameters it fills, or a ToolError naming the valid forms."""
    if isinstance(value, bool):
        raise _bad_filter(arg, str(value).lower(), "is not a filter value")
    text = str(value).strip()
    arguments.check_value(arg.name, text, arguments.ValueKind.LIST)
    if not text:
        raise _bad_filter(arg, text, "is empty")
    conditions = _conditions(arg, text)
    for condition in conditions:
        if any(sign in condition.value for sign in "<>="):  # `=>5`, `5..<9`: a misspelt form, not a value
            raise _bad_filter(arg, text, "is not one of the forms")
        if condition.operator not in arg.operators:
            raise _bad_filter(arg, text, "uses a form this filter does not take")
        _check_operand(arg, text, condition.value)
    return tuple(conditions)


def _filters(endpoint: Endpoint, args: Mapping[str, Any]) -> dict[str, tuple[Condition, ...]]:
    return {
        arg.name: parse_filter(arg, args[arg.name])
        for arg in endpoint.args
        if arg.is_filter and args.get(arg.name) is not None
    }


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


def _query(endpoint: Endpoint, args: Mapping[str, Any], filters: Mapping[str, tuple[Condition, ...]]) -> dict[str, Any]:
    query: dict[str, Any] = dict(endpoint.fixed)
    for arg in endpoint.args:
        if arg.where != "query":
            continue
        if arg.name in filters:
            query.update((arg.wire_of(c.operator), c.value) for c in filters[arg.name])
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

    def __init__(
        self, endpoint: Endpoint, rest: RestClient, settings: Settings, store: TableStore | None = None
    ) -> None:
        self.endpoint = endpoint
        self.rest = rest
        self.settings = settings
        self.redact = Redactor(settings.api_key)
        self.store = store

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
        store_as = args.get("store_as")
        args = {k: v for k, v in args.items() if k != "store_as"}
        # Filters are parsed (and their values checked) on their own: `>=AAPL` is not a ticker, `AAPL` is.
        filters = _filters(ep, args)
        arguments.check_arguments(ep, {k: v for k, v in args.items() if k not in filters})
        market = _market(ep, args)
        template = ep.market_paths[market] if ep.market_paths and market else ep.path
        path = _fill_path(template, args)
        cursor = args.get("cursor")
        query = _cursor_query(cursor) if cursor else _query(ep, args, filters)
        hint_404 = _not_found_hint(ep, args)
        if store_as is not None and self.store is not None:
            return await self._save(str(store_as), template, path, query, args, hint_404)

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
            tables.extract_sections(body, columns.view_for(template, args)),
            max_chars=self.settings.max_response_chars,
            max_rows=max_rows,
            header=[SIMULATED_HEADER] if self.settings.simulated else [],
            footer=footer,
            narrow_hint=self._narrow_hint(),
            more_rows_hint=f"pass max_rows (up to {ROWS_CEILING}) to see more" if max_rows else "",
        )
        return rendered.text

    async def _save(
        self, name: str, template: str, path: str, query: dict[str, Any], args: Mapping[str, Any], hint_404: str
    ) -> str:
        """store_as: every page (whatever the tool's own limit) up to max_rows (default 10,000) rows, with the
        answer's readable columns, saved as table `name`; answers with a short summary."""
        target = args.get("max_rows") or STORE_DEFAULT_ROWS
        view = columns.view_for(template, args)
        names: dict[str, None] = {}
        rows: list[dict[str, Any]] = []
        for _ in range(STORE_MAX_PAGES):
            body = await self.rest.get_json(path, query, not_found_hint=hint_404)
            page = tables.readable_table(body, view)
            names.update(dict.fromkeys(page.columns))
            rows += (dict(zip(page.columns, row, strict=True)) for row in page.rows)
            step = self._next_page(template, _next_url(body)) if self.endpoint.paginated else None
            if len(rows) >= target or step is None:
                break
            path, query = step
        table = list(names)
        assert self.store is not None
        return await self.store(name, table, [[row.get(c) for c in table] for row in rows[:target]], self.endpoint.name)

    def _next_page(self, template: str, next_url: str | None) -> tuple[str, dict[str, Any]] | None:
        """(path, query) of the vendor's next page, when it is a page of this endpoint's shape; else None."""
        token = tables.page_token(next_url, self.redact) if next_url else None
        moved = _path_values(template, token[0]) if token else None
        if token is None or moved is None or not all(map(arguments.is_safe_path_value, moved.values())):
            return None
        try:
            return token[0], dict(tables.params_from_token(token[1]))
        except ValueError:
            return None

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
                "max_rows, or call again with from_ just after the last bar's window_start"
            )
            rows, next_url = rows[:target], None
        return {"results": rows}, next_url, note


def _store_as_parameter() -> inspect.Parameter:
    def tidy(schema: dict[str, Any]) -> None:  # a plain optional string, without pydantic's null branch
        schema.pop("anyOf", None)
        schema.pop("default", None)
        schema["type"] = "string"

    # What store_as does is said once in the server instructions: 81 copies of a sentence cost ~6 KB of tools/list.
    field = Field(json_schema_extra=tidy)
    return inspect.Parameter(
        "store_as", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[str | None, field]
    )


def _make_tool(
    endpoint: Endpoint, rest: RestClient, settings: Settings, store: TableStore | None = None
) -> Callable[..., Any]:
    runner = RestTool(endpoint, rest, settings, store)

    async def tool(**kwargs: Any) -> str:
        return await runner(**kwargs)

    tool.__name__ = tool.__qualname__ = endpoint.name
    tool.__doc__ = describe(endpoint)
    signature = build_signature(endpoint)
    if store is not None:  # saved tables are queried with query_market_data, which exists only with an engine
        signature = signature.replace(parameters=[*signature.parameters.values(), _store_as_parameter()])
    tool.__signature__ = signature  # type: ignore[attr-defined]
    return tool


def register_rest_tools(
    server: MCPServer, rest: RestClient, settings: Settings, *, store: TableStore | None = None
) -> None:
    """Register the REST tools of the toolsets in settings.toolsets; with `store`, each takes `store_as`."""
    for endpoint in load_endpoints():
        if endpoint.toolset not in settings.toolsets:
            continue
        server.add_tool(
            _make_tool(endpoint, rest, settings, store),
            name=endpoint.name,
            title=endpoint.title,
            description=describe(endpoint),
            annotations=_ANNOTATIONS,
            structured_output=False,
        )
