# Set-up and the everyday commands. Everything runs from the repository root.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint report bench clean

# The venv holds exactly the packages of $(LOCK), each checked against its sha256, and the project,
# editable: requirements/install.sh says how (requirements/compile.sh regenerates the lock).
# pip compiles the packages' bytecode one file at a time (a third of the set-up time, most of it
# torch's), so the script leaves it out; compileall does it on every core afterwards, except for
# the packages' own test suites, pip and setuptools, which neither the workflow nor its tests
# import (a quarter of the sources, a third of the compile time). Like pip, it skips the few files
# written for a newer Python (torch's test fixtures), which report an error and leave compileall's
# status at 1.
LOCK ?= requirements/cpu.lock
NOT_IMPORTED := /site-packages/(pip|setuptools|.*/tests)/
$(BIN)/snakemake: pyproject.toml $(LOCK) requirements/install.sh
	PYTHON=$(PYTHON) requirements/install.sh $(VENV) $(LOCK)
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
