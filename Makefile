# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The Makefile owns its virtual environment so nothing depends on what happens to be installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test unit lint typecheck format bench inspector packaging bundle clean catalogue

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mcp_polygon.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/mcp_polygon

format: $(STAMP)
	$(BIN)/ruff format src tests bench scripts
	$(BIN)/ruff check --fix src tests bench scripts

test: $(STAMP) lint typecheck inspector packaging
	$(BIN)/python -m pytest -q

inspector: $(STAMP)
	bash scripts/inspector_check.sh

# The install paths from the built wheel: uvx, pipx, the Claude Desktop extension, the registry's server.json.
packaging: $(STAMP)
	bash scripts/check_packaging.sh

# The Claude Desktop extension: dist/mcp-polygon-<version>.mcpb (and the wheel it carries).
bundle: $(STAMP)
	bash scripts/check_packaging.sh --keep dist

bench: $(STAMP)
	$(BIN)/python -m bench

catalogue: $(STAMP)
	$(BIN)/python scripts/gen_catalogue.py
	$(BIN)/python scripts/measure_profiles.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
