"""Whole-config checks: each key against the rule beside its field (schema.py), then what keys must
agree on (d_model and n_head, seq_len and stride, ...) and what must exist (user patterns, resume
checkpoints). The first problem is a ConfigError whose one line names the key and what is valid."""

from __future__ import annotations

import difflib
import importlib
import math
import typing
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..attention.constants import PAIRS, PRIMITIVES
from .schema import Config, ConfigError, EvalConfig, SampleConfig, leaves


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_fields(cls: type, node, prefix: str = "") -> None:
    """Each of ``node``'s values against the rule beside its field in ``cls`` (schema.py); floats must
    also be finite. ConfigError names the first that fails."""
    for key, leaf in leaves(cls).items():
        value = OmegaConf.select(node, key)
        if value is None:
            continue
        r = leaf.field.metadata.get("rule")
        finite = not isinstance(value, float) or math.isfinite(value)
        if finite and (r is None or r.test(value)):
            continue
        says = f"{r.verb} {r.valid}" if r else ""
        if r and type(None) in typing.get_args(leaf.type):
            says += " or null"
        if not finite:  # a float key takes nan and inf; none of ours means either
            says = "must be a finite number" + (says[len("must be"):] if says.startswith("must be") else "")
        raise ConfigError(f"{prefix}{key}={value} {says}")


def check(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first invalid key and what would be valid."""
    check_fields(Config, cfg)
    _check_model(cfg)
    _check_attention(cfg)
    _check_data(cfg)
    _check_trainer(cfg)
    check_resume(cfg)
    _check_callbacks(cfg)


def _check_model(cfg: DictConfig) -> None:
    m = cfg.model
    _need(m.d_model % m.n_head == 0, f"model.d_model={m.d_model} must be a positive multiple of model.n_head={m.n_head}")
    d_qk = round(m.d_model * m.qk_ratio)
    _need(d_qk % m.n_head == 0 and d_qk >= m.n_head,
          f"model.qk_ratio={m.qk_ratio} must make d_model*qk_ratio a positive multiple of n_head={m.n_head} (e.g. 1.0 or 0.5)")


def _import_user_modules(cfg: DictConfig) -> None:
    for mod in cfg.imports:
        try:
            importlib.import_module(mod)
        except Exception as e:
            raise ConfigError(f"imports: could not import {mod!r} ({type(e).__name__}: {e}); give an importable module") from None


def _pattern_names(cfg: DictConfig) -> tuple[set[str], str]:
    """The pattern names a config may use (built-in, and registered by its imports) and their list."""
    a = cfg.attention
    builtin = list(PRIMITIVES) + list(PAIRS)
    names = set(builtin)
    if cfg.imports or a.pattern not in names or any(x not in names for x in (a.layout or [])):
        _import_user_modules(cfg)
        from ..attention.patterns import registered_patterns  # torch only for user patterns

        names |= set(registered_patterns())
    valid = ", ".join(sorted(names, key=lambda x: (x not in builtin, builtin.index(x) if x in builtin else 0, x)))
    return names, valid


def _check_attention(cfg: DictConfig) -> None:
    a, m = cfg.attention, cfg.model
    names, valid = _pattern_names(cfg)
    if a.pattern not in names:
        close = difflib.get_close_matches(a.pattern, list(names), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"attention.pattern={a.pattern} is unknown{hint}; valid: {valid}")
    for x in a.layout or []:
        _need(x in names, f"attention.layout entry {x!r} is unknown; valid: {valid}")
    if a.pattern in ("fixed", "summary") or any(x in ("fixed", "summary") for x in (a.layout or [])):
        _need(a.summary is not None, "attention.summary must be set for a fixed/summary pattern: an int in 1..stride (8, 16 or 32 in the paper)")
        _need(a.summary <= a.stride, f"attention.summary={a.summary} must be in 1..attention.stride={a.stride}")
        _need(a.summary_heads <= a.stride // a.summary,
              f"attention.summary_heads={a.summary_heads} must be in 1..stride/summary={a.stride // a.summary}")
    if a.integration == "multihead" and a.pattern in PAIRS and not a.layout:
        _need(m.n_head >= 2, f"attention.integration=multihead needs model.n_head >= 2, got {m.n_head}")
    if a.backend == "sdpa":
        _need(a.pattern == "dense" and not a.layout, f"attention.backend=sdpa runs only attention.pattern=dense, got {a.pattern}; use auto")


def _check_data(cfg: DictConfig) -> None:
    d, a = cfg.data, cfg.attention
    if d.shape:
        prod = math.prod(int(x) for x in d.shape)
        _need(prod == d.seq_len, f"data.shape={list(d.shape)} has {prod} positions but data.seq_len={d.seq_len}; make them agree")
    else:  # the model lays a sequence out as rows of attention.stride for its positions
        sparse = a.pattern != "dense" or bool(a.layout)
        why = f"for pattern {a.pattern}" if sparse else "for the factorized positions (seq_len/stride, stride)"
        _need(d.seq_len % a.stride == 0,
              f"data.seq_len={d.seq_len} must be a multiple of attention.stride={a.stride} {why}: "
              f"e.g. {max(a.stride, d.seq_len // a.stride * a.stride)} or {(d.seq_len // a.stride + 1) * a.stride}")
    _need(not d.persistent_workers or d.num_workers > 0,
          "data.persistent_workers=true keeps loader workers alive and needs data.num_workers >= 1; "
          "set data.num_workers or drop persistent_workers")
    if d.modality == "image":
        _need(bool(d.shape) and len(d.shape) == 3 and int(d.shape[2]) in (1, 3, 4),
              f"data.shape={list(d.shape) if d.shape else None} must be [H, W, C] with C in 1, 3, 4 for data.modality=image, e.g. [32, 32, 3]")


def _check_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    dev = t.devices
    _need(dev == "auto" or isinstance(dev, int) or (isinstance(dev, (list, ListConfig)) and all(isinstance(x, int) for x in dev)),
          f"trainer.devices={dev} must be auto, a count (e.g. 2; -1 for all) or a list of device indices")
    _need(dev == "auto" or not isinstance(dev, int) or dev >= 1 or dev == -1,
          f"trainer.devices={dev} must be >= 1, -1 (all) or auto")
    if t.accelerator == "cpu":
        _need(str(t.precision) != "16-mixed", "trainer.precision=16-mixed needs a GPU (fp16 AMP with loss scaling); on CPU use bf16-mixed or 32")
        _need(t.strategy != "fsdp", "trainer.strategy=fsdp needs a GPU; on CPU use ddp (gloo) or auto")


def _check_callbacks(cfg: DictConfig) -> None:
    cb, n, n_layer = cfg.callbacks, cfg.data.seq_len, cfg.model.n_layer
    _need(cb.samples.length is None or cb.samples.length <= n,
          f"callbacks.samples.length={cb.samples.length} must be in 1..data.seq_len={n} or null")
    am = cb.attention_maps
    _need(all(0 <= q < n for q in am.queries), f"callbacks.attention_maps.queries={list(am.queries)} must be positions in 0..{n - 1}")
    _need(am.layers is None or (len(am.layers) > 0 and all(0 <= r < n_layer for r in am.layers)),
          f"callbacks.attention_maps.layers={list(am.layers) if am.layers is not None else None} must be blocks in 0..{n_layer - 1}")


def check_resume(cfg: DictConfig) -> None:
    """resume=last needs a checkpoint in the run folder (last.ckpt or a previous one it keeps); a
    path must exist (auto: anything goes). Whether it reads is checked later (cli/train.py)."""
    r = cfg.resume
    if r is None or r == "auto":
        return
    if r == "last":
        _need(bool(cfg.run_dir), "resume=last needs run_dir=<the run folder to continue> (or resume=<checkpoint path>)")
        ckdir = Path(cfg.run_dir) / "checkpoints"
        _need((ckdir / "last.ckpt").is_file() or any(ckdir.glob("previous*.ckpt")),
              f"resume=last: {ckdir / 'last.ckpt'} does not exist; give run_dir=<a run folder with a checkpoint> or resume=auto")
        return
    _need(Path(r).is_file(), f"resume={r} is not a checkpoint file; valid: last, auto or the path of a .ckpt")


def check_sample(s, prefix: str = "sample.") -> None:
    """The sampling options (those that need no checkpoint; ``prefix`` names their section)."""
    check_fields(SampleConfig, s, prefix)


def check_eval(e, prefix: str = "eval.") -> None:
    """The evaluation options (those that need no checkpoint; ``prefix`` names their section)."""
    check_fields(EvalConfig, e, prefix)
