"""``python -m sparse_transformer.sample``: runs ``cli.sample.main``. The command lives in
``cli/sample.py``; the other names this module had are deprecated aliases for one release."""

from ._lazy import moved_exports
from .cli.sample import main

__getattr__ = moved_exports(__name__, {
    **dict.fromkeys(["fail", "help_text", "options_or_exit", "parse_cli", "run_folder"], ".cli.common"),
    **dict.fromkeys(["ARCH_KEYS", "checkpoint_config", "load_model", "pick_device", "upgrade_state"], ".checkpoint"),
    **dict.fromkeys(["default_out", "prefixes", "write_outputs"], ".cli.sample"),
    "atomic_folder": ".files",
})

if __name__ == "__main__":
    main()
