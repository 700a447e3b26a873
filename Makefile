# registry-sync: make test | make demo | make bench
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

include mk/infra.mk

.PHONY: test lint unit demo bench system-deps venv clean

test: system-deps venv tools-venv lint unit

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

unit: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .venv-tools .pytest_cache .ruff_cache

demo: system-deps venv
	$(PY) scripts/demo.py
