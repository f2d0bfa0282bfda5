# Two entry points on a fresh machine (python3 + pip only):
#   make reproduce   install, run the bandit sweeps (paper Figs 3-4) into results/tpo.sqlite,
#                    rebuild every figure and table into figures/ and the verdict report
#                    into report/report.html
#   make test        install with dev tools, run the test suite (what CI runs); as root on
#                    Debian it first starts a local SLURM cluster and a PostgreSQL server
#                    (make services) so that the SLURM and PostgreSQL tests run too
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DB     ?= sqlite:///results/tpo.sqlite
OUT    ?= figures
REPORT_OUT ?= report
PYTEST_ARGS ?= -m "not slow"
# services: auto = start SLURM + PostgreSQL for the tests when root on Debian (then their tests
# must run: TPO_REQUIRE_SERVICES=1); 0 = never (those tests skip)
SERVICES ?= auto
ifeq ($(SERVICES),auto)
SERVICES := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo 1 || echo 0)
endif

.PHONY: install install-dev lock reproduce report reproduction test test-all lint clean services services-stop

# the locked, tested environment (requirements.lock, pip constraints); `make lock` upgrades it
$(VENV)/.installed: pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: tpo-sweeps needs Python >= 3.11 (jax 0.10 has no wheels for " + sys.version.split()[0] + "); set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	touch $@

# re-resolve the newest versions pyproject.toml allows into requirements.lock (then run make test)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e ".[dev]"
	{ head -3 requirements.lock; .lock-venv/bin/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

install install-dev: $(VENV)/.installed

reproduce: $(VENV)/.installed
	$(PY) -m tpo_sweeps -m experiment=fig3_tabular_single db.url=$(DB)
	$(PY) -m tpo_sweeps -m experiment=fig4_tabular_multi db.url=$(DB)
	$(PY) -m analysis all --db $(DB) --out $(OUT)
	$(PY) -m analysis report --db $(DB) --out $(REPORT_OUT)

# the one-page reproduction report of everything in $(DB): $(REPORT_OUT)/report.html (+ .md, verdicts.csv)
report: $(VENV)/.installed
	$(PY) -m analysis report --db $(DB) --out $(REPORT_OUT)

# the published reproduction record: docs/reproduction/ rebuilt from exactly the committed run
# bundles in results/bundles/ (imported into a fresh results/reproduction.sqlite)
reproduction: $(VENV)/.installed
	$(PY) -m analysis.reproduction

services:
ifeq ($(SERVICES),1)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	slurm/cluster.sh start
	tests/services/postgres.sh start
else
	@echo "services: not starting SLURM/PostgreSQL (SERVICES=$(SERVICES)); their tests will skip"
endif

services-stop:
	-tests/services/postgres.sh stop
	-slurm/cluster.sh stop

test: $(VENV)/.installed services
	TPO_REQUIRE_SERVICES=$(SERVICES) $(PY) -m pytest $(PYTEST_ARGS)

test-all: PYTEST_ARGS =
test-all: test

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs multirun .pytest_cache
