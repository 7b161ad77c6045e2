import math

import pytest
import torch
import yaml

from sparse_transformer.config import load_config
from sparse_transformer.training.module import SparseTransformerLM, config_dict, load_checkpoint
from sparse_transformer.cli.train import main
from tests.helpers import rel_err

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8",
        "data.batch_size=4", "logger.kind=none", "trainer.enable_progress_bar=false", "data.val_windows=4"]


def _args(tmp_path, *extra):
    return ["exp=default", *TINY, f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", *extra]


def test_fast_dev_run_of_the_default_experiment(tmp_path):
    summary = main(["exp=default", "trainer.fast_dev_run=true", f"run_dir={tmp_path}/run",
                    f"data.cache_dir={tmp_path}/data", "logger.kind=none"])
    assert summary["steps"] == 1
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["exp"] == "default" and cfg["attention"]["pattern"] == "strided"


def test_untrained_model_scores_8_bits_per_byte():
    cfg, _ = load_config(TINY)
    lit = SparseTransformerLM(config_dict(cfg), [8, 8])
    tokens = torch.randint(0, 256, (2, 64))
    nll, count = lit._nll((tokens, torch.ones_like(tokens, dtype=torch.bool)))
    assert abs(nll / count / math.log(2) - 8.0) < 1e-5  # zero-initialised logits: uniform over 256


def test_weight_decay_only_on_linear_weights():
    cfg, _ = load_config(TINY)
    lit = SparseTransformerLM(config_dict(cfg), [8, 8])
    decay, no_decay = lit.param_groups()
    assert decay["weight_decay"] == cfg.optim.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    ids = {id(p) for p in no_decay["params"]}
    assert id(lit.net.tok_emb.weight) in ids and id(lit.net.blocks[0].ln1.weight) in ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(lit.parameters()))


@pytest.mark.slow
def test_checkpoint_moves_between_backends(tmp_path):
    summary = main(_args(tmp_path, "attention.backend=reference", "attention.integration=merged",
                         "trainer.max_steps=3", "optim.warmup_steps=1"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert summary["steps"] == 3 and ckpt.exists()
    ref = load_checkpoint(str(ckpt)).eval()
    blk = load_checkpoint(str(ckpt), backend="blocked").eval()
    assert ref.net.blocks[0].attn.backend == "reference" and blk.net.blocks[0].attn.backend == "blocked"
    x = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        a, b = ref(x), blk(x)
    assert a.abs().sum() > 0 and rel_err(b, a) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("precision,clip,strategy", [("bf16-mixed", 1.0, "auto"), ("16-mixed", 1.0, "auto"),
                                                     ("bf16-mixed", 0.0, "auto"), ("bf16-mixed", 1.0, "fsdp")])
def test_training_on_a_gpu_with_mixed_precision_and_clipping(tmp_path, precision, clip, strategy):
    # Lightning refuses clipping with a fused AdamW under mixed precision, and clipping by norm under
    # FSDP: the module clips itself (fused AdamW throughout), the real `make train` path on a GPU
    summary = main(_args(tmp_path, "trainer.accelerator=gpu", "trainer.devices=1", f"trainer.precision={precision}",
                         f"trainer.strategy={strategy}", f"optim.grad_clip={clip}", "trainer.max_steps=20",
                         "optim.warmup_steps=5", "optim.lr=3e-3"))
    assert summary["steps"] == 20
    assert math.isfinite(summary["val_bpd_end"]) and summary["val_bpd_end"] < summary["val_bpd_start"] - 0.5


@pytest.mark.parametrize("backend", ["flex", "triton"])
def test_an_explicit_backend_that_cannot_run_here_is_one_line_before_anything_is_written(tmp_path, backend, capsys,
                                                                                         monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the tests' interpreter would let triton run on a CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, f"attention.backend={backend}"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: attention.backend={backend}") and "attention.backend=auto" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,message", [
    (["model.n_head=2", "attention.summary_heads=2"], "attention.summary_heads=2 exceeds the 1 heads that take a summary"),
    (["model.n_head=4", "attention.summary_heads=4"], "attention.summary_heads=4 exceeds the 2 heads that take a summary"),
])
def test_a_fixed_stack_that_leaves_pairs_unreachable_is_refused(tmp_path, capsys, extra, message):
    """Multi-head fixed gives summary heads (h >= H/2) slice h % summary_heads: with more slices than
    summary heads, some slice is no head's, and its cells reach no later block at any depth."""
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, "attention.pattern=fixed", "attention.summary=2", "attention.integration=multihead", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()


def test_the_stack_check_counts_unreachable_pairs_and_names_a_fix():
    """What the refusal rests on: the stack's reach at any depth (the multihead case the count
    check refuses first really leaves pairs unreachable; summary_heads=1 connects)."""
    from omegaconf import OmegaConf

    from sparse_transformer.training.preflight import _stack
    from sparse_transformer.attention.connectivity import stack_unreachable

    a = OmegaConf.create(dict(pattern="fixed", stride=8, summary=2, summary_heads=2, integration="multihead", layout=None))
    assert int(stack_unreachable(_stack(a, 2, 2, 24)).sum()) > 0
    assert int(stack_unreachable(_stack(a, 2, 2, 24, summary_heads=1)).sum()) == 0
    strided = OmegaConf.create(dict(pattern="strided", stride=8, summary=None, summary_heads=1, integration="interleaved", layout=None))
    assert int(stack_unreachable(_stack(strided, 2, 2, 24)).sum()) == 0
