"""Sweeps: ``conf/sweep/<name>.yaml`` in W&B's format, run by W&B agents or offline.

    python -m sparse_transformer.sweep check  <name>                  validate, print the first trial's command
    python -m sparse_transformer.sweep create <name>                  create the W&B sweep, print its id   (make sweep)
    python -m sparse_transformer.sweep agent  <id> [--count N]        start a W&B agent                     (make agent)
    python -m sparse_transformer.sweep local  <name> --trials N       run N trials here, offline            (make sweep-local)
        [--engine auto|sweeps|builtin] [--out sweeps/<name>] [--seed 0]
    check, create and local take --allow-any-command: let the command run another program (see below)

A sweep's ``command`` passes its parameters as ``key=value`` through ``${args_no_hyphens}`` to
``python -m sparse_transformer.train exp=<name>``: every process (every DDP rank too, where only
rank 0 has ``wandb.config``) reads them from its command line. The command must be exactly that
(``[${env},] ${interpreter}|python|python3, -m, sparse_transformer.train``, then ``key=value`` words and
``${args_no_hyphens}``): another program, ``${program}`` or a launcher needs ``--allow-any-command``.
Parameters are config keys (``optim.lr``), checked against the schema before anything runs, each
value through the same validation as the training command line.

The local runner draws trials with W&B's own search engine (the ``sweeps`` package: grid, random,
bayes) when it is importable, else with a small grid/random sampler written here; runs each trial
as a subprocess with the command line a W&B agent would build (wandb's own macro expansion);
reads the metric from the trial's ``summary.json``; keeps its state in ``sweeps/<name>/trials.json``
so a restart skips finished trials (the file is checked: ids ``trial-<number>``, the sweep's parameters;
a trial folder is deleted only inside the sweep folder); and prints a leaderboard, also written to
``sweeps/<name>/leaderboard.csv``.

Everything here is torch-free: a bad sweep fails in about a second.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .config import CONF_DIR, EXP_NAME, ConfigError, _check_keys, experiment_path, experiments, load_config

RUN_ENV = "SPARSE_TRANSFORMER_RUN_DIR"  # train.run_dir() honours it (the folder rank 0 names)
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
BUILTIN_DISTRIBUTIONS = ("constant", "categorical", "uniform", "int_uniform", "log_uniform_values", "normal")
TRAIN_MODULE = "sparse_transformer.train"
INTERPRETERS = ("${interpreter}", "python", "python3")  # what a trial may start (without --allow-any-command)
ARG_MACROS = ("${args_no_hyphens}", "${args}")
TRIAL_ID = re.compile(r"trial-[0-9]{3,6}")  # the runner's trial ids: trial-000, trial-001, ...
STATUSES = ("running", "finished", "failed", "invalid")
SWEEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class SweepError(ValueError):
    """A sweep (file, parameter, count) is invalid; the message is one line naming what and why."""


# ------------------------------------------------------------------------------------------------
# Loading and validation
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
    if not isinstance(sweep, dict):
        raise SweepError(f"{path} must be a mapping (method, metric, parameters, command)")
    validate_sweep(sweep, str(path), allow_any_command)
    return sweep, path


def command_exp(sweep: dict) -> str:
    exps = [str(c)[4:] for c in sweep.get("command", []) if str(c).startswith("exp=")]
    return exps[0] if exps else "default"


def fmt(value: Any) -> str:
    """A value as a W&B agent writes it on the command line (``f"{key}={value}"``)."""
    return str(_plain(value))


def _plain(v: Any) -> Any:
    """numpy scalars (from the sweeps package) -> Python numbers, for JSON and the command line."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


def _candidates(spec: dict) -> list:
    """Values that stand for a parameter's range when checking it: its values, or its bounds."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    bounds = [spec[k] for k in ("min", "max") if k in spec]
    if spec.get("distribution") in ("log_uniform", "q_log_uniform"):  # bounds are exponents of e
        bounds = [math.exp(b) for b in bounds]
    return bounds or ([spec["mu"]] if "mu" in spec else [])


def validate_sweep(sweep: dict, where: str, allow_any_command: bool = False) -> None:
    """Raise SweepError naming the first problem: structure, the command (this project's training
    through the interpreter, unless ``allow_any_command``), metric, unknown parameter keys, and any
    value the training command line would reject."""
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
    command = sweep.get("command")
    if not isinstance(command, list) or not command:
        raise SweepError(f"{where}: command must be a list, e.g. [${{env}}, ${{interpreter}}, -m, "
                         f"sparse_transformer.train, exp=<name>, ${{args_no_hyphens}}]")
    check_command([str(c) for c in command], where, allow_any_command)
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
            raise SweepError(f"{where}: parameters.{key}.{bad[0]} is not a W&B parameter field; valid: {', '.join(sorted(SPEC_KEYS))}")
        if not _candidates(spec):
            raise SweepError(f"{where}: parameters.{key} needs value, values, or min and max")
        if "values" in spec and not spec["values"]:
            raise SweepError(f"{where}: parameters.{key}.values is empty")
    try:
        _check_keys(list(params), where)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    if method == "grid":
        for key, spec in params.items():
            if "value" not in spec and "values" not in spec:
                raise SweepError(f"{where}: method=grid needs values (or value) for parameters.{key}")
    _schema_check(sweep, where)
    # Every value through the training command line's own validation, together with the first
    # value of every other parameter (combinations are checked per trial before it runs).
    exp = command_exp(sweep)
    try:
        experiment_path(exp)  # a name inside conf/exp/ only
    except ConfigError:
        valid = ", ".join(experiments())
        what = (f"conf/exp/{exp}.yaml does not exist" if EXP_NAME.fullmatch(exp) and ".." not in exp
                else "that is not an experiment name (a file in conf/exp/)")
        raise SweepError(f"{where}: command runs exp={exp}, but {what}; valid: {valid}") from None
    first = {k: _candidates(s)[0] for k, s in params.items()}
    for key, spec in params.items():
        for v in _candidates(spec):
            try:
                load_config(args_for(exp, {**first, key: v}))
            except ConfigError as e:
                raise SweepError(f"{where}: parameters.{key} value {fmt(v)}: {e}") from None


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


def _import_sweeps():
    """W&B's search engine (the ``sweeps`` package), or None. It pins numpy<2 in its metadata but
    works with numpy 2 (installed with --no-deps); its pydantic-v1 config style warns on import."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import sweeps
        except ImportError:
            return None
    return sweeps


def _schema_check(sweep: dict, where: str) -> None:
    """W&B's own JSON schema, through the sweeps package, where it is installed."""
    sweeps = _import_sweeps()
    if sweeps is None:
        return
    problems = sweeps.schema_violations_from_proposed_config(sweep)
    if problems:
        raise SweepError(f"{where}: {problems[0].splitlines()[0]}")


def args_for(exp: str, params: dict) -> list[str]:
    return [f"exp={exp}"] + [f"{k}={fmt(v)}" for k, v in params.items()]


# ------------------------------------------------------------------------------------------------
# The command line a W&B agent builds
# ------------------------------------------------------------------------------------------------
def agent_command(sweep: dict, params: dict, json_file: str = "") -> list[str]:
    """``sweep['command']`` with its macros filled for ``params``, as wandb's agent does it
    (``wandb_agent.Agent._command_run``): wandb's own functions where wandb is installed."""
    command = [str(c) for c in sweep["command"]]
    args = {"args": {k: {"value": _plain(v)} for k, v in params.items()}}
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


def trial_args(sweep: dict, command: list[str], params: dict) -> list[str]:
    """The training command line a trial amounts to (its command's, or with --allow-any-command and
    a command that hides the module, the sweep's experiment and the trial's parameters)."""
    return train_args(command) if TRAIN_MODULE in command else args_for(command_exp(sweep), params)


# ------------------------------------------------------------------------------------------------
# Drawing trials
# ------------------------------------------------------------------------------------------------
def sweeps_engine_available() -> bool:
    return _import_sweeps() is not None


def draw_sweeps(sweep: dict, trials: list[dict], seed: int) -> dict | None:
    """The next trial's parameters from W&B's search engine, given the trials so far."""
    import numpy as np

    sweeps = _import_sweeps()
    RunState, SweepRun, next_run = sweeps.RunState, sweeps.SweepRun, sweeps.next_run

    metric = sweep["metric"]["name"]
    state = {"finished": RunState.finished, "failed": RunState.failed, "invalid": RunState.failed}
    runs = [SweepRun(name=t["id"], state=state.get(t["status"], RunState.running),
                     config={k: {"value": v} for k, v in t["params"].items()},
                     summary_metrics={metric: t["metric"]} if t.get("metric") is not None else {})
            for t in trials]
    np.random.seed((seed * 100003 + len(trials)) % 2**32)  # the engine samples from numpy's global state
    run = next_run(sweep, runs, validate=True)
    if run is None:
        return None
    return {k: _plain(run.config[k]["value"]) for k in sweep["parameters"]}


def draw_builtin(sweep: dict, trials: list[dict], seed: int) -> dict | None:
    """Grid and random search without the sweeps package (bayes needs it)."""
    import random

    params = sweep["parameters"]
    if sweep["method"] == "grid":
        done = [t["params"] for t in trials]
        for combo in itertools.product(*[_candidates(s) for s in params.values()]):
            p = dict(zip(params, combo))
            if p not in done:
                return p
        return None
    if sweep["method"] != "random":
        raise SweepError(f"method={sweep['method']} needs W&B's sweeps package: "
                         "pip install --no-deps sweeps==0.3.0 jsonref && pip install scikit-learn")
    rng = random.Random(seed * 100003 + len(trials))
    out = {}
    for key, s in params.items():
        dist = s.get("distribution") or ("constant" if "value" in s else "categorical" if "values" in s else
                                         "int_uniform" if isinstance(s.get("min"), int) and isinstance(s.get("max"), int)
                                         else "uniform")
        if dist == "constant":
            out[key] = s["value"]
        elif dist == "categorical":
            out[key] = rng.choices(s["values"], weights=s.get("probabilities"))[0]
        elif dist == "uniform":
            out[key] = rng.uniform(s["min"], s["max"])
        elif dist == "int_uniform":
            out[key] = rng.randint(s["min"], s["max"])
        elif dist == "log_uniform_values":
            out[key] = math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))
        elif dist == "normal":
            out[key] = rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0))
        else:
            raise SweepError(f"parameters.{key}: distribution {dist} needs W&B's sweeps package; "
                             f"built in: {', '.join(BUILTIN_DISTRIBUTIONS)}")
    return out


# ------------------------------------------------------------------------------------------------
# The offline runner
# ------------------------------------------------------------------------------------------------
def _save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _child_env(name: str) -> dict:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")  # an offline runner; WANDB_MODE=online still uploads
    env.setdefault("WANDB_RUN_GROUP", f"sweep-{name}")
    # ``python`` (the agent's ${interpreter}) resolves to this interpreter, and this package's
    # source comes first on the path, as `make` sets it.
    bindir = str(Path(sys.executable).parent)
    if (Path(bindir) / "python").exists():
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def load_state(state_file: Path, sweep: dict) -> dict:
    """``trials.json`` as the runner wrote it; SweepError (one line) if it is not: the runner joins
    trial ids to paths and deletes trial folders, so an id must be ``trial-<number>``, each once,
    and a trial's parameters those of the sweep."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        raise SweepError(f"{state_file} is not the runner's state ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"move it away or pass --out <new folder>") from None
    fix = "the file was edited or damaged: fix it, or move it away or pass --out <new folder>"
    if not isinstance(state, dict) or not isinstance(state.get("trials"), list):
        raise SweepError(f"{state_file} is not the runner's state (a mapping with a trials list); {fix}")
    seen = set()
    for k, t in enumerate(state["trials"]):
        tid = t.get("id") if isinstance(t, dict) else None
        if not isinstance(tid, str) or not TRIAL_ID.fullmatch(tid) or tid in seen:
            raise SweepError(f"{state_file}: trial {k} has id {tid!r}; valid: trial-<number> (trial-000, trial-001, ...), "
                             f"each once; {fix}")
        seen.add(tid)
        if not isinstance(t.get("params"), dict) or set(t["params"]) != set(sweep["parameters"]):
            raise SweepError(f"{state_file}: trial {tid} has parameters {sorted(t.get('params') or [])}, not the sweep's "
                             f"{sorted(sweep['parameters'])}; {fix}")
        if t.get("status") not in STATUSES:
            raise SweepError(f"{state_file}: trial {tid} has status {t.get('status')!r}; valid: {', '.join(STATUSES)}; {fix}")
    return state


def remove_trial_folder(tdir: Path, out: Path) -> None:
    """Delete a trial's folder, only if it is a real folder inside the sweep folder ``out``."""
    root, target = out.resolve(), tdir.resolve()
    if tdir.is_symlink() or target == root or not target.is_relative_to(root):
        raise SweepError(f"refusing to delete {tdir}: it resolves to {target}, not a trial folder inside {root}")
    shutil.rmtree(target)


def run_local(name: str, trials: int, engine: str = "auto", out: str | Path | None = None, seed: int = 0,
              quiet: bool = False, allow_any_command: bool = False) -> list[dict]:
    """Run a sweep's first ``trials`` trials here (skipping finished ones); return every trial
    record, the finished ones ranked. Raises SweepError before anything runs on bad input."""
    if trials is None or int(trials) < 1:
        raise SweepError(f"N={trials}: give the number of trials, at least 1 (make sweep-local SWEEP=<name> N=<trials>)")
    sweep, path = load_sweep(name, allow_any_command)
    if engine == "auto":
        engine = "sweeps" if sweeps_engine_available() else "builtin"
    if engine == "sweeps" and not sweeps_engine_available():
        raise SweepError("--engine sweeps: the sweeps package is not installed "
                         "(pip install --no-deps sweeps==0.3.0 jsonref && pip install scikit-learn)")
    if engine not in ("sweeps", "builtin"):
        raise SweepError(f"--engine {engine} is not valid; valid: auto, sweeps, builtin")
    if engine == "builtin" and sweep["method"] == "bayes":
        draw_builtin(sweep, [], seed)  # raises the one-line error
    draw = draw_sweeps if engine == "sweeps" else draw_builtin
    out = Path(out) if out else Path("sweeps") / path.stem
    state_file = out / "trials.json"
    digest = hashlib.sha1(json.dumps(sweep, sort_keys=True).encode()).hexdigest()[:12]
    if state_file.exists():
        state = load_state(state_file, sweep)
        if state.get("digest") != digest:
            raise SweepError(f"{out} holds trials of a different {path}; move it away or pass --out <folder>")
    else:
        state = {"sweep": path.stem, "file": str(path), "digest": digest, "engine": engine, "trials": []}
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    metric, goal = sweep["metric"]["name"], sweep["metric"].get("goal", "minimize")
    say(f"sweep {path.stem}: {sweep['method']} search with {'W&B sweeps' if engine == 'sweeps' else 'the built-in sampler'}, "
        f"{trials} trials, {goal} {metric}; state in {state_file}")
    env = _child_env(path.stem)
    keys = searched(sweep)
    for i in range(int(trials)):
        recs = state["trials"]
        if i < len(recs) and recs[i]["status"] in ("finished", "invalid"):
            t = recs[i]
            say(f"[{t['id']}] {t['status']} already: {_describe(t, metric, keys)}")
            continue
        if i < len(recs):
            t = recs[i]  # interrupted or failed: run the same parameters again
            say(f"[{t['id']}] again ({t['status']} before)")
        else:
            params = draw(sweep, recs, seed)
            if params is None:
                say(f"the grid is exhausted after {len(recs)} trials")
                break
            t = {"id": f"trial-{i:03d}", "params": params}
            recs.append(t)
        tdir = out / t["id"]
        if tdir.exists() or tdir.is_symlink():
            remove_trial_folder(tdir, out)
        tdir.mkdir(parents=True)
        (tdir / "args.json").write_text(json.dumps(t["params"]))  # what ${args_json_file} names, as an agent writes it
        cmd = agent_command(sweep, t["params"], str(tdir / "args.json"))
        t.update(command=cmd, run_dir=str(tdir / "run"), status="running", metric=None, error=None)
        try:
            load_config(trial_args(sweep, cmd, t["params"]))  # a combination the training command line rejects never runs
        except ConfigError as e:
            t.update(status="invalid", error=str(e))
            _save(state, state_file)
            say(f"[{t['id']}] invalid: {e}")
            continue
        _save(state, state_file)
        say(f"[{t['id']}] {' '.join(cmd)}")
        t0 = time.time()
        with open(tdir / "train.log", "w") as log:
            rc = subprocess.run(cmd, env={**env, RUN_ENV: t["run_dir"]}, stdout=log, stderr=subprocess.STDOUT).returncode
        t.update(rc=rc, minutes=round((time.time() - t0) / 60, 2))
        summary = Path(t["run_dir"]) / "summary.json"
        if rc != 0 or not summary.exists():
            t.update(status="failed", error=f"exit {rc}: {_tail(tdir / 'train.log')}")
        else:
            logged = json.loads(summary.read_text()).get("metrics", {})
            if metric in logged:
                t.update(status="finished", metric=logged[metric])
            else:
                t.update(status="failed", error=f"metric {metric} was not logged by the run (logged: {', '.join(logged) or 'nothing'})")
        _save(state, state_file)
        say(f"[{t['id']}] {t['status']}: {_describe(t, metric, keys)}")
    rows = leaderboard(state["trials"], sweep)
    write_leaderboard(rows, out / "leaderboard.csv")
    say(format_leaderboard(rows, metric))
    say(f"leaderboard: {out / 'leaderboard.csv'}")
    return rows


def searched(sweep: dict) -> list[str]:
    """The parameters that vary (not a single ``value``): the leaderboard's columns."""
    return [k for k, s in sweep["parameters"].items() if "value" not in s]


def _describe(t: dict, metric: str, keys: list[str]) -> str:
    p = " ".join(f"{k}={fmt(t['params'][k])}" for k in keys)
    return f"{metric}={t['metric']:.4f} ({p})" if t.get("metric") is not None else f"{t.get('error')} ({p})"


def leaderboard(trials: list[dict], sweep: dict) -> list[dict]:
    """Finished trials ranked by the metric (goal), then the others with their errors."""
    metric, goal = sweep["metric"]["name"], sweep["metric"].get("goal", "minimize")
    done = sorted((t for t in trials if t["status"] == "finished"), key=lambda t: t["metric"], reverse=goal == "maximize")
    rest = [t for t in trials if t["status"] != "finished"]
    rows = []
    for rank, t in enumerate(done + rest, 1):
        rows.append({"rank": rank if t["status"] == "finished" else "", "trial": t["id"], metric: t.get("metric"),
                     **{k: fmt(t["params"][k]) for k in searched(sweep)}, "minutes": t.get("minutes"),
                     "status": t["status"], "run_dir": t.get("run_dir"), "error": t.get("error") or ""})
    return rows


def write_leaderboard(rows: list[dict], path: Path) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def format_leaderboard(rows: list[dict], metric: str) -> str:
    if not rows:
        return "no trials"
    cols = [c for c in rows[0] if c not in ("run_dir", "error")]

    def cell(r, c):
        v = r.get(c)
        return f"{v:.4f}" if c == metric and isinstance(v, float) else ("" if v is None else str(v))

    width = {c: max(len(c), *(len(cell(r, c)) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(cell(r, c).ljust(width[c]) for c in cols) for r in rows]
    lines += [f"{r['trial']}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# W&B: create a sweep, start an agent
# ------------------------------------------------------------------------------------------------
def _need_server(what: str) -> None:
    from .callbacks.wandb_mode import wandb_mode

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
    _need_server("make sweep")
    import wandb

    sweep_id = wandb.sweep(sweep, project=project, entity=entity)
    entity = entity or wandb.Api().default_entity
    return f"{entity}/{project}/{sweep_id}"


def agent(sweep_id: str, count: int | None) -> None:
    if not sweep_id:
        raise SweepError("no sweep id given: make agent SWEEP_ID=<entity/project/id> COUNT=<n> (make sweep prints it)")
    if count is not None and count < 1:
        raise SweepError(f"COUNT={count}: an agent must run at least 1 trial (leave COUNT empty to run until the sweep ends)")
    _need_server("make agent")
    args = [sys.executable, "-m", "wandb", "agent"] + (["--count", str(count)] if count else []) + [sweep_id]
    os.execvp(args[0], args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_transformer.sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    any_command = dict(action="store_true", help="let the sweep's command run another program than "
                       "${interpreter} -m sparse_transformer.train (it runs as you, with your files)")
    c = sub.add_parser("check", help="validate a sweep and print its first trial's command")
    c.add_argument("name")
    c.add_argument("--allow-any-command", **any_command)
    c = sub.add_parser("create", help="create the W&B sweep and print its id")
    c.add_argument("name", nargs="?", default="")
    c.add_argument("--allow-any-command", **any_command)
    c = sub.add_parser("agent", help="start a W&B agent")
    c.add_argument("sweep_id", nargs="?", default="")
    c.add_argument("--count", default=None)
    c = sub.add_parser("local", help="run trials here, offline, and print a leaderboard")
    c.add_argument("name", nargs="?", default="")
    c.add_argument("--trials", default=None)
    c.add_argument("--engine", default="auto", choices=("auto", "sweeps", "builtin"))
    c.add_argument("--out", default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--allow-any-command", **any_command)
    a = p.parse_args(argv)
    try:
        if a.cmd == "check":
            sweep, path = load_sweep(a.name, a.allow_any_command)
            first = {k: _candidates(s)[0] for k, s in sweep["parameters"].items()}
            print(f"{path}: valid ({sweep['method']}, {sweep['metric'].get('goal', 'minimize')} {sweep['metric']['name']}, "
                  f"{len(sweep['parameters'])} parameters); a trial runs:\n  {' '.join(agent_command(sweep, first))}")
        elif a.cmd == "create":
            sweep_id = create(a.name, a.allow_any_command)
            print(f"sweep id: {sweep_id}\nstart agents with: make agent SWEEP_ID={sweep_id} COUNT=<n>")
        elif a.cmd == "agent":
            agent(a.sweep_id, _count(a.count, "COUNT"))
        else:
            run_local(a.name, _count(a.trials, "N"), engine=a.engine, out=a.out, seed=a.seed,
                      allow_any_command=a.allow_any_command)
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _count(value, name: str) -> int | None:
    if value in (None, ""):
        if name == "N":
            raise SweepError("N is missing: make sweep-local SWEEP=<name> N=<trials>")
        return None
    try:
        return int(value)
    except ValueError:
        raise SweepError(f"{name}={value} is not a whole number") from None


if __name__ == "__main__":
    raise SystemExit(main())
