"""The one checkpoint loader (and the format stamp its saver writes), used by training (``resume=``),
sampling, evaluation and ``training.module.load_checkpoint`` (the notebooks); and ``load_model``, a
trained network from a checkpoint under this version's config schema (sampling and evaluation).

Every load is ``torch.load(..., weights_only=True)``: a checkpoint is tensors and plain values
(dicts, lists, tuples, str, numbers, None), and a file that asks the unpickler for anything else
(a crafted pickle calling ``os.system``, say) is refused before any of it runs.

The one exception is what checkpoints written before the format stamp hold: numpy's random state
(``callbacks['ResumeState']['rng'][*]['numpy']``, a ``uint32`` array). Exactly the four globals that
rebuild it are allowed, for the length of the load only (``LEGACY_NUMPY``). New checkpoints keep
that state as a tensor (training/fault.py), so they need none.

Checkpoints carry ``checkpoint[FORMAT_KEY] = FORMAT``; one without it is format 0 (written before
the stamp), and one from a newer version (a higher number) is refused in one line.

Imports torch lazily (where it loads), and of ours only the config (omegaconf, no torch) and, in
``load_model``, the model: the commands check their command line before torch loads.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

from .config import Config, ConfigError, _leaf_keys, _omegaconf_error, check, field_docs

FORMAT_KEY = "sparse_transformer_format"
FORMAT = 1  # 1: RNG states as tensors and plain values (0: numpy's state as a numpy array)


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, unsafe, or from a newer format. One line."""


def legacy_numpy_globals() -> list:
    """What unpickling numpy's MT19937 state (a uint32 array) needs, and nothing more: the array
    rebuild function, the array and dtype classes, and the uint32 dtype class (numpy >= 2)."""
    allowed = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    # the same function under the name numpy 1.x pickled it with
    allowed.append((_reconstruct, "numpy.core.multiarray._reconstruct"))
    return allowed


@contextmanager
def legacy_globals():
    """Allow ``legacy_numpy_globals`` for ``weights_only`` loads inside the block (e.g. around
    Lightning's own load in ``trainer.fit(ckpt_path=..., weights_only=True)``)."""
    import torch

    with torch.serialization.safe_globals(legacy_numpy_globals()):
        yield


def _asks_for(e: Exception) -> str | None:
    """The code a ``weights_only`` load refused to call or build (from torch's multi-line message),
    or None where it refused for another reason (bytes that are not a pickle of plain data)."""
    msg = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"got <class '([\w.]+)'>", msg)
    return m.group(1) if m else None


def _unpickler_error(e: Exception) -> str:
    m = re.search(r"WeightsUnpickler error: \s*(\S[^\n]*)", str(e))
    return m.group(1).strip() if m else _first_line(e)


def load(path: str | Path, *, label: str | None = None, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """The checkpoint at ``path`` as a dict, loaded ``weights_only``; CheckpointError (one line that
    starts with ``label``, default ``ckpt=<path>``) if it is unreadable, asks for code, is not a dict,
    or comes from a newer format. ``mmap=True`` maps the tensors instead of reading them (a cheap
    check of a large file; zip checkpoints only, others are read)."""
    import torch

    label = label or f"ckpt={path}"
    path = str(path)
    try:
        if mmap and not zipfile.is_zipfile(path):
            mmap = False
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": torch's multi-line warnings
            warnings.simplefilter("ignore")
            with legacy_globals():
                ck = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        asks = _asks_for(e) if "Weights only load failed" in str(e) else None
        if asks:
            raise CheckpointError(f"{label} is refused: it asks to call or build {asks} while loading, and a checkpoint "
                                  f"holds only tensors and plain values; nothing in it was run") from None
        raise CheckpointError(f"{label} is not a readable checkpoint (UnpicklingError: {_unpickler_error(e)})") from None
    except Exception as e:  # truncated, not a zip or pickle, a folder, unreadable
        raise CheckpointError(f"{label} is not a readable checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    check_format(ck, label)
    return ck


def check_format(ck: Any, label: str) -> int:
    """The checkpoint's format number; CheckpointError if it is not a dict or its format is newer."""
    if not isinstance(ck, dict):
        raise CheckpointError(f"{label} is not a checkpoint: it holds a {type(ck).__name__}, not a dict")
    v = ck.get(FORMAT_KEY, 0)
    if type(v) is not int or v < 0:
        raise CheckpointError(f"{label} has {FORMAT_KEY}={v!r}, not a format number (0..{FORMAT})")
    if v > FORMAT:
        raise CheckpointError(f"{label} was written by a newer sparse-transformer (checkpoint format {v}); this version "
                              f"reads formats 0..{FORMAT}: update sparse-transformer to use it")
    return v


def stamp(checkpoint: dict) -> None:
    """Mark a checkpoint being saved with this version's format."""
    checkpoint[FORMAT_KEY] = FORMAT


# ------------------------------------------------------------------------------------------------
# The checkpoints a run keeps: last.ckpt, then previous.ckpt, previous-2.ckpt, ... (older and older)
# ------------------------------------------------------------------------------------------------
LAST = "last.ckpt"


def kept_names(keep: int) -> list[str]:
    """The file names of the ``keep`` newest checkpoints, newest first (training/fault.py rotates them)."""
    return [LAST] + [f"previous{'' if k == 1 else f'-{k}'}.ckpt" for k in range(1, max(1, keep))]


def _previous_index(p: Path) -> int | None:
    m = re.fullmatch(r"previous(?:-(\d+))?\.ckpt", p.name)
    return (int(m.group(1)) if m.group(1) else 1) if m else None


def kept_checkpoints(folder: str | Path) -> list[Path]:
    """The run's kept checkpoints in ``folder`` (its checkpoints/) that exist, newest first."""
    folder = Path(folder)
    older = sorted((p for p in folder.glob("previous*.ckpt") if _previous_index(p)), key=_previous_index)
    return ([folder / LAST] if (folder / LAST).is_file() else []) + older


def nonfinite(tensors) -> tuple[int, int, str | None]:
    """(values that are nan or inf, values in all, the name of the first tensor holding one) over the
    floating-point tensors of ``tensors`` (a name -> tensor dict). One host read per device."""
    import torch

    counts, total, names = {}, 0, []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = (~torch.isfinite(t.detach())).sum()
            counts.setdefault(t.device, []).append(bad)
            names.append((name, bad))
            total += t.numel()
    found = sum(int(torch.stack(c).sum()) for c in counts.values())
    first = next((n for n, b in names if int(b)), None) if found else None
    return found, total, first


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else ""


# ------------------------------------------------------------------------------------------------
# A trained network, under this version's schema (sampling and evaluation)
# ------------------------------------------------------------------------------------------------
# What fixes a trained network: a checkpoint's values of these cannot be changed on the command line.
ARCH_KEYS = (
    "model.n_layer", "model.n_head", "model.d_model", "model.ffn_mult", "model.qk_ratio", "model.vocab_size",
    "attention.pattern", "attention.stride", "attention.summary", "attention.summary_heads",
    "attention.integration", "attention.layout", "data.modality", "data.seq_len", "data.shape",
)


def _fmt(v) -> str:
    return json.dumps(OmegaConf.to_container(v) if OmegaConf.is_config(v) else v)


def merge_typed(schema, dotlist: list[str], prefix: str):
    """``dotlist`` merged over ``schema`` (values converted to the fields' types); ConfigError if one does not fit."""
    try:
        return OmegaConf.merge(schema, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{prefix}{_omegaconf_error(e)}") from None
    except Exception as e:  # from_dotlist's own parse errors
        raise ConfigError(f"could not parse the command line: {str(e).splitlines()[0]}") from None


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
    merged = merge_typed(cfg, overrides, "")
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
    checkpoint samples wherever the network runs: another backend, device or precision. Every
    problem is a ConfigError (one line): unreadable or unsafe, another version's or config's.
    """
    from .model import SparseTransformer  # lazy: torch (see the module docstring)

    try:
        raw = load(ckpt)  # weights_only: a crafted pickle is refused before any of it runs
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    hp = raw.get("hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(hp.get("config"), dict) or "shape" not in hp or "state_dict" not in raw:
        raise ConfigError(f"ckpt={ckpt} is not a sparse-transformer checkpoint (no hyper_parameters.config, shape and state_dict)")
    cfg = checkpoint_config(ckpt, hp["config"], overrides)
    shape = [int(s) for s in hp["shape"]]
    if math.prod(shape) != cfg.data.seq_len:
        raise ConfigError(f"ckpt={ckpt}: its data shape {shape} has {math.prod(shape)} positions but data.seq_len={cfg.data.seq_len}")
    net = SparseTransformer.from_config(cfg, shape)
    state = upgrade_state({k[4:]: v for k, v in raw["state_dict"].items() if k.startswith("net.")}, net)
    _check_weights(ckpt, state, net.state_dict())
    bad, total, first = nonfinite(state)
    if bad:
        raise ConfigError(f"ckpt={ckpt} holds non-finite weights ({bad:,} of {total:,} values nan or inf, the first in "
                          f"{first}): what it computes is undefined; use an earlier checkpoint of the run (checkpoints/previous.ckpt)")
    net.load_state_dict({k: v.float() for k, v in state.items()})  # bf16-trained weights: compute in float32
    dev = pick_device(device)
    net.set_backend(backend)
    return net.to(dev).eval(), cfg, shape


def _check_weights(ckpt: str, state: dict, want: dict) -> None:
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [f"{k} is {tuple(state[k].shape)} in the file, {tuple(want[k].shape)} for the config"
              for k in want if k in state and state[k].shape != want[k].shape]
    if missing or extra or shapes:
        what = ([f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "")] if missing else []) + \
               ([f"unexpected {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else "")] if extra else []) + shapes[:2]
        raise ConfigError(f"ckpt={ckpt}: its weights do not fit this version's network for its config (another "
                          f"version's or another config's weights): {'; '.join(what)}")


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
    """``auto`` (CUDA where there is one), or the named device; ConfigError for CUDA without one."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device}: no CUDA device here; use device=cpu or auto")
    return torch.device(device)
