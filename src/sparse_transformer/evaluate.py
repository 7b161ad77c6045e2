"""``python -m sparse_transformer.evaluate``: runs ``cli.evaluate.main``. The command lives in
``cli/evaluate.py``; the other names this module had are deprecated aliases for one release."""

from ._lazy import moved_exports
from .cli.evaluate import main

__getattr__ = moved_exports(__name__, {
    **dict.fromkeys(["ContextWindows", "LN2", "evaluation_windows", "score"], ".training.evaluation"),
})

if __name__ == "__main__":
    main()
