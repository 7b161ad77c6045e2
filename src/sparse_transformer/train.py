"""Train: ``python -m sparse_transformer.train exp=<name> key=value ...`` (or ``make train``).

The command line is validated before torch and Lightning are imported (exit 2, one line, nothing
written). Then: data prepared once, run folder named once by rank 0 (with the resolved
config.yaml), validation bpd before training, Lightning's fit, validation after, and a summary.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .config import main_config, to_yaml

RUN_ENV = "SPARSE_TRANSFORMER_RUN_DIR"


def is_rank_zero() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def run_dir(cfg) -> Path:
    """Named once: by cfg.run_dir, or by rank 0, which passes it to the processes Lightning starts."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if os.environ.get(RUN_ENV):
        return Path(os.environ[RUN_ENV])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / cfg.exp / stamp
    k = 1
    while path.exists():
        path = Path("runs") / cfg.exp / f"{stamp}-{k}"
        k += 1
    os.environ[RUN_ENV] = str(path)
    return path


def precision(cfg) -> str:
    import torch

    p = str(cfg.trainer.precision)
    if p == "auto":
        return "bf16-mixed" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "32-true"
    return {"32": "32-true", "64": "64-true"}.get(p, p)


def build_logger(cfg, out: Path):
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out), name="", version="")
    from .callbacks.loggers import build_wandb_logger

    return build_wandb_logger(cfg, out)


def build_trainer(cfg, out: Path, callbacks=None, logger=None):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    t = cfg.trainer
    cbs = [ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last=True, save_top_k=0, every_n_train_steps=None)]
    if logger:
        cbs.append(LearningRateMonitor(logging_interval="step"))
    cbs += callbacks or []
    kwargs = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=precision(cfg), max_steps=t.max_steps, max_epochs=t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else 1),
        max_time=t.max_time, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip or None, log_every_n_steps=t.log_every_n_steps,
        fast_dev_run=t.fast_dev_run, enable_progress_bar=t.enable_progress_bar, deterministic=t.deterministic,
        default_root_dir=str(out), logger=logger, callbacks=cbs, num_sanity_val_steps=0,
        inference_mode=False,  # no_grad instead: metric states and cached masks outlive validate()
        reload_dataloaders_every_n_epochs=1,  # new random training windows each epoch
    )
    if t.val_check_interval is not None:  # > 1: every that many steps (across epochs); <= 1: a fraction of an epoch
        v = t.val_check_interval
        kwargs["val_check_interval"] = int(v) if v > 1 else float(v)
        kwargs["check_val_every_n_epoch"] = None if v > 1 else 1
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return L.Trainer(**kwargs)


def main(argv: list[str] | None = None) -> dict:
    cfg = main_config(argv)  # exits 2 on a bad command line, before any heavy import

    import lightning as L
    import torch

    from .callbacks import build_callbacks
    from .callbacks.loggers import finish
    from .data import build_datamodule
    from .data.store import DataError
    from .lit import SparseTransformerLM, config_dict

    if cfg.imports:
        import importlib

        for mod in cfg.imports:
            importlib.import_module(mod)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    dm = build_datamodule(cfg)
    try:
        dm.prepare_data()
        dm.setup("fit")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    out = run_dir(cfg)
    rank0 = is_rank_zero()
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
    lit = SparseTransformerLM(config_dict(cfg), dm.shape)
    logger = build_logger(cfg, out)
    trainer = build_trainer(cfg, out, callbacks=build_callbacks(cfg, out, logger), logger=logger)
    entropy = dm.entropy() if hasattr(dm, "entropy") else None
    if rank0:
        print(f"run folder: {out}")
        print(f"model: {lit.net.num_params() / 1e6:.2f}M parameters; data shape {dm.shape}; precision {precision(cfg)}")
        if entropy is not None:
            print(f"unigram entropy of the training split: {entropy:.3f} bits/byte")

    start_bpd = None
    t0 = time.time()
    if not cfg.trainer.fast_dev_run:
        res = trainer.validate(lit, datamodule=dm, verbose=False)
        start_bpd = res[0].get("val/bpd") if res else None
    ckpt = None
    if cfg.resume:
        ckpt = str(out / "checkpoints" / "last.ckpt") if cfg.resume == "last" else cfg.resume
    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt)
    metrics = _scalars({**trainer.logged_metrics, **trainer.callback_metrics})  # validate() below resets them
    end_bpd = None
    if not cfg.trainer.fast_dev_run:
        res = trainer.validate(lit, datamodule=dm, verbose=False)
        end_bpd = res[0].get("val/bpd") if res else None
    minutes = (time.time() - t0) / 60
    summary = {
        "exp": cfg.exp, "run_dir": str(out), "steps": int(trainer.global_step), "minutes": round(minutes, 2),
        "val_bpd_start": start_bpd, "val_bpd_end": end_bpd, "unigram_entropy": entropy,
        "params": lit.net.num_params(),
        # the last value of every logged metric (what W&B's run summary keeps), read by sweeps
        "metrics": {**metrics, **_scalars({**trainer.logged_metrics, **trainer.callback_metrics})},
    }
    if rank0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"steps {summary['steps']} in {minutes:.1f} min; val bpd {_fmt(start_bpd)} -> {_fmt(end_bpd)}"
              + (f" (unigram entropy {entropy:.3f})" if entropy is not None else ""))
        print(f"run folder: {out} (config.yaml, checkpoints/last.ckpt, summary.json)")
    finish(summary)
    return summary


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in sorted(metrics.items()) if getattr(v, "numel", lambda: 1)() == 1}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()
