# Sparse Transformer: `make help` lists the targets.
PYTHON ?= python3
EXP ?= default
ARGS ?=
SWEEP ?=
SWEEP_ID ?=
COUNT ?=
N ?=
PYTEST ?= $(PYTHON) -m pytest

export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help setup test test-fast train sweep agent sweep-local

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-13s %s\n", $$1, $$2}'

setup:  ## install torch (CPU 2.13.0, only if none is importable), then this package with its dev extra
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## every test that can run here (tests marked gpu skip themselves without a GPU)
	$(PYTEST) -q

test-fast:  ## the quick loop: skip tests marked slow
	$(PYTEST) -q -m "not slow"

train:  ## train an experiment: make train EXP=<name> ARGS="key=value ..."
	$(PYTHON) -m sparse_transformer.train exp=$(EXP) $(ARGS)

sweep:  ## create the W&B sweep conf/sweep/<SWEEP>.yaml and print its id: make sweep SWEEP=<name>
	$(PYTHON) -m sparse_transformer.sweep create $(SWEEP)

agent:  ## start a W&B agent on a sweep: make agent SWEEP_ID=<entity/project/id> COUNT=<n> (no COUNT: until it ends)
	$(PYTHON) -m sparse_transformer.sweep agent $(SWEEP_ID) --count=$(COUNT)

sweep-local:  ## run a sweep here, offline, and print its leaderboard: make sweep-local SWEEP=<name> N=<trials>
	$(PYTHON) -m sparse_transformer.sweep local $(SWEEP) --trials=$(N)
