"""Evaluate a checkpoint: ``python -m sparse_transformer.evaluate ckpt=<path> [option=value ...]``
(or ``make eval CKPT=<path>``): bits per dim over the whole test split, as JSON.

By default the split is cut into disjoint windows of the model's sequence length (the last one
moved back to end at the split's end, scoring only tokens not scored before), as validation does.
``min_context=C`` gives the paper's Table 3 evaluation: windows overlap by C tokens and each scores
only its tail, so every scored token sees at least C tokens of context, except the split's first C
tokens, which see all there is (the JSON counts them as ``short_context_tokens``). Every token of
the split is scored exactly once either way. Image splits hold separate examples, each scored whole.

The JSON (default ``<run>/eval/<split>_bpd[_ctx<C>].json``, written atomically) is also printed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from .config import ConfigError, EvalConfig
from .sample import fail, load_model, options_or_exit, run_folder

LN2 = math.log(2.0)


class ContextWindows:
    """Windows of n tokens over a stream, overlapping so that each scored token sees >= C context.

    Window k starts at k·(n - C) and scores its last n - C positions (the first window scores all
    of its n); a final window ends at the stream's end and scores only tokens not scored before.
    Items are (tokens int64 (n,), mask bool (n,)), like the DataModules' evaluation windows.
    """

    def __init__(self, stream, n: int, min_context: int):
        import torch  # noqa: F401  (items are tensors)

        if not 0 <= min_context < n:
            raise ConfigError(f"eval.min_context={min_context} must be in 0..{n - 1} (below the model's sequence length n={n})")
        if len(stream) < n:
            raise ConfigError(f"the split has {len(stream)} tokens, fewer than the model's sequence length {n}")
        self.stream, self.n, self.C = stream, n, min_context
        step = n - min_context
        self.starts = list(range(0, len(stream) - n + 1, step))
        if self.starts[-1] + n < len(stream):
            self.starts.append(len(stream) - n)

    def __len__(self) -> int:
        return len(self.starts)

    def scored_from(self, k: int) -> int:
        """The first position of window k that it scores."""
        if k == 0:
            return 0
        return self.starts[k - 1] + self.n - self.starts[k]  # right after the previous window's end

    def __getitem__(self, k: int):
        import numpy as np
        import torch

        x = torch.from_numpy(self.stream.read(self.starts[k], self.n).astype(np.int64))
        mask = torch.zeros(self.n, dtype=torch.bool)
        mask[self.scored_from(k) :] = True
        return x, mask


def evaluation_windows(cfg, split: str, min_context: int):
    """The windows dataset of the split: the DataModule's own, or ContextWindows over its stream."""
    from .data import build_datamodule
    from .data.store import DataError

    try:
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("test" if split == "test" else "validate")
        loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    except (DataError, NotImplementedError) as e:
        raise ConfigError(f"evaluation needs the checkpoint's {split} data: {e}") from None
    ds = loader.dataset
    if split == "validation" and getattr(ds, "count", None) is not None:  # the whole split, not data.val_windows
        if hasattr(ds, "stream"):
            ds.count = math.ceil(len(ds.stream) / ds.n)
        elif hasattr(ds, "items"):
            ds.count = len(ds.items)
    if min_context == 0:
        return ds
    stream = getattr(ds, "stream", None)
    if stream is None or not hasattr(stream, "read"):
        raise ConfigError(f"eval.min_context applies to token streams (text, audio); this {cfg.data.modality} "
                          f"split holds separate examples, each scored whole: drop eval.min_context")
    return ContextWindows(stream, cfg.data.seq_len, min_context)


def score(net, ds, batch_size: int, limit: int | None = None, progress: bool = True) -> tuple[float, int, int]:
    """(summed nats, scored tokens, windows) of ``net`` over the windows of ``ds``."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, IterableDataset, Subset
    from tqdm import tqdm

    if isinstance(ds, IterableDataset):  # a streamed split: no length, take the first `limit`
        if limit is not None:
            ds = _take(ds, limit)
    elif limit is not None and limit < len(ds):
        ds = Subset(ds, range(limit))
    dev = next(net.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=dev)
    count = windows = 0
    with torch.no_grad():
        for tokens, mask in tqdm(DataLoader(ds, batch_size=batch_size), desc="evaluating", unit="batch",
                                 disable=not progress, file=sys.stderr):
            tokens, mask = tokens.to(dev), mask.to(dev)
            logits = net(tokens).float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="none")
            nats += (nll.double() * mask.reshape(-1)).sum()
            count += int(mask.sum())
            windows += tokens.shape[0]
    return float(nats), count, windows


def _take(ds, limit: int):
    """The first ``limit`` items of an iterable dataset, as one."""
    import itertools

    from torch.utils.data import IterableDataset

    class Take(IterableDataset):
        def __iter__(self):
            return itertools.islice(iter(ds), limit)

    return Take()


def write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    opts, overrides = options_or_exit(argv, "eval", EvalConfig, "ckpt=runs/x/checkpoints/last.ckpt min_context=128")
    from .attention.backends import resolve

    t0 = time.perf_counter()
    try:
        net, cfg, shape = load_model(opts.ckpt, overrides, backend=opts.backend, device=opts.device)
        if opts.min_context >= cfg.data.seq_len:
            raise ConfigError(f"eval.min_context={opts.min_context} must be below the model's sequence length {cfg.data.seq_len}")
        ds = evaluation_windows(cfg, opts.split, opts.min_context)
    except ConfigError as e:
        fail(e)
    bs = opts.batch_size or cfg.data.eval_batch_size or cfg.data.batch_size
    nats, count, windows = score(net, ds, bs, opts.limit, opts.progress)
    total = len(ds) if hasattr(ds, "__len__") else None  # None: a streamed split
    complete = opts.limit is None or (opts.limit >= total if total is not None else windows < opts.limit)
    dev = next(net.parameters()).device
    result = {
        "ckpt": str(opts.ckpt), "split": opts.split, "modality": cfg.data.modality,
        "bits_per_dim": nats / count / LN2, "nats_per_dim": nats / count, "tokens": count, "windows": windows,
        "seq_len": cfg.data.seq_len, "min_context": opts.min_context,
        "short_context_tokens": min(opts.min_context, count) if isinstance(ds, ContextWindows) else 0,
        "complete": complete, "backend": resolve(opts.backend, net.blocks[0].attn.heads, dev), "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    name = f"{opts.split}_bpd" + (f"_ctx{opts.min_context}" if opts.min_context else "") + ("" if complete else "_partial")
    out = Path(opts.out) if opts.out else run_folder(opts.ckpt) / "eval" / f"{name}.json"
    write_json_atomic(out, result)
    print(json.dumps(result, indent=1))
    print(f"{opts.split} bits/dim {result['bits_per_dim']:.4f} over {count} tokens -> {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
