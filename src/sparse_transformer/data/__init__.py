"""One LightningDataModule per modality; each hands out (tokens, mask) batches and the data's shape.

``python -m sparse_transformer.data exp=<name> key=value ...`` (``make data``) prepares an
experiment's data once and prints where it is and how big.
"""

from __future__ import annotations


def build_datamodule(cfg):
    modality = cfg.data.modality
    if modality == "text":
        from .text import TextDataModule

        return TextDataModule(cfg)
    if modality == "image":
        from .image import ImageDataModule

        return ImageDataModule(cfg)
    if modality == "audio":
        from .audio import AudioDataModule

        return AudioDataModule(cfg)
    raise ValueError(f"data.modality={modality} is unknown; valid: text, image, audio")


def prepare_or_exit(dm) -> None:
    """Prepare the data once and open the training splits; bad data is one line on stderr, exit 2."""
    import sys

    from .store import DataError

    try:
        dm.prepare_data()
        dm.setup("fit")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
