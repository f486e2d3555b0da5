"""Settings from the environment and the command line: defaults, aliases, and clear refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcp_polygon.cli import _parser
from mcp_polygon.config import ALL_TOOLSETS, DEFAULT_REST_URL, DEFAULT_WS_URL, ConfigError, Settings, parse_toolsets

SCRIPT = Path(sys.executable).with_name("mcp-polygon")


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s.api_key is None
    assert (s.rest_url, s.ws_url) == (DEFAULT_REST_URL, DEFAULT_WS_URL)
    assert s.toolsets == frozenset(ALL_TOOLSETS)
    assert s.stream_markets == ("stocks", "options", "futures", "indices", "forex", "crypto")
    assert (s.buffer_size, s.record, s.record_max_bytes) == (1000, True, 1 << 30)


def test_massive_key_is_accepted_and_polygon_key_wins():
    assert Settings.from_env({"MASSIVE_API_KEY": "m"}).api_key == "m"
    assert Settings.from_env({"MASSIVE_API_KEY": "m", "POLYGON_API_KEY": "p"}).api_key == "p"
    assert Settings.from_env({"POLYGON_API_KEY": "  "}).api_key is None


def test_urls_lose_trailing_slash_and_numbers_parse():
    s = Settings.from_env(
        {
            "POLYGON_REST_URL": "http://127.0.0.1:9/",
            "POLYGON_WS_URL": "ws://127.0.0.1:9/",
            "POLYGON_STREAM_BUFFER": "5000",
            "POLYGON_RECORD": "off",
            "POLYGON_RECORD_MAX_MB": "10",
            "POLYGON_DATA_DIR": "/tmp/somewhere",
        }
    )
    assert (s.rest_url, s.ws_url) == ("http://127.0.0.1:9", "ws://127.0.0.1:9")
    assert (s.buffer_size, s.record, s.record_max_bytes) == (5000, False, 10 << 20)
    assert str(s.data_dir) == "/tmp/somewhere"


def test_toolsets_filter_limits_stream_markets_too():
    s = Settings.from_env({"POLYGON_TOOLSETS": " Stocks , economy "})
    assert s.toolsets == {"stocks", "economy"}
    assert s.stream_markets == ("stocks",)
    assert parse_toolsets("all") == frozenset(ALL_TOOLSETS)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POLYGON_TOOLSETS": "stocks,bonds"}, "unknown toolset(s) bonds; valid: stocks, options"),
        ({"POLYGON_STREAM_BUFFER": "many"}, "POLYGON_STREAM_BUFFER must be a whole number"),
        ({"POLYGON_STREAM_BUFFER": "1"}, "POLYGON_STREAM_BUFFER must be at least 10"),
        ({"POLYGON_RECORD": "maybe"}, "POLYGON_RECORD must be true or false"),
    ],
)
def test_bad_settings_are_refused_with_the_valid_choices(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_repr_never_shows_the_key():
    assert "s3cret-key" not in repr(Settings(api_key="s3cret-key"))
    assert "api_key=<set>" in repr(Settings(api_key="s3cret-key"))


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed (pip install -e .)")
def test_cli_refuses_a_bad_toolset_with_exit_2_and_one_line_on_stderr():
    done = subprocess.run(
        [str(SCRIPT)], env={"POLYGON_TOOLSETS": "bonds"}, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "unknown toolset(s) bonds" in done.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"command": None, "transport": "stdio", "simulate": False, "log_level": "INFO", "port": 8000}),
        (["--simulate", "serve"], {"command": "serve", "simulate": True}),
        (["serve", "--transport", "http", "--port", "9000"], {"transport": "http", "port": 9000, "simulate": False}),
        (["--log-level", "DEBUG", "serve", "--simulate"], {"log_level": "DEBUG", "simulate": True}),
        (["simulate", "--log-level", "WARNING", "--rest-port", "0"], {"command": "simulate", "log_level": "WARNING"}),
        (["simulate"], {"host": "127.0.0.1", "rest_port": 8100, "ws_port": 8101}),
    ],
)
def test_options_work_before_or_after_the_subcommand(argv, expected):
    args = vars(_parser().parse_args(argv))
    assert {key: args[key] for key in expected} == expected
