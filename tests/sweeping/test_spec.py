"""sweeping/spec.py: the sweep file and its checks, before anything runs."""

import subprocess

import pytest
import yaml

from sparse_transformer.cli.sweep import main
from sparse_transformer.config import CONF_DIR
from sparse_transformer.sweeping import spec
from sparse_transformer.sweeping.command import agent_command
from sparse_transformer.sweeping.spec import SweepError, check_command, check_overrides, load_sweep
from tests.sweeping.helpers import CMD, FakeTrain, make_sweep, no_trial


@pytest.mark.parametrize("path", sorted((CONF_DIR / "sweep").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_are_valid(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["command"] == CMD[:4] + [doc["command"][4]] + ["${args_no_hyphens}"]
    exp = spec.command_exp(doc)
    if not (CONF_DIR / "exp" / f"{exp}.yaml").exists():
        pytest.skip(f"conf/exp/{exp}.yaml is not in this checkout")
    sweep, _ = load_sweep(str(path))
    assert sweep["metric"]["name"] in spec.METRICS


def test_pattern_sweep_covers_dense_strided_fixed():
    sweep, _ = load_sweep("patterns")
    assert sweep["parameters"]["attention.pattern"]["values"] == ["dense", "strided", "fixed"]
    assert sweep["command"][4] == "exp=default" and sweep["method"] == "grid"


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
    monkeypatch.setattr(subprocess, "run", no_trial)
    out = tmp_path / "out"
    rc = main(["local", str(path), "--trials", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message.format(path=path) in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_sweep_name_stays_inside_conf_sweep(capsys):
    assert main(["check", "../exp/default"]) == 2
    assert "is neither a .yaml file nor a sweep name in conf/sweep/" in capsys.readouterr().err


@pytest.mark.parametrize("exp", ["../../../x/outside", "/etc/passwd", "a/b"])
def test_a_sweep_command_cannot_name_an_experiment_outside_conf_exp(tmp_path, capsys, exp):
    command = ["${env}", "${interpreter}", "-m", "sparse_transformer.train", f"exp={exp}", "${args_no_hyphens}"]
    path = make_sweep(tmp_path, {"optim.lr": {"values": [1e-3]}}, command=command)
    assert main(["check", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"command runs exp={exp}, but that is not an experiment name (a file in conf/exp/)" in err


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
    monkeypatch.setattr(subprocess, "run", no_trial)
    for argv in (["check", path], ["local", path, "--trials", "1", "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
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
    assert main(["check", path]) == 2
    assert main(["check", path, "--allow-any-command"]) == 0
    assert main(["local", path, "--trials", "1", "--out", str(tmp_path / "o"), "--allow-any-command"]) == 0
    assert fake.commands == [["/usr/bin/env", "torchrun", "--standalone", "-m", "sparse_transformer.train", "exp=default",
                              "optim.lr=0.001"]]
    for good in (["${interpreter}", "-m", "sparse_transformer.train", "${args}"],
                 ["python3", "-m", "sparse_transformer.train", "exp=default", "trainer.max_steps=3", "${args_no_hyphens}"]):
        check_command(good, "x")


def test_check_prints_the_first_trials_command(capsys):
    assert main(["check", "patterns"]) == 0
    sweep, _ = load_sweep("patterns")
    first = {k: spec.candidates(s)[0] for k, s in sweep["parameters"].items()}
    assert " ".join(agent_command(sweep, first)) in capsys.readouterr().out


@pytest.mark.parametrize("words,message", [
    (["optim.lr=1e-3"], "ARGS optim.lr=1e-3: optim.lr is a parameter of the sweep; ARGS may set only other keys"),
    (["exp=enwik8"], "ARGS exp=enwik8: exp cannot be overridden here (the sweep's command names the experiment)"),
    (["run_dir=/tmp/x"], "run_dir cannot be overridden here (every trial gets its own run folder)"),
    (["trainer.max_stepz=5"], "unknown key trainer.max_stepz in ARGS: did you mean trainer.max_steps?"),
    (["trainer.max_steps=abc"], "ARGS: trainer.max_steps=abc is not a valid int"),
    (["data.seq_len=100"], "ARGS: data.seq_len=100 must be a multiple of attention.stride"),
    (["oops"], "ARGS word 'oops' is not key=value"),
])
def test_overrides_are_checked_like_the_training_command_line(tmp_path, words, message):
    sweep, _ = load_sweep(make_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 2e-3]}}))
    with pytest.raises(SweepError) as e:
        check_overrides(sweep, words)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert check_overrides(sweep, ["--trainer.max_steps=5", "model.n_layer=2"]) == ["trainer.max_steps=5", "model.n_layer=2"]
