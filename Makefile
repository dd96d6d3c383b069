# Quick start: `make demo` (train a demo model on Multi30k en->de and translate with it)
# and `make test` (the test suite). Each creates .venv and installs the package first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The corpora's local mirror, when this checkout sits beside shared/ (as in CI).
MIRROR := $(abspath ../shared/corpora)
ifneq ($(wildcard $(MIRROR)/multi30k),)
export TRANSLATOR_MIRROR ?= $(MIRROR)
endif

.PHONY: demo test test-plain lint install clean info

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) train.py --preset demo --corpus multi30k --src en --tgt de --output models/demo
	$(PY) -m translator.demo models/demo

lint: $(VENV)/.installed
	$(VENV)/bin/flake8 translator tests bench train.py translate.py

test: lint
	$(VENV)/bin/pytest

# The same suite on TensorFlow's ops alone, as on a machine without a C++ compiler
# (the kernel tests skip; everything else must pass). CI runs it after `make test`.
test-plain: $(VENV)/.installed
	TRANSLATOR_NATIVE=0 $(VENV)/bin/pytest

info: $(VENV)/.installed
	$(PY) -m translator info

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
