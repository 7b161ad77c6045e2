"""What the config check (config/checks.py) cannot know without torch, checked before anything is
written: a GPU for the settings that need one, an explicitly named attention backend that runs
every layer here, and an attention stack that connects every j <= i at some depth. Each problem is
a ``ConfigError`` whose one line names the setting and what would work."""

from __future__ import annotations

import torch

from ..attention.backends import check
from ..attention.connectivity import layer_reach, stack_unreachable
from ..attention.constants import PAIRS
from ..attention.patterns import PatternError, layer_heads
from ..config.schema import ConfigError


def check_runtime(cfg) -> None:
    """A GPU for fsdp, fp16 and CUDA graphs; then ``check_backend`` and ``check_pattern_stack``."""
    t = cfg.trainer
    gpu = torch.cuda.is_available() and t.accelerator != "cpu"
    if not gpu and t.strategy == "fsdp":
        raise ConfigError("trainer.strategy=fsdp needs a GPU and none is available; use ddp (gloo on CPU) or auto")
    if not gpu and str(t.precision) == "16-mixed":
        raise ConfigError("trainer.precision=16-mixed needs a GPU and none is available; use bf16-mixed or 32")
    if not gpu and cfg.model.compile and cfg.model.compile_mode == "cudagraphs":
        raise ConfigError("model.compile_mode=cudagraphs needs a GPU and none is available; use model or blocks")
    check_backend(cfg, torch.device("cuda" if gpu else "cpu"))
    check_pattern_stack(cfg)


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
