"""Command line: `mcp-polygon [serve] [--transport stdio|http] [--simulate]` and `mcp-polygon simulate`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from mcp_polygon import __version__
from mcp_polygon.config import ConfigError, Settings, check_host, check_port, check_secret
from mcp_polygon.redaction import RedactingFilter, Redactor, install_log_redaction
from mcp_polygon.serving import bind_http, serve_http, serve_stdio, shutdown_on_signals

if TYPE_CHECKING:
    from mcp_polygon.http_guard import HttpAccess
    from mcp_polygon.simulator import Simulator

log = logging.getLogger("mcp_polygon")


def _setup_logging(level: str) -> None:
    # stdout is the MCP protocol channel in stdio mode: every log line goes to stderr.
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _mask_in_logs(secret: str | None) -> None:
    """Mask `secret` in every log line, on top of any secret masked already (install_log_redaction adds only one)."""
    redact = Redactor(secret)
    if not redact.active:
        return
    handlers = logging.getLogger().handlers
    if not any(isinstance(f, RedactingFilter) for handler in handlers for f in handler.filters):
        install_log_redaction(redact)
        return
    for handler in handlers:
        handler.addFilter(RedactingFilter(redact))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-polygon", description="Polygon.io / Massive.com market data over MCP.")
    p.add_argument("--version", action="version", version=f"mcp-polygon {__version__}")
    sub = p.add_subparsers(dest="command")

    def common_args(sp: argparse.ArgumentParser, defaults: bool) -> None:
        # Subcommands repeat the options with SUPPRESS defaults, so `mcp-polygon --simulate serve` keeps --simulate
        # (argparse would otherwise let the subparser's default overwrite what was given before the subcommand).
        def d(value: object) -> object:
            return value if defaults else argparse.SUPPRESS

        sp.add_argument("--log-level", default=d("INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        sp.add_argument("--transport", choices=["stdio", "http"], default=d("stdio"), help="default: stdio")
        sp.add_argument("--host", default=d("127.0.0.1"), help="bind address (default 127.0.0.1)")
        sp.add_argument("--port", type=int, default=d(8000), help="HTTP port (default 8000); path is /mcp")
        sp.add_argument(
            "--token",
            default=d(None),
            help="bearer token HTTP clients must send (default: POLYGON_HTTP_TOKEN, which keeps it out of `ps`)",
        )
        sp.add_argument(
            "--simulate",
            action="store_true",
            default=d(False),
            help="serve synthetic data from a built-in simulator: no API key or internet needed",
        )

    common_args(p, defaults=True)  # `mcp-polygon --transport http` works without the word `serve`
    common_args(sub.add_parser("serve", help="run the MCP server (default)"), defaults=False)
    sim = sub.add_parser("simulate", help="run the vendor-protocol simulator (REST + WebSocket) standalone")
    sim.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sim.add_argument("--host", default=argparse.SUPPRESS, help="bind address (default 127.0.0.1)")
    sim.add_argument("--rest-port", type=int, default=8100)
    sim.add_argument("--ws-port", type=int, default=8101)
    sim.add_argument("--api-key", default=None, help="the key clients must send (default: the simulator's key)")
    sim.add_argument("--rate", type=float, default=None, help="events per second per subscription")
    return p


@contextlib.asynccontextmanager
async def _simulated(settings: Settings) -> AsyncIterator[Settings]:
    """Run an in-process simulator and point the settings at it."""
    from mcp_polygon.simulator import Simulator

    async with Simulator() as sim:
        _mask_in_logs(sim.api_key)
        yield settings.with_overrides(
            api_key=sim.api_key,
            rest_url=sim.rest_url,
            ws_url=sim.ws_url,
            simulated=True,
            # Simulated recordings never mix with real ones.
            data_dir=settings.data_dir / "simulated",
        )


async def _serve(args: argparse.Namespace, settings: Settings, access: HttpAccess | None) -> None:
    from mcp_polygon.server import build_app

    # The exit stack is the one shutdown path: stdin closing, a signal, or an error all leave through it, so
    # recordings are flushed and sockets closed whichever way the server stops.
    # The port is taken before anything starts: a port in use is a one-sentence ConfigError, not a half-started
    # server that uvicorn stops with its own log lines.
    sock = bind_http(access.bind_host, access.port) if access is not None else None
    with shutdown_on_signals() as stop:
        async with contextlib.AsyncExitStack() as stack:
            if sock is not None:
                stack.callback(sock.close)
            if args.simulate:
                settings = await stack.enter_async_context(_simulated(settings))
            app = await stack.enter_async_context(build_app(settings))
            if access is not None and sock is not None:
                await serve_http(app.server, access, stop, sock)
            else:
                await serve_stdio(app.server, stop)


async def _simulate(args: argparse.Namespace) -> None:
    from mcp_polygon.simulator import Simulator

    kwargs = {"host": args.host, "rest_port": args.rest_port, "ws_port": args.ws_port}
    if args.api_key:
        kwargs["api_key"] = args.api_key
    if args.rate is not None:
        kwargs["rate"] = args.rate
    with shutdown_on_signals() as stop:
        async with Simulator(**kwargs) as sim:
            _print_simulator_banner(sim)
            await stop.wait()


def _print_simulator_banner(sim: Simulator) -> None:
    # This command is for humans; its stdout is not a protocol channel.
    sys.stdout.write(
        f"REST      {sim.rest_url}\nWebSocket {sim.ws_url}/<market>\nAPI key   {sim.api_key}\n"
        f"Point the server at it: POLYGON_REST_URL={sim.rest_url} POLYGON_WS_URL={sim.ws_url} "
        f"POLYGON_API_KEY={sim.api_key} mcp-polygon\nCtrl-C to stop.\n"
    )
    sys.stdout.flush()


def _checked_serve_options(args: argparse.Namespace, settings: Settings) -> tuple[Settings, HttpAccess | None]:
    """The settings with --token applied, and the HTTP access rules (None for stdio); ConfigError when unusable."""
    from mcp_polygon.http_guard import HttpAccess

    if args.token is not None:
        settings = settings.with_overrides(http_token=check_secret(args.token.strip(), "--token") or None)
    if args.transport != "http":
        return settings, None
    host, port = check_host(args.host, "--host"), check_port(args.port, "--port")
    return settings, HttpAccess.from_settings(settings, host, port)


def _check_simulate_options(args: argparse.Namespace) -> None:
    check_host(args.host, "--host")
    check_port(args.rest_port, "--rest-port", minimum=0)  # 0: any free port
    check_port(args.ws_port, "--ws-port", minimum=0)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level)
    access: HttpAccess | None = None
    try:
        settings = Settings.from_env()
        _mask_in_logs(settings.api_key)
        if args.command == "simulate":
            _check_simulate_options(args)
        else:
            settings, access = _checked_serve_options(args, settings)
    except ConfigError as exc:
        # Bad configuration fails here, once, in one sentence: nothing has started, nothing is retried.
        sys.stderr.write(f"mcp-polygon: {exc}\n")
        raise SystemExit(2) from None
    try:
        if args.command == "simulate":
            asyncio.run(_simulate(args))
        else:
            asyncio.run(_serve(args, settings, access))
    except ConfigError as exc:  # what only trying could tell (a port in use)
        sys.stderr.write(f"mcp-polygon: {exc}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # only before the signal handlers are in place
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
