"""Settings: every knob of the server, read from the environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mcp_polygon.redaction import Redactor

REST_TOOLSETS = ("stocks", "options", "futures", "crypto", "forex", "economy", "indices")
STREAM_MARKETS = ("stocks", "options", "futures", "indices", "forex", "crypto")
ALL_TOOLSETS = REST_TOOLSETS  # every stream market is also a REST toolset

DEFAULT_REST_URL = "https://api.massive.com"
DEFAULT_WS_URL = "wss://socket.massive.com"


class ConfigError(ValueError):
    """A setting has a value the server cannot use; the message says which and what is valid."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mcp-polygon"


class Profile(StrEnum):
    """Which tools `tools/list` shows. FULL: every tool of the toolsets. COMPACT: about a dozen (find_tools,
    call_tool, the stream verbs with a `market` argument, SQL and summaries) that reach all the others, for
    clients that cap or crowd the tool list."""

    FULL = "full"
    COMPACT = "compact"


def parse_profile_and_toolsets(raw: str | None) -> tuple[Profile, frozenset[str]]:
    """Parse POLYGON_TOOLSETS: asset classes ('stocks,crypto'), 'all' (or empty) for every one, and optionally the
    word 'compact', which picks the compact profile instead of naming an asset class ('compact' alone or
    'compact,stocks')."""
    names = {part.strip().lower() for part in (raw or "").split(",") if part.strip()}
    profile = Profile.COMPACT if Profile.COMPACT.value in names else Profile.FULL
    names.discard(Profile.COMPACT.value)
    if not names or names == {"all"}:
        return profile, frozenset(ALL_TOOLSETS)
    unknown = sorted(names - set(ALL_TOOLSETS))
    if unknown:
        raise ConfigError(
            f"POLYGON_TOOLSETS has unknown toolset(s) {', '.join(unknown)}; valid: {', '.join(ALL_TOOLSETS)} or "
            "'all', optionally with 'compact' for the compact profile (e.g. 'compact,stocks')."
        )
    return profile, frozenset(names)


def parse_toolsets(raw: str | None) -> frozenset[str]:
    """The asset classes of POLYGON_TOOLSETS ('stocks,crypto'); empty or 'all' means every toolset."""
    return parse_profile_and_toolsets(raw)[1]


def _int_env(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}.") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}.")
    return value


def _bool_env(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}.")


def _list_env(env: dict[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name) or ""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def check_secret(value: str, name: str) -> str:
    """A key or token travels in an HTTP header: printable ASCII, no whitespace. The message never shows it."""
    for position, char in enumerate(value, start=1):
        if char.isspace():
            raise ConfigError(
                f"{name} has whitespace (a space, tab or line break) at character {position}; "
                "set it again as one unbroken line."
            )
        if not ("!" <= char <= "~"):
            raise ConfigError(
                f"{name} has a non-printable or non-ASCII character at character {position}; "
                "it must be printable ASCII, so copy it again from where it was issued."
            )
    return value


def _secret_env(env: dict[str, str], *names: str) -> str | None:
    """The first of `names` that is set (surrounding whitespace dropped), checked; None when none is."""
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            return check_secret(value, name)
    return None


def _redis_env(env: dict[str, str]) -> dict[str, Any]:
    """The POLYGON_REDIS_* settings, checked at start-up (the URL's password is never echoed). Unset URL: nothing,
    and redis is not even imported."""
    url = (env.get("POLYGON_REDIS_URL") or "").strip()
    if not url:
        return {}
    from mcp_polygon.sharedfeed import SharedFeedConfig  # only here: the embedded default never imports redis

    checked = {
        "POLYGON_REDIS_URL": url,
        "POLYGON_REDIS_NAMESPACE": env.get("POLYGON_REDIS_NAMESPACE") or "",
        "POLYGON_REDIS_MAXLEN": env.get("POLYGON_REDIS_MAXLEN") or "",
        "POLYGON_REDIS_CA_CERTS": env.get("POLYGON_REDIS_CA_CERTS") or "",
    }
    try:
        config = SharedFeedConfig.from_env(checked)
    except ValueError as exc:
        raise ConfigError(f"{exc}.".replace("..", ".")) from None
    assert config is not None
    return {
        "redis_url": config.url,
        "redis_namespace": config.namespace,
        "redis_maxlen": config.max_frames,
        "redis_ca_certs": config.ssl_ca_certs,
    }


def check_url(value: str, name: str, schemes: tuple[str, ...], example: str, redact: Redactor) -> str:
    """A base URL with one of `schemes` and a host, so a typo fails at start-up instead of as 'could not connect'."""
    value = value.strip()
    shown = redact(value)
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ConfigError(f"{name} contains whitespace or a control character ({shown!r}); write it like {example}.")
    parts = urlsplit(value)
    try:
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        raise ConfigError(f"{name} has an invalid port ({shown!r}); use 1-65535, like {example}.") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        valid = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ConfigError(
            f"{name} must be a URL starting with {valid} and naming a host, like {example}; got {shown!r}."
        )
    return value.rstrip("/")


def check_port(value: int, option: str, minimum: int = 1) -> int:
    if not minimum <= value <= 65535:
        raise ConfigError(f"{option} must be a port number from {minimum} to 65535, got {value}.")
    return value


def check_host(value: str, option: str) -> str:
    host = value.strip()
    if not host or any(char.isspace() for char in host):
        raise ConfigError(f"{option} must be an address or host name to bind, like 127.0.0.1, got {value!r}.")
    return host


def _allowed_hosts_env(env: dict[str, str], name: str) -> tuple[str, ...]:
    hosts = _list_env(env, name)
    for host in hosts:
        if "/" in host or any(char.isspace() for char in host):
            raise ConfigError(
                f"{name} lists {host!r}, which is not a Host header value; "
                "write names like mcp.example.com or mcp.example.com:8000, comma separated."
            )
    return hosts


def _allowed_origins_env(env: dict[str, str], name: str) -> tuple[str, ...]:
    origins = _list_env(env, name)
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(
                f"{name} lists {origin!r}, which is not an origin; "
                "write them like https://app.example.com, comma separated."
            )
    return tuple(origin.rstrip("/") for origin in origins)


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    rest_url: str = DEFAULT_REST_URL
    ws_url: str = DEFAULT_WS_URL
    toolsets: frozenset[str] = field(default_factory=lambda: frozenset(ALL_TOOLSETS))
    profile: Profile = Profile.FULL
    # REST behaviour
    request_timeout: float = 30.0
    max_retries: int = 3
    max_response_chars: int = 80_000  # about 20k tokens
    # Streams
    buffer_size: int = 1000
    data_dir: Path = field(default_factory=_default_data_dir)
    record: bool = True
    record_max_bytes: int = 1 << 30  # per market
    max_body_bytes: int = 64 << 20  # REST bodies are read incrementally and refused past this
    # HTTP transport. A bind off loopback needs a bearer token; hosts/origins guard against DNS rebinding.
    http_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # extra Host values accepted (besides loopback and the bind address)
    allowed_origins: tuple[str, ...] = ()  # extra Origin values accepted
    # SQL over streams, recordings and saved REST results
    query_timeout: float = 10.0
    query_memory_mb: int = 1024
    # Shared feed (issue 11): with a Redis URL, one process per market holds the upstream socket and every process
    # reads the market's Redis Stream. None: the embedded default (one socket per process, nothing shared).
    redis_url: str | None = None  # may hold a password: never shown (see __repr__)
    redis_namespace: str = "mcp-polygon"
    redis_maxlen: int = 10_000  # frames kept per market stream (XADD MAXLEN ~)
    redis_ca_certs: str | None = None  # CA file for rediss:// with a private CA
    # True when REST and streams point at the built-in simulator: output must say so.
    simulated: bool = False

    @property
    def stream_markets(self) -> tuple[str, ...]:
        return tuple(m for m in STREAM_MARKETS if m in self.toolsets)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def __repr__(self) -> str:  # never show the key, even in a debugger or a traceback
        key = "set" if self.api_key else "unset"
        return (
            f"Settings(api_key=<{key}>, rest_url={self.rest_url!r}, ws_url={self.ws_url!r}, simulated={self.simulated})"
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        # Fail fast on what can never work: a bad key or URL would otherwise surface as retries and "could not connect".
        key = _secret_env(env, "POLYGON_API_KEY", "MASSIVE_API_KEY")
        redact = Redactor(key)
        rest_url = env.get("POLYGON_REST_URL") or DEFAULT_REST_URL
        ws_url = env.get("POLYGON_WS_URL") or DEFAULT_WS_URL
        data_dir = env.get("POLYGON_DATA_DIR")
        profile, toolsets = parse_profile_and_toolsets(env.get("POLYGON_TOOLSETS"))
        return cls(
            api_key=key,
            rest_url=check_url(rest_url, "POLYGON_REST_URL", ("http", "https"), DEFAULT_REST_URL, redact),
            ws_url=check_url(ws_url, "POLYGON_WS_URL", ("ws", "wss"), DEFAULT_WS_URL, redact),
            toolsets=toolsets,
            profile=profile,
            request_timeout=float(_int_env(env, "POLYGON_TIMEOUT", 30)),
            max_retries=_int_env(env, "POLYGON_MAX_RETRIES", 3, minimum=0),
            buffer_size=_int_env(env, "POLYGON_STREAM_BUFFER", 1000, minimum=10),
            data_dir=Path(data_dir).expanduser() if data_dir else _default_data_dir(),
            record=_bool_env(env, "POLYGON_RECORD", True),
            record_max_bytes=_int_env(env, "POLYGON_RECORD_MAX_MB", 1024) * (1 << 20),
            max_body_bytes=_int_env(env, "POLYGON_MAX_BODY_MB", 64) * (1 << 20),
            http_token=_secret_env(env, "POLYGON_HTTP_TOKEN"),
            allowed_hosts=_allowed_hosts_env(env, "POLYGON_ALLOWED_HOSTS"),
            allowed_origins=_allowed_origins_env(env, "POLYGON_ALLOWED_ORIGINS"),
            query_timeout=float(_int_env(env, "POLYGON_QUERY_TIMEOUT", 10)),
            query_memory_mb=_int_env(env, "POLYGON_QUERY_MEMORY_MB", 1024, minimum=64),
            **_redis_env(env),
        )
