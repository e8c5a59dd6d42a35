# LLM Mesh developer entry points. `make run` and `make test` do all set-up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')
GENERATED := gen/.generated

export PYTHONPATH := $(CURDIR)/gen:$(CURDIR)
export HF_HUB_OFFLINE := 1

.PHONY: install proto run test lint bench clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Generated code is never edited by hand: change proto/ and run `make proto`.
proto: $(GENERATED)

$(GENERATED): $(PROTOS) $(INSTALLED)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I proto \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--python_out=gen --grpc_python_out=gen \
		--mypy_out=gen --mypy_grpc_out=gen \
		$(PROTOS)
	touch $@

run: proto
	$(PY) -m services

test: proto
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks measure; they never assert. See bench/.
bench: proto
	$(PY) -m bench.chat
	$(PY) -m bench.embeddings
	$(PY) -m bench.adapters

lint: proto
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/ruff format --check services tests bench
	$(VENV)/bin/mypy services

clean:
	rm -rf gen .pytest_cache
