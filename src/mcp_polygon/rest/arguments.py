"""Limits on argument values, checked before any request: no value can change which vendor path is called, and
none is large enough to flood a request, an answer or an error message.

Why each rule:
- Path values (ticker, date, from_, ...) are percent-encoded into the path, but `.` and `..` survive encoding and
  HTTP clients resolve them as dot segments (`/v3/reference/tickers/..` is requested as `/v3/reference`), and
  many servers decode `%2F` back to `/` before routing. So path values come from an alphabet without `/`, `%`
  or spaces, and are never a dot segment.
- Tickers use the vendor's symbol alphabet: letters, digits and `. : - _` (AAPL, BRK.B, O:SPY251219C00650000,
  X:BTC-USD, C:EURUSD, I:SPX, GCJ5), in a path or in a query filter alike.
- Every other string is capped in length and has no control characters; cursors are printable ASCII.
An error quotes at most MAX_QUOTED characters of a bad value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from mcp_polygon.rest.endpoints import Arg, Endpoint

MAX_TICKER_CHARS = 40  # the longest options symbols are about 22 characters
MAX_PATH_VALUE_CHARS = 64  # dates, millisecond timestamps, currency codes
MAX_TEXT_CHARS = 256  # search text, names, dates, sort columns
MAX_LIST_CHARS = 4096  # comma-separated values (ticker_any_of with a few hundred symbols)
MAX_CURSOR_CHARS = 8192  # our page tokens carry the vendor's query; they stay well under this
MAX_QUOTED = 40

TICKER_EXAMPLES = "AAPL, BRK.B, O:SPY251219C00650000, X:BTCUSD, C:EURUSD, I:SPX"
_TICKER = re.compile(r"[A-Za-z0-9.:_-]+")
_PATH_VALUE = re.compile(r"[A-Za-z0-9.:_+-]+")  # + for time zone offsets in timestamps
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOT_SEGMENTS = (".", "..")
# Vendor parameters (before any .gte/.any_of suffix) whose values are ticker symbols.
_TICKER_WIRES = frozenset({"ticker", "tickers", "underlying_ticker", "stocks"})
_TICKER_NAMES = frozenset({"ticker", "underlying_asset", "option_contract"})
_PATH_EXAMPLES = {"date": "2024-01-02", "from_": "2024-01-02", "to": "2024-01-31"}


class ValueKind(enum.Enum):
    """Which rule a string argument follows."""

    TICKER = "ticker"  # one symbol (path) or comma-separated symbols (query filters)
    PATH_VALUE = "path value"
    LIST = "list"
    TEXT = "text"
    CURSOR = "cursor"


def kind_of(arg: Arg) -> ValueKind:
    if arg.name == "cursor":
        return ValueKind.CURSOR
    if arg.name in _TICKER_NAMES or arg.wire.split(".")[0] in _TICKER_WIRES:
        return ValueKind.TICKER
    if arg.where == "path":
        return ValueKind.PATH_VALUE
    if arg.type == "array" or arg.wire.endswith((".any_of", ".all_of")):
        return ValueKind.LIST
    return ValueKind.TEXT


def quoted(value: str) -> str:
    """repr(value), cut to MAX_QUOTED characters with the full length said, for error messages."""
    if len(value) <= MAX_QUOTED:
        return repr(value)
    return f"{value[:MAX_QUOTED]!r}… ({len(value):,} characters)"


def check_arguments(endpoint: Endpoint, args: Mapping[str, Any]) -> None:
    """Raise ToolError naming the first argument whose value breaks its rule."""
    for arg in endpoint.args:
        value = args.get(arg.name)
        if isinstance(value, str) and arg.enum is None:
            check_value(arg.name, value, kind_of(arg), path=arg.where == "path")


def check_value(name: str, value: str, kind: ValueKind, *, path: bool = False) -> None:
    if kind is ValueKind.CURSOR:
        _check_cursor(value)
    elif kind is ValueKind.TICKER:
        _check_tickers(name, value, single=path)
    elif kind is ValueKind.PATH_VALUE:
        _check_path_value(name, value)
    else:
        _check_text(name, value, MAX_LIST_CHARS if kind is ValueKind.LIST else MAX_TEXT_CHARS)


def is_safe_path_value(value: str) -> bool:
    """True for a value that may stand in a path segment (used for values the vendor's next_url carries)."""
    return bool(_PATH_VALUE.fullmatch(value)) and value not in _DOT_SEGMENTS and len(value) <= MAX_PATH_VALUE_CHARS


def _too_long(name: str, value: str, limit: int, instead: str = "a shorter value") -> ToolError:
    return ToolError(f"{name} is too long ({len(value):,} characters, at most {limit:,}): pass {instead}.")


def _check_empty_or_dots(name: str, value: str, example: str) -> None:
    if not value:
        raise ToolError(f"{name} must not be empty: pass a value such as {example}.")
    if value in _DOT_SEGMENTS:
        raise ToolError(
            f"{name} must not be {value!r}, which would change which API path is called: pass a real value "
            f"such as {example}."
        )


def _check_tickers(name: str, value: str, *, single: bool) -> None:
    limit = MAX_TICKER_CHARS if single else MAX_LIST_CHARS
    if len(value) > limit:
        raise _too_long(name, value, limit, "a ticker such as AAPL" if single else "fewer tickers")
    symbols = [value.strip()] if single else [part.strip() for part in value.split(",") if part.strip()]
    if not symbols or not symbols[0]:
        raise ToolError(f"{name} must not be empty: pass a ticker such as {TICKER_EXAMPLES}.")
    for symbol in symbols:
        _check_empty_or_dots(name, symbol, "AAPL")
        if len(symbol) > MAX_TICKER_CHARS or not _TICKER.fullmatch(symbol):
            slash = " (share classes take a dot, as in BRK.B)" if "/" in symbol else ""
            raise ToolError(
                f"{name} {quoted(symbol)} is not a ticker{slash}: use letters, digits and . : - _ only, at most "
                f"{MAX_TICKER_CHARS} characters (e.g. {TICKER_EXAMPLES})."
            )


def _check_path_value(name: str, value: str) -> None:
    example = _PATH_EXAMPLES.get(name, "the examples in the tool description")
    if len(value) > MAX_PATH_VALUE_CHARS:
        raise _too_long(name, value, MAX_PATH_VALUE_CHARS)
    text = value.strip()
    _check_empty_or_dots(name, text, example)
    if not _PATH_VALUE.fullmatch(text):
        raise ToolError(
            f"{name} {quoted(text)} has characters a path value cannot have: use letters, digits and . : - _ + "
            f"only (e.g. {example})."
        )


def _check_text(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise _too_long(name, value, limit)
    if _CONTROL.search(value):
        raise ToolError(f"{name} contains control characters (such as a newline): remove them and call again.")


def is_acceptable_cursor(value: str) -> bool:
    """True for a cursor this server accepts back; a next-page hint is only given with such a cursor."""
    text = value.strip()
    return 0 < len(text) <= MAX_CURSOR_CHARS and text.isascii() and text.isprintable() and " " not in text


def _check_cursor(value: str) -> None:
    if len(value) > MAX_CURSOR_CHARS:
        raise ToolError(
            f"cursor is too long ({len(value):,} characters, at most {MAX_CURSOR_CHARS:,}): copy it exactly from "
            "the '# next page' line, or omit it."
        )
    if not is_acceptable_cursor(value):
        raise ToolError(
            "cursor is not a page token from this server: copy it exactly from the '# next page' line, or omit it."
        )
