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

MAX_DESCRIPTION = 160  # one_line's cut
MAX_PARAM_DESCRIPTION = 50  # a parameter's: longer vendor prose is cut at a clause boundary

# Range and set filters all carry near-identical vendor prose; one fixed phrase per suffix is clearer and cheaper.
_FILTER_PHRASES = {
    "gt": "Filter: {base} > value.",
    "gte": "Filter: {base} >= value.",
    "lt": "Filter: {base} < value.",
    "lte": "Filter: {base} <= value.",
    "any_of": "Filter: {base} is any of these comma-separated values.",
    "all_of": "Has all of these comma-separated {base}.",
    "search": "Search text for {base}.",
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


# Phrases that say what the server instructions say once for every tool (dates are YYYY-MM-DD, times ISO 8601).
_FORMAT_PHRASES = (
    re.compile(r"\s*\((?:formatted as )?(?:an )?(?:YYYY[-‑]MM[-‑]DD|ISO 8601 timestamp)\)"),
    re.compile(r",?\s+(?:with (?:the )?(?:date )?format|in the format|in) YYYY-MM-DD(?: format)?"),
)
_LEAD_INS = re.compile(r"^(?:Query by|Query for|Filter by|Specify)\s+(?:(?:a|an|the)\s+)?")
_ARTICLE = re.compile(r"^(?:The|A|An)\s+")
# Words that carry no meaning of their own in a parameter description.
_FILLER = frozenset(
    "a an the of by for to with on in at as from or and is are was were be which when that this its it query filter "
    "specify search".split()
)
MIN_NEW_WORDS = 3  # a description must add this many words to the parameter's name to be worth its bytes


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.split(r"[^a-z0-9]+", text.lower()) if w}


def concise(name: str, text: str) -> str:
    """A vendor description without boilerplate; "" when it says little beyond the parameter's name."""
    for phrase in _FORMAT_PHRASES:
        text = phrase.sub("", text)
    text = _ARTICLE.sub("", _LEAD_INS.sub("", text))
    text = text[:1].upper() + text[1:]
    if len(_words(text) - _FILLER - _words(name)) < MIN_NEW_WORDS:
        return ""
    return _clause(text)


def _clause(text: str) -> str:
    """Text of at most MAX_PARAM_DESCRIPTION characters: cut before a clause (`, ` or ` (`), else at a word."""
    if len(text) <= MAX_PARAM_DESCRIPTION or "`" in text:  # backticks quote the values it takes: keep them all
        return text
    head = text[: MAX_PARAM_DESCRIPTION + 1]
    cut = head.rfind(", ") if head.rfind(", ") >= MAX_PARAM_DESCRIPTION // 3 else head.rfind(" (")
    if cut >= MAX_PARAM_DESCRIPTION // 3:
        return head[:cut] + "."
    return head.rsplit(" ", 1)[0].rstrip(",;:") + "…"


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
        description = concise(name, one_line(raw.get("description", "")))
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
