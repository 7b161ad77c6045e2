"""``python -m sparse_transformer.train``: runs ``cli.train.main`` (W&B sweep commands, scripts/slurm.sh,
bench/ddp.py and Lightning's DDP re-launch run this module). The command lives in ``cli/train.py``;
the other names this module had are deprecated aliases for one release."""

from ._lazy import moved_exports
from .cli.train import main

__getattr__ = moved_exports(__name__, {
    **dict.fromkeys(["RUN_ENV", "LaunchError", "is_rank_zero", "run_dir", "shared_run_name"], ".cli.common"),
    **dict.fromkeys(["check_resume_checkpoint", "resume_path"], ".cli.train"),
    **dict.fromkeys(["build_strategy", "build_trainer", "precision"], ".training.trainer"),
    "build_logger": ".training.loggers",
    **dict.fromkeys(["_stack", "check_backend", "check_pattern_stack", "check_runtime"], ".training.preflight"),
})

if __name__ == "__main__":
    main()
