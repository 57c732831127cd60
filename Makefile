# Set-up and the everyday commands. Everything runs from the repository root.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint report bench clean

# torch is pinned and installed first: its CPU wheel is what a laptop or CI needs, and a looser
# requirement installed alone would pull a multi-GB CUDA build. pip compiles the packages'
# bytecode one file at a time (a third of the set-up time, most of it torch's); compileall does
# the same on every core afterwards, except for the packages' own test suites, pip and setuptools,
# which neither the workflow nor its tests import (a quarter of the sources, a third of the
# compile time). Like pip, it skips the few files written for a newer Python (torch's test
# fixtures), which report an error and leave compileall's status at 1.
NOT_IMPORTED := /site-packages/(pip|setuptools|.*/tests)/
$(BIN)/snakemake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile torch==2.13.0
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -qq -j 0 -x '$(NOT_IMPORTED)' $(VENV)/lib || true
	touch $@

install: $(BIN)/snakemake

# One invocation: the report is built right after the run, without parsing the workflow again.
demo: install
	$(BIN)/snakemake --cores 2 --report results/report.zip --report-after-run

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check arepas tests workflow/scripts
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

report: install
	$(BIN)/snakemake --cores 2 --report results/report.zip

# Measures this machine and rewrites BENCHMARKS.md (about an hour with the default 3 seeds);
# e.g. `make bench BENCH_ARGS='--only scoring,scaling'` or `BENCH_ARGS='--reuse . --seeds 1'`.
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf results logs benchmarks .snakemake
