"""What the config check (config/checks.py) cannot know without torch, checked before anything is
written: a GPU for the settings that need one, devices that exist here, a model whose weights,
gradients and AdamW state fit in this machine's memory (counted on the meta device: nothing is
allocated), an explicitly named attention backend that runs every layer here, and an attention
stack that connects every j <= i at some depth. Each problem is a ``ConfigError`` whose one line
names the setting and what would work."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..attention.backends import check
from ..attention.connectivity import layer_reach, stack_unreachable
from ..attention.constants import PAIRS
from ..attention.patterns import PatternError, layer_heads
from ..config.schema import ConfigError


def check_runtime(cfg) -> None:
    """A GPU for the accelerator, fsdp, fp16 and CUDA graphs; then ``check_devices``,
    ``check_backend``, ``check_pattern_stack`` and ``check_memory``."""
    t = cfg.trainer
    gpu = torch.cuda.is_available() and t.accelerator != "cpu"
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={t.accelerator} needs a CUDA GPU and none is available; use auto or cpu")
    if not gpu and t.strategy == "fsdp":
        raise ConfigError("trainer.strategy=fsdp needs a GPU and none is available; use ddp (gloo on CPU) or auto")
    if not gpu and str(t.precision) == "16-mixed":
        raise ConfigError("trainer.precision=16-mixed needs a GPU and none is available; use bf16-mixed or 32")
    if not gpu and cfg.model.compile and cfg.model.compile_mode == "cudagraphs":
        raise ConfigError("model.compile_mode=cudagraphs needs a GPU and none is available; use model or blocks")
    check_devices(cfg, gpu)
    check_backend(cfg, torch.device("cuda" if gpu else "cpu"))
    check_pattern_stack(cfg)
    check_memory(cfg, gpu)


def check_devices(cfg, gpu: bool) -> None:
    """trainer.devices that Lightning's accelerator takes: on a CPU a count of processes (no list,
    no -1); on GPUs no more than there are, and only indices that exist."""
    dev = cfg.trainer.devices
    if dev == "auto":
        return
    shown = list(dev) if not isinstance(dev, (int, str)) else dev
    if not gpu:
        if not (isinstance(dev, int) and dev >= 1):
            raise ConfigError(f"trainer.devices={shown} on a CPU must be a number of processes >= 1 or auto "
                              f"(-1 and lists of device indices are for GPUs)")
        return
    n = torch.cuda.device_count()
    if isinstance(dev, int) and dev > n:
        raise ConfigError(f"trainer.devices={dev} asks for more GPUs than the {n} here; use at most {n}, -1 (all) or auto")
    if not isinstance(dev, int) and any(int(i) >= n or int(i) < 0 for i in dev):
        raise ConfigError(f"trainer.devices={shown} names a GPU this machine lacks; its GPUs are 0..{n - 1}")


BYTES_PER_PARAMETER = 16  # float32 weights and gradients, AdamW's two moments


def parameter_count(cfg) -> int:
    """The network's parameters for ``cfg``, counted on the meta device (nothing allocated): a
    network of one block and one of two give the embeddings and head and the size of a block."""
    from ..config.schema import AttentionConfig, ModelConfig, section
    from ..model import SparseTransformer

    shape = [int(x) for x in cfg.data.shape] if cfg.data.shape else [int(cfg.data.seq_len)]
    model, attention = section(ModelConfig, cfg.model), section(AttentionConfig, cfg.attention)
    with torch.device("meta"):
        one, two = (SparseTransformer(dataclasses.replace(model, n_layer=n), attention, shape).num_params() for n in (1, 2))
    return one + (model.n_layer - 1) * (two - one)


def memory_here(gpu: bool) -> tuple[int, str]:
    """(bytes, what they are): one GPU's memory, or this machine's (or its cgroup's limit)."""
    if gpu:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return props.total_memory, f"{props.name}'s"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            total = min(total, int(limit.read_text().strip()))
        except (OSError, ValueError):  # absent, or "max"
            pass
    return total, "this machine's"


def check_memory(cfg, gpu: bool) -> None:
    """A model whose weights, gradients and AdamW state alone (16 bytes a parameter; FSDP shards
    them over its devices) exceed one device's memory is refused before anything is allocated, with
    its parameter count: allocating it would fail deep inside torch, or take the machine's memory."""
    m, t = cfg.model, cfg.trainer
    try:
        params = parameter_count(cfg)
    except Exception:  # a network the meta device cannot build: let the real build say why
        return
    need = params * BYTES_PER_PARAMETER
    if t.strategy == "fsdp" and isinstance(t.devices, int) and t.devices > 1:
        need //= t.devices * t.num_nodes
    have, what = memory_here(gpu)
    if need > have:
        raise ConfigError(f"model: {params:,} parameters (model.n_layer={m.n_layer}, model.d_model={m.d_model}, "
                          f"model.ffn_mult={m.ffn_mult}) need {need / 1e9:,.1f} GB for weights, gradients and AdamW state "
                          f"alone, more than {what} {have / 1e9:,.1f} GB; reduce model.d_model or model.n_layer")


def _heads(a, n_head: int, layer: int, **change) -> list:
    kw = {**dict(summary=a.summary, summary_heads=a.summary_heads, integration=a.integration,
                 layout=list(a.layout) if a.layout else None), **change}
    return layer_heads(a.pattern, n_head, a.stride, layer=layer, **kw)


def _stack(a, n_layer: int, n_head: int, n: int, **change) -> list:
    return [layer_reach(_heads(a, n_head, r, **change), n) for r in range(n_layer)]


def check_pattern_stack(cfg) -> None:
    """The configured stack must connect every j <= i at some depth (multihead fixed with several
    summary slices leaves the slices no summary head takes unreachable), and summary_heads may not
    exceed the heads that take a summary. One line naming a setting that works."""
    m, a = cfg.model, cfg.attention
    if a.pattern not in PAIRS and not a.layout:  # a primitive alone (stride, summary, ...) is a part by design
        return
    takers = max(sum(any(p.name == "summary" for p in parts) for parts in _heads(a, m.n_head, r, summary_heads=1))
                 for r in range(min(m.n_layer, 8)))
    if takers and a.summary_heads > takers:
        raise ConfigError(f"attention.summary_heads={a.summary_heads} exceeds the {takers} heads that take a summary "
                          f"(pattern {a.pattern}, integration {a.integration}, n_head {m.n_head}); use at most {takers}")
    n = min(cfg.data.seq_len, 3 * a.stride)  # three blocks show every pair type of a periodic pattern
    layers = min(m.n_layer, len(a.layout) if a.layout else 2)
    bad = int(stack_unreachable(_stack(a, layers, m.n_head, n)).sum())
    if not bad:
        return
    fixes = [("attention.summary_heads=1", dict(summary_heads=1)), ("attention.integration=merged", dict(integration="merged"))]
    works = next((name for name, change in fixes if not int(stack_unreachable(_stack(a, layers, m.n_head, n, **change)).sum())), None)
    raise ConfigError(f"attention: pattern {a.pattern} with integration={a.integration}, n_head={m.n_head}, "
                      f"summary_heads={a.summary_heads} leaves {bad} pairs (i, j) unreachable at any depth "
                      f"(checked at n={n}); " + (f"{works} connects" if works else "choose another pattern or integration"))


def check_backend(cfg, device) -> None:
    """An attention.backend named explicitly must run every layer here (auto always finds one)."""
    m, a = cfg.model, cfg.attention
    if a.backend == "auto":
        return
    dims = (int(round(m.d_model * m.qk_ratio)) // m.n_head, m.d_model // m.n_head)
    seen = set()
    for layer in range(m.n_layer):
        heads = _heads(a, m.n_head, layer)
        key = tuple(tuple(p.key() for p in parts) for parts in heads)
        if key not in seen:
            seen.add(key)
            try:
                check(a.backend, heads, dims, device)
            except PatternError as e:
                raise ConfigError(str(e)) from None
