# Quick start:  make demo   (set up, then the main job)     make test   (set up, then the test suite)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
GLUE   ?= ../shared/data/glue
SUPERGLUE ?= ../shared/data/superglue
OUT    ?= runs/sst2-hadamard

.PHONY: setup demo test bench

setup: $(VENV)/.installed

# torch first, from the local CPU wheel: anything that depends on torch would otherwise pull the CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The main job: two-stage Hadamard adapter on SST-2 (8,000 training sentences) with the bundled MiniLM.
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/pelt train --method hadamard --task sst2 --data-dir $(GLUE) \
		--max-train-samples 8000 --epochs 3 --batch-size 32 --warmup-ratio 0.06 --lr 1e-2 --head-epochs 1 \
		--head-lr 1e-2 \
		--output-dir $(OUT) --overwrite

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/glue_minilm.py --data-dir $(GLUE)
