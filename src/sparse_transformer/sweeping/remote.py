"""W&B's server: create a sweep (``make sweep``) and start an agent (``make agent``). Both need the
server; offline (no API key, no network, ``WANDB_MODE=offline``) they say so in one line and point
at ``make sweep-local``. wandb is imported where a sweep is created: it is slow to import."""

from __future__ import annotations

import os
import sys

from ..training.callbacks.wandb_mode import wandb_mode
from ..config import load_config
from .spec import SweepError, command_exp, load_sweep


def need_server(what: str) -> None:
    mode, why = wandb_mode()
    if mode != "online":
        raise SweepError(f"{what} needs the W&B server, but W&B is {mode} here ({why}); "
                         f"run the sweep offline instead: make sweep-local SWEEP=<name> N=<trials>")


def create(name: str, allow_any_command: bool = False) -> str:
    """Create the W&B sweep (in the experiment's logger.project/entity) and return its full id."""
    sweep, path = load_sweep(name, allow_any_command)
    cfg, _ = load_config([f"exp={command_exp(sweep)}"])
    project = sweep.get("project") or cfg.logger.project
    entity = sweep.get("entity") or cfg.logger.entity
    need_server("make sweep")
    import wandb

    sweep_id = wandb.sweep(sweep, project=project, entity=entity)
    entity = entity or wandb.Api().default_entity
    return f"{entity}/{project}/{sweep_id}"


def agent(sweep_id: str, count: int | None) -> None:
    if not sweep_id:
        raise SweepError("no sweep id given: make agent SWEEP_ID=<entity/project/id> COUNT=<n> (make sweep prints it)")
    if count is not None and count < 1:
        raise SweepError(f"COUNT={count}: an agent must run at least 1 trial (leave COUNT empty to run until the sweep ends)")
    need_server("make agent")
    args = [sys.executable, "-m", "wandb", "agent"] + (["--count", str(count)] if count else []) + [sweep_id]
    os.execvp(args[0], args)
