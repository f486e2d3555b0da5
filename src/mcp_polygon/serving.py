"""Run the MCP server over stdio or streamable HTTP until its input ends or a signal asks it to stop.

Every way of stopping takes the same path: the transport returns, and the caller's exit stack closes the App
(streams stopped, recordings flushed and closed) and the simulator. A first SIGTERM or SIGINT starts that path;
a second one ends the process at once, for when the clean path itself is stuck.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, cast

from mcp_polygon.config import ConfigError

if TYPE_CHECKING:
    import anyio
    from mcp.server.mcpserver import MCPServer

    from mcp_polygon.http_guard import HttpAccess

log = logging.getLogger("mcp_polygon")

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Open SSE streams (a client's GET /mcp) never end by themselves; past this uvicorn cancels them.
HTTP_GRACEFUL_SHUTDOWN_S = 1
STDIN_CHUNK = 1 << 16


class ShutdownSignals:
    """Turns the first SIGTERM/SIGINT into `requested` being set; after it, both signals act as the OS default."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._installed: list[signal.Signals] = []

    def install(self) -> None:
        for sig in SHUTDOWN_SIGNALS:
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # no signal support on this loop/platform: keep defaults
                continue
            self._installed.append(sig)

    def uninstall(self) -> None:
        while self._installed:
            self._loop.remove_signal_handler(self._installed.pop())

    def _on_signal(self, sig: signal.Signals) -> None:
        self.uninstall()
        for other in SHUTDOWN_SIGNALS:
            # SIG_DFL, not Python's SIGINT handler: a KeyboardInterrupt would wait for the stuck clean-up.
            signal.signal(other, signal.SIG_DFL)
        # Logged once a second signal already acts at once, so whoever reads this line may send it.
        log.info("%s received: shutting down cleanly (send it again to exit at once)", sig.name)
        self.requested.set()


@contextlib.contextmanager
def shutdown_on_signals() -> Iterator[asyncio.Event]:
    """The event set by the first SIGTERM or SIGINT while the block runs."""
    signals = ShutdownSignals()
    signals.install()
    try:
        yield signals.requested
    finally:
        signals.uninstall()


class StdinLines:
    """Lines of stdin for the SDK's stdio transport, read by a daemon thread.

    The SDK reads stdin in an anyio worker thread that a cancellation must wait for, so a server blocked on an
    idle client could not stop until the client wrote or closed the pipe. Here the blocking read happens in a
    daemon thread on the raw descriptor (no Python file object, whose lock would trouble interpreter exit), and
    the iterator only awaits a queue, which any cancellation interrupts. Passing stdin explicitly means the SDK
    no longer points fd 0 at /dev/null while serving; nothing in this process reads fd 0 or starts children.
    """

    def __init__(self, fd: int = 0, depth: int = 16) -> None:
        self._fd = fd
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(depth)
        self._started = False

    def __aiter__(self) -> StdinLines:
        if not self._started:
            self._started = True
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._pump, args=(loop,), name="mcp-polygon stdin", daemon=True).start()
        return self

    async def __anext__(self) -> str:
        line = await self._queue.get()
        if line is None:
            raise StopAsyncIteration
        return line

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._fd, STDIN_CHUNK)
            except OSError:
                chunk = b""  # a closed or broken stdin ends the session like EOF
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not self._hand_over(loop, line.decode("utf-8", "replace") + "\n"):
                    return
        if pending:
            self._hand_over(loop, pending.decode("utf-8", "replace"))
        self._hand_over(loop, None)

    def _hand_over(self, loop: asyncio.AbstractEventLoop, line: str | None) -> bool:
        """Queue one line, waiting while the queue is full (back-pressure); False once the loop is gone."""
        try:
            asyncio.run_coroutine_threadsafe(self._queue.put(line), loop).result()
        except (RuntimeError, concurrent.futures.CancelledError):
            return False
        return True


async def _run_stdio_session(server: MCPServer) -> None:
    from mcp.server.stdio import stdio_server

    # The SDK only iterates `stdin` (`async for line in stdin`); StdinLines is that, and cancellable.
    stdin = cast("anyio.AsyncFile[str]", StdinLines())
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):
        # What MCPServer.run_stdio_async runs, which offers no way to pass stdin.
        lowlevel = server._lowlevel_server
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


async def serve_stdio(server: MCPServer, stop: asyncio.Event) -> None:
    """Serve one stdio session until stdin ends or `stop` is set."""
    await _until_stopped(_run_stdio_session(server), stop)


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run `work` until it returns or `stop` is set, then cancel it; its errors propagate."""
    session = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not session.done():
            session.cancel()
    try:
        await session
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves, not just stopping the session


def bind_http(host: str, port: int) -> socket.socket:
    """The listening socket for the HTTP transport, bound before anything starts; ConfigError in one sentence when
    the address cannot be had (uvicorn would log its own lines and exit 1 after the server had started)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host} does not resolve to an address to bind ({exc.strerror}).") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another mcp-polygon?); stop that process or pass "
                "--port with a free port."
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pass a --host and --port this machine can bind."
        ) from None
    return sock


async def serve_http(server: MCPServer, access: HttpAccess, stop: asyncio.Event, sock: socket.socket) -> None:
    """Serve streamable HTTP at /mcp on `sock` (from bind_http) until `stop` is set."""
    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn's own handlers would re-raise the signal after shutdown, killing the process before the App closes.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=access.transport_security())
    config = uvicorn.Config(
        access.protect(app),
        host=access.bind_host,
        port=access.port,
        log_config=None,  # uvicorn's own config would send its access log to stdout; ours goes to stderr
        access_log=False,
        timeout_graceful_shutdown=HTTP_GRACEFUL_SHUTDOWN_S,
    )
    uv = Server(config)

    async def exit_when_stopped() -> None:
        await stop.wait()
        # uvicorn's own exit hook rather than `should_exit = True`: sse-starlette hooks it to end open SSE
        # streams gracefully, where otherwise they would be cancelled (with a traceback) after the grace period.
        uv.handle_exit(signal.SIGTERM, None)

    if not access.loopback:
        log.warning("%s", access.exposure_warning())
    log.info("serving MCP over streamable HTTP at http://%s:%d/mcp", access.bind_host, access.port)
    watcher = asyncio.create_task(exit_when_stopped())
    try:
        await uv.serve(sockets=[sock])
    finally:
        watcher.cancel()
        sock.close()
