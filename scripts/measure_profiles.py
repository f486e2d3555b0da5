"""Rewrite the README's measured tools/list sizes of both profiles (`make catalogue` runs it)."""

import asyncio
from pathlib import Path

from mcp_polygon.sizes import measure, render, splice

readme = Path(__file__).resolve().parent.parent / "README.md"
line = render(*asyncio.run(measure()))
readme.write_text(splice(readme.read_text(encoding="utf-8"), line), encoding="utf-8")
