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
_named_here: str | None = None  # the folder this process named (a later main() here names a new one)


class LaunchError(ValueError):
    """The processes of a job cannot agree on a run folder; one line."""


def is_rank_zero() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def shared_run_name() -> str | None:
    """The folder name every process of an externally launched multi-process job derives alike (no
    communication needed before the run folder exists): ``slurm-<job id>`` under ``srun`` with more
    than one task, ``torchrun-<rdzv id>`` under torchrun. A requeued SLURM job or a restarted
    torchrun group keeps its id, so ``resume=auto`` continues it. None for a single process and for
    processes Lightning starts itself (rank 0 passes its folder to them through RUN_ENV)."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        job = env["SLURM_JOB_ID"]
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        return f"slurm-{job}"
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 and "TORCHELASTIC_RUN_ID" in env:
        rid = env["TORCHELASTIC_RUN_ID"]
        if rid in ("", "none"):
            raise LaunchError("torchrun without --rdzv-id (or --standalone) gives every job the same id: "
                              "pass --rdzv-id=<job name> or run_dir=<a folder every node sees>")
        return f"torchrun-{rid[:8] if len(rid) == 36 and rid.count('-') == 4 else rid}"  # --standalone: a uuid
    return None


def run_dir(cfg) -> Path:
    """Named once for the whole job: cfg.run_dir; else the folder rank 0 named and passed to the
    processes Lightning starts (RUN_ENV, also set by the sweep runner); else a name every rank of an
    external launcher derives alike (shared_run_name); else a new runs/<exp>/<time> by rank 0."""
    global _named_here
    if cfg.run_dir:
        return Path(cfg.run_dir)
    given = os.environ.get(RUN_ENV)
    if given and (not is_rank_zero() or given != _named_here):
        return Path(given)
    shared = shared_run_name()
    if shared:
        return Path("runs") / cfg.exp / shared
    if not is_rank_zero():
        raise LaunchError(f"process {os.environ.get('RANK', '?')} was not started by rank 0 and its launcher gives no "
                          f"job id: pass run_dir=<a folder every process sees>")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / cfg.exp / stamp
    k = 1
    while path.exists():
        path = Path("runs") / cfg.exp / f"{stamp}-{k}"
        k += 1
    os.environ[RUN_ENV] = _named_here = str(path)
    return path


def precision(cfg) -> str:
    import torch

    p = str(cfg.trainer.precision)
    if p == "auto":
        return "bf16-mixed" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "32-true"
    return {"32": "32-true", "64": "64-true"}.get(p, p)


def build_logger(cfg, out: Path, resuming: bool = False):
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        from .callbacks.fault import RunCSVLogger

        return RunCSVLogger(save_dir=str(out), keep=resuming)  # <out>/metrics.csv, continued on resume
    from .callbacks.loggers import build_wandb_logger

    return build_wandb_logger(cfg, out)


def build_strategy(cfg):
    """auto | ddp | ddp_spawn as Lightning names them; fsdp sharded block by block."""
    if cfg.trainer.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from .model import Block

        return FSDPStrategy(auto_wrap_policy={Block})
    return cfg.trainer.strategy


def build_trainer(cfg, out: Path, callbacks=None, logger=None):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from .callbacks.fault import AtomicCheckpointIO, ResumeState, StepTimer
    from .callbacks.progress import ProgressBar

    t = cfg.trainer
    ckdir = out / "checkpoints"
    cbs = [ModelCheckpoint(dirpath=str(ckdir), save_last=True, save_top_k=0, every_n_train_steps=t.checkpoint_every_n_steps,
                           enable_version_counter=False),  # always last.ckpt, never last-v1.ckpt
           ResumeState(ckdir / "last.ckpt")]
    if logger:
        cbs.append(LearningRateMonitor(logging_interval="step"))
    # The host reads the device every log_every_n_steps steps, not every step: the progress bar's
    # metrics (.item()) at that rate, and max_time checked then (under DDP each check is a broadcast)
    if t.enable_progress_bar:
        cbs.append(ProgressBar(refresh_rate=t.log_every_n_steps))
    if t.max_time is not None:
        cbs.append(StepTimer(duration=t.max_time, interval="step"))
    cbs += callbacks or []
    kwargs = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(cfg),
        precision=precision(cfg), max_steps=t.max_steps, max_epochs=t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else 1),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=None,  # optim.grad_clip: clipped in the LightningModule's optimizer_step (lit.py)
        log_every_n_steps=t.log_every_n_steps,
        fast_dev_run=t.fast_dev_run, enable_progress_bar=t.enable_progress_bar, deterministic=t.deterministic,
        default_root_dir=str(out), logger=logger, callbacks=cbs, num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
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


def resume_path(cfg, out: Path) -> str | None:
    last = out / "checkpoints" / "last.ckpt"
    if cfg.resume == "last":
        return str(last)
    if cfg.resume == "auto":
        return str(last) if last.is_file() else None
    return cfg.resume or None


def check_resume_checkpoint(cfg, ckpt: str) -> None:
    """The checkpoint to resume from, read once by the one safe loader (``weights_only``, tensors
    mapped, not read) before anything is written: a file that asks to run code, an unreadable one
    or one of a newer format is refused in one line (CheckpointError) and nothing in it runs.
    Lightning's own load in fit/validate is ``weights_only`` too (main)."""
    from .checkpoint import load

    label = f"resume={ckpt}" if cfg.resume not in ("last", "auto") else f"resume={cfg.resume}: {ckpt}"
    load(ckpt, label=label, mmap=True)


def check_runtime(cfg) -> None:
    """What the config check cannot know without torch: is there a GPU for fsdp and fp16."""
    import torch

    t = cfg.trainer
    gpu = torch.cuda.is_available() and t.accelerator != "cpu"
    if not gpu and t.strategy == "fsdp":
        raise LaunchError("trainer.strategy=fsdp needs a GPU and none is available; use ddp (gloo on CPU) or auto")
    if not gpu and str(t.precision) == "16-mixed":
        raise LaunchError("trainer.precision=16-mixed needs a GPU and none is available; use bf16-mixed or 32")
    if not gpu and cfg.model.compile and cfg.model.compile_mode == "cudagraphs":
        raise LaunchError("model.compile_mode=cudagraphs needs a GPU and none is available; use model or blocks")
    check_backend(cfg, torch.device("cuda" if gpu else "cpu"))
    check_pattern_stack(cfg)


def _stack(a, n_layer: int, n_head: int, n: int, **change) -> list:
    from .attention.connectivity import layer_reach
    from .attention.patterns import layer_heads

    kw = {**dict(summary=a.summary, summary_heads=a.summary_heads, integration=a.integration,
                 layout=list(a.layout) if a.layout else None), **change}
    return [layer_reach(layer_heads(a.pattern, n_head, a.stride, layer=r, **kw), n) for r in range(n_layer)]


def check_pattern_stack(cfg) -> None:
    """The configured stack must connect every j <= i at some depth (issue: multihead fixed with
    several summary slices leaves the slices no summary head takes unreachable), and summary_heads
    may not exceed the heads that take a summary. One line naming a setting that works."""
    from .attention.connectivity import stack_unreachable
    from .attention.constants import PAIRS
    from .attention.patterns import layer_heads

    m, a = cfg.model, cfg.attention
    if a.pattern not in PAIRS and not a.layout:  # a primitive alone (stride, summary, ...) is a part by design
        return
    takers = max(sum(any(p.name == "summary" for p in parts) for parts in
                     layer_heads(a.pattern, m.n_head, a.stride, layer=r, summary=a.summary, summary_heads=1,
                                 integration=a.integration, layout=list(a.layout) if a.layout else None))
                 for r in range(min(m.n_layer, 8)))
    if takers and a.summary_heads > takers:
        raise LaunchError(f"attention.summary_heads={a.summary_heads} exceeds the {takers} heads that take a summary "
                          f"(pattern {a.pattern}, integration {a.integration}, n_head {m.n_head}); use at most {takers}")
    n = min(cfg.data.seq_len, 3 * a.stride)  # three blocks show every pair type of a periodic pattern
    period = len(a.layout) if a.layout else 2
    layers = min(m.n_layer, period)
    bad = int(stack_unreachable(_stack(a, layers, m.n_head, n)).sum())
    if not bad:
        return
    fixes = [("attention.summary_heads=1", dict(summary_heads=1)), ("attention.integration=merged", dict(integration="merged"))]
    works = next((name for name, change in fixes if not int(stack_unreachable(_stack(a, layers, m.n_head, n, **change)).sum())), None)
    raise LaunchError(f"attention: pattern {a.pattern} with integration={a.integration}, n_head={m.n_head}, "
                      f"summary_heads={a.summary_heads} leaves {bad} pairs (i, j) unreachable at any depth "
                      f"(checked at n={n}); " + (f"{works} connects" if works else "choose another pattern or integration"))


def check_backend(cfg, device) -> None:
    """An attention.backend named explicitly must run every layer here (auto always finds one)."""
    from .attention import layer_heads
    from .attention.backends import check
    from .attention.patterns import PatternError

    m, a = cfg.model, cfg.attention
    if a.backend == "auto":
        return
    dims = (int(round(m.d_model * m.qk_ratio)) // m.n_head, m.d_model // m.n_head)
    seen = set()
    for layer in range(m.n_layer):
        heads = layer_heads(a.pattern, m.n_head, a.stride, layer=layer, summary=a.summary, summary_heads=a.summary_heads,
                            integration=a.integration, layout=list(a.layout) if a.layout else None)
        key = tuple(tuple(p.key() for p in parts) for parts in heads)
        if key not in seen:
            seen.add(key)
            try:
                check(a.backend, heads, dims, device)
            except PatternError as e:
                raise LaunchError(str(e)) from None


def main(argv: list[str] | None = None) -> dict:
    cfg = main_config(argv)  # exits 2 on a bad command line, before any heavy import

    import lightning as L
    import torch

    from .callbacks import build_callbacks
    from .callbacks.loggers import finish
    from .data import build_datamodule, prepare_or_exit
    from .lit import SparseTransformerLM, config_dict

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .callbacks.fault import SIGTERM_EXIT, NonFiniteLossError

    if cfg.imports:
        import importlib

        for mod in cfg.imports:
            importlib.import_module(mod)
    from .checkpoint import CheckpointError, legacy_globals

    try:
        check_runtime(cfg)
        out = run_dir(cfg)
        ckpt = resume_path(cfg, out)
        if ckpt:
            check_resume_checkpoint(cfg, ckpt)
    except (LaunchError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    dm = build_datamodule(cfg)
    prepare_or_exit(dm)

    rank0 = is_rank_zero()
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
    lit = SparseTransformerLM(config_dict(cfg), dm.shape)
    logger = build_logger(cfg, out, resuming=ckpt is not None)
    trainer = build_trainer(cfg, out, callbacks=build_callbacks(cfg, out, logger), logger=logger)
    entropy = dm.entropy() if hasattr(dm, "entropy") else None
    if rank0:
        print(f"run folder: {out}")
        print(f"model: {lit.net.num_params() / 1e6:.2f}M parameters; data shape {dm.shape}; precision {precision(cfg)}")
        if entropy is not None:
            print(f"unigram entropy of the training split: {entropy:.3f} bits/byte")

    if rank0 and ckpt:
        print(f"resuming from {ckpt}")
    start_bpd = None
    t0 = time.time()
    try:
        # Lightning's own loads of ckpt: weights_only, allowing only the numpy RNG state of
        # checkpoints written before the format stamp (checkpoint.legacy_globals)
        with legacy_globals():
            if not cfg.trainer.fast_dev_run:  # a resumed run starts from the checkpoint's weights
                res = trainer.validate(lit, datamodule=dm, verbose=False, ckpt_path=ckpt, weights_only=True)
                start_bpd = res[0].get("val/bpd") if res else None
            trainer.fit(lit, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    except SIGTERMException:
        if rank0:
            print(f"stopped by SIGTERM at step {trainer.global_step}; checkpoint {out / 'checkpoints' / 'last.ckpt'}; "
                  f"continue with resume=last run_dir={out}", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT) from None
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    metrics = _scalars({**trainer.logged_metrics, **trainer.callback_metrics})  # validate() below resets them
    end_bpd = None
    if not cfg.trainer.fast_dev_run:
        res = trainer.validate(lit, datamodule=dm, verbose=False)
        end_bpd = res[0].get("val/bpd") if res else None
    minutes = (time.time() - t0) / 60
    summary = {
        "exp": cfg.exp, "run_dir": str(out), "steps": int(trainer.global_step), "minutes": round(minutes, 2),
        "val_bpd_start": start_bpd, "val_bpd_end": end_bpd, "unigram_entropy": entropy,
        "params": lit.net.num_params(), "skipped_steps": lit.skipped_steps,
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
