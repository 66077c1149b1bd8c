# recfm: `make demo` runs the main job on the bundled data, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# This workplace keeps a CPU build of torch in a local wheel folder named by pip's config; pass it to uv,
# which ignores pip's config. Without it uv takes PyPI's (CUDA) torch, which is right on a GPU machine.
FIND_LINKS := $(foreach d,$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),--find-links $(d))
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint docs clean bench bench-quick

install: $(STAMP)

$(STAMP): requirements.txt excludes.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -r requirements.txt --excludes excludes.txt $(FIND_LINKS)
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) --no-deps -e .
	touch $(STAMP)

# Bytecode is compiled ahead (at install for the dependencies, here for recfm): where PYTHONDONTWRITEBYTECODE is set,
# every process (each Ray worker too) would otherwise compile torch, TorchRec and Ray again: 2-3x slower starts
demo: install
	$(PY) -m compileall -q recfm
	$(VENV)/bin/recfm demo

# Every test, unit and integration (real Ray, PostgreSQL, TorchRec across processes), one file at a time on each of
# 2 processes: the integration tests mostly wait (on Ray starting workers, on servers), so two files at once take
# little longer than one. The integration files (the long ones) are collected first, so none is left to run alone
# at the end.
test: install  # the layers contract, then every test
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m compileall -q recfm tests
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests/integration tests/unit

test-fast: install  # unit tests only: no Ray, no servers, one process; under 2 minutes
	$(PY) -m compileall -q recfm tests
	$(PY) -m pytest -q --durations=5 tests/unit

# Benchmarks (not tests): figures as ratios against references measured in the same run; bench/results/.
bench: install
	$(PY) bench/scale.py
	$(PY) bench/peers.py

bench-quick: install  # the same comparisons at small scale, under 5 minutes; the last line is the throughput ratio
	$(PY) bench/scale.py --quick
	$(PY) bench/peers.py --quick

docs: install  # the generated reference (a unit test fails when it is stale)
	$(VENV)/bin/recfm config --reference > docs/configuration.md

lint: install
	$(VENV)/bin/ruff check recfm tests bench
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) .cache runs
