"""Settings: every knob of the server, read from the environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

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


def parse_toolsets(raw: str | None) -> frozenset[str]:
    """Parse POLYGON_TOOLSETS ('stocks,crypto'); empty or 'all' means every toolset."""
    if raw is None or not raw.strip() or raw.strip().lower() == "all":
        return frozenset(ALL_TOOLSETS)
    names = {part.strip().lower() for part in raw.split(",") if part.strip()}
    unknown = sorted(names - set(ALL_TOOLSETS))
    if unknown:
        raise ConfigError(
            f"POLYGON_TOOLSETS has unknown toolset(s) {', '.join(unknown)}; valid: {', '.join(ALL_TOOLSETS)} or 'all'."
        )
    return frozenset(names)


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


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    rest_url: str = DEFAULT_REST_URL
    ws_url: str = DEFAULT_WS_URL
    toolsets: frozenset[str] = field(default_factory=lambda: frozenset(ALL_TOOLSETS))
    # REST behaviour
    request_timeout: float = 30.0
    max_retries: int = 3
    max_response_chars: int = 80_000  # about 20k tokens
    # Streams
    buffer_size: int = 1000
    data_dir: Path = field(default_factory=_default_data_dir)
    record: bool = True
    record_max_bytes: int = 1 << 30  # per market
    # True when REST and streams point at the built-in simulator: output must say so.
    simulated: bool = False

    @property
    def stream_markets(self) -> tuple[str, ...]:
        return tuple(m for m in STREAM_MARKETS if m in self.toolsets)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)

    def __repr__(self) -> str:  # never show the key, even in a debugger or a traceback
        key = "set" if self.api_key else "unset"
        return (
            f"Settings(api_key=<{key}>, rest_url={self.rest_url!r}, ws_url={self.ws_url!r}, simulated={self.simulated})"
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        key = (env.get("POLYGON_API_KEY") or env.get("MASSIVE_API_KEY") or "").strip() or None
        data_dir = env.get("POLYGON_DATA_DIR")
        return cls(
            api_key=key,
            rest_url=(env.get("POLYGON_REST_URL") or DEFAULT_REST_URL).rstrip("/"),
            ws_url=(env.get("POLYGON_WS_URL") or DEFAULT_WS_URL).rstrip("/"),
            toolsets=parse_toolsets(env.get("POLYGON_TOOLSETS")),
            request_timeout=float(_int_env(env, "POLYGON_TIMEOUT", 30)),
            max_retries=_int_env(env, "POLYGON_MAX_RETRIES", 3, minimum=0),
            buffer_size=_int_env(env, "POLYGON_STREAM_BUFFER", 1000, minimum=10),
            data_dir=Path(data_dir).expanduser() if data_dir else _default_data_dir(),
            record=_bool_env(env, "POLYGON_RECORD", True),
            record_max_bytes=_int_env(env, "POLYGON_RECORD_MAX_MB", 1024) * (1 << 20),
        )
