"""One LightningDataModule per modality; each hands out (tokens, mask) batches and the data's shape."""

from __future__ import annotations


def build_datamodule(cfg):
    modality = cfg.data.modality
    if modality == "text":
        from .text import TextDataModule

        return TextDataModule(cfg)
    raise NotImplementedError(f"data.modality={modality} is not available yet; valid now: text")
