"""A small HTTP/1.1 server on asyncio streams: just enough protocol for the REST simulator.

Why not uvicorn: tests start and stop a simulator per test, from different asyncio tasks (pytest-asyncio runs
fixture setup and teardown in separate tasks). Plain asyncio streams start and stop in about a millisecond and
hold no task-bound cancel scopes, so any task may call stop(). Keep-alive, Content-Length bodies and
concurrent connections are supported; chunked request bodies and TLS are not needed by any client we serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 1 << 20


@dataclass
class HttpRequest:
    method: str
    path: str  # percent-decoded
    raw_path: str  # as sent
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _BadRequest(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed an idle keep-alive connection
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise _BadRequest("malformed request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    if length > MAX_BODY:
        raise _BadRequest("request body too large")
    body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return HttpRequest(
        method=method.upper(),
        path=unquote(parts.path),
        raw_path=parts.path,
        query=parse_qsl(parts.query, keep_blank_values=True),
        headers=headers,
        body=body,
    )


def _encode(response: HttpResponse, keep_alive: bool) -> bytes:
    reason = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else "Unknown"
    head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Length: {len(response.body)}"]
    head.append(f"Content-Type: {response.content_type}")
    head.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


class HttpServer:
    """Serve `handler` on host:port (0 = any free port) until stop()."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback owning its task: asyncio's own per-connection task reports a cancelled task as an
        # error, and stop() has to cancel connections that sit in a delayed (fault-injected) response.
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except _BadRequest as exc:
                    writer.write(_encode(HttpResponse(400, str(exc).encode(), "text/plain"), keep_alive=False))
                    await writer.drain()
                    return
                if request is None:
                    return
                try:
                    response = await self.handler(request)
                except Exception:  # a simulator bug must not kill the connection silently
                    log.exception("simulator handler failed for %s %s", request.method, request.path)
                    response = HttpResponse(500, b'{"status":"ERROR","error":"simulator bug"}')
                keep_alive = request.headers.get("connection", "").lower() != "close"
                writer.write(_encode(response, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
