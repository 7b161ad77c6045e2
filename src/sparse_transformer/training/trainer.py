"""The Trainer a config asks for, and ``fit``: a whole training run as ``python -m
sparse_transformer.train`` does it, without the command line (the CLI checks and names the run
folder first: cli/train.py).

``fit``: data prepared once, the resolved config.yaml (rank 0), validation bits per dim before
training, Lightning's fit, validation after, and ``summary.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchmetrics import Metric

from .. import files
from ..checkpoint import legacy_globals
from ..config import to_yaml
from ..data import build_datamodule, prepare_or_exit
from ..model import Block
from .callbacks.attention_maps import AttentionMapsCallback
from .callbacks.progress import console_callbacks
from .callbacks.samples import SamplesCallback
from .callbacks.throughput import WindowThroughput
from .fault import AtomicCheckpointIO, ResumeState, SigtermStop, StepTimer
from .loggers import build_logger, finish, quiet_logs
from .module import SparseTransformerLM, config_dict


def precision(cfg) -> str:
    p = str(cfg.trainer.precision)
    if p == "auto":
        return "bf16-mixed" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "32-true"
    return {"32": "32-true", "64": "64-true"}.get(p, p)


class BlockFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy that keeps its root FSDP unit from one stage to the next (``fit`` runs
    validate, fit, validate on one module). Lightning's auto-wrap replaces the blocks in place; at the
    next stage it finds them wrapped, drops the policy and wraps no root (Lightning 2.6, its issue
    #19015). Without a root the blocks' inputs are not cast and their post-backward callback never
    runs: under bf16-mixed the blocks' parameters stay unregistered views, missing from the next
    checkpoint's state dict (an AssertionError on an H200; tests/training/test_trainer.py).
    Being a subclass, it skips Lightning's check for a GPU: preflight.py refuses fsdp without one."""

    def _setup_model(self, model):
        root = getattr(self, "_fsdp_root", None)
        if root is not None and root.module is model:
            # what Lightning's own set-up does after wrapping: metrics are not FSDP's to move, and the
            # last stage's teardown may have left their states on the CPU (an H200: val MeanMetric)
            for m in root.modules():
                if isinstance(m, Metric):
                    m.to(self.root_device)
            return root
        self._fsdp_root = super()._setup_model(model)
        return self._fsdp_root


def build_strategy(cfg):
    """auto | ddp | ddp_spawn as Lightning names them; fsdp sharded block by block."""
    if cfg.trainer.strategy == "fsdp":
        return BlockFSDP(auto_wrap_policy={Block})
    return cfg.trainer.strategy


# ------------------------------------------------------------------------------------------------
# Callbacks
# ------------------------------------------------------------------------------------------------
def build_callbacks(cfg, out: Path, logger=None) -> list:
    """The callbacks the ``callbacks`` section asks for; media go under ``out/samples`` and ``out/attention``."""
    c = cfg.callbacks
    cbs = []
    s = c.samples
    if s.every_n_steps or s.at_end:
        cbs.append(_eager(SamplesCallback(Path(out) / "samples", every_n_steps=s.every_n_steps, at_end=s.at_end,
                                          count=s.count, length=s.length, temperature=s.temperature, seed=cfg.seed)))
    a = c.attention_maps
    if a.enabled:
        layers = list(a.layers) if a.layers is not None else None
        cbs.append(_eager(AttentionMapsCallback(Path(out) / "attention", every_n_steps=a.every_n_steps, example=a.example,
                                                queries=list(a.queries), layers=layers)))
    tp = c.throughput
    if tp.enabled and logger:
        cbs.append(WindowThroughput(peak_flops=tp.peak_flops, window=tp.window, warmup=tp.warmup))
    return cbs


def _eager(callback):
    """Run the callback's training hooks with torch.compile ignored (``model.compile``): sampling
    token by token and drawing attention maps of one window through a network compiled for static
    shapes would compile it once per length and batch (and replay no CUDA graph)."""
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    if stance is None:
        return callback
    for name in ("on_train_start", "on_train_batch_end", "on_train_end"):
        hook = getattr(callback, name)

        def run(*args, _hook=hook, **kwargs):
            with stance("force_eager"):
                return _hook(*args, **kwargs)

        setattr(callback, name, run)
    return callback


def _run_callbacks(cfg, out: Path, logger) -> list:
    """Checkpoints (last.ckpt and, with trainer.save_best, best.ckpt), resume state, the console,
    the LR monitor, max_time and early stopping. The checkpoints before last.ckpt are kept by
    renaming (AtomicCheckpointIO, trainer.keep_checkpoints), not by ModelCheckpoint: no second write."""
    t = cfg.trainer
    ckdir = out / "checkpoints"
    cbs = [ModelCheckpoint(dirpath=str(ckdir), save_last=True, save_top_k=0, every_n_train_steps=t.checkpoint_every_n_steps,
                           enable_version_counter=False),  # always last.ckpt, never last-v1.ckpt
           ResumeState(ckdir / "last.ckpt")]
    if t.get("save_best", False) and t.limit_val_batches != 0:
        # after each validation (not at the epoch's end, when val/bpd may be an epoch old), if it improved
        cbs.append(ModelCheckpoint(dirpath=str(ckdir), filename="best", monitor="val/bpd", mode="min", save_top_k=1,
                                   save_last=False, save_on_train_epoch_end=False, auto_insert_metric_name=False,
                                   enable_version_counter=False))
    if logger:
        cbs.append(LearningRateMonitor(logging_interval="step"))
    # The host reads the device every log_every_n_steps steps, not every step: the progress bar's
    # metrics (.item()) at that rate, and max_time checked then (under DDP each check is a broadcast)
    cbs += console_callbacks(t.enable_progress_bar, t.log_every_n_steps)
    if t.max_time is not None:
        cbs.append(StepTimer(duration=t.max_time, interval="step"))
    if t.get("early_stopping", 0):
        cbs.append(EarlyStopping(monitor="val/bpd", mode="min", patience=t.early_stopping, check_on_train_epoch_end=False))
    return cbs


def build_trainer(cfg, out: Path, callbacks=None, logger=None) -> L.Trainer:
    quiet_logs()
    t = cfg.trainer
    kwargs = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(cfg),
        precision=precision(cfg), max_steps=t.max_steps,
        max_epochs=t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else 1),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=None,  # optim.grad_clip: clipped in the LightningModule's optimizer_step (module.py)
        log_every_n_steps=t.log_every_n_steps,
        fast_dev_run=t.fast_dev_run, enable_progress_bar=t.enable_progress_bar, deterministic=t.deterministic,
        default_root_dir=str(out), logger=logger, callbacks=_run_callbacks(cfg, out, logger) + list(callbacks or []),
        num_sanity_val_steps=0, plugins=[AtomicCheckpointIO(keep=t.get("keep_checkpoints", 1))],
        inference_mode=False,  # no_grad instead: metric states and cached masks outlive validate()
        reload_dataloaders_every_n_epochs=1,  # new random training windows each epoch
        use_distributed_sampler=False,  # the DataModule deals each rank its share (data/base.py RankShard)
    )
    if t.val_check_interval is not None:  # > 1: every that many steps (across epochs); <= 1: a fraction of an epoch
        v = t.val_check_interval
        kwargs["val_check_interval"] = int(v) if v > 1 else float(v)
        kwargs["check_val_every_n_epoch"] = None if v > 1 else 1
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return L.Trainer(**kwargs)


# ------------------------------------------------------------------------------------------------
# A whole run
# ------------------------------------------------------------------------------------------------
def fit(cfg, out: Path, ckpt: str | None = None, rank0: bool = True) -> dict:
    """Train ``cfg`` in run folder ``out`` (resuming from ``ckpt``); rank 0 writes config.yaml and
    summary.json and prints. Returns the summary. Raises ``fault.SigtermStop`` (last.ckpt saved) and
    ``fault.NonFiniteLossError``; bad data exits 2 (``data.prepare_or_exit``)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    dm = build_datamodule(cfg)
    prepare_or_exit(dm)
    if rank0:
        files.write_text(out / "config.yaml", to_yaml(cfg))
    lit = SparseTransformerLM(config_dict(cfg), dm.shape)
    logger = build_logger(cfg, out, resuming=ckpt is not None)
    trainer = build_trainer(cfg, out, callbacks=build_callbacks(cfg, out, logger), logger=logger)
    entropy = dm.entropy() if hasattr(dm, "entropy") else None
    if rank0:
        print(f"run folder: {out}")
        print(f"model: {lit.net.num_params() / 1e6:.2f}M parameters; data shape {dm.shape}; precision {precision(cfg)}")
        if entropy is not None:
            print(f"unigram entropy of the training split: {entropy:.3f} bits/byte")
        if ckpt:
            print(f"resuming from {ckpt}")
    t0 = time.time()
    start_bpd = _validate_and_fit(cfg, trainer, lit, dm, ckpt, out)
    metrics = _scalars({**trainer.logged_metrics, **trainer.callback_metrics})  # validate() below resets them
    end_bpd = None if cfg.trainer.fast_dev_run else _val_bpd(trainer.validate(lit, datamodule=dm, verbose=False))
    minutes = (time.time() - t0) / 60
    summary = {
        "exp": cfg.exp, "run_dir": str(out), "steps": int(trainer.global_step), "minutes": round(minutes, 2),
        "val_bpd_start": start_bpd, "val_bpd_end": end_bpd, "unigram_entropy": entropy,
        "params": lit.net.num_params(), "skipped_steps": lit.skipped_steps,
        # the last value of every logged metric (what W&B's run summary keeps), read by sweeps
        "metrics": {**metrics, **_scalars({**trainer.logged_metrics, **trainer.callback_metrics})},
    }
    if rank0:
        files.write_json(out / "summary.json", summary)
        print(f"steps {summary['steps']} in {minutes:.1f} min; val bpd {_fmt(start_bpd)} -> {_fmt(end_bpd)}"
              + (f" (unigram entropy {entropy:.3f})" if entropy is not None else ""))
        print(f"run folder: {out} (config.yaml, checkpoints/last.ckpt, summary.json)")
    finish(summary)
    return summary


def _validate_and_fit(cfg, trainer, lit, dm, ckpt: str | None, out: Path) -> float | None:
    """Validation bpd before training (None under fast_dev_run), then Lightning's fit. Lightning's
    own loads of ``ckpt`` are weights_only, allowing only the numpy RNG state of checkpoints written
    before the format stamp (checkpoint.legacy_globals)."""
    start_bpd = None
    try:
        with legacy_globals():
            if not cfg.trainer.fast_dev_run:  # a resumed run starts from the checkpoint's weights
                start_bpd = _val_bpd(trainer.validate(lit, datamodule=dm, verbose=False, ckpt_path=ckpt, weights_only=True))
            trainer.fit(lit, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    except SIGTERMException:
        raise SigtermStop(f"stopped by SIGTERM at step {trainer.global_step}; checkpoint {out / 'checkpoints' / 'last.ckpt'}; "
                          f"continue with resume=last run_dir={out}") from None
    return start_bpd


def _val_bpd(results: list) -> float | None:
    return results[0].get("val/bpd") if results else None


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in sorted(metrics.items()) if getattr(v, "numel", lambda: 1)() == 1}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
