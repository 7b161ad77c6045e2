"""The W&B logger: Lightning's ``WandbLogger``, offline by itself when there is no API key or no
network (``WANDB_MODE`` always wins), with the run's resolved config as its hyper-parameters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from .wandb_mode import wandb_mode


class RunWandbLogger(WandbLogger):
    """``WandbLogger`` that logs the resolved config at the top level of ``wandb.config``
    (``optim.lr``, not ``config.optim.lr``): the LightningModule saves it as ``hparams.config``,
    and sweep parameters are named by their config keys."""

    def log_hyperparams(self, params) -> None:
        params = dict(vars(params)) if not isinstance(params, Mapping) else dict(params)  # a Namespace or a dict
        cfg = params.pop("config", None)
        if isinstance(cfg, Mapping):
            params = {**cfg, **params}
        super().log_hyperparams(params)


def build_wandb_logger(cfg, out: Path) -> RunWandbLogger:
    lg = cfg.logger
    mode, why = wandb_mode()
    if mode != "online":
        print(f"W&B: {mode} ({why}); the run is kept in {out / 'wandb'}" + (" (`wandb sync` uploads it)" if mode == "offline" else ""))
    # The mode goes to wandb.init directly rather than through ``offline=True``: Lightning then
    # sets WANDB_MODE=dryrun for the whole process and refuses log_model, although an offline run
    # keeps its artifacts for `wandb sync` perfectly well.
    return RunWandbLogger(project=lg.project, entity=lg.entity, group=lg.group, tags=list(lg.tags) or None,
                          name=lg.name or out.name, save_dir=str(out), log_model=bool(lg.log_model), mode=mode)


def finish(summary: dict | None = None) -> None:
    """Write the run summary into W&B's run summary and close the run (which flushes an offline
    run's files), so several runs in one process (tests, notebooks) stay apart. No-op without a run."""
    import wandb

    if wandb.run is None:
        return
    if summary:
        wandb.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    wandb.finish()
