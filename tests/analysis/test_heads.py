"""analysis.heads: attention maps against each layer's softmax, entropy and distance on known
distributions, masses and ablation of small random models."""

import math

import pytest
import torch

from sparse_transformer import analysis as A
from sparse_transformer.attention import heads_mask, layer_heads
from tests.analysis.helpers import L_, uniform_maps


@pytest.mark.parametrize("pattern,kw", [("strided", {}), ("fixed", {"summary": 2, "integration": "merged"})])
def test_attention_maps_are_each_layers_softmax(pattern, kw):
    """Against a dense masked softmax over the same block inputs, computed here from scratch."""
    net = A.random_model((8, 8), pattern=pattern, stride=8, **kw)
    tokens = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    queries = [0, 9, 40, 63]
    maps = A.attention_maps(net, tokens, queries)
    assert maps.shape == (2, 1, 2, 4, 64) and maps.dtype == torch.float32
    with torch.no_grad():
        x = net.embed(tokens)
        for r, blk in enumerate(net.blocks):
            q, k, _ = blk.attn.split_heads(blk.ln1(x))
            s = (q @ k.transpose(-1, -2))[0].double() * blk.attn.scale
            mask = heads_mask(blk.attn.heads, 64)
            ref = torch.softmax(s.masked_fill(~mask, -math.inf), -1).nan_to_num(0.0)[:, queries]
            assert torch.allclose(maps[r, 0].double(), ref, atol=1e-5)
            assert (maps[r, 0][~mask[:, queries]] == 0).all()
            x = blk(x)
    assert torch.equal(A.attention_maps(net, tokens, queries, layers=[1]), maps[1:])  # chosen blocks only


@pytest.mark.parametrize("modality,shape,pattern", [("image", (6, 6, 3), "strided"), ("audio", (8, 8), "fixed"),
                                                    ("text", (4, 16), "strided")])
def test_attention_maps_of_a_random_model(modality, shape, pattern):
    net = A.random_model(shape, pattern=pattern, summary=2 if pattern == "fixed" else None,
                         integration="merged" if pattern == "fixed" else "interleaved")
    n = math.prod(shape)
    idx = A.synthetic_examples(modality, shape, count=2)
    assert idx.shape == (2, n) and idx.min() >= 0 and idx.max() < 256
    rows = [0, n // 3, n - 1]
    maps = A.attention_maps(net, idx, rows)
    assert maps.shape == (2, 2, 2, 3, n)
    for r, heads in enumerate(A.model_heads(net)):
        allowed = A.allowed_rows(heads, rows, n)  # (H, R, n)
        assert (maps[r][:, ~allowed] == 0).all()  # nothing outside the pattern (so nothing in the future)
        sums = maps[r].sum(-1)
        empty = allowed.sum(-1) == 0
        assert torch.allclose(sums[:, ~empty], torch.ones_like(sums[:, ~empty]), atol=1e-5)
        assert (sums[:, empty] == 0).all()
    # rows asked one by one give the same probabilities
    assert torch.allclose(A.attention_maps(net, idx, rows[1:2])[..., 0, :], maps[..., 1, :], atol=1e-6)


def test_entropy_bits_known_distributions():
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0], [0.5, 0.25, 0.25, 0], [0, 0, 0, 0]])
    h = A.entropy_bits(p)
    assert h[:3].tolist() == pytest.approx([2.0, 0.0, 1.5])
    assert math.isnan(h[3])


def test_mean_distance_known_distributions():
    n = 10
    rows = [9, 4, 0]
    p = torch.zeros(3, n)
    p[0, 9] = 1  # self: distance 0
    p[1, :5] = 0.2  # uniform over 0..4: mean distance 2
    d = A.mean_distance(p, rows)
    assert d[:2].tolist() == pytest.approx([0.0, 2.0]) and math.isnan(d[2])
    one = torch.zeros(1, n)
    one[0, 3] = 1
    assert A.mean_distance(one, [7]).item() == pytest.approx(4.0)


def test_head_stats_uniform_attention_reaches_the_maximum():
    n = 64
    heads = [layer_heads("strided", 2, L_, layer=r) for r in range(2)]
    rows = list(range(32, 64))
    maps = uniform_maps(heads, rows, n)
    st = A.head_stats(maps, rows, heads)
    assert torch.allclose(st["entropy"], st["uniform_entropy"])
    assert torch.allclose(st["entropy"][0], torch.full((2,), 3.0, dtype=torch.float64))  # local: log2(8)
    assert torch.allclose(st["distance"][0], torch.full((2,), 3.5, dtype=torch.float64))  # mean of 0..7
    # stride: keys i, i-8, ... -> mean distance 8 * (#keys - 1) / 2
    want = sum(8 * (r // 8) / 2 for r in rows) / len(rows)
    assert st["distance"][1, 0].item() == pytest.approx(want)


def test_distance_profile_and_part_mass():
    n = 64
    heads = [layer_heads("strided", 2, L_, integration="merged")]
    rows = list(range(32, 64))
    maps = uniform_maps(heads, rows, n)
    prof = A.distance_profile(maps, rows, [0, 1, L_, n])
    assert torch.allclose(prof.sum(-1), torch.ones(1, 2, dtype=prof.dtype))
    mass, labels = A.part_mass(maps, heads, rows)
    assert labels == ["local only", "stride only", "shared"]
    assert torch.allclose(mass.sum(-1), torch.ones(1, 2, dtype=torch.float64))
    # uniform over the union: local-only has l-1 keys, shared 1 (j = i), stride-only i // l
    cnt = torch.tensor([[L_ - 1, r // L_, 1] for r in rows], dtype=torch.float64)
    want = (cnt / cnt.sum(1, keepdim=True)).mean(0)
    assert torch.allclose(mass[0, 0], want)


def test_ablate_heads():
    net = A.random_model((4, 8), n_head=2)
    idx = A.synthetic_examples("text", (4, 8), count=2)
    base, delta = A.ablate_heads(net, idx)
    assert delta.shape == (2, 2) and torch.isfinite(delta).all() and (delta.abs() > 0).any()
    assert A.bits_per_token(net, idx) == pytest.approx(base)  # the hooks are gone
