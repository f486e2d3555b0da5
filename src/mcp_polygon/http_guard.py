"""Who may talk to the HTTP transport: a bearer token off loopback, and Host/Origin checks against DNS rebinding.

The Host/Origin checks are the mcp SDK's own (`TransportSecuritySettings`); this module only decides the
allow-lists. The token check is a small ASGI gate in front of the whole app, because the SDK's auth support is
OAuth (discovery routes, token verification) and a shared static token needs none of that.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass

from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_polygon.config import ConfigError, Settings

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "[::]")
UNAUTHORIZED = (
    "Missing or wrong bearer token: send 'Authorization: Bearer <token>' with the token set on the server "
    "(POLYGON_HTTP_TOKEN or --token).\n"
)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _as_host_header(host: str) -> str:
    """How a client writes this address in a Host header or an origin: IPv6 literals go in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _with_any_port(value: str, has_port: bool) -> tuple[str, ...]:
    """A value given without a port matches on any port (the SDK's `:*` pattern) as well as with none."""
    return (value,) if has_port else (value, f"{value}:*")


def _host_has_port(host: str) -> bool:
    return host.rsplit("]", 1)[-1].count(":") == 1 if host.startswith("[") else host.count(":") == 1


def _origin_has_port(origin: str) -> bool:
    return _host_has_port(origin.split("://", 1)[-1])


@dataclass(frozen=True)
class HttpAccess:
    """The access rules of one HTTP listener, decided once at start-up."""

    bind_host: str
    port: int
    token: str | None
    extra_hosts: tuple[str, ...] = ()
    extra_origins: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, bind_host: str, port: int) -> HttpAccess:
        """Refuse (ConfigError) a bind off loopback without a token: anyone who can reach it could use the key."""
        access = cls(bind_host, port, settings.http_token, settings.allowed_hosts, settings.allowed_origins)
        if not access.loopback and access.token is None:
            raise ConfigError(
                f"--host {bind_host} is reachable from other machines, so the HTTP transport needs a bearer token: "
                "set POLYGON_HTTP_TOKEN (or --token) to a long random secret, or bind to 127.0.0.1."
            )
        return access

    @property
    def loopback(self) -> bool:
        return is_loopback(self.bind_host)

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        names = list(LOOPBACK_HOSTS)
        if self.bind_host not in WILDCARD_BINDS and not self.loopback:
            names.append(_as_host_header(self.bind_host))
        values = [v for name in names for v in _with_any_port(name, has_port=False)]
        values += [v for host in self.extra_hosts for v in _with_any_port(host, _host_has_port(host))]
        return tuple(dict.fromkeys(values))

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        names = list(LOOPBACK_HOSTS)
        if self.bind_host not in WILDCARD_BINDS and not self.loopback:
            names.append(_as_host_header(self.bind_host))
        values = [v for name in names for v in _with_any_port(f"http://{name}", has_port=False)]
        values += [v for origin in self.extra_origins for v in _with_any_port(origin, _origin_has_port(origin))]
        return tuple(dict.fromkeys(values))

    def transport_security(self) -> TransportSecuritySettings:
        """The SDK's DNS-rebinding protection, on for every bind (it enables itself only for loopback binds)."""
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=list(self.allowed_hosts),
            allowed_origins=list(self.allowed_origins),
        )

    def protect(self, app: ASGIApp) -> ASGIApp:
        return BearerTokenGate(app, self.token) if self.token else app

    def exposure_warning(self) -> str:
        """One line for the log when the listener is reachable from other machines."""
        return (
            f"HTTP transport bound to {self.bind_host}:{self.port}, reachable beyond this machine: every request "
            "needs 'Authorization: Bearer <POLYGON_HTTP_TOKEN>'; "
            f"accepted Host values {', '.join(self.allowed_hosts)}; "
            f"accepted Origins {', '.join(self.allowed_origins)} (add more with POLYGON_ALLOWED_HOSTS / "
            "POLYGON_ALLOWED_ORIGINS)"
        )


class BearerTokenGate:
    """ASGI middleware: a request without `Authorization: Bearer <token>` gets 401 before it reaches the app."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        # Digests have one length whatever was sent, so the comparison time says nothing about the token.
        self._expected = hashlib.sha256(token.encode()).digest()

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, credentials = (Headers(scope=scope).get("authorization") or "").partition(" ")
        given = hashlib.sha256(credentials.strip().encode("latin-1")).digest()
        # Evaluate both sides unconditionally: `and` would skip the comparison for a wrong scheme.
        right_scheme = scheme.lower() == "bearer"
        return hmac.compare_digest(given, self._expected) & right_scheme

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or self._authorized(scope):
            await self._app(scope, receive, send)
            return
        client = scope.get("client")
        log.info("refused an HTTP request without a valid bearer token from %s", client[0] if client else "unknown")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = PlainTextResponse(UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
