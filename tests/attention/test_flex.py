"""The flex backend on a GPU: forward and all three input gradients against a float64 reference
computed from the same rounded inputs, bf16 and fp32, norm-wise relative error per tensor."""

import pytest
import torch

from sparse_transformer.attention import attend, layer_heads, register_pattern, unregister_pattern
from tests.helpers import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore")]
TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-5}

PATTERNS = [("dense", "merged"), ("local", "merged"), ("stride", "merged"), ("block", "merged"), ("summary", "merged"),
            ("strided", "merged"), ("fixed", "merged"), ("strided", "interleaved"), ("strided", "multihead")]


def _errors(heads, n, dtype, d=64, B=2, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    H = len(heads)
    q, k, v = (torch.randn(B, H, n, d, device="cuda", generator=g).to(dtype) for _ in range(3))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attend(*leaves, heads, backend="flex")
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]  # the same rounded inputs
    ref = attend(*ref_in, heads, backend="reference")
    gout = torch.randn(out.shape, device="cuda", generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, gout.to(dtype))
    ref_grads = torch.autograd.grad(ref, ref_in, gout)
    assert all(torch.isfinite(t).all() for t in (out, *grads))
    return [rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(grads, ref_grads)]


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [1024, 1000])
@pytest.mark.parametrize("pattern,integration", PATTERNS)
def test_flex_matches_float64_reference(pattern, integration, n, dtype):
    for layer in (0, 1) if integration == "interleaved" else (0,):
        heads = layer_heads(pattern, 4, 32, layer=layer, summary=8, summary_heads=2, integration=integration)
        errs = _errors(heads, n, dtype, seed=n + layer)
        assert max(errs) < TOL[dtype], (errs, layer)


def test_flex_user_patterns():
    for hint in ({}, {"window": 96}):
        register_pattern("gpu_user_t", lambda i, j, h: (i - j < 96) & ((i - j) % (h + 1) == 0), **hint)
        try:
            heads = layer_heads("gpu_user_t", 2, 32)
            assert max(_errors(heads, 1000, torch.float32)) < 1e-5
        finally:
            unregister_pattern("gpu_user_t")


def test_flex_empty_rows_are_zero_with_zero_gradient():
    heads = layer_heads("summary", 2, 64, summary=16)
    q, k, v = (torch.randn(1, 2, 512, 64, device="cuda", requires_grad=True) for _ in range(3))
    out = attend(q, k, v, heads, backend="flex")
    out.sum().backward()
    assert out[:, :, :48].abs().max() == 0 and q.grad[:, :, :48].abs().max() == 0
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("spec", [dict(pattern="strided", integration="merged"), dict(pattern="fixed", summary=8, integration="merged", summary_heads=2),
                                  dict(pattern="strided", layout=["stride", "local", "local", "local"])])
def test_whole_model_is_causal_on_gpu(spec):
    from sparse_transformer.config import AttentionConfig, ModelConfig
    from sparse_transformer.model import SparseTransformer

    torch.manual_seed(0)
    net = SparseTransformer(ModelConfig(n_layer=4, n_head=2, d_model=64),
                            AttentionConfig(stride=32, backend="flex", **spec), (32, 32)).cuda()
    torch.nn.init.normal_(net.head.weight, std=0.1)
    x = torch.randint(0, 256, (2, 1024), device="cuda")
    with torch.no_grad():
        y = net(x)
        for t in (0, 500, 1023):
            x2 = x.clone()
            x2[:, t] = (x2[:, t] + 1) % 256
            y2 = net(x2)
            assert (y2[:, : t + 1] - y[:, : t + 1]).abs().max() < 1e-6, t
            if t < 1023:
                assert (y2[:, t + 1 :] - y[:, t + 1 :]).abs().max() > 0
