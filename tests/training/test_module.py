"""Validation bits per dim, recomputed by hand on a tiny model with a ragged last batch and masked
positions: summed nats over every scored token, divided by their count and by ln 2."""

import math

import lightning as L
import torch
import torch.nn.functional as F

from sparse_transformer.config import load_config
from sparse_transformer.training.module import SparseTransformerLM, config_dict

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
