"""sweeping/command.py: the command line a W&B agent builds for a trial."""

from wandb.sdk.launch.sweeps import utils

from sparse_transformer.config import load_config
from sparse_transformer.sweeping.command import agent_command, train_args, trial_args
from tests.sweeping.helpers import CMD


def test_agent_command_line_resolves_to_the_right_config():
    params = {"optim.lr": 1e-05, "model.dropout": 0.25, "attention.pattern": "fixed", "attention.summary": 4,
              "trainer.fast_dev_run": False, "attention.layout": ["stride", "local"], "logger.tags": ["a", "b"],
              "data.max_bytes": None}
    cmd = agent_command({"command": CMD}, params)
    assert cmd == ["/usr/bin/env", "python", "-m", "sparse_transformer.train", "exp=default", "optim.lr=1e-05",
                   "model.dropout=0.25", "attention.pattern=fixed", "attention.summary=4",
                   "trainer.fast_dev_run=False", "attention.layout=['stride', 'local']", "logger.tags=['a', 'b']",
                   "data.max_bytes=None"]
    cfg, _ = load_config(train_args(cmd))
    assert cfg.exp == "default" and cfg.optim.lr == 1e-05 and cfg.model.dropout == 0.25
    assert cfg.attention.pattern == "fixed" and cfg.attention.summary == 4 and cfg.trainer.fast_dev_run is False
    assert list(cfg.attention.layout) == ["stride", "local"] and list(cfg.logger.tags) == ["a", "b"]
    assert cfg.data.max_bytes is None
    assert cfg.model.n_layer == 4  # untouched keys keep the experiment's values


def test_agent_command_matches_wandbs_own_expansion():
    """The fallback expansion (no wandb) gives the same command as wandb's functions."""
    params = {"optim.lr": 0.003, "trainer.fast_dev_run": True}
    ours = agent_command({"command": CMD}, params)
    args = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    assert ours[5:] == args["args_no_hyphens"] == ["optim.lr=0.003", "trainer.fast_dev_run=True"]


def test_a_command_that_hides_the_module_amounts_to_the_experiment_parameters_and_overrides():
    sweep = {"command": ["${env}", "torchrun", "train.py", "exp=enwik8", "${args_no_hyphens}"]}
    cmd = agent_command(sweep, {"optim.lr": 0.1})
    assert trial_args(sweep, cmd, {"optim.lr": 0.1}, ["trainer.max_steps=3"]) == [
        "exp=enwik8", "optim.lr=0.1", "trainer.max_steps=3"]
