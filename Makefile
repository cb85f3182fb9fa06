# bmsgw: `make run` and `make test` set up everything they need on a Debian 12 machine (run as root).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every Python package the project installs, pinned with hashes; written by `make lock`, never by hand.
LOCK := requirements.lock
# .venv holds exactly the lock: rebuilt from scratch whenever the lock changes (so nothing from an older lock
# survives), then the project itself goes in; a change to pyproject.toml alone only reinstalls the project.
LOCK_STAMP := $(VENV)/.lock-installed
STAMP := $(VENV)/.installed
# The packages for the controllers (make deb ARCH=arm64|armhf, tests/test_deb_arm.py): Debian 12 roots of those
# architectures (mmdebstrap) run under qemu-user; the cross build strips with the target's binutils and
# dpkg-shlibdeps reads the target's libraries from this machine's dpkg (multiarch: `dpkg --add-architecture`).
# armhf's four source-only wheels are cross-compiled natively (debian/armhf-wheels.py): Debian's armhf cross
# compiler with its C library headers (dpkg-genbuildinfo probes that compiler in every armhf build), and CMake
# for argon2-cffi-bindings.
FOREIGN_ARCHES := arm64 armhf
ARM_APT_PACKAGES := qemu-user-static binfmt-support arch-test mmdebstrap \
	$(foreach a,$(FOREIGN_ARCHES),binutils-for-host:$(a) libc6:$(a) libgcc-s1:$(a) libstdc++6:$(a) zlib1g:$(a)) \
	libffi8:armhf gcc-arm-linux-gnueabihf libc6-dev-armhf-cross cmake make
# System tools the tests talk to as real peers; installed once, on demand. The stamp lives outside .venv, so
# that rebuilding the venv does not run apt again.
APT_PACKAGES := snmp snmpd snmptrapd smitools mbpoll mosquitto mosquitto-clients prometheus \
	chromium chromium-driver lintian debhelper dh-python poppler-utils socat python3-venv python3-packaging \
	systemd nut-snmp nut-client $(ARM_APT_PACKAGES)
APT_STAMP := .apt-installed

.PHONY: install system-deps run lint test bench screenshots regmap lock deb debs deb-copyright clean

# --only-binary: a source build would fetch its build backend unpinned. --no-deps: the lock is the whole set
# (pip check proves it is complete). The lock pins pip and setuptools too: pip replaces the venv's bundled
# copy in the same run, and the editable build uses the pinned setuptools (--no-build-isolation).
$(LOCK_STAMP): $(LOCK)
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps --only-binary=:all: -r $(LOCK)
	touch $@

$(STAMP): $(LOCK_STAMP) pyproject.toml
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

install: $(STAMP)

# After changing a dependency in pyproject.toml: resolve it into the lock with the uv the lock installed
# (docs/development.md), rebuild .venv from the new lock, and regenerate debian/copyright from it.
# Pins already in the lock are kept; `make lock LOCK_OPTS=--upgrade` moves every package to its newest release.
LOCK_OPTS ?=
define LOCK_HEADER
# Every Python package bmsgw installs (runtime, test, dev, build and wheel-build extras, transitive too),
# pinned with the hashes of all its files: one lock for amd64, arm64 and armhf (uv pip compile --universal).
# Written by `make lock` from pyproject.toml: never edit it by hand (docs/development.md).
endef
export LOCK_HEADER
# uv works on a copy (it keeps the pins it finds in its output file); the lock is replaced only when it changed,
# so that an unchanged lock does not rebuild .venv.
lock: $(LOCK_STAMP)
	cp $(LOCK) $(VENV)/lock.uv
	$(BIN)/uv pip compile pyproject.toml --extra test --extra dev --extra build --extra wheel-build --universal --python-version 3.11 \
		--generate-hashes --no-header --quiet $(LOCK_OPTS) -o $(VENV)/lock.uv
	{ printf '%s\n' "$$LOCK_HEADER"; cat $(VENV)/lock.uv; } > $(VENV)/lock.new
	cmp -s $(VENV)/lock.new $(LOCK) || mv $(VENV)/lock.new $(LOCK)
	$(MAKE) deb-copyright

# Install the peers only when one is missing, so repeated runs cost nothing.
$(APT_STAMP): Makefile
	@for a in $(FOREIGN_ARCHES); do \
	  dpkg --print-foreign-architectures | grep -qx $$a || { echo "dpkg --add-architecture $$a"; dpkg --add-architecture $$a; }; \
	done; \
	missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
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
	$(BIN)/python -m pytest -q --durations=25

bench: $(STAMP)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# the README's pictures, from the demo (config.yaml on the simulator) in Chromium: docs/images/*.png
screenshots: $(STAMP) $(APT_STAMP)
	$(BIN)/python tools/screenshots.py --out docs/images

regmap: $(STAMP)
	$(BIN)/bmsgw regmap --config config.yaml --format md

# The Debian package (debian/): built from a copy of the tree in build/deb-ARCH, the .deb lands in dist/.
# ARCH: this machine's by default; `make deb ARCH=armhf`, `make deb ARCH="amd64 arm64 armhf"` (or `make debs`)
# builds for the controllers too. Reuses the last build of an architecture when the tree has not changed;
# `make deb DEB_OPTS=--force` rebuilds anyway.
ARCH ?=
DEB_ARCHES := amd64 arm64 armhf
deb: $(APT_STAMP)
	$(PY) debian/make-deb --out dist $(addprefix --arch=,$(ARCH)) $(DEB_OPTS)

debs: $(APT_STAMP)
	$(PY) debian/make-deb --out dist $(addprefix --arch=,$(DEB_ARCHES)) $(DEB_OPTS)

# debian/copyright lists the libraries the .deb bundles (the runtime part of the lock) with their licenses,
# read from the tested .venv; `make lock` runs it.
deb-copyright: $(STAMP)
	$(BIN)/python debian/write-copyright.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
