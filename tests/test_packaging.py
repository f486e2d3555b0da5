"""The packaging files agree with the package and do what they promise, without Docker or the registries.

scripts/check_packaging.sh runs the tools this file cannot (the mcpb CLI, uvx, pipx); here:
- manifest.json (Claude Desktop extension) and server.json (MCP registry) name this package, this version,
  and only settings the server reads; server.json is valid against the registry's schema, vendored in specs/.
- Dockerfile: python:3.11-slim, a non-root user, nothing secret baked in; its build context (.dockerignore)
  holds what the wheel is built from and nothing private; the image's command, run here as written, refuses to
  start without a bearer token, and with one serves MCP and passes the image's health check.
- README: every client snippet in the client table launches as written and lands in the profile it claims.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jsonschema  # type: ignore[import-untyped]
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import text_of
from mcp_polygon import __version__
from mcp_polygon.config import ConfigError, Settings
from mcp_polygon.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MANIFEST: dict[str, Any] = json.loads((ROOT / "manifest.json").read_text(encoding="utf-8"))
SERVER_JSON: dict[str, Any] = json.loads((ROOT / "server.json").read_text(encoding="utf-8"))
REGISTRY_SCHEMA: dict[str, Any] = json.loads((ROOT / "specs/mcp_registry_server.schema.json").read_text("utf-8"))
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
DOCKERIGNORE = (ROOT / ".dockerignore").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")

SECRET_VARIABLES = ("POLYGON_API_KEY", "MASSIVE_API_KEY", "POLYGON_HTTP_TOKEN")
# A value for each variable the packaging files declare, to prove the server reads it (see below).
SAMPLE_VALUES = {
    "POLYGON_API_KEY": "sample-key",
    "POLYGON_TOOLSETS": "stocks",
    "POLYGON_DATA_DIR": "/tmp/mcp-polygon-sample",
}
WHEEL_NAME = f"mcp_polygon-{__version__}-py3-none-any.whl"

pytestmark = pytest.mark.timeout(300)


def _project_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a fresh clone (of this work) holds."""
    command = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    listed = subprocess.run(command, cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _assert_server_reads(variable: str) -> None:
    """Setting `variable` changes the server's settings: the name is one the server actually reads."""
    assert variable in SAMPLE_VALUES, f"add a sample value for {variable} to SAMPLE_VALUES"
    assert Settings.from_env({variable: SAMPLE_VALUES[variable]}) != Settings.from_env({}), variable


# -- manifest.json: the Claude Desktop extension -----------------------------------------------------------


def _user_config_references(value: str) -> list[str]:
    return re.findall(r"\$\{user_config\.([^}]+)\}", value)


def test_manifest_names_this_package_and_version() -> None:
    assert MANIFEST["name"] == PROJECT["name"]
    assert MANIFEST["version"] == __version__
    assert MANIFEST["license"] == PROJECT["license"]


def test_manifest_starts_the_bundled_wheel_of_this_version_with_uvx() -> None:
    server = MANIFEST["server"]
    assert server["entry_point"] == f"server/{WHEEL_NAME}"
    config = server["mcp_config"]
    # The wheel inside the bundle, so the extension works without the package being on PyPI.
    assert config["command"] == "uvx"
    assert config["args"] == ["--from", f"${{__dirname}}/{server['entry_point']}", "mcp-polygon"]


def test_manifest_settings_are_all_used_and_optional_ones_have_defaults() -> None:
    options: dict[str, dict[str, Any]] = MANIFEST["user_config"]
    config = MANIFEST["server"]["mcp_config"]
    used = {name for value in [*config["args"], *config["env"].values()] for name in _user_config_references(value)}
    assert used == set(options), "every setting is passed to the server, and only declared ones"
    for name, option in options.items():
        # The host substitutes only values it has: an unset optional setting would reach the server as the
        # literal text ${user_config.name}.
        assert option.get("required") or "default" in option, f"optional setting {name} needs a default"


def test_manifest_key_is_a_sensitive_required_setting() -> None:
    (key_option,) = _user_config_references(MANIFEST["server"]["mcp_config"]["env"]["POLYGON_API_KEY"])
    option = MANIFEST["user_config"][key_option]
    assert option["type"] == "string" and option["sensitive"] is True and option["required"] is True
    for name, other in MANIFEST["user_config"].items():
        assert name == key_option or not other.get("sensitive"), name


def test_manifest_passes_only_variables_the_server_reads_with_defaults_it_accepts() -> None:
    env: dict[str, str] = MANIFEST["server"]["mcp_config"]["env"]
    for variable, value in env.items():
        _assert_server_reads(variable)
        for name in _user_config_references(value):
            default = MANIFEST["user_config"][name].get("default")
            if default is not None:
                Settings.from_env({variable: str(default)})  # raises ConfigError if the server refuses it


# -- server.json: the MCP registry entry -------------------------------------------------------------------


def test_server_json_is_valid_against_the_registry_schema() -> None:
    validator = jsonschema.Draft7Validator(REGISTRY_SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(SERVER_JSON)]
    assert not errors


def test_registry_schema_rejects_what_the_registry_rejects() -> None:
    """The vendored schema is live: it catches the mistakes the registry refuses at publish time."""
    validator = jsonschema.Draft7Validator(REGISTRY_SCHEMA)
    too_long = {**SERVER_JSON, "description": "x" * 101}
    no_slash = {**SERVER_JSON, "name": "mcp-polygon"}
    latest = {**SERVER_JSON, "packages": [{**SERVER_JSON["packages"][0], "version": "latest"}]}
    for document in (too_long, no_slash, latest):
        assert not validator.is_valid(document)


def test_server_json_names_the_schema_vendored_here() -> None:
    assert SERVER_JSON["$schema"] == REGISTRY_SCHEMA["$id"]


def test_server_json_describes_this_package_and_version() -> None:
    assert SERVER_JSON["name"].split("/")[-1] == PROJECT["name"]
    assert SERVER_JSON["version"] == __version__
    (package,) = SERVER_JSON["packages"]
    assert package["registryType"] == "pypi"
    assert (package["identifier"], package["version"]) == (PROJECT["name"], __version__)
    assert package["transport"] == {"type": "stdio"}


def test_server_json_declares_variables_the_server_reads_and_marks_the_key_secret() -> None:
    (package,) = SERVER_JSON["packages"]
    variables = {variable["name"]: variable for variable in package["environmentVariables"]}
    for name, variable in variables.items():
        _assert_server_reads(name)
        assert variable.get("isSecret", False) == (name in SECRET_VARIABLES), name
        if "default" in variable:
            Settings.from_env({name: variable["default"]})
    assert variables["POLYGON_API_KEY"]["isRequired"] is True


def test_a_bad_default_would_be_caught() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"POLYGON_TOOLSETS": "everything"})


# -- Dockerfile and its build context ----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Logical instructions: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, value = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)
STAGE_STARTS = [i for i, instruction in enumerate(INSTRUCTIONS) if instruction.keyword == "FROM"]
FINAL_STAGE = INSTRUCTIONS[STAGE_STARTS[-1] :]
BUILD_STAGES = INSTRUCTIONS[: STAGE_STARTS[-1]]


def _final(keyword: str) -> list[Instruction]:
    return [instruction for instruction in FINAL_STAGE if instruction.keyword == keyword]


def _assignments(value: str) -> dict[str, str]:
    """`A=1 B="two words"` (ENV, LABEL, ARG) as a dict."""
    pairs = (word.partition("=") for word in shlex.split(value))
    return {name: assigned for name, _, assigned in pairs}


def container_argv() -> list[str]:
    (entrypoint,) = _final("ENTRYPOINT")
    (cmd,) = _final("CMD")
    # Exec form (JSON arrays): no shell in between, so signals reach the server and it shuts down cleanly.
    return [*json.loads(entrypoint.value), *json.loads(cmd.value)]


def container_env() -> dict[str, str]:
    return {name: value for env in _final("ENV") for name, value in _assignments(env.value).items()}


def healthcheck_argv() -> list[str]:
    (check,) = _final("HEALTHCHECK")
    _, _, command = check.value.partition("CMD ")
    return list(json.loads(command))


def option_value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def test_every_stage_builds_on_python_311_slim() -> None:
    images = [INSTRUCTIONS[i].value.split()[0] for i in STAGE_STARTS]
    assert images and all(image == "python:3.11-slim" for image in images), images


def test_image_runs_as_a_user_it_creates_not_as_root() -> None:
    (user,) = _final("USER")
    uid, _, gid = user.value.partition(":")
    assert uid not in ("root", "0") and gid not in ("root", "0"), user.value
    # Numeric, so a runtime that enforces "not root" (Kubernetes runAsNonRoot) can check it without /etc/passwd.
    assert uid.isdigit(), user.value
    assert any(re.search(rf"useradd .*--uid {uid}\b", run.value) for run in _final("RUN")), "the user is created"
    position = FINAL_STAGE.index(user)
    assert all(FINAL_STAGE.index(i) > position for i in _final("ENTRYPOINT") + _final("CMD"))


def test_image_serves_http_on_every_interface_on_the_port_it_exposes() -> None:
    argv = container_argv()
    assert argv[0] == "mcp-polygon"
    assert option_value(argv, "--transport") == "http"
    assert option_value(argv, "--host") == "0.0.0.0"
    (exposed,) = _final("EXPOSE")
    assert exposed.value == option_value(argv, "--port")
    assert f", {exposed.value})" in healthcheck_argv()[-1], "the health check probes the served port"


def test_image_installs_the_wheel_not_the_source_tree() -> None:
    assert not any(i.keyword in ("COPY", "ADD") and "--from=" not in i.value for i in FINAL_STAGE)
    assert any(".whl" in run.value and "pip install" in run.value for run in _final("RUN"))


def test_no_secret_is_baked_into_the_image() -> None:
    for instruction in INSTRUCTIONS:
        if instruction.keyword in ("ENV", "ARG", "LABEL"):
            assert not set(_assignments(instruction.value)) & set(SECRET_VARIABLES), instruction
        assert "--token" not in instruction.value, instruction
        for secret in SECRET_VARIABLES:
            assert secret not in instruction.value, instruction  # only the comments say to pass them at run time


def test_image_label_carries_the_registry_name() -> None:
    labels = {name: value for label in _final("LABEL") for name, value in _assignments(label.value).items()}
    # The MCP registry proves an OCI image belongs to a server entry by this label.
    assert labels["io.modelcontextprotocol.server.name"] == SERVER_JSON["name"]


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus **) as a regex over slash-separated relative paths."""
    pattern = pattern.strip("/")
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def in_build_context(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for line in DOCKERIGNORE.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if any(_docker_pattern(line.removeprefix("!")).fullmatch(candidate) for candidate in candidates):
            included = negated
    return included


def build_context_files() -> list[str]:
    return [name for name in _project_files() if in_build_context(name)]


def test_build_context_holds_what_the_build_copies_and_nothing_private() -> None:
    context = set(build_context_files())
    copied = [
        word
        for instruction in BUILD_STAGES
        if instruction.keyword == "COPY"
        for word in shlex.split(instruction.value)[:-1]
        if not word.startswith("--")
    ]
    for source in copied:
        assert source in context or any(name.startswith(f"{source}/") for name in context), source
    package = {name for name in _project_files() if name.startswith("src/") and "__pycache__" not in name}
    assert package <= context
    private = [".env", ".venv/bin/python", ".git/config", ".tools/uv-cache/x", "data/stocks/seg.log", "tests/x.py"]
    private += ["src/mcp_polygon/__pycache__/cli.cpython-311.pyc", "src/mcp_polygon.egg-info/SOURCES.txt"]
    assert not [path for path in private if in_build_context(path)]


def test_the_dockerignore_reader_follows_docker_rules() -> None:
    """The reader above must itself be right for the test before it to mean anything."""
    assert _docker_pattern("**/__pycache__").fullmatch("src/a/__pycache__")
    assert _docker_pattern("**/__pycache__").fullmatch("__pycache__")
    assert _docker_pattern("*").fullmatch("README.md") and not _docker_pattern("*").fullmatch("src/x.py")
    assert _docker_pattern("src/*.py").fullmatch("src/x.py") and not _docker_pattern("src/*.py").fullmatch("src/a/x.py")


def test_wheel_builds_from_the_build_context_alone(tmp_path: Path) -> None:
    """What the image's build stage does, minus Docker: build the wheel from the context's files only."""
    context = tmp_path / "context"
    for name in build_context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(context)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == WHEEL_NAME
    with zipfile.ZipFile(wheel) as archive:
        assert "mcp_polygon/rest/endpoints_data.json" in archive.namelist()
        metadata = archive.read(f"mcp_polygon-{__version__}.dist-info/METADATA").decode()
    # The README is the package's description on PyPI (where the registry looks for its mcp-name line).
    assert README.splitlines()[0] in metadata


def _container_process_argv(port: int, *extra: str) -> list[str]:
    argv = container_argv()
    argv[argv.index("--port") + 1] = str(port)
    return [str(BIN / argv[0]), *argv[1:], *extra]


def _container_process_env(tmp_path: Path, **more: str) -> dict[str, str]:
    # The image's environment, with its /data volume moved to a temporary directory.
    return {**container_env(), "POLYGON_DATA_DIR": str(tmp_path / "data"), "PATH": str(BIN), **more}


def test_container_command_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    done = subprocess.run(
        _container_process_argv(_free_port()),
        env=_container_process_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "POLYGON_HTTP_TOKEN" in done.stderr and "0.0.0.0" in done.stderr


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """The image's command as written (plus --simulate, so no key is needed), on a free port with a token."""
    port, token = _free_port(), secrets.token_urlsafe(24)
    process = subprocess.Popen(
        _container_process_argv(port, "--simulate"),
        env=_container_process_env(tmp_path, POLYGON_HTTP_TOKEN=token),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, token
    finally:
        process.terminate()
        process.wait(10)


def _run_healthcheck(port: int) -> int:
    exposed = _final("EXPOSE")[0].value
    program, *args = healthcheck_argv()
    args = [arg.replace(exposed, str(port)) for arg in args]
    resolved = shutil.which(program, path=str(BIN))
    assert resolved, f"{program} is not on the image's PATH"
    return subprocess.run([resolved, *args], capture_output=True, timeout=30, check=False).returncode


async def test_container_command_serves_with_the_token_and_passes_its_healthcheck(container: tuple[int, str]) -> None:
    port, token = container
    deadline = time.monotonic() + 30
    while _run_healthcheck(port) != 0:  # polls for the listener to come up; never used to prove an absence
        assert time.monotonic() < deadline, "the health check never passed"
        await asyncio.sleep(0.1)
    url = f"http://127.0.0.1:{port}/mcp"
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.post(url, json={})).status_code == 401
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("get_market_status", {})
    assert not result.is_error, text_of(result)
    assert text_of(result).startswith("# SIMULATED")


# -- README: the client table and its snippets -------------------------------------------------------------

CLIENTS = ("Claude Desktop", "Claude Code", "Cursor", "VS Code / GitHub Copilot", "Codex CLI", "Gemini CLI")
SNIPPET_KEY = "your-key"  # the placeholder the README's snippets use; the simulator is started with it
COMPACT_MAX_TOOLS = 12
CLIENT_SECTION = re.search(r"<!-- clients:begin -->(.*?)<!-- clients:end -->", README, flags=re.S)


@dataclass(frozen=True)
class ClientSnippet:
    client: str
    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @property
    def profile(self) -> str:
        return "compact" if dict(self.env).get("POLYGON_TOOLSETS") == "compact" else "full"


def _resolve_inputs(value: str) -> str:
    """VS Code asks the user for ${input:id} values; the user types the key."""
    return re.sub(r"\$\{input:[^}]+\}", SNIPPET_KEY, value)


def _snippet_from_server(client: str, entry: dict[str, Any]) -> ClientSnippet:
    env = tuple((name, _resolve_inputs(value)) for name, value in entry.get("env", {}).items())
    return ClientSnippet(client, entry["command"], tuple(entry.get("args", [])), env)


def _snippet_from_shell(client: str, line: str) -> ClientSnippet:
    words = shlex.split(line.split(" #", 1)[0])
    before, after = words[: words.index("--")], words[words.index("--") + 1 :]
    assignments = [before[i + 1].partition("=") for i, word in enumerate(before) if word in ("--env", "-e")]
    env = tuple((name, value) for name, _, value in assignments)
    return ClientSnippet(client, after[0], tuple(after[1:]), env)


def client_snippets(section: str) -> list[ClientSnippet]:
    """Each code block of the section, attributed to the client named in bold before it."""
    snippets: list[ClientSnippet] = []
    for match in re.finditer(r"```(\w+)\n(.*?)```", section, flags=re.S):
        language, body = match.groups()
        names = re.findall(r"^\*\*(.+?)\*\*", section[: match.start()], flags=re.M)
        client = names[-1] if names else ""
        if language in ("json", "jsonc"):
            document = json.loads(body)
            servers = document.get("mcpServers") or document.get("servers") or {}
            snippets += [_snippet_from_server(client, entry) for entry in servers.values()]
        elif language == "toml":
            servers = tomllib.loads(body).get("mcp_servers", {})
            snippets += [_snippet_from_server(client, entry) for entry in servers.values()]
        elif language == "bash":
            lines = [line for line in body.splitlines() if re.match(r"^(claude|codex|gemini) mcp add .* -- ", line)]
            snippets += [_snippet_from_shell(client, line) for line in lines]
    return snippets


def _table_rows(section: str) -> dict[str, list[str]]:
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[2:]}


SNIPPETS = client_snippets(CLIENT_SECTION.group(1)) if CLIENT_SECTION else []


def test_client_table_names_every_client_with_its_profile_and_a_snippet() -> None:
    assert CLIENT_SECTION is not None, "README has no <!-- clients:begin --> section"
    rows = _table_rows(CLIENT_SECTION.group(1))
    assert set(CLIENTS) <= set(rows)
    for client in CLIENTS:
        profile = next(cell for cell in rows[client] if cell in ("full", "compact"))
        mine = [snippet for snippet in SNIPPETS if snippet.client.startswith(client)]
        assert mine, f"no snippet for {client}"
        keyed = [snippet for snippet in mine if "--simulate" not in snippet.args]
        assert keyed and all(snippet.profile == profile for snippet in keyed), client


def test_readme_carries_the_registry_name() -> None:
    # The MCP registry proves a PyPI package belongs to a server entry by this line in its description.
    assert f"mcp-name: {SERVER_JSON['name']}" in README


async def _launch_snippet(snippet: ClientSnippet, tmp_path: Path) -> None:
    assert snippet.command == "mcp-polygon", "the README's command is the installed console script"
    async with Simulator(api_key=SNIPPET_KEY) as sim:
        env = {
            **dict(snippet.env),
            "POLYGON_REST_URL": sim.rest_url,  # the only change: the simulator stands in for the vendor
            "POLYGON_WS_URL": sim.ws_url,
            "POLYGON_DATA_DIR": str(tmp_path / "data"),
        }
        params = StdioServerParameters(command=str(BIN / snippet.command), args=list(snippet.args), env=env)
        async with Client(params) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            if snippet.profile == "compact":
                assert len(names) <= COMPACT_MAX_TOOLS and "call_tool" in names, sorted(names)
                arguments = {"name": "get_market_status", "arguments": {}}
                result = await client.call_tool("call_tool", arguments)
            else:
                assert len(names) > COMPACT_MAX_TOOLS
                result = await client.call_tool("get_market_status", {})
    assert not result.is_error, text_of(result)


@pytest.mark.parametrize(
    "snippet", SNIPPETS or [None], ids=[f"{s.client} {' '.join(s.args)}".strip() for s in SNIPPETS] or ["none"]
)
async def test_client_snippet_launches_as_written(snippet: ClientSnippet | None, tmp_path: Path) -> None:
    assert snippet is not None, "the README's client section has no snippets"
    await _launch_snippet(snippet, tmp_path)
