import subprocess
import sys
import textwrap

import pytest
import torch

from sparse_transformer.attention import attend, layer_heads, register_pattern, unregister_pattern
from tests.helpers import rel_err

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

CONFIGS = [
    ("dense", "merged", 1),
    ("local", "merged", 1),
    ("stride", "merged", 1),
    ("block", "merged", 1),
    ("summary", "merged", 2),
    ("strided", "merged", 1),
    ("strided", "interleaved", 1),
    ("strided", "multihead", 1),
    ("fixed", "merged", 4),
    ("fixed", "interleaved", 1),
    ("fixed", "multihead", 2),
]


def _inputs(n, dtype, H=4, B=2, dk=16, dv=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, n, dk, generator=g).to(dtype)
    k = torch.randn(B, H, n, dk, generator=g).to(dtype)
    v = torch.randn(B, H, n, dv, generator=g).to(dtype)
    return q, k, v


def _check(heads, n, dtype, backend="blocked", seed=0):
    q, k, v = _inputs(n, dtype, H=len(heads), seed=seed)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attend(*leaves, heads, backend=backend)
    ref_leaves = [t.double().clone().requires_grad_() for t in (q, k, v)]  # same rounded inputs
    ref = attend(*ref_leaves, heads, backend="reference")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, g.to(dtype))
    ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    errs = [rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(grads, ref_grads)]
    assert all(torch.isfinite(x).all() for x in (out, *grads))
    return errs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [64, 100])
@pytest.mark.parametrize("pattern,integration,sh", CONFIGS)
def test_blocked_matches_reference(pattern, integration, sh, n, dtype):
    for layer in (0, 1):
        heads = layer_heads(pattern, 4, 8, layer=layer, summary=2, summary_heads=sh, integration=integration)
        errs = _check(heads, n, dtype, seed=n + layer)
        assert max(errs) < TOL[dtype], (errs, layer)


def test_blocked_layout_cycle_and_odd_lengths():
    for n in (1, 5, 37, 129):
        for layer in range(4):
            heads = layer_heads("strided", 2, 16, layer=layer, layout=["stride", "local", "local", "local"])
            assert max(_check(heads, n, torch.float64)) < 1e-10


def test_sdpa_matches_reference_for_dense():
    heads = layer_heads("dense", 4, 8)
    assert max(_check(heads, 50, torch.float32, backend="sdpa")) < 1e-5
    with pytest.raises(ValueError, match="runs only the dense pattern"):
        attend(*_inputs(16, torch.float32), layer_heads("local", 4, 8), backend="sdpa")


@pytest.mark.parametrize("backend", ["reference", "blocked"])
@pytest.mark.parametrize("pattern", ["summary", "fixed"])
def test_rows_without_keys_give_zero_and_zero_gradient(backend, pattern):
    n, l, c = 40, 8, 2
    heads = layer_heads(pattern, 2, l, layer=1, summary=c, integration="interleaved")  # layer 1 = summary
    q, k, v = (t.requires_grad_() for t in _inputs(n, torch.float32, H=2))
    out = attend(q, k, v, heads, backend=backend)
    empty = l - c  # queries 0..l-c-1 see no summary cell
    assert torch.equal(out[:, :, :empty], torch.zeros_like(out[:, :, :empty]))
    assert out[:, :, empty:].abs().sum() > 0
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[:, :, :empty], torch.zeros_like(q.grad[:, :, :empty]))


@pytest.mark.parametrize("hint", [dict(window=6), dict(block=8), dict(residue=4), dict(columns=lambda n: torch.arange(0, n, 3)), {}])
def test_user_pattern_runs_in_both_backends(hint):
    def fn(i, j, h):  # inside every hint above; depends on the head
        base = (i - j) % 4 == 0
        return base & ((i // 8) == (j // 8)) & (i - j < 6) & (j % 3 == 0) | ((i == j) & (h == 0) & (j % 3 == 0))

    register_pattern("user_t", fn, **hint)
    try:
        heads = layer_heads("user_t", 2, 8)
        with pytest.warns(UserWarning, match="falls back") if not hint else _nullcontext():
            errs = _check(heads, 45, torch.float64)
        assert max(errs) < 1e-10
    finally:
        unregister_pattern("user_t")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["strided", "fixed"])
def test_blocked_memory_far_below_n_squared(pattern):
    """Forward + backward at n = 16,384 in a fresh process: peak RSS growth vs one n x n fp32 matrix
    (the reference needs several). fixed with c = 8: 1,152 keys a query (with c = 32 it is n/4)."""
    code = textwrap.dedent(
        f"""
        import resource, torch
        from sparse_transformer.attention import attend, layer_heads
        torch.set_num_threads(2)
        n = 16384
        def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        qkv = [torch.randn(1, 1, n, 64, requires_grad=True) for _ in range(3)]
        base = rss()
        heads = layer_heads("{pattern}", 1, 128, summary=8, integration="merged")
        attend(*qkv, heads, backend="blocked").sum().backward()
        print(rss() - base)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown = int(out.stdout.strip().splitlines()[-1])
    n2 = 16384**2 * 4
    assert grown < n2 / 3, f"blocked grew {grown / 2**20:.0f} MiB; one n^2 fp32 matrix is {n2 / 2**20:.0f} MiB"


@pytest.mark.parametrize("n", [1, 5, 12, 13])
def test_inputs_shorter_than_the_first_summary_cell(n):
    """A summary layer on a prefix with no summary cell yet: every row is empty, output exactly 0."""
    heads = layer_heads("fixed", 2, 16, layer=1, summary=4, integration="interleaved")
    q, k, v = (t.requires_grad_() for t in _inputs(n, torch.float64, H=2))
    out = attend(q, k, v, heads, backend="blocked")
    ref = attend(q, k, v, heads, backend="reference")
    assert torch.equal(out == 0, ref == 0) and rel_err(out, ref) < 1e-12
    out.sum().backward()
    for t in (q, k, v):  # no key anywhere: zero (or no) gradient, never NaN
        assert t.grad is None or (t.grad == 0).all() or n == 13
        assert t.grad is None or torch.isfinite(t.grad).all()


def test_fp16_scores_of_large_inputs_do_not_overflow():
    """q = k = 100 at head dim 16: q·k = 160,000 > fp16's 65,504. Scores are formed in fp32 (as
    the paper's fp16 kernels do): reference, blocked (forward and backward) and the KV cache stay
    finite and match float64."""
    from sparse_transformer.attention.layer import SparseAttention
    from sparse_transformer.attention.cache import Planner

    heads = layer_heads("strided", 2, 8, integration="merged")
    g = torch.Generator().manual_seed(0)
    q, k = (100 + torch.rand(1, 2, 24, 16, generator=g) for _ in range(2))
    v = torch.randn(1, 2, 24, 16, generator=g)
    want = attend(q.double(), k.double(), v.double(), heads, backend="reference")
    for backend in ("reference", "blocked"):
        leaves = [t.half().requires_grad_() for t in (q, k, v)]
        out = attend(*leaves, heads, backend=backend, scale=1.0)
        out.float().sum().backward()
        assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in leaves), backend
        want = attend(*(t.detach().double() for t in leaves), heads, backend="reference", scale=1.0)
        assert rel_err(out, want) < 2e-3, backend
    att = SparseAttention(32, 2, heads, backend="reference").half()
    x = 30 + torch.rand(1, 24, 32, generator=g)
    with torch.no_grad():
        for lin in (att.q, att.k):
            lin.weight.fill_(0.5)
        full = att(x.half())
        cache = att.new_cache(1, 24, Planner(24, "sparse", "cpu"), dtype=torch.float16)
        steps = torch.cat([att(x[:, t:t + 1].half(), cache) for t in range(24)], 1)
    assert torch.isfinite(full).all() and torch.isfinite(steps).all()
    assert rel_err(steps, full) < 2e-3


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_large_logits_through_every_merge_path_stay_exact(backend):
    """Scores of ~1e4 (exp overflows fp32 past 88): softmaxes merged by log-sum-exp must subtract
    the running maximum. Strided merged runs two key groups merged (blocked), fixed one softmax."""
    from sparse_transformer.attention.backends.common import merge_softmaxes

    g = torch.Generator().manual_seed(4)
    for pattern, kw in (("strided", dict(integration="merged")), ("fixed", dict(summary=2, integration="merged"))):
        heads = layer_heads(pattern, 2, 8, **kw)
        q, k, v = (torch.randn(1, 2, 40, 16, generator=g) * 30 for _ in range(3))
        out = attend(q, k, v, heads, backend=backend, scale=1.0)
        want = attend(q.double(), k.double(), v.double(), heads, backend="reference", scale=1.0)
        assert torch.isfinite(out).all() and rel_err(out, want) < 1e-5, pattern
    # the merge itself: two parts with log-sum-exps near 1e4
    outs = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    lses = [torch.full((3, 1), 1e4, dtype=torch.float64), torch.full((3, 1), 1e4 + 1, dtype=torch.float64)]
    out, lse = merge_softmaxes([o.float() for o in outs], [x.float() for x in lses])
    w = torch.softmax(torch.cat(lses, -1), -1)
    assert torch.isfinite(out).all() and rel_err(out, w[:, :1] * outs[0] + w[:, 1:] * outs[1]) < 1e-6
    assert rel_err(lse, torch.logsumexp(torch.cat(lses, -1), -1, keepdim=True)) < 1e-6
