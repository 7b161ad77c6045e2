"""Evaluate a checkpoint: ``python -m sparse_transformer.evaluate ckpt=<path> [option=value ...]``
(or ``make eval CKPT=<path>``): bits per dim over the whole test split, as JSON.

By default the split is cut into disjoint windows of the model's sequence length (the last one
moved back to end at the split's end, scoring only tokens not scored before), as validation does.
``min_context=C`` gives the paper's Table 3 evaluation: windows overlap by C tokens and each scores
only its tail, so every scored token sees at least C tokens of context, except the split's first C
tokens, which see all there is (the JSON counts them as ``short_context_tokens``). Every token of
the split is scored exactly once either way. Image splits hold separate examples, each scored whole.
The windows and the scoring are ``training.evaluation``'s.

The JSON (default ``<run>/eval/<split>_bpd[_ctx<C>].json``, written atomically) is also printed.
Torch is imported in ``main`` only once the options are valid (a bad one exits 2 in a second).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .. import files
from ..checkpoint import load_model
from ..config import ConfigError, EvalConfig
from .common import check_backend_here, fail, file_error, folder_error, options_or_exit, run_folder

EXAMPLE = "ckpt=runs/x/checkpoints/last.ckpt min_context=128"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    opts, overrides = options_or_exit(argv, "eval", EvalConfig, EXAMPLE)
    e = file_error("eval.out", opts.out) if opts.out else folder_error("the output folder", run_folder(opts.ckpt) / "eval")
    if e:
        fail(e)

    # lazy (see the module docstring): torch, the backends and the data stack, once the options are valid
    from ..attention.backends import resolve
    from ..training.evaluation import ContextWindows, bits_per_dim, evaluation_windows, score

    t0 = time.perf_counter()
    try:
        net, cfg, shape = load_model(opts.ckpt, overrides, backend=opts.backend, device=opts.device)
        check_backend_here(cfg, opts.backend, next(net.parameters()).device, "eval.backend")
        if opts.min_context >= cfg.data.seq_len:
            raise ConfigError(f"eval.min_context={opts.min_context} must be below the model's sequence length {cfg.data.seq_len}")
        e = folder_error("data.cache_dir", cfg.data.cache_dir, writable=False)
        if e:
            raise e
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
        "bits_per_dim": bits_per_dim(nats, count), "nats_per_dim": nats / count, "tokens": count, "windows": windows,
        "seq_len": cfg.data.seq_len, "min_context": opts.min_context,
        "short_context_tokens": min(opts.min_context, count) if isinstance(ds, ContextWindows) else 0,
        "complete": complete, "backend": resolve(opts.backend, net.blocks[0].attn.heads, dev), "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    name = f"{opts.split}_bpd" + (f"_ctx{opts.min_context}" if opts.min_context else "") + ("" if complete else "_partial")
    out = Path(opts.out) if opts.out else run_folder(opts.ckpt) / "eval" / f"{name}.json"
    files.write_json(out, result)
    print(json.dumps(result, indent=1))
    print(f"{opts.split} bits/dim {result['bits_per_dim']:.4f} over {count} tokens -> {out}", file=sys.stderr)
    return result
