"""The progress bar, read on the host every ``trainer.log_every_n_steps`` batches only."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, refreshed every ``refresh_rate`` batches, with ``train/bpd``.

    Lightning turns every ``prog_bar=True`` value into a Python number (``.item()``, a host sync)
    after *every* batch, whatever the refresh rate; so ``train/bpd`` is logged without ``prog_bar``
    and read here, at a refresh."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        bpd = trainer.logged_metrics.get("train/bpd")
        if bpd is not None:
            items["train/bpd"] = float(bpd)
        return items
