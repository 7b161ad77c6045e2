"""sweeping/search.py and sweeps_package.py: drawing trials, and W&B's engine that no folder can shadow."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_transformer.sweeping import search, sweeps_package
from sparse_transformer.sweeping.spec import SweepError, load_sweep
from tests.sweeping.helpers import make_sweep

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_grid_enumerates_every_combination_once():
    sweep = {"method": "grid", "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]}, "c": {"value": 0}}}
    trials, seen = [], []
    while (p := search.draw_builtin(sweep, trials, 0)) is not None:
        trials.append({"params": p})
        seen.append((p["a"], p["b"], p["c"]))
    assert sorted(seen) == [(a, b, 0) for a in (1, 2) for b in "xyz"]


def test_builtin_random_is_seeded_and_in_range():
    sweep = {"method": "random", "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "n": {"min": 2, "max": 5}, "p": {"values": ["a", "b"], "probabilities": [0.0, 1.0]}}}
    draws = [search.draw_builtin(sweep, [{}] * i, seed=3) for i in range(200)]
    assert draws == [search.draw_builtin(sweep, [{}] * i, seed=3) for i in range(200)]
    lrs = [d["lr"] for d in draws]
    assert all(1e-4 <= x <= 1e-2 for x in lrs) and sum(x < 1e-3 for x in lrs) in range(70, 131)  # log-uniform: half below 1e-3
    assert {d["n"] for d in draws} == {2, 3, 4, 5} and {d["p"] for d in draws} == {"b"}
    with pytest.raises(SweepError, match="needs W&B's sweeps package"):
        search.draw_builtin({"method": "bayes", "parameters": {}}, [], 0)
    with pytest.raises(SweepError, match="distribution q_uniform needs W&B's sweeps package; built in: constant"):
        search.draw_builtin({"method": "random", "parameters": {"x": {"distribution": "q_uniform", "min": 0, "max": 1}}}, [], 0)


@pytest.mark.skipif(not search.sweeps_engine_available(), reason="the sweeps package is not installed")
def test_wandb_search_engine_draws_plain_values():
    sweep, _ = load_sweep("patterns")
    trials, seen = [], set()
    while (p := search.draw_sweeps(sweep, trials, 0)) is not None:
        assert all(type(v) in (int, str) for v in p.values())
        trials.append({"id": f"t{len(trials)}", "params": p, "status": "finished", "metric": 1.0})
        seen.add((p["attention.pattern"], p["attention.stride"]))
    assert len(trials) == len(seen) == 9
    bayes = {"method": "bayes", "metric": {"name": "val/bpd", "goal": "minimize"},
             "parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}}
    runs = []
    for i in range(4):
        p = search.draw_sweeps(bayes, runs, 0)
        assert type(p["optim.lr"]) is float and 1e-4 <= p["optim.lr"] <= 1e-2
        runs.append({"id": str(i), "params": p, "status": "finished", "metric": abs(p["optim.lr"] - 1e-3)})


def test_a_folder_named_sweeps_is_not_taken_for_the_package(tmp_path, monkeypatch):
    """python -m puts the working folder on sys.path; the runner's output folder is ./sweeps/."""
    (tmp_path / "sweeps" / "patterns").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sweeps", raising=False)
    real = sweeps_package.installed()
    assert (sweeps_package.import_sweeps() is not None) == real
    if not real:
        import sweeps  # what a plain import would have taken: the output folder, a namespace package

        assert getattr(sweeps, "__file__", None) is None and not hasattr(sweeps, "next_run")
        assert sweeps_package.import_sweeps() is None  # ... and still not, once it sits in sys.modules
        sys.modules.pop("sweeps")


def test_the_package_is_found_where_it_is_really_installed(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "sweeps"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("next_run = 'the real engine'\n")
    (tmp_path / "cwd" / "sweeps").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(tmp_path / "cwd"))  # the output folder first, as python -m puts it
    monkeypatch.delitem(sys.modules, "sweeps", raising=False)
    try:
        assert sweeps_package.import_sweeps().next_run == "the real engine"
    finally:
        sys.modules.pop("sweeps", None)


def test_python_m_runner_starts_twice_in_the_same_folder(tmp_path):
    """make sweep-local crashed on its second run where the sweeps package is absent: the first run's
    ./sweeps/ output folder shadowed it. Here a trial is a no-op program (--allow-any-command)."""
    sweep = make_sweep(tmp_path, {"optim.lr": {"values": [0.001]}}, name="quick",
                       command=["${interpreter}", "-c", "pass", "exp=default", "${args_no_hyphens}"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for run in range(2):
        r = subprocess.run([sys.executable, "-m", "sparse_transformer.sweep", "local", sweep, "--trials", "1",
                            "--allow-any-command"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout, (run, r.stderr[-2000:])
        assert (tmp_path / "sweeps" / "quick" / "trials.json").exists()
    assert "again (failed before)" in r.stdout  # the second start read the first one's state
