"""One actionable sentence per way a vendor call can fail, with the API key scrubbed from anything upstream said.

The agent reads these messages (after the SDK's "Error executing tool X: " prefix), so each says what happened
and what to do next. Nothing here performs I/O; client.py decides when a failure is final.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from mcp_polygon.redaction import Redactor

NO_KEY = (
    "No API key: set POLYGON_API_KEY (or MASSIVE_API_KEY) in the server's environment, "
    "or run with --simulate for synthetic data."
)
# The key goes into an HTTP header, which only carries visible ASCII; saying which character would echo the key.
BAD_KEY = (
    "POLYGON_API_KEY (or MASSIVE_API_KEY) contains a character an API key cannot have (non-ASCII, a space or a "
    "control character): copy the key again from your Massive dashboard into the server's environment."
)
PRICING_URL = "https://massive.com/pricing"
MAX_VENDOR_TEXT = 240
MAX_QUOTED = 60  # what a message quotes of a path, URL or header value the agent or the vendor chose

_KEY_IN_QUERY = re.compile(r"(?i)(api_?key=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x1f\x7f\s]+")


def scrub(text: str, redact: Redactor) -> str:
    """Remove the key (raw and URL-encoded) and anything that looks like a credential from upstream text."""
    text = _KEY_IN_QUERY.sub(r"\1***", redact(text))
    return _BEARER.sub(r"\1***", text)


def clip(text: str, limit: int = MAX_QUOTED) -> str:
    """`text` cut to `limit` characters, so no message repeats a megabyte the agent or the vendor sent."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def wait_text(seconds: float) -> str:
    """A wait as a person would say it: 45 s, 12 min, 27.8 h, 3.5 days."""
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def vendor_message(body: Any, text: str, redact: Redactor) -> str:
    """The human part of a vendor error body ({"error": ...} or {"message": ...}), sanitized and shortened."""
    message = ""
    if isinstance(body, Mapping):
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str) and body[key].strip():
                message = body[key]
                break
    elif text and not text.lstrip().startswith("<"):  # skip HTML error pages from proxies
        message = text
    message = _CONTROL_OR_SPACE.sub(" ", scrub(message, redact)).strip()
    return clip(message, MAX_VENDOR_TEXT).rstrip(".")


def http_error(
    status: int,
    body: Any,
    text: str,
    *,
    path: str,
    not_found_hint: str | None,
    retries: int,
    redact: Redactor,
    retry_after: float | None = None,
) -> str:
    """The message for a final HTTP error status."""
    said = vendor_message(body, text, redact)
    detail = f"{status}: {said}" if said else str(status)
    path = clip(path)
    if status == 401:
        return (
            f"The API key was rejected ({detail}): check POLYGON_API_KEY (or MASSIVE_API_KEY) in the server's "
            "environment."
        )
    if status == 403:
        # The vendor's text only repeats "not entitled, upgrade"; the path says which data it was.
        return (
            f"Your plan does not include this data (403 NOT_AUTHORIZED for {path}): upgrade at {PRICING_URL} "
            "or use a tool for data your plan covers."
        )
    if status == 404:
        return f"Nothing found ({detail}): check {not_found_hint or f'the values in {path}'}."
    if status in (400, 422):
        return f"The request was rejected as invalid ({detail}): fix the arguments and call again."
    if status == 429:
        wait = f"wait {wait_text(retry_after)} (the API's Retry-After)" if retry_after else "wait a minute"
        return (
            f"Rate limit reached (429) and still limited after {retries} retries: {wait} before calling "
            f"again, or upgrade at {PRICING_URL} for higher limits."
        )
    if status >= 500:
        return f"The market-data API failed ({detail}) after {retries} retries: try again in a minute."
    return f"The market-data API answered {detail} for {path}: check the arguments and call again."


def retry_after_too_long(status: int, asked: float, raw: str, budget: float, redact: Redactor) -> str:
    """A Retry-After longer than the call may wait: said at once, with the wait the vendor asked for."""
    header = clip(scrub(raw, redact), 40)
    asked_for = f"the market-data API asks to wait {wait_text(asked)} (Retry-After: {header})"
    if status == 429:
        return (
            f"Rate limit reached (429): {asked_for}, longer than one call waits ({budget:g} s): call again after "
            f"that wait, or upgrade at {PRICING_URL} for higher limits."
        )
    return f"The market-data API is unavailable ({status}): {asked_for}: call again after that wait."


def redirect_error(status: int, location: str, path: str, redact: Redactor) -> str:
    # A redirect is never followed: the key goes to POLYGON_REST_URL's host and nowhere else.
    where = f" to {clip(scrub(location, redact))}" if location else ""
    return (
        f"The market-data API redirected {clip(path)} ({status}{where}), which is not followed so the API key "
        "stays with POLYGON_REST_URL: set POLYGON_REST_URL to the API's current address."
    )


def body_too_large(path: str, cap_bytes: int, narrow_hint: str = "a smaller limit or a shorter date range") -> str:
    return (
        f"The answer for {clip(path)} is larger than the {size_text(cap_bytes)} cap on response bodies: narrow the "
        f"request ({narrow_hint}) or raise POLYGON_MAX_BODY_MB in the server's environment."
    )


def size_text(n_bytes: int) -> str:
    mb = n_bytes / (1 << 20)
    return f"{mb:g} MB" if mb >= 1 and mb.is_integer() else f"{n_bytes:,} bytes"


def timeout_error(seconds: float, retries: int) -> str:
    return (
        f"The market-data API did not answer within {seconds:g} s (tried {retries + 1} times): try again, or ask "
        "for less data (smaller limit or shorter date range)."
    )


def connection_error(base_url: str, reason: str, retries: int) -> str:
    return (
        f"Could not connect to the market-data API at {clip(base_url)} ({reason}, tried {retries + 1} times): "
        "check POLYGON_REST_URL and the network, then call again."
    )


def unsendable_request(path: str, reason: str) -> str:
    return (
        f"The request for {clip(path)} could not be sent ({clip(reason)}): shorten the arguments (fewer tickers, "
        "a shorter cursor) and call again."
    )


def bad_rest_url(base_url: str) -> str:
    return (
        f"POLYGON_REST_URL {clip(base_url)!r} is not an http(s) address: set it to https://api.massive.com "
        "(the default) and restart the server."
    )


def off_origin(target: str, base_url: str) -> str:
    return (
        f"Refused to send a request to {clip(target)}: the API key only goes to POLYGON_REST_URL "
        f"({clip(base_url)}), so call the tool again without that cursor or page link."
    )


def unsafe_path(path: str, problem: str) -> str:
    return (
        f"Refused to request {clip(path)} ({problem}): only plain paths on POLYGON_REST_URL are called, so call "
        "the tool again without that cursor or page link."
    )


def invalid_json_error(status: int, content_type: str) -> str:
    kind = content_type.split(";")[0].strip() or "no content type"
    return f"The market-data API returned a body that is not valid JSON (HTTP {status}, {kind}): try again in a minute."


def undecodable_body(reason: str) -> str:
    return f"The market-data API sent a body that could not be decompressed ({clip(reason)}): try again in a minute."


def unexpected_error(tool: str, kind: str) -> str:
    return (
        f"{tool} failed unexpectedly ({kind}): call again, and if it keeps failing report it with the server's "
        "log (stderr)."
    )
