"""A sweep file (W&B's format) and its checks, before anything runs.

A sweep's ``command`` passes its parameters as ``key=value`` through ``${args_no_hyphens}`` to
``python -m sparse_transformer.train exp=<name>``: every process (every DDP rank too, where only
rank 0 has ``wandb.config``) reads them from its command line. The command must be exactly that
(``[${env},] ${interpreter}|python|python3, -m, sparse_transformer.train``, then ``key=value`` words and
``${args_no_hyphens}``): another program, ``${program}`` or a launcher needs ``--allow-any-command``.
Parameters are config keys (``optim.lr``), checked against the schema before anything runs, each
value through the same validation as the training command line. A local run may add ``key=value``
overrides (``make sweep-local ARGS=...``) of keys that are not the sweep's parameters.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from ..config import CONF_DIR, EXP_NAME, ConfigError, _check_keys, experiment_path, experiments, load_config
from .sweeps_package import import_sweeps

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
# What train.py writes into summary.json["metrics"] (the last logged value of each, as W&B's run
# summary keeps it). tests/test_sweep.py checks that a real run logs every one of them.
METRICS = {
    "val/bpd": "validation bits per dim, after the final validation",
    "train/bpd": "training bits per dim of the last logged step",
    "train/loss": "training loss (nats per dim) of the last logged step",
}
TOP_KEYS = {"program", "command", "method", "metric", "parameters", "name", "description", "project", "entity",
            "early_terminate", "run_cap", "controller", "job", "image_uri", "scheduler"}
SPEC_KEYS = {"value", "values", "probabilities", "distribution", "min", "max", "mu", "sigma", "q"}
TRAIN_MODULE = "sparse_transformer.train"
INTERPRETERS = ("${interpreter}", "python", "python3")  # what a trial may start (without --allow-any-command)
ARG_MACROS = ("${args_no_hyphens}", "${args}")
SWEEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NOT_OVERRIDABLE = {"exp": "the sweep's command names the experiment",
                   "run_dir": "every trial gets its own run folder"}


class SweepError(ValueError):
    """A sweep (file, parameter, count) is invalid; the message is one line naming what and why."""


# ------------------------------------------------------------------------------------------------
# Values as the command line writes them
# ------------------------------------------------------------------------------------------------
def plain(v: Any) -> Any:
    """numpy scalars (from the sweeps package) -> Python numbers, for JSON and the command line."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


def fmt(value: Any) -> str:
    """A value as a W&B agent writes it on the command line (``f"{key}={value}"``)."""
    return str(plain(value))


def args_for(exp: str, params: dict) -> list[str]:
    return [f"exp={exp}"] + [f"{k}={fmt(v)}" for k, v in params.items()]


def candidates(spec: dict) -> list:
    """Values that stand for a parameter's range when checking it: its values, or its bounds."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    bounds = [spec[k] for k in ("min", "max") if k in spec]
    if spec.get("distribution") in ("log_uniform", "q_log_uniform"):  # bounds are exponents of e
        bounds = [math.exp(b) for b in bounds]
    return bounds or ([spec["mu"]] if "mu" in spec else [])


def first_values(sweep: dict) -> dict:
    return {k: candidates(s)[0] for k, s in sweep["parameters"].items()}


def command_exp(sweep: dict) -> str:
    exps = [str(c)[4:] for c in sweep.get("command", []) if str(c).startswith("exp=")]
    return exps[0] if exps else "default"


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def sweep_path(name: str) -> Path:
    """A YAML file given by its path, or a name in conf/sweep/ (a plain file name, nothing outside it)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    valid = ", ".join(sorted(x.stem for x in (CONF_DIR / "sweep").glob("*.yaml"))) or "none"
    if not SWEEP_NAME.fullmatch(name) or ".." in name:
        raise SweepError(f"sweep {name!r} is neither a .yaml file nor a sweep name in conf/sweep/ "
                         f"(letters, digits, _ . -); valid: {valid}")
    p = CONF_DIR / "sweep" / f"{name}.yaml"
    if not p.exists():
        raise SweepError(f"sweep {name!r} does not exist ({p}); valid: {valid}")
    return p


def load_sweep(name: str, allow_any_command: bool = False) -> tuple[dict, Path]:
    """The sweep YAML as a dict (validated) and its path."""
    if not name:
        raise SweepError("no sweep given: make sweep-local SWEEP=<name> N=<trials> (a file in conf/sweep/)")
    path = sweep_path(name)
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"{path} cannot be read ({type(e).__name__}: {e}); give a readable sweep YAML file") from None
    if not isinstance(sweep, dict):
        raise SweepError(f"{path} must be a mapping (method, metric, parameters, command)")
    validate_sweep(sweep, str(path), allow_any_command)
    return sweep, path


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def validate_sweep(sweep: dict, where: str, allow_any_command: bool = False) -> None:
    """Raise SweepError naming the first problem: structure, the command (this project's training
    through the interpreter, unless ``allow_any_command``), metric, unknown parameter keys, and any
    value the training command line would reject."""
    _check_structure(sweep, where)
    command = sweep.get("command")
    if not isinstance(command, list) or not command:
        raise SweepError(f"{where}: command must be a list, e.g. [${{env}}, ${{interpreter}}, -m, "
                         f"sparse_transformer.train, exp=<name>, ${{args_no_hyphens}}]")
    check_command([str(c) for c in command], where, allow_any_command)
    _check_parameters(sweep, where)
    _schema_check(sweep, where)
    _check_values(sweep, where)


def _check_structure(sweep: dict, where: str) -> None:
    extra = sorted(set(sweep) - TOP_KEYS)
    if extra:
        raise SweepError(f"{where}: unknown top-level key {extra[0]!r}; valid: {', '.join(sorted(TOP_KEYS))}")
    method = sweep.get("method")
    if method not in METHODS:
        raise SweepError(f"{where}: method={method} is not valid; valid: {', '.join(METHODS)}")
    metric = sweep.get("metric")
    if not isinstance(metric, dict) or "name" not in metric:
        raise SweepError(f"{where}: metric must be a mapping with a name (e.g. {{name: val/bpd, goal: minimize}})")
    if metric["name"] not in METRICS:
        raise SweepError(f"{where}: metric {metric['name']!r} is never logged by sparse_transformer.train; "
                         f"valid: {', '.join(METRICS)}")
    if metric.get("goal", "minimize") not in GOALS:
        raise SweepError(f"{where}: metric.goal={metric.get('goal')} is not valid; valid: {', '.join(GOALS)}")


def _check_parameters(sweep: dict, where: str) -> None:
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{where}: parameters must be a non-empty mapping of config keys (e.g. optim.lr)")
    for key, spec in params.items():
        if not isinstance(spec, dict):
            raise SweepError(f"{where}: parameters.{key} must be a mapping (value, values, or distribution/min/max)")
        if key == "run_dir":
            raise SweepError(f"{where}: parameters.run_dir cannot be swept: every trial gets its own run folder")
        if "parameters" in spec:
            raise SweepError(f"{where}: parameters.{key} is nested; W&B would pass it as one dict argument: "
                             f"use dotted config keys (e.g. optim.lr)")
        bad = sorted(set(spec) - SPEC_KEYS)
        if bad:
            raise SweepError(f"{where}: parameters.{key}.{bad[0]} is not a W&B parameter field; "
                             f"valid: {', '.join(sorted(SPEC_KEYS))}")
        if not candidates(spec):
            raise SweepError(f"{where}: parameters.{key} needs value, values, or min and max")
        if "values" in spec and not spec["values"]:
            raise SweepError(f"{where}: parameters.{key}.values is empty")
    try:
        _check_keys(list(params), where)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    if sweep["method"] == "grid":
        for key, spec in params.items():
            if "value" not in spec and "values" not in spec:
                raise SweepError(f"{where}: method=grid needs values (or value) for parameters.{key}")


def _check_values(sweep: dict, where: str) -> None:
    """Every value through the training command line's own validation, together with the first
    value of every other parameter (combinations are checked per trial before it runs)."""
    exp = command_exp(sweep)
    try:
        experiment_path(exp)  # a name inside conf/exp/ only
    except ConfigError:
        valid = ", ".join(experiments())
        what = (f"conf/exp/{exp}.yaml does not exist" if EXP_NAME.fullmatch(exp) and ".." not in exp
                else "that is not an experiment name (a file in conf/exp/)")
        raise SweepError(f"{where}: command runs exp={exp}, but {what}; valid: {valid}") from None
    first = first_values(sweep)
    for key, spec in sweep["parameters"].items():
        for v in candidates(spec):
            try:
                load_config(args_for(exp, {**first, key: v}))
            except ConfigError as e:
                raise SweepError(f"{where}: parameters.{key} value {fmt(v)}: {e}") from None


def _schema_check(sweep: dict, where: str) -> None:
    """W&B's own JSON schema, through the sweeps package, where it is installed."""
    sweeps = import_sweeps()
    if sweeps is None:
        return
    problems = sweeps.schema_violations_from_proposed_config(sweep)
    if problems:
        raise SweepError(f"{where}: {problems[0].splitlines()[0]}")


def check_command(words: list[str], where: str, allow_any_command: bool = False) -> None:
    """A trial runs this project's training through the interpreter: ``[${env},] ${interpreter}
    (or python, python3), -m, sparse_transformer.train``, then only ``key=value`` words and
    ``${args_no_hyphens}`` / ``${args}``. Anything else (another program, ``${program}``, a shell)
    only with ``--allow-any-command``."""
    if not set(ARG_MACROS) & set(words):
        raise SweepError(f"{where}: command must pass the parameters through ${{args_no_hyphens}} (key=value)")
    if allow_any_command:
        return
    i = 1 if words[:1] == ["${env}"] else 0
    head, rest = words[i : i + 3], words[i + 3 :]
    ok = len(head) == 3 and head[0] in INTERPRETERS and head[1:] == ["-m", TRAIN_MODULE] and all(
        w in ARG_MACROS or (not w.startswith(("$", "-")) and "=" in w) for w in rest)
    if not ok:
        raise SweepError(f"{where}: command {' '.join(words)!r} does not run this project's training; valid: "
                         f"[${{env}}, ${{interpreter}}, -m, {TRAIN_MODULE}, <key=value ...>, ${{args_no_hyphens}}] "
                         f"(${{env}} optional; python or python3 for ${{interpreter}}), or pass --allow-any-command "
                         f"to run another program")


def check_overrides(sweep: dict, words: list[str]) -> list[str]:
    """A local run's ``key=value`` overrides (``make sweep-local ARGS=...``), as ``key=value`` words:
    config keys that are not the sweep's parameters, each value valid with the first trial's."""
    out = []
    for w in words:
        key, eq, value = (w[2:] if w.startswith("--") else w).partition("=")
        if not eq or not key:
            raise SweepError(f"ARGS word {w!r} is not key=value; valid: config keys, e.g. ARGS=\"trainer.max_steps=50\"")
        if key in NOT_OVERRIDABLE:
            raise SweepError(f"ARGS {key}={value}: {key} cannot be overridden here ({NOT_OVERRIDABLE[key]})")
        if key in sweep["parameters"]:
            raise SweepError(f"ARGS {key}={value}: {key} is a parameter of the sweep; ARGS may set only other keys "
                             f"(change the sweep file to change it)")
        out.append(f"{key}={value}")
    try:
        _check_keys([w.split("=", 1)[0] for w in out], "ARGS")
    except ConfigError as e:
        raise SweepError(str(e)) from None
    try:
        load_config(args_for(command_exp(sweep), first_values(sweep)) + out)
    except ConfigError as e:
        raise SweepError(f"ARGS: {e}") from None
    return out
