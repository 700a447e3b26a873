# Infrastructure checks for registry-sync (included from the Makefile).
#
#   make tools-venv    installs checkov into its own venv (.venv-tools): checkov pins versions
#                      that clash with the app's dependencies, so it never goes into .venv
#   make infra-check   checkov on infra/ + the infra/host config tests (pycep parse, settings)
#
# Expects PYTHON / VENV / PY from the Makefile; falls back to defaults when used alone
# (make -f mk/infra.mk infra-check).

PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python

TOOLS_VENV ?= .venv-tools
# Pinned: the skipped check ids in infra/*.bicep are reviewed against this version.
CHECKOV_SPEC ?= checkov==3.3.30
# checkov 3.3.30 pins its Bicep parser to pycep-parser 0.5.1, which cannot parse Bicep's fail()
# (infra/main.bicep uses it): it would report main.bicep as a parsing error and check nothing in
# it. 0.7.1 parses it (the app venv's tests use it too); installed over the pin with --no-deps,
# checkov 3.3.30 reported the same checks with both on these templates before they used fail().
PYCEP_SPEC ?= pycep-parser==0.7.1
TOOLS_STAMP := $(TOOLS_VENV)/.installed-checkov
CHECKOV := $(TOOLS_VENV)/bin/checkov
# --skip-download: no calls to the Prisma Cloud API (there is no network but the package registries).
CHECKOV_FLAGS ?= --framework bicep --compact --quiet --skip-download

.PHONY: tools-venv infra-checkov infra-check

$(TOOLS_STAMP): mk/infra.mk
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install --quiet "$(CHECKOV_SPEC)"
	$(TOOLS_VENV)/bin/python -m pip install --quiet --no-deps "$(PYCEP_SPEC)"
	touch $@

tools-venv: $(TOOLS_STAMP)

infra-checkov: tools-venv
	$(CHECKOV) -d infra $(CHECKOV_FLAGS)

# $(STAMP) is the Makefile's app-venv stamp (empty when this file is used alone).
infra-check: tools-venv infra-checkov $(STAMP)
	test -x $(PY) || { echo "$(PY) missing: run 'make venv' first" >&2; exit 1; }
	$(PY) -m pytest -q tests/infra/test_infra.py tests/infra/test_host_config.py
