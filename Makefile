# milzoo set-up and checks.  `make quickstart` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := $(sort $(wildcard plugins/milzoo-*))

.PHONY: install quickstart test clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "milzoo needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the core plus every plugin in plugins/ (first-party ones and the example third-party one), editable
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]" $(foreach p,$(PLUGINS),-e "./$(p)[test]")

quickstart: install
	$(BIN)/milzoo run recipes/quickstart.toml --out runs/quickstart --overwrite

# the tests, then the CPU dry run of the prepared GPU check (tiny sizes, about a minute; docs/performance.md)
test: install
	$(BIN)/python -m pytest -q
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/gpu_check.py --dry-run

clean:
	rm -rf runs build *.egg-info
