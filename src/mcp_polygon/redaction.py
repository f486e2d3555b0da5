"""One redaction step for every way out of the process: tool text, logs, errors, cursors, status.

The API key goes to the vendor's hosts and nowhere else. Anything that leaves the server passes through a
`Redactor`, which masks the key as written and in every URL-encoded spelling a URL or a vendor echo may use.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, quote_plus

MASK = "***"
# Shorter keys would mask ordinary words; no vendor key is that short.
MIN_KEY_LENGTH = 4


class Redactor:
    """Masks one secret in any text: raw, percent-encoded (`quote`, `quote_plus`) and lower-case hex escapes."""

    __slots__ = ("_needles",)

    def __init__(self, secret: str | None) -> None:
        needles: set[str] = set()
        if secret and len(secret) >= MIN_KEY_LENGTH:
            for spelling in (secret, quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)):
                needles.add(spelling)
                needles.add(_lower_escapes(spelling))
        # Longest first, so a spelling that contains another is masked whole.
        self._needles = tuple(sorted(needles, key=len, reverse=True))

    @property
    def active(self) -> bool:
        return bool(self._needles)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text

    def bytes(self, data: bytes) -> bytes:
        """The same masking for raw bytes (a frame or a body about to be shown or logged)."""
        if not self._needles:
            return data
        return self(data.decode("utf-8", "replace")).encode()


def _lower_escapes(text: str) -> str:
    """`%2B` -> `%2b`: some encoders write hex escapes in lower case."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


class RedactingFilter(logging.Filter):
    """A logging filter that masks the key in every record's rendered message, whoever logged it."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._redact.active:
            return True
        message = record.getMessage()
        masked = self._redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_log_redaction(redact: Redactor) -> None:
    """Mask the key in everything any logger writes through the root handlers (stderr)."""
    if not redact.active:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redact))
