# Every target creates .venv on first use, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint serve clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/slotbandit demo

serve: $(STAMP)
	$(BIN)/slotbandit serve

lint: $(STAMP)
	$(BIN)/ruff check bandits analysis api tests benchmarks
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) var/*.db*
