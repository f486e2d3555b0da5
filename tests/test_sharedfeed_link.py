"""The Redis link against a real redis-server: one-sentence errors without the password, fail-fast while Redis is
down, rejoining when it returns (even empty), password URLs, and rediss:// through a TLS-terminating proxy."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mcp_polygon.sharedfeed import (
    LinkState,
    RedisEndpoint,
    RedisLink,
    RedisUnavailable,
    SharedFeed,
    SharedFeedConfig,
)
from redis_server import RedisServer, free_port

PASSWORD = "pw-Zq81-never-shown"
SENTENCE = re.compile(r"^Redis at 127\.0\.0\.1:\d+ is unreachable: [^.;]+; serving what this process holds\.$")


@pytest.fixture
async def redis_with_password(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with RedisServer(tmp_path / "redis-pw", password=PASSWORD) as server:
        yield server


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], within: float = 5.0) -> float:
    """Poll until `predicate` holds; the seconds it took. Fails the test past `within` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within} s")


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP port that accepts connections and never answers (a hung Redis); yields (port, [connections seen])."""
    seen = [0]
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen[0] += 1
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


# -- errors -----------------------------------------------------------------------------------------------------------


async def test_a_refused_connection_is_one_sentence_at_once(tmp_path: Path) -> None:
    link = RedisLink(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as caught:
        await link.run(lambda r: r.ping())
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert SENTENCE.match(message), message
    assert "connection refused" in message
    assert PASSWORD not in message and PASSWORD not in repr(caught.value)
    assert link.state is LinkState.DOWN
    await link.aclose()


async def test_a_redis_that_never_answers_fails_within_the_timeout() -> None:
    async with silent_listener() as (port, _):
        link = RedisLink(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=r"no answer within"):
            await link.run(lambda r: r.get("k"))
        assert time.monotonic() - started < 1.5
        await link.aclose()


async def test_while_watched_a_down_redis_fails_every_call_at_once() -> None:
    async with silent_listener() as (port, seen):
        link = RedisLink(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        watch = asyncio.create_task(link.keep_watch(probe_every=5.0))
        try:
            await wait_for(lambda: link.state is LinkState.DOWN)  # the first probe times out
            opened = seen[0]
            started = time.monotonic()
            for _ in range(20):
                with pytest.raises(RedisUnavailable, match=r"^Redis at .* is unreachable: no answer within 0\.3 s;"):
                    await link.run(lambda r: r.get("k"))
            # Twenty calls cost less than one socket timeout and opened no connection: they never tried.
            assert time.monotonic() - started < 0.3
            assert seen[0] == opened
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await link.aclose()


async def test_the_link_rejoins_on_its_own_when_redis_comes_back_empty(redis: RedisServer) -> None:
    link = RedisLink(redis.url, timeout=0.3)
    watch = asyncio.create_task(link.keep_watch(probe_every=0.05))
    try:
        await link.run(lambda r: r.set("before", b"1"))
        await redis.stop()
        await wait_for(lambda: link.state is LinkState.DOWN)
        with pytest.raises(RedisUnavailable, match="connection refused"):
            await link.run(lambda r: r.get("before"))
        generation = link.generation
        await redis.start()
        took = await wait_for(lambda: link.state is LinkState.UP, within=10.0)
        assert took < 2.0
        assert link.generation == generation + 1  # readers learn that they must check their epoch
        assert await link.run(lambda r: r.get("before")) is None  # it came back empty
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await link.aclose()


# -- passwords ---------------------------------------------------------------------------------------------------------


async def test_a_password_url_works(redis_with_password: RedisServer) -> None:
    link = RedisLink(redis_with_password.url)
    await link.run(lambda r: r.set("k", b"v"))
    assert await link.run(lambda r: r.get("k")) == b"v"
    await link.aclose()


@pytest.mark.parametrize("auth", ["", ":wrong-password-9x@"], ids=["missing", "wrong"])
async def test_a_missing_or_wrong_password_is_named_without_showing_it(
    redis_with_password: RedisServer, auth: str
) -> None:
    link = RedisLink(f"redis://{auth}127.0.0.1:{redis_with_password.port}/0")
    with pytest.raises(RedisUnavailable) as caught:
        await link.run(lambda r: r.get("k"))
    message = str(caught.value)
    assert SENTENCE.match(message), message
    assert "refused the user name or password in the URL" in message
    assert "wrong-password-9x" not in message and PASSWORD not in message
    await link.aclose()


def test_settings_never_show_the_password() -> None:
    config = SharedFeedConfig(f"redis://user:{PASSWORD}@cache.internal:6380/2")
    assert PASSWORD not in repr(config)
    assert "cache.internal:6380" in repr(config)
    assert SharedFeedConfig.from_env({}) is None  # no POLYGON_REDIS_URL: the embedded default
    with pytest.raises(ValueError, match="must start with redis:// or rediss://") as caught:
        SharedFeedConfig.from_env({"POLYGON_REDIS_URL": f"http://:{PASSWORD}@host"})
    assert PASSWORD not in str(caught.value)
    assert RedisEndpoint.from_url("rediss://[::1]:7000/3") == RedisEndpoint(host="::1", port=7000, tls=True, db=3)


# -- TLS ---------------------------------------------------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.asynccontextmanager
async def tls_proxy(target_port: int, cert: Path, key: Path) -> AsyncIterator[int]:
    """Terminate TLS on a port of its own and forward the plain bytes to Redis (the bundled binary has no TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tasks: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", target_port)
        for task in (
            asyncio.create_task(pump(client_reader, redis_writer)),
            asyncio.create_task(pump(redis_reader, client_writer)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_rediss_with_a_password_works_end_to_end(redis_with_password: RedisServer, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    async with tls_proxy(redis_with_password.port, cert, key) as port:
        config = SharedFeedConfig(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", ssl_ca_certs=str(cert))
        async with SharedFeed(config) as feed:
            grant = await feed.lease("stocks").acquire()
            assert grant is not None
            result = await feed.stream("stocks").writer(grant).append([(b'[{"ev":"T","sym":"AAPL"}]', 1, 1)])
            assert (result.first_seq, result.last_seq) == (1, 1)
            reader = feed.stream("stocks").reader(block=0.2)
            batch = await reader.read()
            assert [frame.raw for frame in batch.frames] == [b'[{"ev":"T","sym":"AAPL"}]']
            await reader.aclose()
            assert feed.link.endpoint.tls


async def test_rediss_with_an_untrusted_certificate_says_the_handshake_failed(
    redis: RedisServer, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path)
    async with tls_proxy(redis.port, cert, key) as port:
        link = RedisLink(f"rediss://127.0.0.1:{port}/0")  # no CA given: the self-signed certificate is not trusted
        with pytest.raises(RedisUnavailable, match=r"unreachable: the TLS handshake failed \(check the certificate"):
            await link.run(lambda r: r.ping())
        await link.aclose()
