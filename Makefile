# Two commands do all set-up and the job: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# Trains a tiny T5 on the shipped Multi30k English->French/German on CPU.
demo: setup
	$(BIN)/t5jax train --gin_file=runs/demo.gin --run_dir=runs/demo

# Test files run in TEST_WORKERS processes, a file's tests in one (module fixtures once).
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q tests -n $(TEST_WORKERS) --dist loadfile --durations=15

bench: setup
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
