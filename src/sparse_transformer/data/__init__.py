"""One LightningDataModule per modality; each hands out (tokens, mask) batches and the data's shape.

``python -m sparse_transformer.data exp=<name> key=value ...`` (``make data``) prepares an
experiment's data once and prints where it is and how big (the command: ``cli/data.py``).

The modality modules import torch and Lightning, so ``build_datamodule`` imports the one a config
names when it is called: the data command checks its command line before any of them loads.
"""

from __future__ import annotations

import sys
from importlib import import_module

from .store import DataError

MODULES = {"text": (".text", "TextDataModule"), "image": (".image", "ImageDataModule"),
           "audio": (".audio", "AudioDataModule")}


def build_datamodule(cfg):
    modality = cfg.data.modality
    if modality not in MODULES:
        raise ValueError(f"data.modality={modality} is unknown; valid: {', '.join(MODULES)}")
    module, name = MODULES[modality]
    return getattr(import_module(module, __name__), name)(cfg)


def prepare_or_exit(dm) -> None:
    """Prepare the data once and open the training splits; bad data is one line on stderr, exit 2."""
    try:
        dm.prepare_data()
        dm.setup("fit")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
