"""The README is the contract with a newcomer: its catalogue and configuration must match the code."""

from pathlib import Path

from mcp_polygon.catalogue import render, splice

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_catalogue_matches_registered_tools():
    assert splice(README, render()) == README, "README catalogue is stale: run `make catalogue`"


def test_catalogue_lists_all_131_tools():
    assert render().startswith("131 tools in all.")


def test_readme_documents_every_environment_variable():
    config = (ROOT / "src" / "mcp_polygon" / "config.py").read_text(encoding="utf-8")
    import re

    names = set(re.findall(r'"((?:POLYGON|MASSIVE)_[A-Z_]+)"', config))
    assert names, "no environment variables found in config.py"
    missing = sorted(name for name in names if f"`{name}`" not in README)
    assert not missing, f"README configuration table lacks {missing}"


def test_readme_shows_the_two_commands():
    assert "make demo" in README and "make test" in README
