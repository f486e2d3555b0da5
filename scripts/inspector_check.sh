#!/usr/bin/env bash
# A client nobody here wrote: the official MCP Inspector CLI drives `mcp-polygon --simulate`.
# Checks: the tool count and the Inspector's --strict schema-portability check in both profiles (stdio), one
# REST call, a crypto stream started and read (HTTP, so that both calls reach one server process), one call through
# the compact profile's call_tool, and that a tool error exits with the Inspector's tool-error code (5).
set -euo pipefail
cd "$(dirname "$0")/.."

INSPECTOR_VERSION=2.12.0   # needs Node >= 22.19
NODE_MAJOR=22
TOOLS=.tools
EXPECTED_TOOLS=131         # 81 REST + 48 streaming + SQL and summaries
COMPACT_MAX_TOOLS=12       # find_tools, call_tool, 8 stream verbs, SQL and summaries
TOOL_ERROR_EXIT=5          # the Inspector CLI's EXIT_CODES.TOOL_ERROR

say() { printf 'inspector: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

node_ok() { # is this node new enough for the Inspector?
  "$1" -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=19)?0:1)' 2>/dev/null
}

NODE=$(command -v node || true)
if [ -z "$NODE" ] || ! node_ok "$NODE"; then
  NODE="$TOOLS/node$NODE_MAJOR/node_modules/.bin/node"
  if ! [ -x "$NODE" ] || ! node_ok "$NODE"; then
    say "installing Node $NODE_MAJOR from the npm registry into $TOOLS/node$NODE_MAJOR"
    mkdir -p "$TOOLS/node$NODE_MAJOR"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/node$NODE_MAJOR" "node@$NODE_MAJOR" >&2
  fi
fi
node_ok "$NODE" || fail "no Node >= 22.19 available (got $("$NODE" --version 2>/dev/null || echo none))"
export PATH="$(cd "$(dirname "$NODE")" && pwd):$PATH"

LAUNCHER="$TOOLS/inspector/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"
if ! [ -f "$LAUNCHER" ] || ! grep -q "\"version\": \"$INSPECTOR_VERSION\"" "$TOOLS/inspector/node_modules/@modelcontextprotocol/inspector/package.json"; then
  say "installing @modelcontextprotocol/inspector@$INSPECTOR_VERSION into $TOOLS/inspector"
  mkdir -p "$TOOLS/inspector"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/inspector" "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" >&2
fi

MCP_POLYGON="$PWD/.venv/bin/mcp-polygon"
WORK=$(mktemp -d)
export POLYGON_DATA_DIR="$WORK/data" MCP_CATALOG_PATH="$WORK/catalog.json" MCP_CLIENT_CONFIG_PATH="$WORK/client.json"
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

inspector() { node "$LAUNCHER" --cli --quiet "$@"; }

# 1. tools/list over stdio in both profiles, the Inspector spawning the server itself. --strict prints every
#    schema portability finding on stderr and exits 6 on an error-severity one; clean means no finding at all.
strict_list() { # strict_list LABEL [INSPECTOR OPTIONS ...] -> the tools/list JSON in $WORK/LABEL.json
  local label=$1; shift
  if ! node "$LAUNCHER" --cli --quiet --strict --method tools/list "$@" -- "$MCP_POLYGON" --simulate \
    >"$WORK/$label.json" 2>"$WORK/$label.lint"; then
    cat "$WORK/$label.lint" >&2
    fail "the $label profile's tools/list failed the Inspector's --strict schema check"
  fi
  [ ! -s "$WORK/$label.lint" ] || { cat "$WORK/$label.lint" >&2; fail "--strict reported findings in the $label profile"; }
  python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["tools"]))' "$WORK/$label.json"
}
count=$(strict_list full)
[ "$count" = "$EXPECTED_TOOLS" ] || fail "tools/list returned $count tools, expected $EXPECTED_TOOLS"
say "tools/list (full): $count tools, --strict clean"
count=$(strict_list compact -e POLYGON_TOOLSETS=compact)
[ "$count" -le "$COMPACT_MAX_TOOLS" ] || fail "the compact profile lists $count tools, more than $COMPACT_MAX_TOOLS"
say "tools/list (compact): $count tools, --strict clean"

# 2. The rest over streamable HTTP: one server process keeps the stream between calls.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MCP_POLYGON" --simulate --transport http --port "$PORT" 2>"$WORK/server.log" &
SERVER_PID=$!
URL="http://127.0.0.1:$PORT/mcp"
for _ in $(seq 1 100); do
  python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2)' "$PORT" 2>/dev/null && break
  sleep 0.1
done

call() { # call TOOL JSON_ARGS -> writes the tool's text to stdout
  inspector --method tools/call --tool-name "$1" --tool-args-json "$2" --server-url "$URL" --transport http \
    --output "$WORK/out.txt" --output-format raw >/dev/null
  cat "$WORK/out.txt"
}

rest=$(call get_aggs '{"ticker":"AAPL","multiplier":1,"timespan":"day","from_":"2024-01-02","to":"2024-01-31"}')
grep -q "^# SIMULATED" <<<"$rest" || fail "REST output does not say it is simulated: $rest"
bars=$(grep -cE '^[0-9.:TZ-]+(,[0-9.:TZ-]+){6,}$' <<<"$rest" || true)  # numbers, and a date or epoch
[ "$bars" -ge 5 ] || fail "get_aggs returned $bars daily bars, expected at least 5: $rest"
say "get_aggs: $bars daily bars"

started=$(call start_crypto_stream '{"channels":["XT.BTC-USD","XQ.BTC-USD"]}')
say "start_crypto_stream: $(head -1 <<<"$started")"
messages=""
for _ in $(seq 1 50); do
  messages=$(call get_crypto_stream_messages '{"limit":20}')
  grep -q "BTC-USD" <<<"$messages" && break
  sleep 0.2
done
grep -q "BTC-USD" <<<"$messages" || fail "no BTC-USD events after starting the crypto stream: $messages"
say "get_crypto_stream_messages: $(grep -c 'BTC-USD' <<<"$messages") BTC-USD events"

# 3. The compact profile reaches a full-profile tool through call_tool, over stdio.
via=$(node "$LAUNCHER" --cli --quiet --method tools/call --tool-name call_tool \
  --tool-args-json '{"name":"get_market_status","arguments":{}}' --output "$WORK/via.txt" --output-format raw \
  -e POLYGON_TOOLSETS=compact -- "$MCP_POLYGON" --simulate >/dev/null && cat "$WORK/via.txt") \
  || fail "call_tool in the compact profile failed"
grep -q "^# SIMULATED" <<<"$via" || fail "call_tool(get_market_status) answered: $via"
say "compact call_tool(get_market_status): answered"

# 4. A tool error must exit with the Inspector's tool-error code.
set +e
inspector --method tools/call --tool-name start_stocks_stream --tool-args-json '{"channels":["XT.BTC-USD"]}' \
  --server-url "$URL" --transport http >"$WORK/err.out" 2>"$WORK/err.txt"
code=$?
set -e
[ "$code" = "$TOOL_ERROR_EXIT" ] || fail "a bad channel exited $code, expected the tool-error code $TOOL_ERROR_EXIT"
say "tool error: exit $code as expected"
echo "inspector: 7 passed, 0 failed"
