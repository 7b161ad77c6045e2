"""Validation bits per dim, recomputed by hand on a tiny model with a ragged last batch and masked
positions: summed nats over every scored token, divided by their count and by ln 2."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from sparse_transformer.cli.train import main
from sparse_transformer.config import load_config
from sparse_transformer.training.module import SparseTransformerLM, config_dict, load_checkpoint
from tests.helpers import rel_err

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8"]


def test_validation_bpd_is_token_weighted_bits_over_every_batch():
    torch.manual_seed(0)
    cfg, _ = load_config(TINY)
    lit = SparseTransformerLM(config_dict(cfg), [8, 8])
    torch.nn.init.normal_(lit.net.head.weight, std=0.5)  # zero-initialised logits would give 8 bits everywhere
    tokens = torch.randint(0, 256, (7, 64))
    mask = torch.rand(7, 64) < torch.linspace(0.2, 1.0, 7)[:, None]  # windows score very different token counts
    batches = [(tokens[i:i + 3], mask[i:i + 3]) for i in range(0, 7, 3)]  # 3, 3 and a ragged 1
    lit.eval()
    with torch.no_grad():
        logits = lit.net(tokens).double()
    nll = F.cross_entropy(logits.reshape(-1, 256), tokens.reshape(-1), reduction="none")
    want = float((nll * mask.reshape(-1)).sum() / mask.sum() / math.log(2))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the batches as they are
    got = trainer.validate(lit, dataloaders=loader, verbose=False)[0]["val/bpd"]
    per_batch = [float((nll.view(7, 64)[i:i + 3] * mask[i:i + 3]).sum() / mask[i:i + 3].sum() / math.log(2))
                 for i in range(0, 7, 3)]
    assert abs(sum(per_batch) / 3 - want) > 1e-3  # the test can tell a mean of batch means from the token mean
    assert abs(got - want) < 1e-4, (got, want)


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
    summary = main(["exp=default", *TINY, "model.n_layer=2", "data.batch_size=4", "logger.kind=none",
                    "trainer.enable_progress_bar=false", "data.val_windows=4", f"run_dir={tmp_path}/run",
                    f"data.cache_dir={tmp_path}/data", "attention.backend=reference", "attention.integration=merged",
                         "trainer.max_steps=3", "optim.warmup_steps=1"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert summary["steps"] == 3 and ckpt.exists()
    ref = load_checkpoint(str(ckpt)).eval()
    blk = load_checkpoint(str(ckpt), backend="blocked").eval()
    assert ref.net.blocks[0].attn.backend == "reference" and blk.net.blocks[0].attn.backend == "blocked"
    x = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        a, b = ref(x), blk(x)
    assert a.abs().sum() > 0 and rel_err(b, a) < 1e-5
