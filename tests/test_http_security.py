"""The HTTP transport's access rules, through the real `mcp-polygon` command: token, Host/Origin, refusal, logs.

Servers bind 0.0.0.0 or 127.0.0.1; tests only ever connect to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from conftest import text_of
from mcp_polygon.config import Settings
from mcp_polygon.http_guard import BearerTokenGate, HttpAccess, is_loopback
from mcp_polygon.simulator import DEFAULT_API_KEY

SCRIPT = Path(sys.executable).with_name("mcp-polygon")
TOKEN = "t0ken-for-tests-7f3a9c"
ENV_KEY = "env+key/with=odd%chars"  # masked raw and URL-encoded in logs
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed (pip install -e .)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def wait_for_port(process: subprocess.Popen[bytes], port: int, stderr_path: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {stderr_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start listening within 20 s")


@pytest.fixture(scope="module")
def exposed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Bound to every interface with a token, and one extra allowed Host and Origin."""
    yield from run_server(
        tmp_path_factory.mktemp("exposed"),
        ["--host", "0.0.0.0"],
        {
            "POLYGON_HTTP_TOKEN": TOKEN,
            "POLYGON_ALLOWED_HOSTS": "mcp.example.test",
            "POLYGON_ALLOWED_ORIGINS": "https://app.example.test",
        },
    )


@pytest.fixture(scope="module")
def loopback_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default: loopback, no token."""
    yield from run_server(tmp_path_factory.mktemp("loopback"), [], {"POLYGON_API_KEY": ENV_KEY})


def run_server(tmp: Path, args: list[str], env: dict[str, str]) -> Iterator[RunningServer]:
    port = free_port()
    stderr_path = tmp / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [str(SCRIPT), "--simulate", "--transport", "http", "--port", str(port), *args],
            env={"POLYGON_DATA_DIR": str(tmp / "data"), **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for_port(process, port, stderr_path)
        yield RunningServer(process, port, stderr_path)
    finally:
        process.terminate()
        process.wait(10)


async def post_initialize(url: str, headers: dict[str, str]) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})


def authorized(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- off loopback: a token is required ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, authorized("wrong-token"), {"Authorization": f"Basic {TOKEN}"}, authorized(TOKEN + "x")],
    ids=["no token", "wrong token", "wrong scheme", "token prefix"],
)
async def test_exposed_server_refuses_requests_without_the_token(exposed_server: RunningServer, headers):
    response = await post_initialize(exposed_server.url, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "POLYGON_HTTP_TOKEN" in response.text and TOKEN not in response.text


async def test_exposed_server_serves_an_mcp_session_with_the_token(exposed_server: RunningServer):
    async with create_mcp_http_client(headers=authorized()) as http:
        async with Client(streamable_http_client(exposed_server.url, http_client=http)) as client:
            result = await client.call_tool("get_market_status", {})
    assert not result.is_error, text_of(result)
    assert text_of(result).startswith("# SIMULATED DATA")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 421),
        ({"Host": "evil.example:8000"}, 421),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "http://mcp.example.test"}, 403),  # an allowed Host is not an allowed Origin
    ],
)
async def test_exposed_server_keeps_dns_rebinding_protection(exposed_server: RunningServer, headers, status):
    response = await post_initialize(exposed_server.url, {**authorized(), **headers})
    assert response.status_code == status


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "mcp.example.test"},
        {"Host": "mcp.example.test:8443"},
        {"Origin": "https://app.example.test"},
        {"Origin": "http://127.0.0.1:1234"},
    ],
)
async def test_exposed_server_accepts_the_allow_listed_hosts_and_origins(exposed_server: RunningServer, headers):
    response = await post_initialize(exposed_server.url, {**authorized(), **headers})
    assert response.status_code == 200, response.text


def test_exposed_server_logs_one_warning_naming_the_token_and_allow_lists(exposed_server: RunningServer):
    warnings = [line for line in exposed_server.stderr().splitlines() if " WARNING mcp_polygon" in line]
    assert len(warnings) == 1
    assert "0.0.0.0" in warnings[0] and "Bearer" in warnings[0]
    assert "mcp.example.test:*" in warnings[0] and "https://app.example.test" in warnings[0]
    assert TOKEN not in exposed_server.stderr()


def test_non_loopback_bind_without_a_token_refuses_to_start(tmp_path: Path):
    done = subprocess.run(
        [str(SCRIPT), "--simulate", "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port())],
        env={"POLYGON_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("mcp-polygon: --host 0.0.0.0 is reachable from other machines")
    assert "POLYGON_HTTP_TOKEN" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_sentence_and_exit_2(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(SCRIPT), "--simulate", "--transport", "http", "--port", str(port)],
            env={"POLYGON_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"mcp-polygon: port {port} on 127.0.0.1 is already in use (another mcp-polygon?); stop that process or "
        "pass --port with a free port."
    ], done.stderr


async def test_token_option_works_on_loopback_too(tmp_path: Path):
    servers = run_server(tmp_path, ["--token", TOKEN], {})
    server = next(servers)
    try:
        assert (await post_initialize(server.url, {})).status_code == 401
        assert (await post_initialize(server.url, authorized())).status_code == 200
        assert "reachable beyond this machine" not in server.stderr()  # loopback: no exposure warning
    finally:
        servers.close()


# -- loopback default: no token, the SDK's DNS-rebinding protection still on ----------------------------------


async def test_loopback_server_needs_no_token(loopback_server: RunningServer):
    async with Client(loopback_server.url) as client:
        result = await client.call_tool("get_market_status", {})
    assert not result.is_error, text_of(result)


@pytest.mark.parametrize(
    ("headers", "status"), [({"Host": "evil.example"}, 421), ({"Origin": "http://evil.example"}, 403)]
)
async def test_loopback_server_refuses_foreign_hosts_and_origins(loopback_server: RunningServer, headers, status):
    assert (await post_initialize(loopback_server.url, headers)).status_code == status


async def test_keys_in_third_party_log_lines_are_masked_on_stderr(loopback_server: RunningServer):
    # The SDK logs a refused Origin verbatim at WARNING: a real log line this project does not write itself.
    secrets = [ENV_KEY, quote(ENV_KEY, safe=""), DEFAULT_API_KEY]
    for marker, secret in enumerate(secrets):
        response = await post_initialize(loopback_server.url, {"Origin": f"http://marker{marker}.test/{secret}"})
        assert response.status_code == 403
    for _ in range(200):  # log lines reach the file a moment after the response; allow up to 10 s
        if all(f"marker{i}.test" in loopback_server.stderr() for i in range(len(secrets))):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the refused origins were not logged")
    stderr = loopback_server.stderr()
    assert not [secret for secret in secrets if secret in stderr]
    assert stderr.count("/***") >= len(secrets)


# -- the rules themselves, in process --------------------------------------------------------------------------


def test_loopback_detection():
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"))


def test_allow_lists_add_the_bind_address_and_any_port_for_bare_names():
    settings = Settings(allowed_hosts=("a.test", "b.test:9000"), allowed_origins=("https://c.test",), http_token="x")
    access = HttpAccess.from_settings(settings, "192.168.1.5", 8000)
    assert {"192.168.1.5:*", "a.test", "a.test:*", "b.test:9000", "localhost:*"} <= set(access.allowed_hosts)
    assert "b.test:9000:*" not in access.allowed_hosts
    assert {"http://192.168.1.5:*", "https://c.test", "https://c.test:*"} <= set(access.allowed_origins)
    wildcard = HttpAccess.from_settings(settings, "0.0.0.0", 8000)
    assert not [host for host in wildcard.allowed_hosts if host.startswith("0.0.0.0")]


async def test_bearer_gate_passes_only_the_exact_token():
    async def hello(_request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    gate = BearerTokenGate(Starlette(routes=[Route("/", hello)]), TOKEN)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gate), base_url="http://127.0.0.1") as http:
        assert (await http.get("/", headers=authorized())).text == "hello"
        assert (await http.get("/", headers={"Authorization": f"bearer  {TOKEN} "})).status_code == 200
        assert (await http.get("/", headers=authorized(TOKEN[:-1]))).status_code == 401
        assert (await http.get("/")).status_code == 401
