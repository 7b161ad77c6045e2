"""``python -m sparse_transformer.sweep``: the sweep command, whose home is ``cli/sweep.py`` (W&B
sweep commands and ``make sweep``/``agent``/``sweep-local`` run it by this name).

A deprecated alias, for one release, of the names it held before the sweep code moved to
``sparse_transformer.sweeping`` (spec, search, command, state, runner, leaderboard, remote).
"""

from .cli.sweep import main
from .sweeping.command import agent_command, train_args, trial_args
from .sweeping.leaderboard import format_leaderboard, leaderboard, searched, write_leaderboard
from .sweeping.remote import agent, create
from .sweeping.runner import RUN_ENV, run_local
from .sweeping.search import BUILTIN_DISTRIBUTIONS, draw_builtin, draw_sweeps, sweeps_engine_available
from .sweeping.spec import (ARG_MACROS, GOALS, INTERPRETERS, METHODS, METRICS, SPEC_KEYS, TOP_KEYS, TRAIN_MODULE,
                            SweepError, args_for, check_command, command_exp, fmt, load_sweep, sweep_path,
                            validate_sweep)
from .sweeping.state import STATUSES, TRIAL_ID, load_state, remove_trial_folder

__all__ = ["ARG_MACROS", "BUILTIN_DISTRIBUTIONS", "GOALS", "INTERPRETERS", "METHODS", "METRICS", "RUN_ENV",
           "SPEC_KEYS", "STATUSES", "TOP_KEYS", "TRAIN_MODULE", "TRIAL_ID", "SweepError", "agent", "agent_command",
           "args_for", "check_command", "command_exp", "create", "draw_builtin", "draw_sweeps", "fmt",
           "format_leaderboard", "leaderboard", "load_state", "load_sweep", "main", "remove_trial_folder",
           "run_local", "searched", "sweep_path", "sweeps_engine_available", "train_args", "trial_args",
           "validate_sweep", "write_leaderboard"]

if __name__ == "__main__":
    raise SystemExit(main())
