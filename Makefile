# registry-sync: make test | make demo | make bench
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

include mk/infra.mk
include mk/worker.mk
include mk/azurite.mk

.PHONY: test lint typecheck security unit demo bench system-deps venv clean

# unit: the suite on Python 3.11 (.venv); worker-test: the app in the real Functions worker (mk/worker.mk)
test: system-deps venv tools-venv worker-venv azurite lint typecheck security unit worker-test

system-deps:
	./scripts/install-system-deps.sh

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy --strict on sync_core and function_app.py (settings in pyproject.toml)
typecheck: venv
	$(VENV)/bin/mypy

# bandit: no medium or high finding in the app code (a deliberate exception would need a
# "# nosec BXXX" on the line with the reason beside it; there is none today)
security: venv
	$(VENV)/bin/bandit -q -r sync_core function_app.py -ll

unit: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .venv-tools $(WORKER_VENV) .tools .pytest_cache .ruff_cache

demo: system-deps venv
	$(PY) scripts/demo.py

# Benchmark against skopeo sync, and a day of the Azure app at fleet scale (not part of make
# test): ~22 + ~63 minutes, results in bench/results/ and docs/benchmarks.md. BENCH_ARGS=--quick
# for the small version; BENCH_ARGS="--scenarios day" for the day alone.
bench: system-deps venv
	$(PY) -m bench.run $(BENCH_ARGS)
