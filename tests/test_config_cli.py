"""Settings from the environment and the command line: defaults, aliases, and clear refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcp_polygon.cli import _checked_serve_options, _parser
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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POLYGON_API_KEY": "abc\ndef"}, "POLYGON_API_KEY has whitespace (a space, tab or line break) at character 4"),
        ({"POLYGON_API_KEY": "abc def"}, "POLYGON_API_KEY has whitespace"),
        (
            {"MASSIVE_API_KEY": "abc\x00def"},
            "MASSIVE_API_KEY has a non-printable or non-ASCII character at character 4",
        ),
        ({"POLYGON_API_KEY": "abcdéf"}, "POLYGON_API_KEY has a non-printable or non-ASCII character at character 5"),
        ({"POLYGON_HTTP_TOKEN": "abc\tdef"}, "POLYGON_HTTP_TOKEN has whitespace"),
        ({"POLYGON_REST_URL": "api.massive.com"}, "POLYGON_REST_URL must be a URL starting with http:// or https://"),
        ({"POLYGON_REST_URL": "https://"}, "POLYGON_REST_URL must be a URL starting with http:// or https://"),
        ({"POLYGON_REST_URL": "http://127.0.0.1:70000"}, "POLYGON_REST_URL has an invalid port"),
        ({"POLYGON_REST_URL": "http://api.massive.com\n/v1"}, "POLYGON_REST_URL contains whitespace"),
        (
            {"POLYGON_WS_URL": "https://socket.massive.com"},
            "POLYGON_WS_URL must be a URL starting with ws:// or wss://",
        ),
        ({"POLYGON_ALLOWED_HOSTS": "https://mcp.example.com"}, "POLYGON_ALLOWED_HOSTS lists 'https://mcp.example.com'"),
        ({"POLYGON_ALLOWED_ORIGINS": "app.example.com"}, "POLYGON_ALLOWED_ORIGINS lists 'app.example.com'"),
    ],
)
def test_unusable_keys_urls_and_allow_lists_fail_at_start_up(env, message):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(message)
    assert "def" not in str(caught.value)  # a secret is never echoed, not even in part


def test_url_errors_mask_a_key_written_into_the_url():
    env = {"POLYGON_API_KEY": "k3y-in-url", "POLYGON_REST_URL": "ftp://api.massive.com/?apiKey=k3y-in-url"}
    with pytest.raises(ConfigError, match=r"apiKey=\*\*\*") as caught:
        Settings.from_env(env)
    assert "k3y-in-url" not in str(caught.value)


def test_good_urls_keys_and_allow_lists_pass():
    s = Settings.from_env(
        {
            "POLYGON_API_KEY": " Ab+c/d=E%f~! ",
            "POLYGON_REST_URL": " https://api.massive.com:8443/ ",
            "POLYGON_WS_URL": "wss://delayed.massive.com",
            "POLYGON_HTTP_TOKEN": "tok",
            "POLYGON_ALLOWED_HOSTS": "mcp.example.com, mcp.example.com:8000",
            "POLYGON_ALLOWED_ORIGINS": "https://app.example.com/",
        }
    )
    assert (s.api_key, s.rest_url, s.ws_url) == (
        "Ab+c/d=E%f~!",
        "https://api.massive.com:8443",
        "wss://delayed.massive.com",
    )
    assert (s.http_token, s.allowed_hosts) == ("tok", ("mcp.example.com", "mcp.example.com:8000"))
    assert s.allowed_origins == ("https://app.example.com",)


def test_token_option_overrides_the_environment_and_off_loopback_http_needs_one():
    args = _parser().parse_args(["--transport", "http", "--host", "0.0.0.0", "--token", "from-cli"])
    settings, access = _checked_serve_options(args, Settings(http_token="from-env"))
    assert settings.http_token == "from-cli" and access is not None and access.token == "from-cli"
    with pytest.raises(ConfigError, match="needs a bearer token: set POLYGON_HTTP_TOKEN"):
        _checked_serve_options(_parser().parse_args(["--transport", "http", "--host", "0.0.0.0"]), Settings())
    assert _checked_serve_options(_parser().parse_args(["--host", "0.0.0.0"]), Settings())[1] is None  # stdio


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed (pip install -e .)")
@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--transport", "http", "--port", "70000"], {}, "--port must be a port number from 1 to 65535, got 70000."),
        (["--transport", "http", "--port", "0"], {}, "--port must be a port number from 1 to 65535, got 0."),
        (["--transport", "http", "--host", " "], {}, "--host must be an address or host name to bind"),
        (["simulate", "--ws-port", "65536"], {}, "--ws-port must be a port number from 0 to 65535, got 65536."),
        (["--token", "a b"], {}, "--token has whitespace"),
        ([], {"POLYGON_API_KEY": "first-half\nsecond-half"}, "POLYGON_API_KEY has whitespace"),
        ([], {"POLYGON_WS_URL": "socket.massive.com"}, "POLYGON_WS_URL must be a URL starting with ws:// or wss://"),
    ],
)
def test_cli_fails_fast_on_bad_configuration_with_one_sentence(argv, env, message):
    # A server that started anyway would read EOF on stdin and exit 0: the exit code tells the two apart.
    done = subprocess.run(
        [str(SCRIPT), *argv], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"mcp-polygon: {message}")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "half" not in done.stderr


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
