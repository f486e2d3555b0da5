"""What the REST simulator answers: vendor example bodies, adapted to the request and extended for paging.

Bodies come from data/rest_examples.json (the vendor OpenAPI examples, see scripts/build_rest_examples.py).
On top of them, so that tools can be tested the way agents use them:
- path values (ticker, date, ...) replace the example's own values wherever a field equals them;
- list endpoints with a `limit` serve DATASET_ROWS rows (the examples first, then generated variations),
  `limit` rows at a time, with a vendor-style next_url carrying a cursor (never the key);
- whole-market endpoints (grouped daily, snapshot of all tickers) return MARKET_ROWS rows;
- aggregate bars are generated for the requested range and timespan, a deterministic function of time;
- tickers containing NOTFOUND do not exist: 404 on single-ticker paths, error rows in multi-ticker snapshots.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from mcp_polygon.simulator.events import anchor_price

DATASET_ROWS = 25  # rows behind every paginated list endpoint: more than the default limit, so paging shows
MARKET_ROWS = 120  # rows of whole-market endpoints: more than the tools' default max_rows
GAINERS_ROWS = 20  # the vendor's gainers/losers size
MAX_BARS = 50_000
UNKNOWN_MARKER = "NOTFOUND"  # any path value or ticker containing this does not exist

# Placeholders whose example value may be replaced by the caller's value throughout the body.
_SUBSTITUTED = {
    "stocksTicker",
    "stockTicker",
    "cryptoTicker",
    "fxTicker",
    "indicesTicker",
    "optionsTicker",
    "options_ticker",
    "ticker",
    "id",
    "underlyingAsset",
    "optionContract",
    "from",
    "to",
    "date",
}
_PREFIX_OF_PLACEHOLDER = {"cryptoTicker": "X:", "fxTicker": "C:", "indicesTicker": "I:", "optionsTicker": "O:"}
_STEP_MS = {
    "second": 1_000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    "week": 7 * 86_400_000,
    "month": 30 * 86_400_000,
    "quarter": 91 * 86_400_000,
    "year": 365 * 86_400_000,
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PLACEHOLDER = re.compile(r"\{([^}]+)\}")


class SimError(Exception):
    """A vendor-style error response the simulator gives for a bad request."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _unit(*parts: object) -> float:
    """A deterministic pseudo-random number in [0, 1) from the parts."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def request_id(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def encode_cursor(params: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(urlencode(params).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise SimError(400, {"status": "ERROR", "error": "Invalid cursor"}) from None
    return dict(parse_qsl(raw))


def _int_param(query: Mapping[str, str], name: str, default: int, maximum: int = MAX_BARS) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SimError(400, {"status": "ERROR", "error": f"Could not parse the '{name}' parameter: {raw!r}"}) from None
    if value < 1 or value > maximum:
        raise SimError(400, {"status": "ERROR", "error": f"'{name}' must be between 1 and {maximum}"})
    return value


@dataclass
class Route:
    template: str
    segments: list[str]
    entry: dict[str, Any]

    @property
    def literal_count(self) -> int:
        return sum(1 for s in self.segments if not s.startswith("{"))

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        values = {}
        for seg, part in zip(self.segments, parts, strict=True):
            if seg.startswith("{"):
                values[seg[1:-1]] = part
            elif seg != part:
                return None
        return values


def _prefix_fits(route: Route, values: Mapping[str, str]) -> bool:
    """Indicator paths differ only in the placeholder name; the ticker prefix says which asset is meant."""
    for name, value in values.items():
        prefix = _PREFIX_OF_PLACEHOLDER.get(name)
        if prefix is not None and not value.startswith(prefix):
            return False
        if name == "stockTicker" and value[:2] in _PREFIX_OF_PLACEHOLDER.values():
            return False
    return True


def _shift_date(text: str, days: int) -> str:
    return (dt.date.fromisoformat(text) - dt.timedelta(days=days)).isoformat()


def _vary(value: Any, key: str, i: int, salt: str) -> Any:
    """Row i's version of an example value: times move back, prices wiggle, ids stay unique."""
    if isinstance(value, dict):
        return {k: _vary(v, k, i, salt) for k, v in value.items()}
    if isinstance(value, list):
        return [_vary(v, key, i, salt) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    lowered = key.lower()
    if isinstance(value, int):
        if value > 10**17:  # nanoseconds
            return value - i * 1_000_000_000
        if value > 10**11:  # milliseconds
            return value - i * 60_000
        if "sequence" in lowered or lowered == "id":
            return value + i
        return value
    if isinstance(value, float):
        return round(value * (1 + (_unit(salt, key, i) - 0.5) * 0.04), 6)
    if isinstance(value, str):
        if _DATE.match(value) and ("date" in lowered or lowered == "from"):
            try:
                return _shift_date(value, i)
            except ValueError:
                return value
        if lowered == "id" or (lowered.startswith("benzinga") and lowered.endswith("_id")):
            return f"{value}-{i}"
    return value


_NOT_FILTERS = frozenset({"limit", "sort", "order", "cursor", "apiKey"})


def _apply_filters(rows: list[Any], query: Mapping[str, str]) -> list[Any]:
    """Equality filters on a field of the rows (ticker=..., product_code=...) make every row match them."""
    filters = {k: v for k, v in query.items() if "." not in k and k not in _NOT_FILTERS and any(k in r for r in rows)}
    if not filters:
        return rows
    out = []
    for row in rows:
        row = dict(row)
        for key, raw in filters.items():
            old = row.get(key)
            if isinstance(old, bool):
                row[key] = raw.lower() == "true"
            elif isinstance(old, int):
                row[key] = int(raw) if raw.lstrip("-").isdigit() else raw
            elif isinstance(old, float):
                try:
                    row[key] = float(raw)
                except ValueError:
                    row[key] = raw
            else:
                row[key] = raw
        out.append(row)
    return out


def _substitute(body: Any, replacements: Mapping[str, str]) -> Any:
    if not replacements:
        return body
    if isinstance(body, dict):
        return {k: _substitute(v, replacements) for k, v in body.items()}
    if isinstance(body, list):
        return [_substitute(v, replacements) for v in body]
    if isinstance(body, str) and body in replacements:
        return replacements[body]
    return body


def _symbols(count: int, seed: int) -> list[str]:
    """Deterministic made-up tickers (three or four letters)."""
    out: list[str] = []
    seen: set[str] = set()
    n = 0
    while len(out) < count:
        n += 1
        length = 3 + int(_unit(seed, "len", n) * 2)
        sym = "".join(chr(65 + int(_unit(seed, "sym", n, j) * 26)) for j in range(length))
        if sym not in seen:
            seen.add(sym)
            out.append(sym)
    return out


def _parse_time(text: str, end: bool = False) -> int:
    """A path date (YYYY-MM-DD, whole day) or a millisecond timestamp -> ms."""
    if text.isdigit():
        return int(text)
    try:
        day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    except ValueError:
        raise SimError(
            400, {"status": "ERROR", "error": f"Could not parse '{text}': use YYYY-MM-DD or a millisecond timestamp"}
        ) from None
    ms = int(day.timestamp() * 1000)
    return ms + 86_400_000 - 1 if end else ms


def _price(ticker: str, t_ms: int, seed: int) -> float:
    """A smooth, deterministic price path per ticker, so pages of bars always agree with each other."""
    base = anchor_price(ticker) or 20 + _unit(seed, ticker) * 480
    days = t_ms / 86_400_000
    wave = 0.08 * math.sin(days / 9.0 + _unit(seed, ticker, "phase") * 6) + 0.03 * math.sin(days * 1.7)
    return round(base * (1 + wave), 4)


class RestResponder:
    """Maps a request (path, query) to a vendor-shaped (status, body)."""

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed
        text = resources.files("mcp_polygon.simulator").joinpath("data/rest_examples.json").read_text("utf-8")
        self.paths: dict[str, dict[str, Any]] = json.loads(text)["paths"]
        self.routes = [Route(t, t.strip("/").split("/"), e) for t, e in self.paths.items()]

    # -- routing ------------------------------------------------------------------------------------------------

    def route(self, path: str) -> tuple[Route, dict[str, str]] | None:
        parts = path.strip("/").split("/")
        found = [(r, v) for r in self.routes if (v := r.match(parts)) is not None]
        if not found:
            return None
        best = max(r.literal_count for r, _ in found)
        found = [(r, v) for r, v in found if r.literal_count == best]
        fitting = [(r, v) for r, v in found if _prefix_fits(r, v)]
        return (fitting or found)[0]

    # -- responses ----------------------------------------------------------------------------------------------

    def respond(self, path: str, query: Mapping[str, str], base_url: str) -> tuple[int, Any]:
        matched = self.route(path)
        if matched is None:
            return 404, {"status": "NOT_FOUND", "request_id": request_id(path), "message": "Route not found."}
        route, values = matched
        rid = request_id(self.seed, path, sorted(query.items()))
        if any(UNKNOWN_MARKER in v for v in values.values()):
            return 404, {"status": "NOT_FOUND", "request_id": rid, "message": "Ticker not found."}
        template = route.template
        if "/range/" in template:
            body = self._aggs(route, values, query, path, base_url)
        elif template.startswith("/v1/indicators/"):
            body = self._indicator(route, values, query, path, base_url)
        else:
            body = self._example(route, values, query, path, base_url)
        if isinstance(body, dict) and ("request_id" in body or "status" in body):
            body["request_id"] = rid
        return 200, body

    def _replacements(self, route: Route, values: Mapping[str, str]) -> dict[str, str]:
        examples = route.entry.get("path_examples", {})
        return {
            str(examples[name]): value
            for name, value in values.items()
            if name in _SUBSTITUTED and name in examples and str(examples[name]) != value
        }

    def _page(
        self, rows: list[Any], query: Mapping[str, str], route: Route, path: str, base_url: str
    ) -> tuple[list[Any], str | None]:
        """A page of rows by limit/cursor, and a next_url (on this host, without any key) when more remain.

        Like the vendor's, the cursor carries the whole query (filters, limit) plus the position.
        """
        params = decode_cursor(query["cursor"]) if query.get("cursor") else dict(query)
        offset = int(params.pop("offset", 0))
        limit = _int_param(params, "limit", route.entry.get("limit_default") or 10)
        rows = _apply_filters(rows, params)
        page = rows[offset : offset + limit]
        if offset + limit < len(rows):
            token = encode_cursor({**params, "offset": offset + limit, "limit": limit})
            return page, f"{base_url}{quote(path)}?cursor={token}"
        return page, None

    def _example(
        self, route: Route, values: Mapping[str, str], query: Mapping[str, str], path: str, base_url: str
    ) -> Any:
        body = _substitute(copy.deepcopy(route.entry["body"]), self._replacements(route, values))
        if not isinstance(body, dict):
            return body
        body.pop("next_url", None)
        template = route.template
        if template.endswith("/prev"):
            self._previous_close(body, values)
        if template in ("/v3/snapshot", "/v3/snapshot/indices") and query.get("ticker.any_of"):
            body["results"] = self._snapshot_rows(body["results"], query["ticker.any_of"])
            return body
        for key in ("results", "tickers"):
            rows = body.get(key)
            if not isinstance(rows, list) or not rows:
                continue
            if key == "tickers" and template.endswith("/tickers"):  # whole-market snapshot
                body[key] = self._market_rows(rows, "ticker", query.get("tickers"), template)
            elif key == "tickers":  # gainers / losers
                body[key] = self._market_rows(rows, "ticker", None, template)[:GAINERS_ROWS]
            elif "/grouped/" in template:
                body[key] = self._market_rows(rows, "T", None, template)
            elif route.entry.get("has_limit"):
                data = [
                    rows[i] if i < len(rows) else _vary(rows[i % len(rows)], "", i, template)
                    for i in range(DATASET_ROWS)
                ]
                page, next_url = self._page(data, query, route, path, base_url)
                body[key] = page
                if "count" in body:
                    body["count"] = len(page)
                if next_url:
                    body["next_url"] = next_url
            if "resultsCount" in body:
                body["resultsCount"] = len(body[key])
        return body

    def _previous_close(self, body: dict[str, Any], values: Mapping[str, str]) -> None:
        """The previous weekday's bar from the same price path as the range aggregates, not the example's prices."""
        ticker = next((v for k, v in values.items() if k.endswith("icker")), None)
        rows = body.get("results")
        if ticker is None or not isinstance(rows, list):
            return
        day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        while day.weekday() >= 5:
            day -= dt.timedelta(days=1)
        t = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
        bar = self._bar(ticker, t, 86_400_000)
        for row in rows:
            if isinstance(row, dict):
                row.update({key: bar[key] for key in ("o", "c", "h", "l", "vw", "t")})

    def _market_rows(self, rows: list[Any], ticker_key: str, wanted: str | None, salt: str) -> list[Any]:
        """Whole-market lists: the example rows, then generated tickers; or exactly the tickers asked for."""
        if wanted:
            tickers = [t.strip() for t in wanted.split(",") if t.strip()]
        else:
            prefix = rows[0].get(ticker_key, "")[:2] if rows[0].get(ticker_key, "")[1:2] == ":" else ""
            known = [r.get(ticker_key) for r in rows]
            tickers = known + [prefix + s for s in _symbols(MARKET_ROWS, self.seed) if prefix + s not in known]
            tickers = tickers[:MARKET_ROWS]
        out = []
        for i, ticker in enumerate(tickers):
            if UNKNOWN_MARKER in ticker:
                continue  # the vendor leaves unknown tickers out of these lists
            row = rows[i] if i < len(rows) and not wanted else _vary(rows[i % len(rows)], "", i, salt + ticker)
            row = dict(row)
            row[ticker_key] = ticker
            out.append(row)
        return out

    def _snapshot_rows(self, rows: list[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
        """Universal/indices snapshot for listed tickers: a row per ticker, error rows for unknown ones."""
        good = [r for r in rows if "error" not in r]
        out = []
        for i, ticker in enumerate(t.strip() for t in wanted.split(",") if t.strip()):
            if UNKNOWN_MARKER in ticker:
                out.append({"error": "NOT_FOUND", "message": "Ticker not found.", "ticker": ticker})
                continue
            kind = {"O:": "options", "C:": "fx", "X:": "crypto", "I:": "indices"}.get(ticker[:2], "stocks")
            like = next((r for r in good if r.get("type") == kind), good[i % len(good)])
            row = _vary(like, "", i, ticker) if i else copy.deepcopy(like)
            row["ticker"] = ticker
            if "type" in row:
                row["type"] = kind
            out.append(row)
        return out

    def _aggs(
        self, route: Route, values: Mapping[str, str], query: Mapping[str, str], path: str, base_url: str
    ) -> dict[str, Any]:
        ticker = next(v for k, v in values.items() if k.endswith("icker"))
        timespan = values["timespan"]
        if timespan not in _STEP_MS:
            raise SimError(400, {"status": "ERROR", "error": f"Invalid timespan '{timespan}'"})
        try:
            multiplier = int(values["multiplier"])
        except ValueError:
            raise SimError(400, {"status": "ERROR", "error": "multiplier must be an integer"}) from None
        start, end = _parse_time(values["from"]), _parse_time(values["to"], end=True)
        if end < start:
            raise SimError(400, {"status": "ERROR", "error": "The 'to' date must be after the 'from' date"})
        state = decode_cursor(query["cursor"]) if query.get("cursor") else dict(query)
        # Like the vendor, `limit` counts base aggregates: 5-minute bars come 1/5 as many per page.
        limit = max(1, _int_param(state, "limit", 5000) // max(1, multiplier))
        descending = state.get("sort") == "desc"
        step = _STEP_MS[timespan] * max(1, multiplier)
        times: list[int] = []
        t = start - start % step if step < 86_400_000 else start
        # One bar more than the page shows is enough to know whether a next page exists.
        while t <= end and len(times) <= limit:
            weekday = dt.datetime.fromtimestamp(t / 1000, dt.UTC).weekday()
            if t >= start and not (timespan == "day" and weekday >= 5):
                times.append(t)
            t += step
        if descending:  # the newest bars first: walk the range from its end instead
            times = []
            t = end - end % step if step < 86_400_000 else end - (end - start) % step
            while t >= start and len(times) <= limit:
                weekday = dt.datetime.fromtimestamp(t / 1000, dt.UTC).weekday()
                if t <= end and not (timespan == "day" and weekday >= 5):
                    times.append(t)
                t -= step
        page, rest = times[:limit], times[limit:]
        bars = [self._bar(ticker, t, step) for t in page]
        body: dict[str, Any] = {
            "ticker": ticker,
            "queryCount": len(bars),
            "resultsCount": len(bars),
            "adjusted": state.get("adjusted", "true") != "false",
            "results": bars,
            "status": "OK",
            "request_id": "",
        }
        if rest:
            # Like the vendor: the next page's URL moves the window edge and keeps limit/sort in the cursor.
            head, _, _ = path.rpartition("/")
            head, _, _ = head.rpartition("/")
            if descending:
                next_path = f"{head}/{values['from']}/{rest[0]}"
            else:
                next_path = f"{head}/{rest[0]}/{values['to']}"
            cursor = encode_cursor({"limit": state.get("limit", 5000), "sort": "desc" if descending else "asc"})
            body["next_url"] = f"{base_url}{quote(next_path)}?cursor={cursor}"
        return body

    def _bar(self, ticker: str, t: int, step: int) -> dict[str, Any]:
        """The aggregate bar of `ticker` starting at `t` (ms) and lasting `step` ms, from its price path."""
        o, c = _price(ticker, t, self.seed), _price(ticker, t + step, self.seed)
        wiggle = 1 + _unit(self.seed, ticker, t) * 0.01
        volume = int(1e5 + _unit(self.seed, ticker, t, "v") * 5e6)
        return {
            "v": volume,
            "vw": round((o + c) / 2, 4),
            "o": o,
            "c": c,
            "h": round(max(o, c) * wiggle, 4),
            "l": round(min(o, c) / wiggle, 4),
            "t": t,
            "n": volume // 100,
        }

    def _indicator(
        self, route: Route, values: Mapping[str, str], query: Mapping[str, str], path: str, base_url: str
    ) -> dict[str, Any]:
        body: dict[str, Any] = _substitute(copy.deepcopy(route.entry["body"]), self._replacements(route, values))
        ticker = next(iter(values.values()))
        results = body.get("results") or {}
        examples = results.get("values") or [{"timestamp": 1517562000016, "value": 100.0}]
        data = [
            examples[i] if i < len(examples) else _vary(examples[i % len(examples)], "", i, ticker)
            for i in range(DATASET_ROWS)
        ]
        page, next_url = self._page(data, query, route, path, base_url)
        underlying: dict[str, Any] = {
            "url": f"{base_url}/v2/aggs/ticker/{quote(ticker)}/range/1/day/2003-01-01/2022-07-25"
        }
        if query.get("expand_underlying") == "true":
            aggs = (results.get("underlying") or {}).get("aggregates")
            underlying["aggregates"] = aggs or []
        body["results"] = {"underlying": underlying, "values": page}
        body.pop("next_url", None)
        if next_url:
            body["next_url"] = next_url
        return body
