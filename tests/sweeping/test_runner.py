"""sweeping/runner.py: trials run here, as subprocesses (a stand-in for training, and one real sweep)."""

import csv
import io
import json
import math
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sparse_transformer.cli.sweep import main
from sparse_transformer.sweeping import runner
from sparse_transformer.sweeping.leaderboard import leaderboard
from sparse_transformer.sweeping.runner import TrialProgress, last_line, run_local
from sparse_transformer.sweeping.spec import METRICS, SweepError
from tests.sweeping.helpers import TINY, FakeTrain, const, make_sweep, no_trial


def test_runner_ranks_records_and_skips_finished_trials(tmp_path, monkeypatch):
    params = {"optim.lr": {"values": [1e-3, 2e-3, 4e-3, 8e-3]}, **const({"model.n_layer": 2})}
    path = make_sweep(tmp_path, params)
    fake = FakeTrain(fail_lr=8e-3)
    monkeypatch.setattr(subprocess, "run", fake)
    out = tmp_path / "out"
    rows = run_local(path, 3, engine="builtin", out=out, quiet=True)
    assert [r["optim.lr"] for r in rows] == ["0.002", "0.001", "0.004"] and [r["rank"] for r in rows] == [1, 2, 3]
    assert fake.commands[0] == ["/usr/bin/env", "python", "-m", "sparse_transformer.train", "exp=default",
                                "optim.lr=0.001", "model.n_layer=2"]
    # restarted with more trials: the three finished ones do not run again
    rows = run_local(path, 5, engine="builtin", out=out, quiet=True)
    assert len(fake.commands) == 4 and fake.commands[3][5] == "optim.lr=0.008"
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["failed"]
    assert rows[3]["error"] == "exit 1: RuntimeError: diverged"
    with open(out / "leaderboard.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["trial"] for t in table] == ["trial-001", "trial-000", "trial-002", "trial-003"]
    assert float(table[0]["val/bpd"]) == 5.0 and "model.n_layer" not in table[0]  # constants stay out
    state = json.loads((out / "trials.json").read_text())
    assert [t["status"] for t in state["trials"]] == ["finished"] * 3 + ["failed"]
    assert json.loads((out / "trial-000" / "args.json").read_text()) == {"optim.lr": 0.001, "model.n_layer": 2}
    # a failed trial runs again (same parameters) on the next start
    fake.fail_lr = None
    rows = run_local(path, 4, engine="builtin", out=out, quiet=True)
    assert len(fake.commands) == 5 and fake.commands[4] == fake.commands[3] and rows[-1]["status"] == "finished"
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv", "trial-000", "trial-001", "trial-002",
                                                     "trial-003", "trials.json"]  # no temporaries left


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_trial_whose_metric_is_not_finite_fails_and_ranks_last(tmp_path, monkeypatch, bad):
    """A sweep ranked a NaN trial 2nd (issue 16, item 8)."""
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 2e-3, 4e-3]}})
    fake = FakeTrain(metric_of=lambda lr: bad if lr == 2e-3 else 5 + lr * 1000)
    monkeypatch.setattr(subprocess, "run", fake)
    rows = run_local(path, 3, engine="builtin", out=tmp_path / "o", quiet=True)
    assert [(r["trial"], r["rank"], r["status"]) for r in rows] == [
        ("trial-000", 1, "finished"), ("trial-002", 2, "finished"), ("trial-001", "", "failed")]
    assert rows[2]["error"] == f"val/bpd={bad} is not a finite number (the run diverged)" and rows[2]["val/bpd"] is None
    state = json.loads((tmp_path / "o" / "trials.json").read_text())
    assert state["trials"][1]["status"] == "failed"
    # maximize: still last, not first
    sweep = yaml.safe_load(Path(path).read_text())
    sweep["metric"]["goal"] = "maximize"
    trials = [{**t, "status": "finished", "metric": bad if t["id"] == "trial-001" else t["metric"]} for t in state["trials"]]
    rows = leaderboard(trials, sweep)  # a state file from before: the non-finite trial marked finished
    assert [r["trial"] for r in rows] == ["trial-002", "trial-000", "trial-001"] and rows[2]["status"] == "failed"


def test_runner_skips_invalid_combinations_and_missing_metrics(tmp_path, monkeypatch):
    # each value is valid with the others' first values, but fixed + stride 8 + summary 12 is not
    params = {"attention.pattern": {"values": ["strided", "fixed"]}, "attention.stride": {"values": [16, 8]},
              "attention.summary": {"values": [4, 12]}}
    path = make_sweep(tmp_path, params, metric="train/loss")
    fake = FakeTrain()
    monkeypatch.setattr(subprocess, "run", fake)
    rows = run_local(path, 8, engine="builtin", out=tmp_path / "o", quiet=True)
    status = {(r["attention.pattern"], r["attention.stride"], r["attention.summary"]): (r["status"], r["error"]) for r in rows}
    assert status[("fixed", "8", "12")] == ("invalid", "attention.summary=12 must be in 1..attention.stride=8")
    assert len(fake.commands) == 7  # the invalid one never ran
    assert status[("strided", "16", "4")] == ("failed", "metric train/loss was not logged by the run (logged: val/bpd, train/bpd)")


def test_runner_refuses_a_changed_sweep_file(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", FakeTrain())
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3]}})
    run_local(path, 1, engine="builtin", out=tmp_path / "o", quiet=True)
    make_sweep(tmp_path, {"optim.lr": {"values": [2e-3]}})
    with pytest.raises(SweepError, match="holds trials of a different"):
        run_local(path, 1, engine="builtin", out=tmp_path / "o", quiet=True)


def test_args_overrides_reach_every_trial_and_belong_to_the_state(tmp_path, monkeypatch, capsys):
    """make sweep-local SWEEP=<name> N=<trials> ARGS="trainer.max_steps=3": shorter trials."""
    fake = FakeTrain()
    monkeypatch.setattr(subprocess, "run", fake)
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 2e-3]}, **const({"trainer.max_steps": 50})})
    out = tmp_path / "o"
    assert main(["local", path, "--trials=2", f"--out={out}", "trainer.max_steps=3", "--model.n_layer=2"]) == 2
    assert "trainer.max_steps is a parameter of the sweep" in capsys.readouterr().err  # the sweep's constant: not here
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 2e-3]}})
    assert main(["local", path, "--trials=2", f"--out={out}", "trainer.max_steps=3", "--model.n_layer=2"]) == 0
    assert all(c[-2:] == ["trainer.max_steps=3", "model.n_layer=2"] for c in fake.commands) and len(fake.commands) == 2
    assert "; ARGS trainer.max_steps=3 model.n_layer=2;" in capsys.readouterr().out
    state = json.loads((out / "trials.json").read_text())
    assert state["overrides"] == ["trainer.max_steps=3", "model.n_layer=2"]
    assert main(["local", path, "--trials=2", f"--out={out}"]) == 2  # other ARGS: not the same trials
    assert "holds trials of a different" in capsys.readouterr().err


def test_a_running_trial_shows_its_latest_progress_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("setting up\nEpoch 0:  10%|#  | 2/20 [00:01<00:09]\rEpoch 0:  50%|#####  | 10/20 [00:05<00:05]\r")
    assert last_line(log) == "Epoch 0:  50%|#####  | 10/20 [00:05<00:05]"
    assert last_line(tmp_path / "missing.log") == ""
    stream = io.StringIO()
    with TrialProgress(log, "[trial-000] ", stream=stream, every=0.01):
        for _ in range(200):  # until the progress thread has shown the line
            if stream.getvalue():
                break
            time.sleep(0.01)
    assert stream.getvalue() == "[trial-000] Epoch 0:  50%|#####  | 10/20 [00:05<00:05]\n"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    with TrialProgress(log, "[trial-001] ", stream=term, every=0.01):
        time.sleep(0.2)
    assert term.getvalue().startswith("\r\x1b[K[trial-001] Epoch 0:  50%") and term.getvalue().endswith("\r\x1b[K")


def test_trials_run_this_checkouts_source(monkeypatch):
    """The child's PYTHONPATH starts at the src/ folder holding this package (a path built from __file__)."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = runner.child_env("x")
    src = Path(env["PYTHONPATH"].split(":")[0])
    assert (src / "sparse_transformer" / "sweeping" / "runner.py").is_file() and env["WANDB_RUN_GROUP"] == "sweep-x"


# ------------------------------------------------------------------------------------------------
# A real local sweep: two trials of a tiny model, as subprocesses
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_trial_local_sweep_completes_with_a_leaderboard(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two tiny trials; threads only contend on a shared CPU
    params = {"optim.lr": {"values": [3e-4, 3e-3]}, **const({**TINY, "data.cache_dir": str(tmp_path / "data")})}
    path = make_sweep(tmp_path, params, name="tiny")
    assert main(["local", path, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweeps" / "tiny" / "leaderboard.csv")))
    assert [r["status"] for r in rows] == ["finished", "finished"] and [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["val/bpd"]) <= float(rows[1]["val/bpd"]) < 8.0
    assert "rank  trial      val/bpd  optim.lr" in out and "[trial-000] (1/2) " in out and "[trial-001] finished in" in out
    summary = json.loads((Path(rows[0]["run_dir"]) / "summary.json").read_text())
    assert set(METRICS) <= set(summary["metrics"])  # every metric a sweep may name is really logged
    assert all(math.isfinite(summary["metrics"][m]) for m in METRICS)
    cfg = yaml.safe_load((Path(rows[0]["run_dir"]) / "config.yaml").read_text())
    assert cfg["optim"]["lr"] == float(rows[0]["optim.lr"]) and cfg["model"]["n_layer"] == 2
    # restarted: nothing runs again
    monkeypatch.setattr(subprocess, "run", no_trial)
    assert main(["local", path, "--trials", "2"]) == 0
    assert "finished already" in capsys.readouterr().out
