"""The command line a W&B agent builds for a trial: ``sweep['command']`` with its macros filled.

wandb's own functions do it where wandb is installed (imported on use: it is slow to import and
optional here); the same rules are written out for where it is not.
"""

from __future__ import annotations

import json

from .spec import TRAIN_MODULE, args_for, command_exp, plain


def agent_command(sweep: dict, params: dict, json_file: str = "") -> list[str]:
    """``sweep['command']`` with its macros filled for ``params``, as wandb's agent does it
    (``wandb_agent.Agent._command_run``)."""
    command = [str(c) for c in sweep["command"]]
    args = {"args": {k: {"value": plain(v)} for k, v in params.items()}}
    try:
        from wandb.sdk.launch.sweeps import utils as sweep_utils

        command = sweep_utils.create_sweep_command(command)
        sweep_vars = sweep_utils.create_sweep_command_args(args)
    except ImportError:  # the same rules, written out (wandb 0.31's create_sweep_command_args)
        pairs = [f"{k}={v['value']}" for k, v in args["args"].items()]
        sweep_vars = {"args": ["--" + p for p in pairs], "args_no_hyphens": pairs,
                      "args_json": [json.dumps({k: v["value"] for k, v in args["args"].items()})]}
    sweep_vars.update(interpreter=["python"], program=[sweep.get("program", "")], env=["/usr/bin/env"],
                      args_json_file=[json_file])
    out = []
    for c in command:
        if c.startswith("${") and c.endswith("}"):
            out += sweep_vars.get(c[2:-1]) or []
        else:
            out.append(c)
    return out


def train_args(command: list[str]) -> list[str]:
    """The arguments after ``-m sparse_transformer.train`` in a trial's command."""
    i = command.index(TRAIN_MODULE)
    return command[i + 1:]


def trial_args(sweep: dict, command: list[str], params: dict, overrides: list[str] = ()) -> list[str]:
    """The training command line a trial amounts to (its command's, or with --allow-any-command and
    a command that hides the module, the sweep's experiment, the trial's parameters and the overrides)."""
    if TRAIN_MODULE in command:
        return train_args(command)
    return args_for(command_exp(sweep), params) + list(overrides)
