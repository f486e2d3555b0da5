"""Extract the vendor's example responses for every path the REST tools call into the simulator's data file.

Source: specs/massive_rest_openapi.json. For each path, the first of these that exists is used:
  1. the 200 response's application/json `example`
  2. the 200 response schema's own `example`
  3. the 200 response's text/csv `example`, parsed into `results` rows typed by the JSON schema
  4. a body synthesized from the schema's property examples / enums (marked as such)
The simulator (src/mcp_polygon/simulator/rest_data.py) serves these bodies, substituting the caller's path
values and generating further rows for paging. Run after updating the spec:

    .venv/bin/python scripts/build_rest_examples.py
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "massive_rest_openapi.json"
OUT = ROOT / "src" / "mcp_polygon" / "simulator" / "data" / "rest_examples.json"

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
import spec_derived  # noqa: E402
from mcp_polygon.rest.endpoints import all_vendor_paths  # noqa: E402


def _resolve(node: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while isinstance(node, dict) and "$ref" in node:
        section, name = node["$ref"].split("/")[-2:]
        node = spec["components"][section][name]
    return node


def _merged_schema(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """allOf flattened into one object schema (enough for the vendor's response schemas)."""
    schema = _resolve(schema, spec)
    if "allOf" in schema:
        props: dict[str, Any] = {}
        for part in schema["allOf"]:
            props.update(_merged_schema(part, spec).get("properties", {}))
        return {"type": "object", "properties": props}
    return schema


def _synth(schema: dict[str, Any], spec: dict[str, Any], depth: int = 0) -> Any:
    schema = _merged_schema(schema, spec)
    if "example" in schema:
        return schema["example"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 6:
            return {}
        return {k: _synth(v, spec, depth + 1) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [_synth(schema.get("items", {}), spec, depth + 1)]
    return {"integer": 1, "number": 1.0, "boolean": True}.get(kind, "example")


def _typed(value: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if value == "":
        return None
    if kind == "integer":
        return int(float(value))
    if kind == "number":
        return float(value)
    if kind == "boolean":
        return value.lower() == "true"
    return value


def _from_csv(text: str, schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any] | None:
    body = _merged_schema(schema, spec)
    results = body.get("properties", {}).get("results")
    if not results or _resolve(results, spec).get("type") != "array":
        return None
    item = _merged_schema(_resolve(results, spec).get("items", {}), spec).get("properties", {})
    rows = [
        {k: _typed(v, _resolve(item.get(k, {}), spec)) for k, v in row.items()}
        for row in csv.DictReader(io.StringIO(text))
    ]
    return {"status": "OK", "request_id": "sim", "count": len(rows), "results": rows}


def example_for(op: dict[str, Any], spec: dict[str, Any]) -> tuple[Any, str]:
    content = op.get("responses", {}).get("200", {}).get("content", {})
    as_json = content.get("application/json", {})
    if "example" in as_json:
        return as_json["example"], "application/json example"
    schema = as_json.get("schema", {})
    if "example" in schema:
        return schema["example"], "schema example"
    csv_example = content.get("text/csv", {}).get("example")
    if csv_example:
        parsed = _from_csv(csv_example, schema, spec)
        if parsed is not None:
            return parsed, "text/csv example typed by the schema"
    return _synth(schema, spec), "synthesized from schema property examples"


def build(spec: dict[str, Any], source_sha256: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path in all_vendor_paths():
        op = spec["paths"][path]["get"]
        body, source = example_for(op, spec)
        params = [_resolve(p, spec) for p in op.get("parameters", [])]
        path_examples = {
            p["name"]: p.get("example", p.get("schema", {}).get("example"))
            for p in params
            if p["in"] == "path" and p.get("example", p.get("schema", {}).get("example")) is not None
        }
        limit = next((p for p in params if p["name"] == "limit"), None)
        paths[path] = {
            "source": source,
            "path_examples": path_examples,
            "limit_default": (limit or {}).get("schema", {}).get("default") if limit else None,
            "has_limit": limit is not None,
            "body": body,
        }
    return {
        "_provenance": spec_derived.provenance(
            "build_rest_examples.py",
            "Vendor example responses (MIT, see specs/README.md); generated, do not edit by hand.",
            source_sha256,
        ),
        "paths": paths,
    }


def generate() -> str:
    return spec_derived.generate(build)


def main() -> None:
    text = generate()
    spec_derived.write(OUT, text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text):,} bytes)")


if __name__ == "__main__":
    main()
