# Two entry points on a fresh machine (python3 + pip only):
#   make reproduce   install, run the bandit sweeps (paper Figs 3-4) into results/tpo.sqlite,
#                    rebuild every figure and table into figures/
#   make test        install with dev tools, run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DB     ?= sqlite:///results/tpo.sqlite
OUT    ?= figures
PYTEST_ARGS ?= -m "not slow"

.PHONY: install install-dev reproduce test test-all lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install install-dev: $(VENV)/.installed

reproduce: $(VENV)/.installed
	$(PY) -m tpo_sweeps -m experiment=fig3_tabular_single db.url=$(DB)
	$(PY) -m tpo_sweeps -m experiment=fig4_tabular_multi db.url=$(DB)
	$(PY) -m analysis all --db $(DB) --out $(OUT)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: PYTEST_ARGS =
test-all: test

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs multirun .pytest_cache
