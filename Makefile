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

.PHONY: demo test lint install clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
