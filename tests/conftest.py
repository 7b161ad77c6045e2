import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():  # the triton backend's kernels run in Triton's interpreter (tests/attention/test_triton.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # one tile configuration per kernel: tests check arithmetic, not speed (no autotuning compiles)
    os.environ.setdefault("SPARSE_TRANSFORMER_TRITON_CONFIGS", "one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
