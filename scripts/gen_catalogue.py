"""Regenerate the tool catalogue in README.md from the registered tools (`make catalogue`)."""

from pathlib import Path

from mcp_polygon.catalogue import render, splice

readme = Path(__file__).resolve().parent.parent / "README.md"
readme.write_text(splice(readme.read_text(encoding="utf-8"), render()), encoding="utf-8")
