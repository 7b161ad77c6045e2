"""What the console shows during training: the progress bar (Rich in a terminal, a plain TQDM bar
when output goes to a file or a pipe) and the model summary, read on the host every
``trainer.log_every_n_steps`` batches only.

Lightning turns every ``prog_bar=True`` value into a Python number (``.item()``, a host sync) after
*every* batch, whatever the refresh rate; so ``train/bpd`` is logged without ``prog_bar`` and read
here, at a refresh. Lightning's own model summary ends with "Total FLOPs: 0" (it counts FLOPs only
for a module with an ``example_input_array``): ours leaves FLOPs out (``callbacks.throughput``
measures them) and adds nothing that costs a forward pass.
"""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from lightning.pytorch.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)
from lightning.pytorch.utilities.rank_zero import rank_zero_info

HIDDEN = ("v_num",)  # the logger's version: noise on a bar


class _Metrics:
    """The bar's metrics: Lightning's (less ``HIDDEN``), plus ``train/bpd`` as the last logged value."""

    def get_metrics(self, trainer, pl_module):
        items = {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k not in HIDDEN}
        bpd = trainer.logged_metrics.get("train/bpd")
        if bpd is not None:
            items["train/bpd"] = float(bpd)
        return items


class ProgressBar(_Metrics, TQDMProgressBar):
    """Lightning's TQDM bar, refreshed every ``refresh_rate`` batches, with ``train/bpd``."""


class RichBar(_Metrics, RichProgressBar):
    """Lightning's Rich bar; its metrics (a host read) are updated every ``every`` batches, not
    after each one as Lightning's are."""

    def __init__(self, every: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.every = max(1, every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:  # a mid-epoch resume
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, batch_idx + 1)
        if (batch_idx + 1) % self.every == 0:
            self._update_metrics(trainer, pl_module)
        self.refresh()


class ModelTable(ModelSummary):
    """The model's top-level modules and their parameters, without the FLOPs column and total;
    a Rich table in a terminal (``rich=True``), plain text otherwise."""

    def __init__(self, rich: bool = False, **kwargs):
        super().__init__(max_depth=1, rich=rich, **kwargs)

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict, total_flops: int = 0, rich: bool = False, **kwargs) -> None:
        cols = [(name, values) for name, values in summary_data if name != "FLOPs"]
        totals = [("Trainable params", get_human_readable_count(trainable_parameters)),
                  ("Non-trainable params", get_human_readable_count(total_parameters - trainable_parameters)),
                  ("Total params", get_human_readable_count(total_parameters)),
                  ("Size (MB)", get_formatted_model_size(model_size))]
        if rich:
            from rich import get_console, table as tables  # lazy: only in a terminal (see console_callbacks)

            table = tables.Table(header_style="bold magenta")
            for name, _ in cols:
                table.add_column(name, justify="right" if name == "Params" else "left")
            for row in zip(*(values for _, values in cols)):
                table.add_row(*map(str, row))
            console = get_console()
            console.print(table)
            console.print("  ".join(f"[bold]{k}[/]: {v}" for k, v in totals))
            return
        widths = [max(len(name), *(len(str(v)) for v in values)) for name, values in cols]
        lines = [" | ".join(name.ljust(w) for (name, _), w in zip(cols, widths))]
        lines += [" | ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in zip(*(values for _, values in cols))]
        lines.append("  ".join(f"{k}: {v}" for k, v in totals))
        rank_zero_info("\n".join(lines))


def console_callbacks(progress_bar: bool, every: int) -> list:
    """The progress bar (when ``progress_bar``) and the model summary: Rich ones when ``rich`` is
    installed and standard output is a terminal, plain ones otherwise."""
    rich = _RICH_AVAILABLE and sys.stdout.isatty()
    cbs: list = [ModelTable(rich=rich)]
    if progress_bar:
        cbs.append(RichBar(every=every) if rich else ProgressBar(refresh_rate=every))
    return cbs
