"""Sweeps: validation, the agent's command line, the search engines and the offline runner."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sparse_transformer import sweep as sw
from sparse_transformer.config import CONF_DIR, load_config

CMD = ["${env}", "${interpreter}", "-m", "sparse_transformer.train", "exp=default", "${args_no_hyphens}"]
# Constant parameters that make a trial tiny (a sweep may fix any config key this way).
TINY = {"model.n_layer": 2, "model.d_model": 32, "model.n_head": 2, "data.seq_len": 64, "attention.stride": 8,
        "data.batch_size": 4, "data.val_windows": 4, "trainer.max_steps": 4, "optim.warmup_steps": 1,
        "trainer.enable_progress_bar": False, "callbacks.samples.length": 8, "logger.kind": "none"}


def make_sweep(tmp_path, parameters, method="grid", metric="val/bpd", name="s", **extra) -> str:
    doc = {"method": method, "metric": {"name": metric, "goal": "minimize"}, "parameters": parameters,
           "command": CMD, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def const(d: dict) -> dict:
    return {k: {"value": v} for k, v in d.items()}


# ------------------------------------------------------------------------------------------------
# The shipped sweeps
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((CONF_DIR / "sweep").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_are_valid(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["command"] == CMD[:4] + [doc["command"][4]] + ["${args_no_hyphens}"]
    exp = sw.command_exp(doc)
    if not (CONF_DIR / "exp" / f"{exp}.yaml").exists():
        pytest.skip(f"conf/exp/{exp}.yaml is not in this checkout")
    sweep, _ = sw.load_sweep(str(path))
    assert sweep["metric"]["name"] in sw.METRICS


def test_pattern_sweep_covers_dense_strided_fixed():
    sweep, _ = sw.load_sweep("patterns")
    assert sweep["parameters"]["attention.pattern"]["values"] == ["dense", "strided", "fixed"]
    assert sweep["command"][4] == "exp=default" and sweep["method"] == "grid"


# ------------------------------------------------------------------------------------------------
# The agent's command line
# ------------------------------------------------------------------------------------------------
def test_agent_command_line_resolves_to_the_right_config():
    params = {"optim.lr": 1e-05, "model.dropout": 0.25, "attention.pattern": "fixed", "attention.summary": 4,
              "trainer.fast_dev_run": False, "attention.layout": ["stride", "local"], "logger.tags": ["a", "b"],
              "data.max_bytes": None}
    cmd = sw.agent_command({"command": CMD}, params)
    assert cmd == ["/usr/bin/env", "python", "-m", "sparse_transformer.train", "exp=default", "optim.lr=1e-05",
                   "model.dropout=0.25", "attention.pattern=fixed", "attention.summary=4",
                   "trainer.fast_dev_run=False", "attention.layout=['stride', 'local']", "logger.tags=['a', 'b']",
                   "data.max_bytes=None"]
    cfg, _ = load_config(sw.train_args(cmd))
    assert cfg.exp == "default" and cfg.optim.lr == 1e-05 and cfg.model.dropout == 0.25
    assert cfg.attention.pattern == "fixed" and cfg.attention.summary == 4 and cfg.trainer.fast_dev_run is False
    assert list(cfg.attention.layout) == ["stride", "local"] and list(cfg.logger.tags) == ["a", "b"]
    assert cfg.data.max_bytes is None
    assert cfg.model.n_layer == 4  # untouched keys keep the experiment's values


def test_agent_command_matches_wandbs_own_expansion():
    """The fallback expansion (no wandb) gives the same command as wandb's functions."""
    from wandb.sdk.launch.sweeps import utils

    params = {"optim.lr": 0.003, "trainer.fast_dev_run": True}
    ours = sw.agent_command({"command": CMD}, params)
    args = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    assert ours[5:] == args["args_no_hyphens"] == ["optim.lr=0.003", "trainer.fast_dev_run=True"]


# ------------------------------------------------------------------------------------------------
# Bad input: one line, nothing run
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    ({"parameters": {"optim.lrr": {"values": [1e-3]}}}, "unknown key optim.lrr in {path}: did you mean optim.lr?"),
    ({"metric": {"name": "val/loss"}}, "metric 'val/loss' is never logged by sparse_transformer.train; valid: val/bpd"),
    ({"parameters": {"attention.pattern": {"values": ["dense", "fixd"]}}},
     "parameters.attention.pattern value fixd: attention.pattern=fixd is unknown (did you mean fixed?)"),
    ({"parameters": {"attention.pattern": {"values": ["fixed"]}}},
     "parameters.attention.pattern value fixed: attention.summary must be set"),
    ({"parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}},
     "method=grid needs values (or value) for parameters.optim.lr"),
    ({"parameters": {"optim": {"parameters": {"lr": {"values": [1e-3]}}}}}, "parameters.optim is nested"),
    ({"method": "hyperopt"}, "method=hyperopt is not valid; valid: grid, random, bayes"),
    ({"command": ["${env}", "${interpreter}", "-m", "sparse_transformer.train", "exp=nope", "${args_no_hyphens}"]},
     "command runs exp=nope, but conf/exp/nope.yaml does not exist"),
    ({"command": ["python", "-m", "sparse_transformer.train", "${args_json}"]}, "through ${{args_no_hyphens}} (key=value)"),
    ({"parameters": {}}, "parameters must be a non-empty mapping"),
])
def test_bad_sweeps_fail_before_anything_runs(tmp_path, capsys, monkeypatch, change, message):
    doc = {"method": "grid", "metric": {"name": "val/bpd", "goal": "minimize"},
           "parameters": {"optim.lr": {"values": [1e-3, 2e-3]}}, "command": CMD, **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a trial ran"))
    out = tmp_path / "out"
    rc = sw.main(["local", str(path), "--trials", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message.format(path=path) in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["local", "patterns", "--trials", "0"], "N=0: give the number of trials, at least 1"),
    (["local", "patterns", "--trials", ""], "N is missing"),
    (["local", "patterns", "--trials", "two"], "N=two is not a whole number"),
    (["local", "nosuch", "--trials", "2"], "sweep 'nosuch' does not exist"),
    (["agent", "me/proj/abc123", "--count", "0"], "COUNT=0: an agent must run at least 1 trial"),
    (["agent", "", "--count", "2"], "no sweep id given"),
])
def test_bad_counts_and_names(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a trial ran"))
    assert sw.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "sweeps").exists()


def test_creating_a_sweep_offline_says_what_to_do_instead(capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert sw.main(["create", "patterns"]) == 2
    assert "make sweep needs the W&B server, but W&B is offline here (WANDB_MODE)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Search engines
# ------------------------------------------------------------------------------------------------
def test_builtin_grid_enumerates_every_combination_once():
    sweep = {"method": "grid", "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]}, "c": {"value": 0}}}
    trials, seen = [], []
    while (p := sw.draw_builtin(sweep, trials, 0)) is not None:
        trials.append({"params": p})
        seen.append((p["a"], p["b"], p["c"]))
    assert sorted(seen) == [(a, b, 0) for a in (1, 2) for b in "xyz"]


def test_builtin_random_is_seeded_and_in_range():
    sweep = {"method": "random", "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "n": {"min": 2, "max": 5}, "p": {"values": ["a", "b"], "probabilities": [0.0, 1.0]}}}
    draws = [sw.draw_builtin(sweep, [{}] * i, seed=3) for i in range(200)]
    assert draws == [sw.draw_builtin(sweep, [{}] * i, seed=3) for i in range(200)]
    lrs = [d["lr"] for d in draws]
    assert all(1e-4 <= x <= 1e-2 for x in lrs) and sum(x < 1e-3 for x in lrs) in range(70, 131)  # log-uniform: half below 1e-3
    assert {d["n"] for d in draws} == {2, 3, 4, 5} and {d["p"] for d in draws} == {"b"}
    with pytest.raises(sw.SweepError, match="needs W&B's sweeps package"):
        sw.draw_builtin({"method": "bayes", "parameters": {}}, [], 0)


@pytest.mark.skipif(not sw.sweeps_engine_available(), reason="the sweeps package is not installed")
def test_wandb_search_engine_draws_plain_values():
    sweep, _ = sw.load_sweep("patterns")
    trials, seen = [], set()
    while (p := sw.draw_sweeps(sweep, trials, 0)) is not None:
        assert all(type(v) in (int, str) for v in p.values())
        trials.append({"id": f"t{len(trials)}", "params": p, "status": "finished", "metric": 1.0})
        seen.add((p["attention.pattern"], p["attention.stride"]))
    assert len(trials) == len(seen) == 9
    bayes = {"method": "bayes", "metric": {"name": "val/bpd", "goal": "minimize"},
             "parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}}
    runs = []
    for i in range(4):
        p = sw.draw_sweeps(bayes, runs, 0)
        assert type(p["optim.lr"]) is float and 1e-4 <= p["optim.lr"] <= 1e-2
        runs.append({"id": str(i), "params": p, "status": "finished", "metric": abs(p["optim.lr"] - 1e-3)})


# ------------------------------------------------------------------------------------------------
# The offline runner, with a stand-in for the training process
# ------------------------------------------------------------------------------------------------
class FakeTrain:
    """Stands in for subprocess.run: records the command; writes summary.json as train.py would."""

    def __init__(self, fail_lr=None):
        self.commands, self.fail_lr = [], fail_lr

    def __call__(self, cmd, env, stdout, stderr):
        self.commands.append(cmd)
        cfg, _ = load_config(sw.train_args(cmd))  # what the trial would train
        run = Path(env[sw.RUN_ENV])
        if cfg.optim.lr == self.fail_lr:
            stdout.write("Traceback ...\nRuntimeError: diverged\n")
            return subprocess.CompletedProcess(cmd, 1)
        run.mkdir(parents=True)
        metrics = {"val/bpd": 5 + abs(cfg.optim.lr - 2e-3) * 1000, "train/bpd": 5.0}
        (run / "summary.json").write_text(json.dumps({"metrics": metrics}))
        return subprocess.CompletedProcess(cmd, 0)


def test_runner_ranks_records_and_skips_finished_trials(tmp_path, monkeypatch):
    params = {"optim.lr": {"values": [1e-3, 2e-3, 4e-3, 8e-3]}, **const({"model.n_layer": 2})}
    path = make_sweep(tmp_path, params)
    fake = FakeTrain(fail_lr=8e-3)
    monkeypatch.setattr(subprocess, "run", fake)
    out = tmp_path / "out"
    rows = sw.run_local(path, 3, engine="builtin", out=out, quiet=True)
    assert [r["optim.lr"] for r in rows] == ["0.002", "0.001", "0.004"] and [r["rank"] for r in rows] == [1, 2, 3]
    assert fake.commands[0] == ["/usr/bin/env", "python", "-m", "sparse_transformer.train", "exp=default",
                                "optim.lr=0.001", "model.n_layer=2"]
    # restarted with more trials: the three finished ones do not run again
    rows = sw.run_local(path, 5, engine="builtin", out=out, quiet=True)
    assert len(fake.commands) == 4 and fake.commands[3][5] == "optim.lr=0.008"
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["failed"]
    assert rows[3]["error"] == "exit 1: RuntimeError: diverged"
    with open(out / "leaderboard.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["trial"] for t in table] == ["trial-001", "trial-000", "trial-002", "trial-003"]
    assert float(table[0]["val/bpd"]) == 5.0 and "model.n_layer" not in table[0]  # constants stay out
    state = json.loads((out / "trials.json").read_text())
    assert [t["status"] for t in state["trials"]] == ["finished"] * 3 + ["failed"]
    # a failed trial runs again (same parameters) on the next start
    fake.fail_lr = None
    rows = sw.run_local(path, 4, engine="builtin", out=out, quiet=True)
    assert len(fake.commands) == 5 and fake.commands[4] == fake.commands[3] and rows[-1]["status"] == "finished"


def test_runner_skips_invalid_combinations_and_missing_metrics(tmp_path, monkeypatch):
    # each value is valid with the others' first values, but fixed + stride 8 + summary 12 is not
    params = {"attention.pattern": {"values": ["strided", "fixed"]}, "attention.stride": {"values": [16, 8]},
              "attention.summary": {"values": [4, 12]}}
    path = make_sweep(tmp_path, params, metric="train/loss")
    fake = FakeTrain()
    monkeypatch.setattr(subprocess, "run", fake)
    rows = sw.run_local(path, 8, engine="builtin", out=tmp_path / "o", quiet=True)
    status = {(r["attention.pattern"], r["attention.stride"], r["attention.summary"]): (r["status"], r["error"]) for r in rows}
    assert status[("fixed", "8", "12")] == ("invalid", "attention.summary=12 must be in 1..attention.stride=8")
    assert len(fake.commands) == 7  # the invalid one never ran
    assert status[("strided", "16", "4")] == ("failed", "metric train/loss was not logged by the run (logged: val/bpd, train/bpd)")


def test_runner_refuses_a_changed_sweep_file(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", FakeTrain())
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3]}})
    sw.run_local(path, 1, engine="builtin", out=tmp_path / "o", quiet=True)
    make_sweep(tmp_path, {"optim.lr": {"values": [2e-3]}})
    with pytest.raises(sw.SweepError, match="holds trials of a different"):
        sw.run_local(path, 1, engine="builtin", out=tmp_path / "o", quiet=True)


# ------------------------------------------------------------------------------------------------
# A real local sweep: two trials of a tiny model, as subprocesses
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_trial_local_sweep_completes_with_a_leaderboard(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two tiny trials; threads only contend on a shared CPU
    params = {"optim.lr": {"values": [3e-4, 3e-3]}, **const({**TINY, "data.cache_dir": str(tmp_path / "data")})}
    path = make_sweep(tmp_path, params, name="tiny")
    assert sw.main(["local", path, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "sweeps" / "tiny" / "leaderboard.csv")))
    assert [r["status"] for r in rows] == ["finished", "finished"] and [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["val/bpd"]) <= float(rows[1]["val/bpd"]) < 8.0
    assert "rank  trial      val/bpd  optim.lr" in out
    summary = json.loads((Path(rows[0]["run_dir"]) / "summary.json").read_text())
    assert set(sw.METRICS) <= set(summary["metrics"])  # every metric a sweep may name is really logged
    cfg = yaml.safe_load((Path(rows[0]["run_dir"]) / "config.yaml").read_text())
    assert cfg["optim"]["lr"] == float(rows[0]["optim.lr"]) and cfg["model"]["n_layer"] == 2
    # restarted: nothing runs again
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a finished trial ran again"))
    assert sw.main(["local", path, "--trials", "2"]) == 0
    assert "finished already" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# The runner trusts neither its state file nor the sweep's command
# ------------------------------------------------------------------------------------------------
def _edited_state(tmp_path, monkeypatch, edit):
    """A sweep run once (one failed trial), then its trials.json edited by ``edit(trials)``."""
    path = make_sweep(tmp_path, {"optim.lr": {"values": [8e-3, 1e-3]}})
    monkeypatch.setattr(subprocess, "run", FakeTrain(fail_lr=8e-3))
    out = tmp_path / "sweeps" / "s"
    sw.run_local(path, 1, engine="builtin", out=out, quiet=True)
    state = json.loads((out / "trials.json").read_text())
    edit(state["trials"])
    (out / "trials.json").write_text(json.dumps(state))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a trial ran"))
    return path, out, victim


@pytest.mark.parametrize("bad_id", ["../../victim", "../victim", str("/tmp/victim"), "trial-000/../../../victim", "",
                                    "trial-0", "trial-000\n", 7, None])
def test_an_edited_trial_id_never_deletes_outside_the_sweep(tmp_path, monkeypatch, capsys, bad_id):
    """trials.json with an id of ../../victim made the runner rmtree a folder outside the sweep."""
    path, out, victim = _edited_state(tmp_path, monkeypatch, lambda trials: trials[0].update(id=bad_id))
    before = sorted(tmp_path.rglob("*"))
    rc = sw.main(["local", path, "--trials", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {out / 'trials.json'}: trial 0 has id {bad_id!r}; valid: trial-<number>")
    assert (victim / "precious.txt").read_text() == "keep me" and sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.append(dict(t[0])), "trial 1 has id 'trial-000'; valid: trial-<number> (trial-000, trial-001, ...), each once"),
    (lambda t: t[0]["params"].update({"imports": ["os"]}), "trial trial-000 has parameters ['imports', 'optim.lr'], not the sweep's ['optim.lr']"),
    (lambda t: t[0].update(status="done"), "trial trial-000 has status 'done'; valid: running, finished, failed, invalid"),
    (lambda t: t.__setitem__(0, "trial-000"), "trial 0 has id None"),
])
def test_an_edited_state_file_is_refused_in_one_line(tmp_path, monkeypatch, capsys, edit, message):
    path, out, _ = _edited_state(tmp_path, monkeypatch, edit)
    rc = sw.main(["local", path, "--trials", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_a_trial_folder_is_deleted_only_inside_the_sweep_folder(tmp_path, monkeypatch, capsys):
    """Even with valid ids: a trial folder that is a link out of the sweep is not followed."""
    path, out, victim = _edited_state(tmp_path, monkeypatch, lambda trials: None)
    shutil.rmtree(out / "trial-000")
    (out / "trial-000").symlink_to(victim, target_is_directory=True)
    rc = sw.main(["local", path, "--trials", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"refusing to delete {out / 'trial-000'}: it resolves to {victim}" in err
    assert (victim / "precious.txt").read_text() == "keep me"
    for target in (victim, out, out / ".." / "victim"):
        with pytest.raises(sw.SweepError, match="refusing to delete"):
            sw.remove_trial_folder(target, out)
    assert (victim / "precious.txt").exists()


EVIL_COMMANDS = {
    "token-smuggled": ["touch", "{pwned}", "sparse_transformer.train", "exp=default", "${args_no_hyphens}"],
    "program": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
    "shell": ["bash", "-c", "touch {pwned}", "sparse_transformer.train", "${args_no_hyphens}"],
    "other-module": ["${env}", "${interpreter}", "-m", "sparse_transformer.sample", "${args_no_hyphens}"],
    "script-first": ["${interpreter}", "evil.py", "-m", "sparse_transformer.train", "${args_no_hyphens}"],
    "extra-flag": ["${interpreter}", "-m", "sparse_transformer.train", "--cfg", "${args_no_hyphens}"],
    "trailing-program": ["${interpreter}", "-m", "sparse_transformer.train", "${args_no_hyphens}", "${program}"],
    "launcher": ["${env}", "torchrun", "--standalone", "-m", "sparse_transformer.train", "exp=default", "${args_no_hyphens}"],
}


@pytest.mark.parametrize("name", list(EVIL_COMMANDS))
def test_a_sweep_command_must_run_the_train_module_through_the_interpreter(tmp_path, monkeypatch, capsys, name):
    pwned = tmp_path / "pwned"
    command = [c.replace("{pwned}", str(pwned)) for c in EVIL_COMMANDS[name]]
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3]}}, command=command, program="evil.py")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a trial ran"))
    for argv in (["check", path], ["local", path, "--trials", "1", "--out", str(tmp_path / "o")]):
        assert sw.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {path}: command {' '.join(command)!r} does not run "
                                                       f"this project's training; valid: [${{env}}, ${{interpreter}}, -m, "
                                                       f"sparse_transformer.train"), err
        assert err.strip().endswith("or pass --allow-any-command to run another program")
    assert not pwned.exists() and not (tmp_path / "o").exists()


def test_allow_any_command_is_an_explicit_opt_in(tmp_path, monkeypatch, capsys):
    command = EVIL_COMMANDS["launcher"]
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3]}}, command=command)
    fake = FakeTrain()
    monkeypatch.setattr(subprocess, "run", fake)
    assert sw.main(["check", path]) == 2
    assert sw.main(["check", path, "--allow-any-command"]) == 0
    assert sw.main(["local", path, "--trials", "1", "--out", str(tmp_path / "o"), "--allow-any-command"]) == 0
    assert fake.commands == [["/usr/bin/env", "torchrun", "--standalone", "-m", "sparse_transformer.train", "exp=default",
                              "optim.lr=0.001"]]
    for good in (["${interpreter}", "-m", "sparse_transformer.train", "${args}"],
                 ["python3", "-m", "sparse_transformer.train", "exp=default", "trainer.max_steps=3", "${args_no_hyphens}"]):
        sw.check_command(good, "x")


@pytest.mark.parametrize("exp", ["../../../x/outside", "/etc/passwd", "a/b"])
def test_a_sweep_command_cannot_name_an_experiment_outside_conf_exp(tmp_path, monkeypatch, capsys, exp):
    command = ["${env}", "${interpreter}", "-m", "sparse_transformer.train", f"exp={exp}", "${args_no_hyphens}"]
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3]}}, command=command)
    assert sw.main(["check", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"command runs exp={exp}, but that is not an experiment name (a file in conf/exp/)" in err


def test_a_sweep_name_stays_inside_conf_sweep(capsys):
    assert sw.main(["check", "../exp/default"]) == 2
    assert "is neither a .yaml file nor a sweep name in conf/sweep/" in capsys.readouterr().err
