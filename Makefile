# Quick start:  `make demo` (fit a flow on a toy density, write pictures)  and  `make test`.
# Both create the virtual environment on first use. torch is pinned (CPU build by default):
#   make test TORCH_VERSION=2.13.0      # or another version;  make test PYTHON=python3.12
PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS   ?=
DEMO_ARGS     ?=

BIN := $(VENV)/bin
CONSTRAINTS := $(VENV)/constraints.txt

.PHONY: demo test lint venv clean bench-peers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(CONSTRAINTS): $(BIN)/python
	echo "torch==$(TORCH_VERSION)" > $(CONSTRAINTS)

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/torchnf demo --out demo-out $(DEMO_ARGS)

# pytest exits with 5 when it collected no test: treat that as a failure.
test: venv
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: venv
	$(BIN)/ruff check src tests benchmarks examples

bench-peers:
	@echo "see benchmarks/README.md (peer libraries live in a separate environment)"

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
