"""One actionable sentence per way a vendor call can fail, with the API key scrubbed from anything upstream said.

The agent reads these messages (after the SDK's "Error executing tool X: " prefix), so each says what happened
and what to do next. Nothing here performs I/O; client.py decides when a failure is final.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

NO_KEY = (
    "No API key: set POLYGON_API_KEY (or MASSIVE_API_KEY) in the server's environment, "
    "or run with --simulate for synthetic data."
)
PRICING_URL = "https://massive.com/pricing"
MAX_VENDOR_TEXT = 240

_KEY_IN_QUERY = re.compile(r"(?i)(api_?key=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x1f\x7f\s]+")


def scrub(text: str, api_key: str | None) -> str:
    """Remove the key (and anything that looks like a credential) from text that came from upstream."""
    if api_key:
        text = text.replace(api_key, "***")
    text = _KEY_IN_QUERY.sub(r"\1***", text)
    return _BEARER.sub(r"\1***", text)


def vendor_message(body: Any, text: str, api_key: str | None) -> str:
    """The human part of a vendor error body ({"error": ...} or {"message": ...}), sanitized and shortened."""
    message = ""
    if isinstance(body, Mapping):
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str) and body[key].strip():
                message = body[key]
                break
    elif text and not text.lstrip().startswith("<"):  # skip HTML error pages from proxies
        message = text
    message = _CONTROL_OR_SPACE.sub(" ", scrub(message, api_key)).strip()
    if len(message) > MAX_VENDOR_TEXT:
        message = message[: MAX_VENDOR_TEXT - 1].rstrip() + "…"
    return message.rstrip(".")


def http_error(
    status: int, body: Any, text: str, *, path: str, not_found_hint: str | None, retries: int, api_key: str | None
) -> str:
    """The message for a final HTTP error status."""
    said = vendor_message(body, text, api_key)
    detail = f"{status}: {said}" if said else str(status)
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
        return (
            f"Rate limit reached (429) and still limited after {retries} retries: wait a minute before calling "
            f"again, or upgrade at {PRICING_URL} for higher limits."
        )
    if status >= 500:
        return f"The market-data API failed ({detail}) after {retries} retries: try again in a minute."
    return f"The market-data API answered {detail} for {path}: check the arguments and call again."


def timeout_error(seconds: float, retries: int) -> str:
    return (
        f"The market-data API did not answer within {seconds:g} s (tried {retries + 1} times): try again, or ask "
        "for less data (smaller limit or shorter date range)."
    )


def connection_error(base_url: str, reason: str, retries: int) -> str:
    return (
        f"Could not connect to the market-data API at {base_url} ({reason}, tried {retries + 1} times): check "
        "POLYGON_REST_URL and the network, then call again."
    )


def invalid_json_error(status: int, content_type: str) -> str:
    kind = content_type.split(";")[0].strip() or "no content type"
    return f"The market-data API returned a body that is not valid JSON (HTTP {status}, {kind}): try again in a minute."
