"""Extract the parameters of every vendor path the REST tools call into src/mcp_polygon/rest/endpoints_data.json.

The vendor OpenAPI document (specs/massive_rest_openapi.json) is the only source of parameter names, types, enums
and defaults; this script copies what the tools need, with descriptions cut to one line, so the server does not
parse a 2 MB document at start-up. Run it after updating the spec:

    .venv/bin/python scripts/build_endpoints.py

tests/test_rest_spec.py fails when the committed file is out of date.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "massive_rest_openapi.json"
OUT = ROOT / "src" / "mcp_polygon" / "rest" / "endpoints_data.json"

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
import spec_derived  # noqa: E402
from mcp_polygon.rest.endpoints import FILTER_SUFFIXES, all_vendor_paths  # noqa: E402

MAX_DESCRIPTION = 160

# Range and set filters all carry near-identical vendor prose; one fixed phrase per suffix is clearer and cheaper.
_FILTER_PHRASES = {
    "gt": "Filter: {base} > value.",
    "gte": "Filter: {base} >= value.",
    "lt": "Filter: {base} < value.",
    "lte": "Filter: {base} <= value.",
    "any_of": "Filter: {base} is any of these comma-separated values.",
    "all_of": "Filter: {base} contains all of these comma-separated values.",
    "search": "Filter: {base} matches this search text.",
}


def one_line(text: str) -> str:
    """The first sentence of a vendor description, without markdown links, HTML or line breaks."""
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text or "")  # [label](url) -> label
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    # Protect abbreviations so the sentence split below does not cut "e.g. GCJ5" in half.
    protected = text.replace("e.g.", "e\x00g\x00").replace("i.e.", "i\x00e\x00")
    first = re.split(r"(?<=[.!?])\s", protected, maxsplit=1)[0].replace("\x00", ".")
    if len(first) > MAX_DESCRIPTION:
        first = first[: MAX_DESCRIPTION - 1].rsplit(" ", 1)[0] + "…"
    return first


def _resolve(param: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = param.get("$ref")
    if ref:
        return spec["components"]["parameters"][ref.rsplit("/", 1)[-1]]
    return param


def _type_of(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    if declared in ("string", "integer", "number", "boolean", "array"):
        return declared
    enum = schema.get("enum") or []
    if enum and all(isinstance(v, bool) for v in enum):
        return "boolean"
    if enum and all(isinstance(v, int) for v in enum):
        return "integer"
    return "string"


def _param(raw: dict[str, Any]) -> dict[str, Any]:
    schema = raw.get("schema") or {}
    name = raw["name"]
    base, _, suffix = name.rpartition(".")
    if base and suffix in FILTER_SUFFIXES:
        description = _FILTER_PHRASES[suffix].format(base=base)
    else:
        description = one_line(raw.get("description", ""))
    out: dict[str, Any] = {"name": name, "in": raw["in"], "type": _type_of(schema)}
    if raw.get("required"):
        out["required"] = True
    if schema.get("enum"):
        out["enum"] = schema["enum"]
    if "default" in schema:
        out["default"] = schema["default"]
    example = raw.get("example", schema.get("example"))
    if example is not None:
        out["example"] = example
    out["description"] = description
    return out


def build(spec: dict[str, Any], source_sha256: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path in all_vendor_paths():
        op = spec["paths"][path]["get"]
        params = [_param(_resolve(p, spec)) for p in op.get("parameters", []) if _resolve(p, spec)["in"] != "header"]
        ok = op.get("responses", {}).get("200", {})
        paths[path] = {
            "summary": one_line(op.get("summary", "")),
            # The vendor pages with next_url where the 200 response declares one.
            "next_url": "next_url" in json.dumps(ok),
            "params": params,
        }
    return {
        "_provenance": spec_derived.provenance(
            "build_endpoints.py",
            "Generated: do not edit by hand; rerun the script after changing the spec or the tool table.",
            source_sha256,
        ),
        "paths": paths,
    }


def generate() -> str:
    return spec_derived.generate(build)


def main() -> None:
    text = generate()
    spec_derived.write(OUT, text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text):,} bytes, {text.count(chr(10)) - 4} paths)")


if __name__ == "__main__":
    main()
