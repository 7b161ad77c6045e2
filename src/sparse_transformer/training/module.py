"""The LightningModule: next-token cross-entropy reported in bits per dim, AdamW with linear
warm-up and cosine decay. Lightning does the loops, precision, DDP and checkpoints; the optimizer
step (gradient clipping, skipping a non-finite step) is written here, without a host sync."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric

from ..checkpoint import CheckpointError, load
from ..model import SparseTransformer, compile_network
from .evaluation import LN2, bits_per_dim, token_nll
from .fault import BadSteps, nonfinite_on_any_rank

__all__ = ["LN2", "SparseTransformerLM", "config_dict", "load_checkpoint"]


class SparseTransformerLM(L.LightningModule):
    """Wraps ``SparseTransformer``. ``config`` is the run's resolved config (a plain dict, saved in
    every checkpoint as hyper-parameters); ``shape`` is the data's shape for the positions."""

    def __init__(self, config: dict, shape: list[int]):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = OmegaConf.create(config)
        self.net = SparseTransformer.from_config(self.cfg, shape)
        # nan_strategy="disable": no `if nans.any()` (a host sync) per batch; a nan batch makes the mean nan
        # token-weighted means. Not nan_strategy="disable": torchmetrics 1.9 then drops the weights
        # (a mean of batch means, wrong for a ragged last batch: tests/test_bpd.py); a nan is kept as
        # nan (the mean shows it), at one host read per validation batch, not per training step
        self.val_bpd = MeanMetric(nan_strategy=float("nan"))
        self.test_bpd = MeanMetric(nan_strategy=float("nan"))
        self.bad_steps = BadSteps(limit=int(self.cfg.trainer.get("max_bad_steps", 0) or 0))
        self._losses: torch.Tensor | None = None  # this accumulation window's losses summed: nan/inf if any is
        self._skip: torch.Tensor | None = None  # the step being taken is skipped: 1.0 (device)
        self._compiled = False
        self.compile_mode = self.cfg.model.get("compile_mode", "model")

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a non-finite loss or gradient norm, as of the last read."""
        return self.bad_steps.skipped

    def configure_model(self) -> None:
        """``model.compile``: ``compile_network`` in ``model.compile_mode``, with static shapes. Each
        distinct input shape and mode (a training batch, a short last batch, validation under no_grad
        with its own batch size) compiles once, on first use: dynamic shapes failed here (Inductor's
        ``NameError: name 's48' is not defined`` on a short batch, torch 2.11)."""
        if self.cfg.model.get("compile") and not self._compiled:
            compile_network(self.net, self.compile_mode)
            self._compiled = True

    def _run(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._compiled:
            # a compiled network reads the attention plans; they are built outside its graph
            self.net.prepare(tokens.shape[1], tokens.device)
            if self.compile_mode == "cudagraphs":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are done with
        return self.net(tokens)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self._run(idx)

    def _nll(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed negative log-likelihood (nats) over the masked positions, and their count."""
        tokens, mask = batch
        return token_nll(self._run(tokens), tokens, mask).sum(), mask.sum().float()

    def training_step(self, batch, batch_idx):
        nll, count = self._nll(batch)
        loss = nll / count
        self._losses = loss.detach() if self._losses is None else self._losses + loss.detach()
        # tensors, read on the host only when Lightning writes them; a skipped step logs its nan/inf.
        # Not prog_bar: Lightning reads those after every batch (the progress bar reads it itself)
        self.log("train/bpd", bits_per_dim(nll.detach(), count), on_step=True, on_epoch=False)
        if self.trainer.world_size == 1 or self.trainer._logger_connector.should_update_logs:
            # the mean over ranks: the loss of the global batch, comparable across GPU counts. Under
            # DDP only on the steps Lightning writes: its sync_dist puts a barrier (a host sync) first
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        """Lightning's step, with the gradients clipped here and a non-finite step skipped on the
        device. The closure (training_step(s) and backward; every rank runs backward, since a rank
        that skipped it would leave the others waiting in DDP's gradient all-reduce) runs first; then
        the total gradient norm is taken (and clipped to ``optim.grad_clip``), and a loss or norm that
        is nan/inf on any rank sets fused AdamW's ``found_inf``: its kernel leaves the weights, both
        moments and the step count as they were. The step still counts (the schedule moves on).
        Nothing here reads the device: ``BadSteps`` counts on the host every ``log_every_n_steps``."""
        out = optimizer_closure()
        raw = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside Lightning's wrapper
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            # fp16: clip the true gradients; the scaler's own step then skips an overflow as usual
            # (its found_inf; Lightning leaves unscaling to a fused optimizer, so it is done here)
            scaler.unscale_(raw)
        norm = self._clip_gradients()
        losses, self._losses = self._losses, None
        # with a scaler an overflowing (scaled) gradient is its business, not a bad step
        skip = nonfinite_on_any_rank(losses, None if scaler is not None else norm)
        step = self.trainer.global_step
        self._skip = skip
        try:
            optimizer.step(closure=lambda: out)
        finally:
            self._skip = None
            if getattr(raw, "found_inf", None) is not None:  # ours; a scaler deletes its own
                del raw.found_inf
        self.bad_steps.record(skip, step, epoch, batch_idx)
        t = self.trainer
        last = t.fit_loop.epoch_loop.batch_progress.is_last_batch or (0 < t.max_steps <= step + 1)
        if t._logger_connector.should_update_logs or last:  # the steps Lightning logs, and epoch ends
            self._read_bad_steps(log=True)

    def _set_found_inf(self, optimizer, args, kwargs):
        """Step pre-hook: fused AdamW skips its update where ``found_inf`` is 1 (it is also how a
        GradScaler skips an overflow, so a scaler's flag is kept: the larger of the two)."""
        if self._skip is not None:
            theirs = getattr(optimizer, "found_inf", None)
            optimizer.found_inf = self._skip if theirs is None else torch.maximum(theirs, self._skip)

    def _clip_gradients(self) -> torch.Tensor:
        """The total gradient norm before clipping (a device tensor), clipped to ``optim.grad_clip``
        when set. Not through Lightning's ``gradient_clip_val``: Lightning 2.6 refuses it with a fused
        optimizer under mixed precision, and its FSDP plugin refuses clipping by norm."""
        clip = float(self.cfg.optim.grad_clip or 0.0)
        root = self.trainer.strategy.model
        if torch.distributed.is_available():
            # lazy: the only function-local import here; torch.distributed is optional in some torch builds
            from torch.distributed.fsdp import FullyShardedDataParallel

            if isinstance(root, FullyShardedDataParallel):  # each rank holds shards: FSDP reduces their norms
                return root.clip_grad_norm_(clip or math.inf)
        params = [p for p in self.parameters() if p.grad is not None]
        if clip:
            return torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        return torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)

    def _read_bad_steps(self, log: bool = False) -> None:
        """Count the skipped steps recorded since the last read (one host read), warn about them,
        and stop the run (NonFiniteLossError, one line) when ``trainer.max_bad_steps`` were in a row."""
        bad = self.bad_steps.read()
        if bad:
            rank_zero_warn(self.bad_steps.warning(bad))
        if log:
            self.log("train/skipped_steps", float(self.bad_steps.skipped), on_step=True, on_epoch=False)
        self.bad_steps.check()

    def on_train_start(self) -> None:
        self.bad_steps.start(every=self.trainer.log_every_n_steps)
        self._losses = self._skip = None

    def on_train_end(self) -> None:
        self._read_bad_steps()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._read_bad_steps()  # counts as of this step; a run past its limit stops before anything is written
        checkpoint["nonfinite_loss"] = self.bad_steps.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.bad_steps.load_state_dict(checkpoint.get("nonfinite_loss", {}))
        # optimizer.load_state_dict restores each group's options, ``fused`` and ``foreach`` too: a
        # checkpoint from before AdamW was always fused would turn off the kernel whose found_inf
        # skips a bad step (the foreach path refuses found_inf), so those options are today's
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group.update(fused=True, foreach=None)

    def validation_step(self, batch, batch_idx):
        nll, count = self._nll(batch)
        self.val_bpd.update(bits_per_dim(nll, count), weight=count)
        self.log("val/bpd", self.val_bpd, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx):
        nll, count = self._nll(batch)
        self.test_bpd.update(bits_per_dim(nll, count), weight=count)
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
        # fused (CUDA and CPU): one kernel per step, and the found_inf skip of optimizer_step
        opt = torch.optim.AdamW(self.param_groups(), lr=o.lr, betas=(o.beta1, o.beta2), fused=True)
        opt.register_step_pre_hook(self._set_found_inf)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        warm = min(o.warmup_steps, max(total - 1, 0))
        if self._trainer is not None and o.warmup_steps >= total and not self.trainer.fast_dev_run:
            rank_zero_warn(f"optim.warmup_steps={o.warmup_steps} is not below the run's {total} optimizer steps: the "
                           f"learning rate rises for {warm} steps, reaches optim.lr only at the end and never decays; "
                           f"use fewer, e.g. optim.warmup_steps={max(1, total // 10)}")
        sched = [torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / max(warm, 1), end_factor=1.0, total_iters=max(warm, 1))]
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total - warm, 1), eta_min=o.lr * o.min_lr_ratio)
        schedule = torch.optim.lr_scheduler.SequentialLR(opt, sched + [cos], milestones=[max(warm, 1)]) if warm else cos
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}


def load_checkpoint(path: str, *, backend: str | None = None, map_location="cpu") -> SparseTransformerLM:
    """Load a trained model; ``backend`` runs its attention elsewhere (e.g. flex-trained on blocked).

    Through the one safe loader (checkpoint.py, ``weights_only``): a file that asks to run code, an
    unreadable file or one from a newer format raises ``CheckpointError`` (one line) and nothing in
    it runs. Modules named in the checkpoint's ``imports`` are not imported: import them first."""
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
