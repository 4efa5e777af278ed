# Set-up and entry points. `make demo` and `make test` each build .venv from nothing when needed.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The tests in one worker process per core, a test file per worker at a time (its module fixtures built once).
PYTEST_ARGS ?= -n auto --dist loadfile
CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint browser bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/yololab demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Debian's chromium, for tests/test_report_browser.py (the HTML report rendered in a real browser).
# Nothing to do when it is there; without apt-get (or without root or sudo) that test is skipped.
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "no apt-get: $(CHROMIUM) not installed, the report browser test will be skipped"; exit 0; fi; \
	SUDO=; if [ "$$(id -u)" != 0 ]; then \
		if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
			echo "not root and no sudo: $(CHROMIUM) not installed, the report browser test will be skipped"; \
			exit 0; fi; fi; \
	set -e; \
	$$SUDO apt-get update -q; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

test: $(STAMP) lint browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/loss.py && $(PY) benchmarks/data.py && $(PY) benchmarks/inference.py --threads 1

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
