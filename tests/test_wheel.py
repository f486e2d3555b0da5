"""The install path a user follows: build the wheel, install it into a fresh virtual environment outside the
source tree, and drive `mcp-polygon --simulate` through an MCP client.

Editable installs (what `make` uses) read data files straight from src/, so only a real wheel shows whether the
package ships every file it reads at run time (issue: the REST table was missing and the server died at start).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from conftest import text_of

ROOT = Path(__file__).resolve().parents[1]


def _project_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a fresh clone (of this work) holds."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


SOURCE_DATA = sorted(
    name.removeprefix("src/")
    for name in _project_files()
    if name.startswith("src/mcp_polygon/") and not name.endswith(".py")
)

pytestmark = pytest.mark.timeout(600)


def _run(*cmd: str, cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _clean_copy(dest: Path) -> Path:
    """The project's files as a fresh clone has them: no egg-info, no caches (an egg-info's SOURCES.txt from an
    editable install would smuggle data files into the wheel and hide a missing package-data entry)."""
    for name in _project_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = _clean_copy(tmp_path_factory.mktemp("clone"))
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: setuptools from the test environment; the build itself is what is under test.
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source), cwd=out)
    (built,) = out.glob("mcp_polygon-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The console script of a fresh virtual environment holding only the wheel and its dependencies."""
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel), cwd=env_dir)
    return env_dir / "bin" / "mcp-polygon"


def test_wheel_carries_every_data_file_of_the_package(wheel: Path) -> None:
    assert "mcp_polygon/rest/endpoints_data.json" in SOURCE_DATA  # the file whose absence killed the server
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [name for name in SOURCE_DATA if name not in names]
    assert not missing, f"the wheel leaves out {missing}: list them in [tool.setuptools.package-data]"


async def test_installed_wheel_serves_rest_and_streams_over_stdio(installed: Path, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=str(installed),
        args=["--log-level", "WARNING", "--simulate"],
        env={"POLYGON_DATA_DIR": str(tmp_path / "data")},
        cwd=str(tmp_path),  # not the source tree: nothing may be imported from src/
    )
    async with Client(params) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        rest = await client.call_tool("get_market_status", {})
        started = await client.call_tool("start_crypto_stream", {"channels": ["XT.*"]})
        messages = None
        for _ in range(50):
            messages = await client.call_tool("get_crypto_stream_messages", {"limit": 5})
            if "XT" in text_of(messages) and "events, seq" in text_of(messages):
                break
            await asyncio.sleep(0.1)
    assert {"get_market_status", "start_crypto_stream", "get_crypto_stream_messages"} <= tools
    assert len(tools) >= 129
    assert not rest.is_error and text_of(rest).splitlines()[1].startswith("afterHours,")
    assert not started.is_error, text_of(started)
    assert messages is not None and not messages.is_error
    assert "events, seq" in text_of(messages), text_of(messages)
