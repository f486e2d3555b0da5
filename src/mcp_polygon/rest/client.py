"""Async HTTP client for the vendor REST API: auth, timeouts, bounded retries, capped bodies, one-sentence errors.

The key travels in the Authorization header only, never in a URL, and only to POLYGON_REST_URL's origin: every
request is built from a plain path on that origin and checked before it is sent, and redirects are never
followed. Bodies are read incrementally and refused past `settings.max_body_bytes`. Every failure becomes a
ToolError whose message tells the agent what to do next.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx2
import orjson
from mcp.server.mcpserver.exceptions import ToolError

from mcp_polygon import __version__
from mcp_polygon.config import Settings
from mcp_polygon.redaction import Redactor
from mcp_polygon.rest import errors

log = logging.getLogger(__name__)
# httpx2 logs every request at INFO; one line per tool call is noise next to our own retry/failure lines.
logging.getLogger("httpx2").setLevel(logging.WARNING)

MAX_RETRY_WAIT = 10.0  # seconds one call may spend waiting between attempts, in total, whatever Retry-After says
BIG_BODY = 1 << 20  # bytes; larger bodies are decoded off the event loop
MAX_ERROR_BODY = 64 << 10  # bytes of an error body worth reading: the message shows 240 characters of it
MAX_PATH_CHARS = 8192
# Statuses worth another attempt, and those whose Retry-After says how long to wait first.
RETRYABLE_STATUSES = frozenset({429}) | frozenset(range(500, 600))
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, headers and as much of the body as was worth reading."""

    status: int
    headers: httpx2.Headers
    body: bytes | bytearray


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def retry_after_seconds(raw: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP date), if it says anything."""
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _reason(exc: BaseException) -> str:
    """A short cause for a transport failure; the interesting part (refused, DNS) sits deep in the chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _json_or_none(content: bytes | bytearray) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def key_is_sendable(key: str) -> bool:
    """True when the key fits in an HTTP header: visible ASCII, no spaces (httpx2 would raise on anything else)."""
    return key.isascii() and key.isprintable() and " " not in key


def names_another_origin(path: str) -> bool:
    """True unless `path` is a plain absolute path: `https://other/...` or `//other/...` would replace the host."""
    return not path.startswith("/") or path.startswith("//") or "\\" in path


def path_problem(path: str) -> str | None:
    """Why a path on the configured origin must not be requested, or None.

    Dot segments (`..`, also spelled `%2e%2e`) are resolved by the client into another endpoint's path.
    """
    if len(path) > MAX_PATH_CHARS:
        return f"a path of {len(path):,} characters"
    if not path.isascii() or not path.isprintable() or any(c in path for c in " ?#"):
        return "characters a path cannot have"
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        return "a '.' or '..' path segment"
    return None


class RestClient:
    """One pooled async connection set to the vendor's REST host, created on first use."""

    def __init__(self, settings: Settings, *, backoff_base: float = 0.25, max_retry_wait: float = MAX_RETRY_WAIT):
        self.settings = settings
        self.backoff_base = backoff_base
        self.max_retry_wait = max_retry_wait
        self.redact = Redactor(settings.api_key)
        self._client: httpx2.AsyncClient | None = None

    def _http(self) -> httpx2.AsyncClient:
        # Created lazily: the server starts (and lists tools) without a key or a network.
        if self._client is None:
            self._client = httpx2.AsyncClient(
                base_url=self.settings.rest_url,
                timeout=httpx2.Timeout(self.settings.request_timeout),
                follow_redirects=False,  # a redirect could carry the Authorization header to another host
                headers={
                    "Authorization": f"Bearer {self.settings.api_key}",
                    "User-Agent": f"mcp-polygon/{__version__}",
                    "Accept": "application/json",
                },
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _backoff(self, attempt: int, waited: float) -> float:
        # Exponential with jitter, so many clients hitting one hiccup do not retry in lockstep; never past the
        # call's waiting budget.
        budget = max(0.0, self.max_retry_wait - waited)
        return min(budget, self.backoff_base * (2.0**attempt) * random.uniform(0.5, 1.0))

    async def get_json(
        self, path: str, params: Mapping[str, Any] | None = None, *, not_found_hint: str | None = None
    ) -> Any:
        """GET `path` (already URL-encoded) with query `params` (None values dropped); the decoded JSON body.

        Raises ToolError with one actionable sentence on any failure. `not_found_hint` names what to check
        when the vendor answers 404, e.g. "ticker='ZZZZ' and date='2024-01-02'".
        """
        if not self.settings.api_key:
            raise ToolError(errors.NO_KEY)
        if not key_is_sendable(self.settings.api_key):
            raise ToolError(errors.BAD_KEY)
        if names_another_origin(path):
            raise ToolError(errors.off_origin(path, self.settings.rest_url))
        problem = path_problem(path)
        if problem is not None:
            raise ToolError(errors.unsafe_path(path, problem))
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        retries = self.settings.max_retries
        waited = 0.0
        attempt = 0
        while True:
            last = attempt >= retries
            try:
                answer = await self._fetch(path, query, read_retryable=last)
            except httpx2.TimeoutException:
                if not last:
                    waited += await self._sleep(self._backoff(attempt, waited), path, "timeout", attempt)
                    attempt += 1
                    continue
                raise ToolError(errors.timeout_error(self.settings.request_timeout, retries)) from None
            except httpx2.TransportError as exc:
                if not last and not isinstance(exc, httpx2.LocalProtocolError | httpx2.UnsupportedProtocol):
                    waited += await self._sleep(self._backoff(attempt, waited), path, type(exc).__name__, attempt)
                    attempt += 1
                    continue
                raise ToolError(self._transport_message(exc, path, retries)) from None

            if not last and answer.status in RETRYABLE_STATUSES:
                wait = self._retry_wait(answer, attempt, waited)
                waited += await self._sleep(wait, path, str(answer.status), attempt)
                attempt += 1
                continue
            return await self._decode(answer, path, not_found_hint, retries)

    def _retry_wait(self, answer: Answer, attempt: int, waited: float) -> float:
        """How long to wait before the next attempt; a Retry-After beyond the call's budget fails the call now."""
        budget = max(0.0, self.max_retry_wait - waited)
        raw = answer.headers.get("retry-after") if answer.status in RETRY_AFTER_STATUSES else None
        asked = retry_after_seconds(raw)
        if asked is None:
            return self._backoff(attempt, waited)
        if asked > budget:
            # Waiting part of it and retrying would only fail again; say at once how long the vendor asked for.
            raise ToolError(
                errors.retry_after_too_long(answer.status, asked, raw or "", self.max_retry_wait, self.redact)
            )
        return asked

    async def _fetch(self, path: str, query: Mapping[str, str], *, read_retryable: bool) -> Answer:
        """One request; the body is read (capped) unless the status will be retried anyway."""
        client = self._http()
        try:
            request = client.build_request("GET", path, params=query)
        except httpx2.InvalidURL as exc:
            raise ToolError(errors.unsendable_request(path, str(exc))) from None
        self._check_origin(request.url)
        response = await client.send(request, stream=True)
        try:
            status = response.status_code
            if status in RETRYABLE_STATUSES and not read_retryable:
                return Answer(status, response.headers, b"")
            limit = MAX_ERROR_BODY if status >= 300 else self.settings.max_body_bytes
            body = await self._read_body(response, path, limit, refuse=status < 300)
            return Answer(status, response.headers, body)
        except httpx2.DecodingError as exc:
            raise ToolError(errors.undecodable_body(str(exc))) from None
        finally:
            await response.aclose()

    def _check_origin(self, url: httpx2.URL) -> None:
        """The last guard before the key leaves: scheme, host, port and path prefix of POLYGON_REST_URL."""
        base = self._http().base_url
        if url.scheme not in ("http", "https"):
            raise ToolError(errors.bad_rest_url(self.settings.rest_url))
        same = (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)
        if not same or not url.raw_path.startswith(base.raw_path):
            raise ToolError(errors.off_origin(f"{url.scheme}://{url.host}", self.settings.rest_url))

    async def _read_body(self, response: httpx2.Response, path: str, limit: int, *, refuse: bool) -> bytes | bytearray:
        """The decoded body, read chunk by chunk; past `limit` a data body is refused, an error body cut."""
        declared = response.headers.get("content-length", "")
        if refuse and declared.isdigit() and int(declared) > limit:
            raise ToolError(errors.body_too_large(path, limit))
        body = bytearray()
        # aclosing: a decoder generator left suspended would hold its last decompressed megabyte until collected.
        async with contextlib.aclosing(response.aiter_bytes()) as chunks:
            async for chunk in chunks:
                body += chunk
                del chunk
                if len(body) > limit:
                    break
            else:
                return body
        if not refuse:
            del body[limit:]
            return body
        # The error's traceback keeps this frame alive until it is collected; the megabytes read must not stay.
        body.clear()
        raise ToolError(errors.body_too_large(path, limit))

    async def _decode(self, answer: Answer, path: str, not_found_hint: str | None, retries: int) -> Any:
        status = answer.status
        if 300 <= status < 400:
            raise ToolError(errors.redirect_error(status, answer.headers.get("location", ""), path, self.redact))
        if status >= 400:
            raise ToolError(
                errors.http_error(
                    status,
                    _json_or_none(answer.body),
                    answer.body.decode("utf-8", "replace"),
                    path=path,
                    not_found_hint=not_found_hint,
                    retries=retries,
                    redact=self.redact,
                    retry_after=retry_after_seconds(answer.headers.get("retry-after")) if status == 429 else None,
                )
            )
        try:
            if len(answer.body) > BIG_BODY:
                # Whole-market answers run to megabytes; decoding them in a thread keeps streams flowing.
                return await asyncio.to_thread(orjson.loads, answer.body)
            return orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            content_type = answer.headers.get("content-type", "")
            raise ToolError(errors.invalid_json_error(status, errors.clip(content_type, 40))) from None

    def _transport_message(self, exc: httpx2.TransportError, path: str, retries: int) -> str:
        if isinstance(exc, httpx2.UnsupportedProtocol):
            return errors.bad_rest_url(self.settings.rest_url)
        if isinstance(exc, httpx2.LocalProtocolError):
            return errors.unsendable_request(path, self.redact(str(exc)) or type(exc).__name__)
        return errors.connection_error(self.settings.rest_url, _reason(exc), retries)

    async def _sleep(self, seconds: float, path: str, why: str, attempt: int) -> float:
        log.info("GET %s: %s, retry %d in %.2f s", errors.clip(path), why, attempt + 1, seconds)
        await asyncio.sleep(seconds)
        return seconds
