"""The LightningModule: next-token cross-entropy reported in bits per dim, AdamW with linear
warm-up and cosine decay. Lightning does the loops, precision, clipping, DDP and checkpoints."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric

from .model import NetConfig, SparseTransformer

LN2 = math.log(2.0)


class SparseTransformerLM(L.LightningModule):
    """Wraps ``SparseTransformer``. ``config`` is the run's resolved config (a plain dict, saved in
    every checkpoint as hyper-parameters); ``shape`` is the data's shape for the positions."""

    def __init__(self, config: dict, shape: list[int]):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = OmegaConf.create(config)
        self.net = SparseTransformer(NetConfig.from_config(self.cfg, shape))
        self.train_bpd = MeanMetric(nan_strategy="ignore")  # logged per step; a nan step shows nan
        self.val_bpd = MeanMetric()
        self.test_bpd = MeanMetric()
        self.skipped_steps = 0  # batches skipped for a non-finite loss (saved in checkpoints)
        self.bad_in_a_row = 0
        self._bad_window = False  # a batch of the current accumulation window had a non-finite loss

    def configure_model(self) -> None:
        """``model.compile``: torch.compile block by block. The attention path is part of each block's
        graph (flex block masks are prepared by ``SparseTransformer.forward`` outside the compiled
        blocks; ``tests/attention/test_flex_compile.py`` checks there is no graph break)."""
        if self.cfg.model.get("compile") and not getattr(self, "_compiled", False):
            for blk in self.net.blocks:
                blk.compile()
            self._compiled = True

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)

    def _nll(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed negative log-likelihood (nats) over the masked positions, and their count."""
        tokens, mask = batch
        logits = self.net(tokens)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="none")
        m = mask.reshape(-1).to(nll.dtype)
        return (nll * m).sum(), m.sum()

    def training_step(self, batch, batch_idx):
        nll, count = self._nll(batch)
        loss = nll / count
        self._check_finite(loss, batch_idx)
        self.train_bpd(loss.detach() / LN2)  # a skipped step logs its nan/inf, not the last good value
        self.log("train/bpd", self.train_bpd, on_step=True, on_epoch=False, prog_bar=True)
        # the mean over ranks: the loss of the global batch, comparable across GPU counts (one scalar all-reduce)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """``trainer.max_bad_steps``: a nan/inf loss on any rank marks the optimizer step it belongs
        to as skipped on every rank (an all-reduce decides, so the ranks stay in step); that many
        bad batches in a row stop the run."""
        limit = int(self.cfg.trainer.get("max_bad_steps", 0) or 0)
        if not limit or self._trainer is None:
            return
        from .callbacks.fault import NonFiniteLossError, nonfinite_on_any_rank

        bad = nonfinite_on_any_rank(loss, self.trainer.strategy)
        if bad:
            self.skipped_steps += 1
            self.bad_in_a_row += 1
            self._bad_window = True
        else:
            self.bad_in_a_row = 0
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        if not bad:
            return
        where = f"global step {self.trainer.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.bad_in_a_row >= limit:
            raise NonFiniteLossError(
                f"the training loss was nan/inf for {self.bad_in_a_row} batches in a row (trainer.max_bad_steps={limit}), "
                f"the last at {where}; every rank skipped them. Lower optim.lr, check the data, or raise trainer.max_bad_steps")
        from lightning.pytorch.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(f"non-finite training loss at {where} on some rank: step skipped on every rank "
                       f"({self.skipped_steps} skipped so far, {self.bad_in_a_row} in a row of at most {limit})")

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        """Lightning's step, except after a non-finite loss. Skipping by returning None from
        training_step is refused under DDP by Lightning 2.6 (a rank that skips backward leaves the
        others waiting in the gradient all-reduce), so backward runs on every rank (nan gradients
        included) and the update is what is skipped: the closure runs here first, then the
        optimizer steps on its result, or not at all (the step still counts, the schedule moves on)."""
        out = optimizer_closure()  # training_step(s) + backward
        if self._bad_window:
            self._bad_window = False
            optimizer.zero_grad(set_to_none=True)
            return
        optimizer.step(closure=lambda: out)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nonfinite_loss"] = {"skipped_steps": self.skipped_steps, "bad_in_a_row": self.bad_in_a_row}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("nonfinite_loss", {})
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))

    def validation_step(self, batch, batch_idx):
        nll, count = self._nll(batch)
        self.val_bpd.update(nll / count / LN2, weight=count)
        self.log("val/bpd", self.val_bpd, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx):
        nll, count = self._nll(batch)
        self.test_bpd.update(nll / count / LN2, weight=count)
        self.log("test/bpd", self.test_bpd, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Weight decay on the linear layers' weight matrices only; biases, LayerNorms and the
        (token and positional) embeddings are not decayed."""
        decay, no_decay = [], []
        for mod in self.net.modules():
            for name, p in mod.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                (decay if isinstance(mod, torch.nn.Linear) and name == "weight" else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self):
        o = self.cfg.optim
        # Lightning 2.6 refuses gradient clipping with a fused optimizer under mixed precision (it
        # "unscales internally"), so fused AdamW only without clipping; else PyTorch's foreach default
        fused = {"fused": True} if self.device.type == "cuda" and not o.grad_clip else {}
        opt = torch.optim.AdamW(self.param_groups(), lr=o.lr, betas=(o.beta1, o.beta2), **fused)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        warm = min(o.warmup_steps, max(total - 1, 0))
        sched = [torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / max(warm, 1), end_factor=1.0, total_iters=max(warm, 1))]
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total - warm, 1), eta_min=o.lr * o.min_lr_ratio)
        schedule = torch.optim.lr_scheduler.SequentialLR(opt, sched + [cos], milestones=[max(warm, 1)]) if warm else cos
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}


def load_checkpoint(path: str, *, backend: str | None = None, map_location="cpu") -> SparseTransformerLM:
    """Load a trained model; ``backend`` runs its attention elsewhere (e.g. flex-trained on blocked).

    Through the one safe loader (checkpoint.py, ``weights_only``): a file that asks to run code, an
    unreadable file or one from a newer format raises ``CheckpointError`` (one line) and nothing in
    it runs. Modules named in the checkpoint's ``imports`` are not imported: import them first."""
    from .checkpoint import CheckpointError, load

    ck = load(path, label=f"checkpoint {path}", map_location=map_location)
    hp = ck.get("hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(hp.get("config"), dict) or "shape" not in hp \
            or not isinstance(ck.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not a sparse-transformer checkpoint "
                              f"(no hyper_parameters.config, shape and state_dict)")
    lit = SparseTransformerLM(hp["config"], list(hp["shape"]))  # what load_from_checkpoint does, from the one loader
    lit.on_load_checkpoint(ck)
    lit.load_state_dict(ck["state_dict"])
    device = next((t.device for t in ck["state_dict"].values() if isinstance(t, torch.Tensor)), None)
    if device is not None:
        lit = lit.to(device)
    if backend:
        lit.net.set_backend(backend)
    return lit


def config_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
