"""Async HTTP client for the vendor REST API: auth, timeouts, bounded retries, one-sentence errors.

The key travels in the Authorization header only, never in a URL, so no URL we log, return or put in an error
can leak it. Every failure becomes a ToolError whose message tells the agent what to do next.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import socket
import time
from collections.abc import Mapping
from typing import Any

import httpx2
import orjson
from mcp.server.mcpserver.exceptions import ToolError

from mcp_polygon import __version__
from mcp_polygon.config import Settings
from mcp_polygon.rest import errors

log = logging.getLogger(__name__)
# httpx2 logs every request at INFO; one line per tool call is noise next to our own retry/failure lines.
logging.getLogger("httpx2").setLevel(logging.WARNING)

MAX_RETRY_WAIT = 10.0  # never sleep longer than this for one retry, whatever Retry-After says
BIG_BODY = 1 << 20  # bytes; larger bodies are decoded off the event loop


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _retry_after(response: httpx2.Response) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), if any."""
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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


def _json_or_none(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


class RestClient:
    """One pooled async connection set to the vendor's REST host, created on first use."""

    def __init__(self, settings: Settings, *, backoff_base: float = 0.25, max_retry_wait: float = MAX_RETRY_WAIT):
        self.settings = settings
        self.backoff_base = backoff_base
        self.max_retry_wait = max_retry_wait
        self._client: httpx2.AsyncClient | None = None

    def _http(self) -> httpx2.AsyncClient:
        # Created lazily: the server starts (and lists tools) without a key or a network.
        if self._client is None:
            self._client = httpx2.AsyncClient(
                base_url=self.settings.rest_url,
                timeout=httpx2.Timeout(self.settings.request_timeout),
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

    def _backoff(self, attempt: int) -> float:
        # Exponential with jitter, so many clients hitting one hiccup do not retry in lockstep.
        return min(self.max_retry_wait, self.backoff_base * (2**attempt) * random.uniform(0.5, 1.0))

    async def get_json(
        self, path: str, params: Mapping[str, Any] | None = None, *, not_found_hint: str | None = None
    ) -> Any:
        """GET `path` (already URL-encoded) with query `params` (None values dropped); the decoded JSON body.

        Raises ToolError with one actionable sentence on any failure. `not_found_hint` names what to check
        when the vendor answers 404, e.g. "ticker='ZZZZ' and date='2024-01-02'".
        """
        if not self.settings.api_key:
            raise ToolError(errors.NO_KEY)
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        retries = self.settings.max_retries
        attempt = 0
        while True:
            try:
                response = await self._http().get(path, params=query)
            except httpx2.TimeoutException:
                if attempt < retries:
                    await self._sleep(self._backoff(attempt), path, "timeout", attempt)
                    attempt += 1
                    continue
                raise ToolError(errors.timeout_error(self.settings.request_timeout, retries)) from None
            except httpx2.TransportError as exc:
                if attempt < retries:
                    await self._sleep(self._backoff(attempt), path, type(exc).__name__, attempt)
                    attempt += 1
                    continue
                raise ToolError(errors.connection_error(self.settings.rest_url, _reason(exc), retries)) from None

            status = response.status_code
            if attempt < retries and (status == 429 or status >= 500):
                wait = _retry_after(response) if status == 429 else None
                wait = self._backoff(attempt) if wait is None else min(wait, self.max_retry_wait)
                await self._sleep(wait, path, str(status), attempt)
                attempt += 1
                continue
            if status >= 400:
                body = _json_or_none(response.content)
                raise ToolError(
                    errors.http_error(
                        status,
                        body,
                        response.text,
                        path=path,
                        not_found_hint=not_found_hint,
                        retries=retries,
                        api_key=self.settings.api_key,
                    )
                )
            try:
                if len(response.content) > BIG_BODY:
                    # Whole-market answers run to megabytes; decoding them in a thread keeps streams flowing.
                    return await asyncio.to_thread(orjson.loads, response.content)
                return orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise ToolError(errors.invalid_json_error(status, response.headers.get("content-type", ""))) from None

    async def _sleep(self, seconds: float, path: str, why: str, attempt: int) -> None:
        log.info("GET %s: %s, retry %d in %.2f s", path, why, attempt + 1, seconds)
        await asyncio.sleep(seconds)
