"""Sample from a checkpoint: ``python -m sparse_transformer.sample ckpt=<path> n=16 [option=value ...]``
(or ``make sample CKPT=<path> N=16 ARGS="..."``).

Writes one folder (default ``<run>/samples/<timestamp>``, printed at the end): an image grid
``grid.png`` for image models, ``sample_000.wav ...`` for audio (8-bit mu-law decoded to 16-bit PCM),
``samples.txt`` for text; always ``tokens.npy`` (n, length) and ``meta.json``. The folder is built
under a temporary name and renamed into place, so a failure or Ctrl-C leaves nothing behind.

Options are the ``sample.*`` keys (``n=16`` and ``sample.n=16`` alike; ``--help`` lists them).
Generation runs through the pattern-aware KV cache (attention/cache.py), on whatever backend and
device are at hand: a checkpoint trained with ``flex`` in bf16 on a GPU samples with ``blocked`` on a
CPU. Priming: ``prime=0.5`` starts each sample from the first half of a test-split example (an
image's top half, an audio clip's first half); ``prompt="text"`` for text models.

Bad input fails with one line on stderr, exit code 2 and nothing written: an unknown option (checked
before torch is imported), a checkpoint from another version or config (what differs is named), a
prefix that leaves nothing to generate.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import (
    Config,
    ConfigError,
    SampleConfig,
    _leaf_keys,
    _omegaconf_error,
    check,
    check_eval,
    check_sample,
    field_docs,
)
from .media import mulaw_decode, sample_grid, tokens_to_text, write_png, write_wav

# What fixes a trained network: a checkpoint's values of these cannot be changed on the command line.
ARCH_KEYS = (
    "model.n_layer", "model.n_head", "model.d_model", "model.ffn_mult", "model.qk_ratio", "model.vocab_size",
    "attention.pattern", "attention.stride", "attention.summary", "attention.summary_heads",
    "attention.integration", "attention.layout", "data.modality", "data.seq_len", "data.shape",
)


# ------------------------------------------------------------------------------------------------
# Command line (torch-free): options of one section, plus ckpt, plus data/architecture overrides
# ------------------------------------------------------------------------------------------------
def parse_cli(argv: list[str], section: str, cls) -> tuple:
    """(options of ``section`` merged over ``cls``'s defaults, config overrides, flags); ConfigError if bad."""
    what = {"sample": "sampling", "eval": "evaluation"}[section]
    names = [f for f in field_docs(cls)]
    known = field_docs()
    opts, overrides, flags = [], [], set()
    for a in argv:
        if a in ("--help", "-h"):
            flags.add("help")
            continue
        s = a[2:] if a.startswith("--") else a
        if "=" not in s:
            raise ConfigError(f"argument {a!r} is not key=value (e.g. ckpt=runs/x/checkpoints/last.ckpt) or --help")
        key, value = s.split("=", 1)
        bare = key[len(section) + 1 :] if key.startswith(section + ".") else key
        if bare in names:
            opts.append(f"{bare}={value}")
        elif key in known and (key in ARCH_KEYS or key.startswith("data.") or key == "imports"):
            overrides.append(f"{key}={value}")  # where the data is and how it is read may differ from training
        else:
            if key in known:
                raise ConfigError(f"{key} cannot be set for {what}: the checkpoint fixes it; {what} options: {', '.join(names)}")
            valid = names + [k for k in known if k.startswith("data.")]
            close = difflib.get_close_matches(bare, valid, n=1, cutoff=0.6) or difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"valid: {', '.join(names)}"
            raise ConfigError(f"unknown {what} option {key}: {hint}")
    raw = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in opts}
    cfg = _typed(OmegaConf.structured(cls), [o for o in opts if not o.startswith("prompt=")], f"{section}.")
    if "prompt" in raw:
        cfg.prompt = raw["prompt"]  # verbatim: YAML parsing would strip spaces and turn "true" into a bool
    _typed(OmegaConf.structured(Config), overrides, "")  # only checks the overrides' types
    if "help" not in flags:
        (check_sample if section == "sample" else check_eval)(cfg)
        if not cfg.ckpt:
            raise ConfigError("ckpt=<path> is required: the checkpoint to use (e.g. runs/default/<stamp>/checkpoints/last.ckpt)")
        if not Path(cfg.ckpt).is_file():
            raise ConfigError(f"ckpt={cfg.ckpt} does not exist or is not a file")
    return cfg, overrides, flags


def _typed(schema, dotlist: list[str], prefix: str):
    """``dotlist`` merged over ``schema`` (values converted to the fields' types); ConfigError if one does not fit."""
    try:
        return OmegaConf.merge(schema, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{prefix}{_omegaconf_error(e)}") from None
    except Exception as e:  # from_dotlist's own parse errors
        raise ConfigError(f"could not parse the command line: {str(e).splitlines()[0]}") from None


def help_text(module: str, cls, extra: str) -> str:
    lines = [f"usage: python -m sparse_transformer.{module} ckpt=<path> [option=value ...]", "", "options:"]
    for k, doc in field_docs(cls).items():
        lines.append(f"  {k:16s} {doc}")
    lines += ["", extra, "Also data.<key>=value (where the data is, how it is read: data.cache_dir, data.path, ...; "
              "not data.modality, seq_len or shape) and imports=[module, ...]."]
    return "\n".join(lines)


def fail(e: Exception) -> None:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def options_or_exit(argv: list[str], section: str, cls, example: str) -> tuple:
    """``parse_cli``'s options and overrides; a bad command line exits 2 with one line, --help prints and exits 0."""
    try:
        opts, overrides, flags = parse_cli(argv, section, cls)
    except ConfigError as e:
        fail(e)
    if "help" in flags:
        module = {"sample": "sample", "eval": "evaluate"}[section]
        print(help_text(module, cls, f"Also accepted as {section}.<option>. Example: {example}"))
        raise SystemExit(0)
    return opts, overrides


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def run_folder(ckpt: str | Path) -> Path:
    """The run a checkpoint belongs to (runs/<exp>/<stamp>/checkpoints/x.ckpt -> runs/<exp>/<stamp>)."""
    p = Path(ckpt).resolve().parent
    return p.parent if p.name == "checkpoints" else p


def _fmt(v) -> str:
    return json.dumps(OmegaConf.to_container(v) if OmegaConf.is_config(v) else v)


def checkpoint_config(ckpt: str, saved: dict, overrides: list[str]):
    """The checkpoint's config under this version's schema, with the command line's data overrides.

    Raises ConfigError naming what differs: keys this version does not know (or architecture keys
    it lacks), values that do not fit the schema, or architecture values the command line contradicts.

    ``imports`` named in the checkpoint are not imported (a file must not choose what code runs):
    only the command line's ``imports=[...]`` are; a checkpoint that needs its own is told so.
    """
    saved = dict(saved)
    named = list(saved.pop("imports", None) or [])
    known = set(field_docs())
    have = set(_leaf_keys(saved))
    unknown = sorted(k for k in have - known if not any(k.startswith(p + ".") for p in known))
    missing = sorted(k for k in known - have if k in ARCH_KEYS)
    if unknown or missing:
        parts = ([f"keys this version does not know: {', '.join(unknown)}"] if unknown else []) + \
                ([f"no value for {', '.join(missing)}"] if missing else [])
        raise ConfigError(f"ckpt={ckpt} comes from another version of sparse-transformer: its config has {'; '.join(parts)}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)  # absent non-architecture keys: defaults
    except OmegaConfBaseException as e:
        raise ConfigError(f"ckpt={ckpt} comes from another version of sparse-transformer: {_omegaconf_error(e)}") from None
    merged = _typed(cfg, overrides, "")
    given = {o.split("=", 1)[0] for o in overrides}
    diffs = [f"{key}={_fmt(OmegaConf.select(cfg, key))} in the checkpoint, {_fmt(OmegaConf.select(merged, key))} on the command line"
             for key in ARCH_KEYS if key in given and _fmt(OmegaConf.select(cfg, key)) != _fmt(OmegaConf.select(merged, key))]
    if diffs:
        raise ConfigError(f"ckpt={ckpt} is from another config: {'; '.join(diffs)} (drop the override: the checkpoint fixes the network)")
    try:
        check(merged)
    except ConfigError as e:
        missing = [m for m in named if m not in list(merged.imports)]
        if missing:
            raise ConfigError(f"{e} (the checkpoint names imports={_fmt(missing)}, which are imported only when the "
                              f"command line names them: add imports=[...] if you trust them)") from None
        raise
    return merged


def load_model(ckpt: str, overrides: list[str], *, backend: str = "auto", device: str = "auto"):
    """(network in eval mode on ``device``, float32, attention on ``backend``; its config; the data shape).

    Lightning's checkpoint layout is read directly (no LightningModule, no optimiser state), so a
    checkpoint samples wherever the network runs: another backend, device or precision.
    """
    from .checkpoint import CheckpointError, load
    from .model import SparseTransformer

    try:
        raw = load(ckpt)  # weights_only: a crafted pickle is refused before any of it runs
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    hp = raw.get("hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(hp.get("config"), dict) or "shape" not in hp or "state_dict" not in raw:
        raise ConfigError(f"ckpt={ckpt} is not a sparse-transformer checkpoint (no hyper_parameters.config, shape and state_dict)")
    saved = hp["config"]
    cfg = checkpoint_config(ckpt, saved, overrides)
    shape = [int(s) for s in hp["shape"]]
    if math.prod(shape) != cfg.data.seq_len:
        raise ConfigError(f"ckpt={ckpt}: its data shape {shape} has {math.prod(shape)} positions but data.seq_len={cfg.data.seq_len}")
    net = SparseTransformer.from_config(cfg, shape)
    state = upgrade_state({k[4:]: v for k, v in raw["state_dict"].items() if k.startswith("net.")}, net)
    want = net.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [f"{k} is {tuple(state[k].shape)} in the file, {tuple(want[k].shape)} for the config"
              for k in want if k in state and state[k].shape != want[k].shape]
    if missing or extra or shapes:
        what = ([f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "")] if missing else []) + \
               ([f"unexpected {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else "")] if extra else []) + shapes[:2]
        raise ConfigError(f"ckpt={ckpt}: its weights do not fit this version's network for its config (another "
                          f"version's or another config's weights): {'; '.join(what)}")
    net.load_state_dict({k: v.float() for k, v in state.items()})  # bf16-trained weights: compute in float32
    dev = pick_device(device)
    net.set_backend(backend)
    return net.to(dev).eval(), cfg, shape


def upgrade_state(state: dict, net) -> dict:
    """Older checkpoints kept one fused ``qkv`` projection per layer; split it into ``q``, ``k``, ``v``
    (rows in that order: d_qk, d_qk, d_model), which is exactly what the fused layer computed."""
    for r, blk in enumerate(net.blocks):
        a = blk.attn
        for kind in ("weight", "bias"):
            fused = state.pop(f"blocks.{r}.attn.qkv.{kind}", None)
            if fused is not None and f"blocks.{r}.attn.q.{kind}" not in state:
                for name, part in zip("qkv", fused.split([a.d_qk, a.d_qk, a.d_model])):
                    state[f"blocks.{r}.attn.{name}.{kind}"] = part
    return state


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device}: no CUDA device here; use device=cpu or auto")
    return torch.device(device)


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------
@contextmanager
def atomic_folder(out: Path):
    """Yield a temporary folder next to ``out``; rename it to ``out`` only if the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_outputs(folder: Path, tokens, cfg, shape, prefix_len: int) -> list[str]:
    """The modality's files for (N, length) tokens; returns their names."""
    import numpy as np

    np.save(folder / "tokens.npy", tokens.astype(np.uint8) if tokens.max(initial=0) < 256 else tokens)
    files = ["tokens.npy"]
    modality = cfg.data.modality
    if modality == "image" and tokens.shape[1] == math.prod(shape):
        write_png(folder / "grid.png", sample_grid(tokens, shape, primed=prefix_len))
        files.append("grid.png")
    elif modality == "audio":
        rate = int(cfg.data.get("sample_rate", None) or 12000)  # the paper: 12 kHz
        for k, row in enumerate(tokens):
            write_wav(folder / f"sample_{k:03d}.wav", mulaw_decode(row), rate)
            files.append(f"sample_{k:03d}.wav")
    else:  # text (and images cut short): bytes as UTF-8
        with open(folder / "samples.txt", "w", encoding="utf-8") as f:
            for k, row in enumerate(tokens):
                f.write(f"===== sample {k} ({prefix_len} prefix tokens, {len(row)} in all) =====\n")
                f.write(tokens_to_text(row) + "\n\n")
        files.append("samples.txt")
    return files


# ------------------------------------------------------------------------------------------------
# Prefixes
# ------------------------------------------------------------------------------------------------
def prefixes(opts, cfg, length: int):
    """(N, P) int64 prefix tokens, or None (no priming). ConfigError if it leaves nothing to sample."""
    import numpy as np
    import torch

    if opts.prompt is not None:
        if cfg.data.modality != "text":
            raise ConfigError(f"sample.prompt is for text models; this checkpoint models {cfg.data.modality}: use prime=0.5")
        data = np.frombuffer(opts.prompt.encode("utf-8"), dtype=np.uint8)
        P = len(data)
        rows = torch.from_numpy(data.astype(np.int64))[None].expand(opts.n, P).clone()
    else:
        P = opts.prime_tokens if opts.prime_tokens is not None else int(round(opts.prime * length))
        rows = None
    if P >= length:
        raise ConfigError(f"the prefix has {P} tokens but samples are {length} long: a prefix must be shorter than "
                          f"the sequence (at most {length - 1} tokens)")
    if P == 0:
        return None
    if rows is None:
        rows = test_examples(cfg, opts.n, opts.seed)[:, :P]
    return rows


def test_examples(cfg, count: int, seed: int):
    """``count`` test-split windows (examples) of the checkpoint's data, chosen by ``seed``: (count, n)."""
    import numpy as np
    import torch

    from .data import build_datamodule
    from .data.store import DataError

    try:
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("test")
        ds = dm.test_dataloader().dataset
    except (DataError, NotImplementedError) as e:
        raise ConfigError(f"priming needs the checkpoint's test data: {e}") from None
    if isinstance(ds, torch.utils.data.IterableDataset):  # streamed: the first examples, in turn
        rows = [torch.as_tensor(x, dtype=torch.long) for x, _ in itertools.islice(iter(ds), count)]
        if not rows:
            raise ConfigError("priming needs the checkpoint's test data, but its test stream is empty")
        return torch.stack([rows[i % len(rows)] for i in range(count)])
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[:count] if len(ds) >= count else rng.integers(0, len(ds), count)
    return torch.stack([torch.as_tensor(ds[int(i)][0], dtype=torch.long) for i in idx])


# ------------------------------------------------------------------------------------------------
def default_out(ckpt: str) -> Path:
    base = run_folder(ckpt) / "samples"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, k = base / stamp, 1
    while out.exists():
        out, k = base / f"{stamp}-{k}", k + 1
    return out


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    opts, overrides = options_or_exit(argv, "sample", SampleConfig, "ckpt=runs/x/checkpoints/last.ckpt n=16 temperature=0.9 prime=0.5")
    out = Path(opts.out) if opts.out else default_out(opts.ckpt)
    if out.exists():
        fail(ConfigError(f"sample.out={out} exists; give a new folder (samples never overwrite)"))

    import numpy as np
    import torch
    from tqdm import tqdm

    try:
        net, cfg, shape = load_model(opts.ckpt, overrides, backend=opts.backend, device=opts.device)
        length = opts.length or cfg.data.seq_len
        if length > cfg.data.seq_len:
            raise ConfigError(f"sample.length={length} is longer than the model's sequence of {cfg.data.seq_len} tokens")
        prefix = prefixes(opts, cfg, length)
    except ConfigError as e:
        fail(e)
    P = 0 if prefix is None else prefix.shape[1]
    dev = next(net.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(opts.seed)
    rows, total = [], opts.n * (length - P)
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="sampling", disable=not opts.progress, file=sys.stderr)
    t0 = time.perf_counter()
    for start in range(0, opts.n, opts.batch_size):
        B = min(opts.batch_size, opts.n - start)
        pre = prefix[start : start + B].to(dev) if prefix is not None else None
        toks = net.generate(pre, length, batch=B, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                            generator=gen, cache=opts.cache, callback=lambda t, B=B: bar.update(B))
        rows.append(toks.cpu())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    bar.close()
    tokens = torch.cat(rows).numpy().astype(np.int64)
    meta = {"ckpt": str(opts.ckpt), "modality": cfg.data.modality, "shape": shape, "n": opts.n, "length": length,
            "prefix_tokens": P, "options": OmegaConf.to_container(opts), "device": str(dev),
            "backend": opts.backend, "seconds": round(seconds, 3), "tokens_per_s": round(total / max(seconds, 1e-9), 1)}
    with atomic_folder(out) as tmp:
        meta["files"] = write_outputs(tmp, tokens, cfg, shape, P)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"{total} tokens in {seconds:.1f} s ({meta['tokens_per_s']:.0f} tokens/s, cache={opts.cache}, {dev})")
    print(f"samples: {out}")
    return out


if __name__ == "__main__":
    main()
