#!/usr/bin/env bash
# The install paths people use, each checked from the built wheel, never from the source tree:
#   1. the wheel builds from a clean copy of the project (what a fresh clone holds)
#   2. `uvx --from <wheel> mcp-polygon --simulate` answers tools/list and a tool call
#   3. `pipx install <wheel>` (pip backend): the command pipx puts on PATH does the same
#   4. manifest.json passes `mcpb validate`; the bundle packs; the command Claude Desktop would run from the
#      unpacked bundle (computed by mcpb's own getMcpConfigForManifest) answers tools/list and a tool call
#   5. server.json is valid against the MCP registry's server.json schema (vendored: specs/README.md)
# uv, pipx and the mcpb CLI come from their registries once, pinned, into .tools/. uv keeps its package cache
# there too and runs offline once it is warm; pipx's pip asks PyPI to resolve each run (its cache saves downloads).
#
# Usage: bash scripts/check_packaging.sh [--keep DIR]    DIR receives the wheel and the .mcpb bundle.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PIPX_VERSION=1.18.4
MCPB_VERSION=2.1.2
TOOLS=$PWD/.tools
PY=$PWD/.venv/bin/python

say() { printf 'packaging: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

KEEP=""
if [ "${1:-}" = "--keep" ]; then
  [ -n "${2:-}" ] || fail "--keep needs a directory"
  KEEP=$2
fi
[ -x "$PY" ] || fail "no $PY: run 'make install' first"

# --- tools from the registries, pinned -------------------------------------------------------------------
PYTOOLS=$TOOLS/pytools
if [[ "$("$PYTOOLS/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION "* ]] \
  || [ "$("$PYTOOLS/bin/pipx" --version 2>/dev/null)" != "$PIPX_VERSION" ]; then
  say "installing uv $UV_VERSION and pipx $PIPX_VERSION from PyPI into $PYTOOLS"
  python3 -m venv --clear "$PYTOOLS"
  "$PYTOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" "pipx==$PIPX_VERSION" \
    >"$TOOLS/pytools.log" 2>&1 || { tail -20 "$TOOLS/pytools.log" >&2; fail "could not install uv and pipx"; }
fi
MCPB_PKG=$TOOLS/mcpb/node_modules/@anthropic-ai/mcpb
if ! grep -q "\"version\": \"$MCPB_VERSION\"" "$MCPB_PKG/package.json" 2>/dev/null; then
  say "installing @anthropic-ai/mcpb@$MCPB_VERSION from the npm registry into $TOOLS/mcpb"
  mkdir -p "$TOOLS/mcpb"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/mcpb" "@anthropic-ai/mcpb@$MCPB_VERSION" >&2
fi
NODE=$(command -v node || true)
[ -n "$NODE" ] || NODE=$TOOLS/node22/node_modules/.bin/node
[ -x "$NODE" ] || fail "no node to run the mcpb CLI (the npm registry's node package goes into $TOOLS/node22)"
mcpb() { "$NODE" "$MCPB_PKG/dist/cli/cli.js" "$@"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Everything below runs outside the source tree, with uv's cache in .tools and no interpreter downloads.
export UV_CACHE_DIR=$TOOLS/uv-cache UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1 POLYGON_DATA_DIR=$WORK/data
export PATH=$PYTOOLS/bin:$PATH
unset PYTHONPATH VIRTUAL_ENV
passed=0
ok() { passed=$((passed + 1)); say "ok: $*"; }

# A client session against a launched server: tools/list, then get_market_status on simulated data.
# probe LABEL [NAME=VALUE ...] -- COMMAND ARGS...   (NAME=VALUE: extra environment for the server)
probe() {
  (cd "$WORK" && "$PY" - "$@" <<'PYTHON'
import asyncio
import os
import sys

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters


async def main() -> int:
    label, *rest = sys.argv[1:]
    split = rest.index("--")
    extra = dict(item.split("=", 1) for item in rest[:split])
    command, *args = rest[split + 1 :]
    passed_on = {k: v for k, v in os.environ.items() if k.startswith(("UV_", "POLYGON_")) or k == "PATH"}
    params = StdioServerParameters(command=command, args=args, env={**passed_on, **extra}, cwd=os.getcwd())
    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("get_market_status", {})
    text = "".join(getattr(part, "text", "") for part in result.content)
    if "get_market_status" not in names or result.is_error or not text.startswith("# SIMULATED"):
        print(f"{label}: {len(names)} tools; get_market_status said {text[:300]!r}", file=sys.stderr)
        return 1
    print(f"{label}: tools/list gave {len(names)} tools; get_market_status answered", file=sys.stderr)
    return 0


try:
    sys.exit(asyncio.run(main()))
except Exception as exc:  # the server's own stderr, above, says why it stopped
    sys.exit(f"{sys.argv[1]}: no MCP session ({type(exc).__name__}: {exc})")
PYTHON
  )
}

# --- 1. the wheel, from the files a fresh clone holds ----------------------------------------------------
mkdir -p "$WORK/clone" "$WORK/dist"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' name; do
  [ -f "$name" ] || continue  # deleted in the work tree
  mkdir -p "$WORK/clone/$(dirname "$name")"
  cp "$name" "$WORK/clone/$name"
done
"$PY" -m build --wheel --no-isolation --outdir "$WORK/dist" "$WORK/clone" >"$WORK/build.log" 2>&1 \
  || { tail -20 "$WORK/build.log" >&2; fail "the wheel did not build"; }
WHEELS=("$WORK"/dist/mcp_polygon-*.whl)
WHEEL=${WHEELS[0]}
VERSION=$("$PY" -c 'import re,sys; print(re.search(r"__version__ = \"(.+)\"", open(sys.argv[1]).read())[1])' \
  src/mcp_polygon/__init__.py)
[ "$(basename "$WHEEL")" = "mcp_polygon-$VERSION-py3-none-any.whl" ] || fail "unexpected wheel $(basename "$WHEEL")"
ok "built $(basename "$WHEEL")"

# --- 2. uvx -----------------------------------------------------------------------------------------------
# Warm uv's cache (the only step that may reach PyPI); from here on uv runs offline (UV_OFFLINE, passed on).
uvx --offline --from "$WHEEL" mcp-polygon --version >/dev/null 2>&1 \
  || uvx --from "$WHEEL" mcp-polygon --version >/dev/null 2>"$WORK/uvx.log" \
  || { cat "$WORK/uvx.log" >&2; fail "uvx could not install the wheel"; }
export UV_OFFLINE=1
probe "uvx" -- uvx --from "$WHEEL" mcp-polygon --log-level WARNING --simulate \
  || fail "uvx --from the wheel did not serve"
ok "uvx --from the wheel serves"

# --- 3. pipx ----------------------------------------------------------------------------------------------
# pip, pipx's backend where uv is not installed (with uv on PATH pipx would use it, and uv is covered above).
export PIPX_HOME=$WORK/pipx PIPX_BIN_DIR=$WORK/pipx-bin PIPX_MAN_DIR=$WORK/pipx-man PIPX_DEFAULT_BACKEND=pip
pipx install "$WHEEL" >"$WORK/pipx.log" 2>&1 || { tail -20 "$WORK/pipx.log" >&2; fail "pipx install failed"; }
probe "pipx" -- "$PIPX_BIN_DIR/mcp-polygon" --log-level WARNING --simulate \
  || fail "the command pipx installed did not serve"
ok "pipx install of the wheel (pip backend) serves"

# --- 4. the Claude Desktop extension (MCPB) ---------------------------------------------------------------
mcpb validate manifest.json >"$WORK/mcpb.log" 2>&1 \
  || { cat "$WORK/mcpb.log" >&2; fail "mcpb validate manifest.json"; }
ENTRY=$("$PY" -c 'import json; print(json.load(open("manifest.json"))["server"]["entry_point"])')
mkdir -p "$WORK/bundle/$(dirname "$ENTRY")"
cp manifest.json "$WORK/bundle/"
cp "$WHEEL" "$WORK/bundle/$ENTRY" 2>/dev/null || fail "manifest entry_point $ENTRY is not where the wheel can go"
[ "$(basename "$ENTRY")" = "$(basename "$WHEEL")" ] \
  || fail "manifest entry_point names $ENTRY, the build made $(basename "$WHEEL")"
BUNDLE=$WORK/mcp-polygon-$VERSION.mcpb
mcpb pack "$WORK/bundle" "$BUNDLE" >"$WORK/mcpb.log" 2>&1 || { cat "$WORK/mcpb.log" >&2; fail "mcpb pack"; }
mcpb unpack "$BUNDLE" "$WORK/installed" >"$WORK/mcpb.log" 2>&1 || { cat "$WORK/mcpb.log" >&2; fail "mcpb unpack"; }
# The host's own substitution of ${__dirname} and ${user_config.*}; a key is the one required setting.
LAUNCH=$("$NODE" --input-type=module - "$MCPB_PKG/dist/index.js" "$WORK/installed" <<'NODE'
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { pathToFileURL } from "node:url";
const [library, dir] = process.argv.slice(2);
const { getMcpConfigForManifest } = await import(pathToFileURL(library).href);
const manifest = JSON.parse(readFileSync(`${dir}/manifest.json`, "utf8"));
const config = await getMcpConfigForManifest({
  manifest, extensionPath: dir, systemDirs: { HOME: homedir() }, userConfig: { api_key: "mcpb-check-key" },
  pathSeparator: "/",
});
if (!config) { console.error("the host would not start the bundle with only api_key set"); process.exit(1); }
const unresolved = JSON.stringify(config).match(/\$\{[^}]+\}/);
if (unresolved) { console.error(`the host would pass ${unresolved[0]} unresolved`); process.exit(1); }
const env = Object.entries(config.env ?? {}).map(([k, v]) => `${k}=${v}`);
console.log([...env, "--", config.command, ...(config.args ?? [])].join("\n"));
NODE
) || fail "could not compute the bundle's launch command"
mapfile -t LAUNCH_WORDS <<<"$LAUNCH"
probe "mcpb" "${LAUNCH_WORDS[@]}" --log-level WARNING --simulate || fail "the bundle's launch command did not serve"
ok "mcpb validate, pack, and the bundle's launch command serves"

# --- 5. server.json against the registry schema -----------------------------------------------------------
"$PY" - <<'PYTHON' || fail "server.json does not match the MCP registry schema"
import json
import sys

import jsonschema

schema = json.load(open("specs/mcp_registry_server.schema.json"))
document = json.load(open("server.json"))
if document.get("$schema") != schema["$id"]:
    sys.exit(f"server.json says $schema {document.get('$schema')!r}; the vendored schema is {schema['$id']}")
validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
for error in errors:
    print(f"server.json {'/'.join(map(str, error.absolute_path)) or '/'}: {error.message}", file=sys.stderr)
sys.exit(1 if errors else 0)
PYTHON
ok "server.json is valid against $("$PY" -c 'import json; print(json.load(open("server.json"))["$schema"])')"

if [ -n "$KEEP" ]; then
  mkdir -p "$KEEP"
  cp "$WHEEL" "$BUNDLE" "$KEEP/"
  say "kept $KEEP/$(basename "$WHEEL") and $KEEP/$(basename "$BUNDLE")"
fi
echo "packaging: $passed passed, 0 failed"
