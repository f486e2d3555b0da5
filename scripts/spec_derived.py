"""What the scripts that derive data files from the vendor spec share: provenance, layout, writing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "massive_rest_openapi.json"


def provenance(script: str, note: str, source_sha256: str) -> dict[str, str]:
    return {
        "generated_by": f"scripts/{script}",
        "source": "specs/massive_rest_openapi.json",
        "source_sha256": source_sha256,
        "note": note,
    }


def render(data: dict[str, Any]) -> str:
    """One path per line keeps diffs readable while the file stays compact."""
    lines = ["{", f'"_provenance": {json.dumps(data["_provenance"], ensure_ascii=False)},', '"paths": {']
    items = list(data["paths"].items())
    for i, (path, entry) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"{json.dumps(path)}: {json.dumps(entry, ensure_ascii=False)}{comma}")
    lines += ["}", "}", ""]
    return "\n".join(lines)


def generate(build: Callable[[dict[str, Any], str], dict[str, Any]]) -> str:
    """Run `build(spec, spec_sha256)` on the repo's copy of the vendor spec and lay out the result."""
    raw = SPEC.read_bytes()
    return render(build(json.loads(raw), hashlib.sha256(raw).hexdigest()))


def write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
