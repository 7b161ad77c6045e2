"""The next trial's parameters: from W&B's search engine (grid, random, bayes) where the ``sweeps``
package is installed, else from the small grid/random sampler here (bayes needs the package)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np

from .spec import SweepError, candidates, plain
from .sweeps_package import import_sweeps

BUILTIN_DISTRIBUTIONS = ("constant", "categorical", "uniform", "int_uniform", "log_uniform_values", "normal")
NEEDS_SWEEPS = "pip install --no-deps sweeps==0.3.0 jsonref && pip install scikit-learn"


def sweeps_engine_available() -> bool:
    return import_sweeps() is not None


def draw_sweeps(sweep: dict, trials: list[dict], seed: int) -> dict | None:
    """The next trial's parameters from W&B's search engine, given the trials so far."""
    sweeps = import_sweeps()
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
    return {k: plain(run.config[k]["value"]) for k in sweep["parameters"]}


def draw_builtin(sweep: dict, trials: list[dict], seed: int) -> dict | None:
    """Grid and random search without the sweeps package (bayes needs it)."""
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        done = [t["params"] for t in trials]
        for combo in itertools.product(*[candidates(s) for s in params.values()]):
            p = dict(zip(params, combo))
            if p not in done:
                return p
        return None
    if sweep["method"] != "random":
        raise SweepError(f"method={sweep['method']} needs W&B's sweeps package: {NEEDS_SWEEPS}")
    rng = random.Random(seed * 100003 + len(trials))
    return {key: _draw_one(key, s, rng) for key, s in params.items()}


def _draw_one(key: str, s: dict, rng: random.Random):
    dist = s.get("distribution") or ("constant" if "value" in s else "categorical" if "values" in s else
                                     "int_uniform" if isinstance(s.get("min"), int) and isinstance(s.get("max"), int)
                                     else "uniform")
    if dist == "constant":
        return s["value"]
    if dist == "categorical":
        return rng.choices(s["values"], weights=s.get("probabilities"))[0]
    if dist == "uniform":
        return rng.uniform(s["min"], s["max"])
    if dist == "int_uniform":
        return rng.randint(s["min"], s["max"])
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))
    if dist == "normal":
        return rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0))
    raise SweepError(f"parameters.{key}: distribution {dist} needs W&B's sweeps package; "
                     f"built in: {', '.join(BUILTIN_DISTRIBUTIONS)}")
