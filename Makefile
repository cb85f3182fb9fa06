# bmsgw: `make run` and `make test` set up everything they need on a Debian 12 machine (run as root).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# System tools the tests talk to as real peers; installed once, on demand.
APT_PACKAGES := snmp snmpd snmptrapd smitools mbpoll mosquitto mosquitto-clients prometheus \
	chromium chromium-driver lintian debhelper dh-python poppler-utils socat python3-venv \
	systemd
APT_STAMP := $(VENV)/.apt-installed

.PHONY: install system-deps run lint test bench regmap deb deb-lock clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

# Install the peers only when one is missing, so repeated runs cost nothing.
$(APT_STAMP): Makefile
	@mkdir -p $(VENV)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	touch $@

system-deps: $(APT_STAMP)

CONFIG ?= config.yaml
run: $(STAMP)
	$(BIN)/bmsgw run --config $(CONFIG)

# ruff and mypy as pyproject.toml configures them (gateway/ and plugins/ for mypy); both must pass.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) $(APT_STAMP)
	$(MAKE) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

regmap: $(STAMP)
	$(BIN)/bmsgw regmap --config config.yaml --format md

# The Debian package (debian/): built from a copy of the tree in build/deb, the .deb lands in dist/.
# Reuses the last build when the tree has not changed; `make deb DEB_OPTS=--force` rebuilds anyway.
deb: $(APT_STAMP)
	$(PY) debian/make-deb --out dist $(DEB_OPTS)

# After changing a dependency in pyproject.toml (and `make install`): pin the tested versions for the .deb.
deb-lock: $(STAMP)
	$(BIN)/python debian/lock.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
