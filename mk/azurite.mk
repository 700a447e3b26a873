# Azurite (the Azure Storage emulator) for the poison-queue tests (included from the Makefile).
#
#   make azurite    installs the npm package azurite into .tools/azurite (git-ignored); the
#                   tests start its azurite-queue on 127.0.0.1 (ephemeral port, temp location)
#
# Needs node and npm (scripts/install-system-deps.sh installs them on Debian).

AZURITE_DIR ?= .tools/azurite
# Pinned: the tests are run against this version.
AZURITE_SPEC ?= azurite@3.37.0
AZURITE_QUEUE := $(AZURITE_DIR)/node_modules/.bin/azurite-queue
AZURITE_STAMP := $(AZURITE_DIR)/.installed-$(subst @,-,$(AZURITE_SPEC))

.PHONY: azurite

$(AZURITE_STAMP): mk/azurite.mk
	command -v npm >/dev/null || { echo "npm missing: run scripts/install-system-deps.sh (as root)" >&2; exit 1; }
	mkdir -p $(AZURITE_DIR)
	npm install --prefix $(AZURITE_DIR) --no-audit --no-fund --loglevel=error "$(AZURITE_SPEC)"
	test -x $(AZURITE_QUEUE)
	touch $@

azurite: $(AZURITE_STAMP)
