#!/usr/bin/env bash
# A client nobody here wrote: the official MCP Inspector CLI drives `mcp-polygon --simulate`.
# Checks: the tool count (stdio), one REST call, a crypto stream started and read (HTTP, so that both calls
# reach one server process), and that a tool error exits with the Inspector's tool-error code (5).
set -euo pipefail
cd "$(dirname "$0")/.."

INSPECTOR_VERSION=2.12.0   # needs Node >= 22.19
NODE_MAJOR=22
TOOLS=.tools
EXPECTED_TOOLS=129         # 81 REST + 48 streaming
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

# 1. tools/list over stdio, the Inspector spawning the server itself.
inspector --method tools/list -- "$MCP_POLYGON" --simulate >"$WORK/tools.json"
count=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["tools"]))' "$WORK/tools.json")
[ "$count" = "$EXPECTED_TOOLS" ] || fail "tools/list returned $count tools, expected $EXPECTED_TOOLS"
say "tools/list: $count tools"

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
bars=$(grep -cE '^[0-9.]+(,[0-9.]+){6,}$' <<<"$rest" || true)
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

# 3. A tool error must exit with the Inspector's tool-error code.
set +e
inspector --method tools/call --tool-name start_stocks_stream --tool-args-json '{"channels":["XT.BTC-USD"]}' \
  --server-url "$URL" --transport http >"$WORK/err.out" 2>"$WORK/err.txt"
code=$?
set -e
[ "$code" = "$TOOL_ERROR_EXIT" ] || fail "a bad channel exited $code, expected the tool-error code $TOOL_ERROR_EXIT"
say "tool error: exit $code as expected"
echo "inspector: 5 passed, 0 failed"
