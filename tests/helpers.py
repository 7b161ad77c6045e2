from pathlib import Path

import pytest
import torch

from sparse_transformer.config import load_config
from sparse_transformer.data import build_datamodule
from sparse_transformer.training.module import SparseTransformerLM, config_dict


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Decoding runs many tiny operations: intra-op threads only add synchronisation (and, on a shared
    machine, contention that made these tests 10x slower), so this module runs on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise relative error ||x - ref|| / ||ref||, in float64 (absolute error where ref is 0)."""
    x, ref = x.detach().double(), ref.detach().double()
    denom = ref.norm()
    return float((x - ref).norm() / (denom if denom > 0 else 1.0))


def brute_mask(pattern: str, n: int, l: int, c: int | None = None, slice_: int = 0) -> torch.Tensor:
    """The design's definitions, written as plain Python loops (the test oracle for masks)."""
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(i + 1):
            if pattern == "dense":
                ok = True
            elif pattern == "local":
                ok = 0 <= i - j < l
            elif pattern == "stride":
                ok = (i - j) % l == 0
            elif pattern == "block":
                ok = j // l == i // l
            elif pattern == "summary":
                ok = l - (slice_ + 1) * c <= j % l < l - slice_ * c
            else:
                raise ValueError(pattern)
            m[i, j] = ok
    return m


# ------------------------------------------------------------------------------------------------
# Checkpoints of a tiny text model (tests/cli, tests/test_checkpoint.py)
# ------------------------------------------------------------------------------------------------
TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8",
        "data.batch_size=4", "logger.kind=none", "trainer.enable_progress_bar=false", "data.val_windows=4",
        "data.max_bytes=40000"]


def make_ckpt(path: Path, *args, shape=None, dtype=None, edit=None) -> Path:
    """A checkpoint in Lightning's layout (state_dict + hyper_parameters) of a random tiny model."""
    cfg, _ = load_config(TINY + [f"data.cache_dir={path.parent / 'data'}", *args])
    shape = shape or build_datamodule(cfg).shape
    torch.manual_seed(1)
    lit = SparseTransformerLM(config_dict(cfg), shape)
    torch.nn.init.normal_(lit.net.head.weight, std=0.3)  # not the zero init: samples depend on the weights
    sd = {k: v.to(dtype) if dtype else v for k, v in lit.state_dict().items()}
    ck = {"state_dict": sd, "hyper_parameters": {"config": config_dict(cfg), "shape": list(shape)},
          "pytorch-lightning_version": "2.6.6"}
    if edit:
        edit(ck)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, path)
    return path


def run_command(main, argv: list[str], capsys) -> tuple:
    """A command's ``main(argv)`` in-process: (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
