"""Sample from a checkpoint: ``python -m sparse_transformer.sample ckpt=<path> n=16 [option=value ...]``
(or ``make sample CKPT=<path> N=16 ARGS="..."``).

Writes one folder (default ``<run>/samples/<timestamp>``, printed at the end): an image grid
``grid.png`` for image models, ``sample_000.wav ...`` for audio (8-bit mu-law decoded to 16-bit PCM),
``samples.txt`` for text (``media.write_samples``); always ``tokens.npy`` (n, length) and
``meta.json``. The folder is built under a temporary name and renamed into place
(``files.atomic_folder``), so a failure or Ctrl-C leaves nothing behind.

Options are the ``sample.*`` keys (``n=16`` and ``sample.n=16`` alike; ``--help`` lists them).
Generation runs through the pattern-aware KV cache (attention/cache.py), on whatever backend and
device are at hand: a checkpoint trained with ``flex`` in bf16 on a GPU samples with ``blocked`` on a
CPU (``checkpoint.load_model``). Priming: ``prime=0.5`` starts each sample from the first half of a
test-split example (an image's top half, an audio clip's first half); ``prompt="text"`` for text models.

Bad input fails with one line on stderr, exit code 2 and nothing written: an unknown option (checked
before torch is imported), a checkpoint from another version or config (what differs is named), a
prefix that leaves nothing to generate. Torch is imported in ``main`` only once the options are valid.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from .. import files
from ..checkpoint import load_model
from ..config import ConfigError, SampleConfig
from ..media import write_samples
from .common import check_backend_here, fail, folder_error, options_or_exit, run_folder, stamped_folder

EXAMPLE = "ckpt=runs/x/checkpoints/last.ckpt n=16 temperature=0.9 prime=0.5"


def default_out(ckpt: str) -> Path:
    return stamped_folder(run_folder(ckpt) / "samples")


def prefixes(opts, cfg, length: int, examples) -> np.ndarray | None:
    """(N, P) int64 prefix tokens, or None (no priming); ``examples(count, seed)`` gives test-split
    windows. ConfigError if the prefix leaves nothing to sample."""
    if opts.prompt is not None:
        if cfg.data.modality != "text":
            raise ConfigError(f"sample.prompt is for text models; this checkpoint models {cfg.data.modality}: use prime=0.5")
        row = np.frombuffer(opts.prompt.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        P, rows = len(row), np.repeat(row[None], opts.n, axis=0)
    else:
        P, rows = (opts.prime_tokens if opts.prime_tokens is not None else int(round(opts.prime * length))), None
    if P >= length:
        raise ConfigError(f"the prefix has {P} tokens but samples are {length} long: a prefix must be shorter than "
                          f"the sequence (at most {length - 1} tokens)")
    if P == 0:
        return None
    return rows if rows is not None else examples(opts.n, opts.seed)[:, :P]


def write_outputs(folder: Path, tokens: np.ndarray, cfg, shape, prefix_len: int) -> list[str]:
    """``tokens.npy`` and the modality's media for (N, length) tokens; returns their names."""
    np.save(folder / "tokens.npy", tokens.astype(np.uint8) if tokens.max(initial=0) < 256 else tokens)
    media = write_samples(folder, tokens, cfg.data.modality, shape, prefix=prefix_len,
                          sample_rate=int(cfg.data.get("sample_rate", None) or 12000))  # the paper: 12 kHz
    return ["tokens.npy"] + [p.name for p in media]


def generate(net, prefix, opts, length: int) -> tuple[np.ndarray, float]:
    """(n, length) int64 tokens in batches of ``opts.batch_size``, and the seconds they took."""
    import torch  # lazy: see the module docstring

    P = 0 if prefix is None else prefix.shape[1]
    dev = next(net.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(opts.seed)
    rows = []
    bar = tqdm(total=opts.n * (length - P), unit="tok", unit_scale=True, desc="sampling", disable=not opts.progress,
               file=sys.stderr)
    t0 = time.perf_counter()
    for start in range(0, opts.n, opts.batch_size):
        B = min(opts.batch_size, opts.n - start)
        pre = torch.from_numpy(prefix[start : start + B]).to(dev) if prefix is not None else None
        toks = net.generate(pre, length, batch=B, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                            generator=gen, cache=opts.cache, callback=lambda t, B=B: bar.update(B))
        rows.append(toks.cpu())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    bar.close()
    return torch.cat(rows).numpy().astype(np.int64), seconds


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    opts, overrides = options_or_exit(argv, "sample", SampleConfig, EXAMPLE)
    out = Path(opts.out) if opts.out else default_out(opts.ckpt)
    if out.exists():
        fail(ConfigError(f"sample.out={out} exists; give a new folder (samples never overwrite)"))
    e = folder_error("sample.out", out)
    if e:
        fail(e)

    from ..training.evaluation import split_examples  # lazy: torch and the data stack (see the module docstring)

    try:
        net, cfg, shape = load_model(opts.ckpt, overrides, backend=opts.backend, device=opts.device)
        check_backend_here(cfg, opts.backend, next(net.parameters()).device, "sample.backend")
        length = opts.length or cfg.data.seq_len
        if length > cfg.data.seq_len:
            raise ConfigError(f"sample.length={length} is longer than the model's sequence of {cfg.data.seq_len} tokens")
        if opts.top_k > cfg.model.vocab_size:
            raise ConfigError(f"sample.top_k={opts.top_k} exceeds the model's vocabulary of {cfg.model.vocab_size} tokens; "
                              f"use 1..{cfg.model.vocab_size} (0: off)")

        def examples(count, seed):  # test-split windows: the data is prepared (once) where data.cache_dir says
            e = folder_error("data.cache_dir", cfg.data.cache_dir, writable=False)
            if e:
                raise e
            return split_examples(cfg, count, seed)

        prefix = prefixes(opts, cfg, length, examples)
    except ConfigError as e:
        fail(e)
    P = 0 if prefix is None else prefix.shape[1]
    tokens, seconds = generate(net, prefix, opts, length)
    total, dev = opts.n * (length - P), next(net.parameters()).device
    meta = {"ckpt": str(opts.ckpt), "modality": cfg.data.modality, "shape": shape, "n": opts.n, "length": length,
            "prefix_tokens": P, "options": OmegaConf.to_container(opts), "device": str(dev),
            "backend": opts.backend, "seconds": round(seconds, 3), "tokens_per_s": round(total / max(seconds, 1e-9), 1)}
    with files.atomic_folder(out) as tmp:
        meta["files"] = write_outputs(tmp, tokens, cfg, shape, P)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"{total} tokens in {seconds:.1f} s ({meta['tokens_per_s']:.0f} tokens/s, cache={opts.cache}, {dev})")
    print(f"samples: {out}")
    return out
