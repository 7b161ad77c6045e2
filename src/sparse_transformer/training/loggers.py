"""The run's loggers, and quiet logs.

- ``build_logger``: ``logger.kind`` -> the W&B logger, the CSV logger or none.
- ``RunWandbLogger``: Lightning's ``WandbLogger``, offline by itself when there is no API key or no
  network (``WANDB_MODE`` always wins), with the run's resolved config as its hyper-parameters.
- ``RunCSVLogger``: ``<run>/metrics.csv``. Lightning's CSVLogger deletes an existing ``metrics.csv``
  when it starts and flushes every 100 steps; a resumed run needs the earlier rows, and a killed run
  must not lose the rows its checkpoint covers.
- ``quiet_logs``: no litlogger/litmodels tip, no Lightning ``_pytree`` deprecation line.

``wandb`` itself is imported lazily (``finish``): it is heavy, and a run without W&B never needs it.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .. import files
from .callbacks.wandb_mode import wandb_mode


def quiet_logs() -> None:
    """Drop Lightning's advertising tips ("Tip: ... litlogger", "... litmodels"), the deprecation
    line its ``_pytree`` helper prints with torch >= 2.10 (``isinstance(treespec, LeafSpec)``) and
    its warning that a resumed run's checkpoint folder is not empty."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in lg.filters):
            lg.addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # a resumed run's checkpoints/ holds its own checkpoints: the best-checkpoint callback's warning says nothing
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class _NoTips(logging.Filter):
    DROP = ("Tip: For seamless", "Skipping setting a default `ModelSummary`")  # the latter: we pass our own

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(d in str(record.msg) for d in self.DROP)


def build_logger(cfg, out: Path, resuming: bool = False):
    """``logger.kind``: wandb (``<out>/wandb``), csv (``<out>/metrics.csv``, continued on resume) or none (False)."""
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        return RunCSVLogger(save_dir=str(out), keep=resuming)
    return build_wandb_logger(cfg, out)


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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Lightning passes anonymous=None, which wandb >= 0.19 answers with a warning that it has no effect
        self._wandb_init.pop("anonymous", None)


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
    import wandb  # lazy: see the module docstring

    if wandb.run is None:
        return
    if summary:
        wandb.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    wandb.finish()


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer, except that an existing metrics.csv is continued, not deleted."""

    def __init__(self, log_dir: str, keep: bool):
        self._keep = keep
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._keep:
            if os.path.isfile(self.metrics_file_path):
                os.remove(self.metrics_file_path)
            return
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class RunCSVLogger(CSVLogger):
    """``<run>/metrics.csv``, each row written when it is logged (Lightning's default buffers 100
    steps). A resumed run (``keep=True``) appends to it after dropping the rows logged past its
    checkpoint (they are logged again). The one row a kill can still lose is that of the
    checkpoint's own step, if the kill lands between the checkpoint's write and the row's."""

    def __init__(self, save_dir, keep: bool = False, **kwargs):
        kwargs.setdefault("flush_logs_every_n_steps", 1)
        super().__init__(save_dir=save_dir, name="", version="", **kwargs)
        self._keep = keep

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._keep)
        return self._experiment

    @rank_zero_only
    def rewind(self, step: int) -> None:
        """Drop the rows with ``step >= step``: a killed run logged them after its last checkpoint."""
        self.save()
        path = Path(self.experiment.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            # a row cut short by a kill has missing fields: it is past the checkpoint, drop it too
            rows = [r for r in reader if None not in r.values() and None not in r
                    and r.get("step") and int(float(r["step"])) < step]
        with files.atomic_file(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
