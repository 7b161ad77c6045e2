import pytest
import torch

from sparse_transformer.attention import PatternError, SparseAttention, layer_heads
from sparse_transformer.attention.backends import reference
from tests.helpers import rel_err

SPECS = [
    ("dense", "merged", None),
    ("local", "merged", None),
    ("stride", "merged", None),
    ("block", "merged", None),
    ("summary", "merged", None),
    ("strided", "interleaved", None),
    ("strided", "merged", None),
    ("strided", "multihead", None),
    ("fixed", "interleaved", None),
    ("fixed", "merged", None),
    ("fixed", "multihead", None),
    ("strided", "interleaved", ["stride", "local", "local", "local"]),
]


def _layer(pattern, integration, layout, layer, backend, n_head=4, d=32, qk_ratio=1.0):
    heads = layer_heads(pattern, n_head, 8, layer=layer, summary=2, summary_heads=2, integration=integration, layout=layout)
    torch.manual_seed(0)
    return SparseAttention(d, n_head, heads, qk_ratio=qk_ratio, backend=backend).double()


@pytest.mark.parametrize("backend", ["reference", "blocked"])
@pytest.mark.parametrize("pattern,integration,layout", SPECS)
def test_layer_is_causal(pattern, integration, layout, backend):
    n = 45
    for layer in (0, 1):
        att = _layer(pattern, integration, layout, layer, backend)
        x = torch.randn(2, n, 32, dtype=torch.float64)
        y = att(x)
        for t in (0, 17, 44):
            x2 = x.clone()
            x2[:, t] += torch.randn(32, dtype=torch.float64)
            y2 = att(x2)
            assert torch.equal(y2[:, :t], y[:, :t]), (t, layer)
            if pattern == "dense":
                assert not torch.equal(y2[:, t:], y[:, t:])  # the test can see a change


def test_backends_agree_in_layer_with_half_qk():
    att = _layer("fixed", "merged", None, 0, "reference", qk_ratio=0.5)
    assert att.d_qk == 16
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    ref = att(x)
    att.backend = "blocked"  # a plan made for another backend must not be reused (it was: this compared ref with ref)
    from sparse_transformer.attention.backends import blocked

    assert rel_err(att(x), ref) < 1e-12
    assert att._prepared[(40, "cpu", None, "blocked")][0] is blocked.attend


def test_attention_rows_match_full_probabilities():
    att = _layer("strided", "merged", None, 0, "reference")
    x = torch.randn(1, 40, 32, dtype=torch.float64)
    rows = [0, 9, 39]
    p = att.attention_rows(x, rows)
    assert p.shape == (1, 4, 3, 40)
    q, k, _ = att.split_heads(x)
    full = reference.attention_rows(q, k, att.heads, list(range(40)), att.scale)
    assert rel_err(p, full[:, :, rows]) < 1e-6
    assert torch.allclose(p.sum(-1), torch.ones(1, 4, 3, dtype=p.dtype), atol=1e-6)
    allowed = set(range(32, 40)) | {31, 23, 15, 7}  # local (last 8) and stride (every 8th)
    assert set(torch.nonzero(p[0, 0, 2]).flatten().tolist()) == allowed


def test_bad_head_dims():
    heads = layer_heads("local", 3, 8)
    with pytest.raises(PatternError, match="multiples of n_head=3"):
        SparseAttention(32, 3, heads)


def test_the_layer_is_the_papers_formula_recomputed_from_its_weights():
    """An independent recomputation: projections, per-head scores q·k / sqrt(d_head) (d_head of Q and
    K, here the half-size 8), the pattern's mask, softmax, values, head merge, output projection."""
    from sparse_transformer.attention import pattern_mask

    att = _layer("strided", "merged", None, 0, "reference", qk_ratio=0.5)
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    H, n = att.n_head, x.shape[1]
    lin = lambda m, t: t @ m.weight.T + m.bias  # noqa: E731
    q, k, v = (lin(m, x).view(2, n, H, -1).transpose(1, 2) for m in (att.q, att.k, att.v))
    s = q @ k.transpose(-1, -2) / (att.d_qk // H) ** 0.5
    s = s.masked_fill(~pattern_mask("strided", n, 8), float("-inf"))
    y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(2, n, 32)
    assert rel_err(att(x), lin(att.proj, y)) < 1e-12
