import pytest
import torch

from sparse_transformer.attention import (
    PatternError,
    layer_heads,
    pattern_mask,
    pattern_names,
    register_pattern,
    unregister_pattern,
)
from sparse_transformer.attention.patterns import check_hints, structure_cover
from tests.helpers import brute_mask

CASES = [(1, 1), (7, 3), (16, 4), (33, 8), (64, 8), (50, 16)]


@pytest.mark.parametrize("n,l", CASES)
@pytest.mark.parametrize("pattern", ["dense", "local", "stride", "block"])
def test_primitive_equals_definition(pattern, n, l):
    assert torch.equal(pattern_mask(pattern, n, l), brute_mask(pattern, n, l))


@pytest.mark.parametrize("n,l,c,s", [(16, 4, 1, 1), (33, 8, 2, 4), (64, 8, 2, 2), (64, 16, 4, 3), (20, 5, 5, 1)])
def test_summary_slices_equal_definition(n, l, c, s):
    for head in range(2 * s + 1):
        got = pattern_mask("summary", n, l, summary=c, head=head, summary_heads=s)
        assert torch.equal(got, brute_mask("summary", n, l, c, head % s)), head
    # slice 0 is the last c cells of each block (OpenAI's convention: c cells, not c + 1)
    m = pattern_mask("summary", n, l, summary=c)
    assert set(torch.nonzero(m[-1]).flatten().remainder(l).tolist()) == set(range(l - c, l)) & set(range(l))


@pytest.mark.parametrize("n,l,c,s", [(16, 4, 1, 1), (40, 8, 2, 2), (64, 16, 4, 4)])
def test_pairs_are_unions(n, l, c, s):
    assert torch.equal(pattern_mask("strided", n, l), brute_mask("local", n, l) | brute_mask("stride", n, l))
    for head in range(s):
        fixed = pattern_mask("fixed", n, l, summary=c, head=head, summary_heads=s)
        assert torch.equal(fixed, brute_mask("block", n, l) | brute_mask("summary", n, l, c, head))


def test_local_has_l_keys_and_summary_first_block_is_empty():
    m = pattern_mask("local", 32, 8)
    assert m[20].sum() == 8 and m[20, 13:21].all() and not m[20, 12]
    s = pattern_mask("summary", 32, 8, summary=2)
    assert not s[:6].any()  # no summary cell at or before these queries
    assert s[6:8].any(dim=1).all()  # the block's own summary cells are keys once reached


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pattern="stridd", n=8, stride=2), "pattern 'stridd' is unknown .did you mean 'strided'"),
        (dict(pattern="local", n=8, stride=0), "stride must be an int >= 1"),
        (dict(pattern="fixed", n=8, stride=4, summary=5), "summary must be an int in 1..stride=4"),
        (dict(pattern="fixed", n=8, stride=4), "summary must be set for pattern 'fixed'"),
        (dict(pattern="fixed", n=8, stride=8, summary=4, summary_heads=3), "summary_heads must be an int in 1..stride/summary=2"),
        (dict(pattern="local", n=0, stride=4), "sequence length n must be an int >= 1"),
    ],
)
def test_bad_arguments_name_what_is_valid(kwargs, match):
    with pytest.raises(PatternError, match=match) as e:
        pattern_mask(**kwargs)
    assert "\n" not in str(e.value)


def test_unknown_pattern_lists_valid_names():
    with pytest.raises(PatternError) as e:
        pattern_mask("nope", 8, 2)
    for name in ("dense", "strided", "fixed", "local"):
        assert name in str(e.value)


def test_layer_heads_integrations():
    inter0 = layer_heads("strided", 4, 8, layer=0, integration="interleaved")
    inter1 = layer_heads("strided", 4, 8, layer=1, integration="interleaved")
    assert {p.name for h in inter0 for p in h} == {"local"} and {p.name for h in inter1 for p in h} == {"stride"}
    merged = layer_heads("fixed", 4, 8, summary=2, summary_heads=2, integration="merged")
    assert all([p.name for p in h] == ["block", "summary"] for h in merged)
    assert [h[1].slice for h in merged] == [0, 1, 0, 1]
    multi = layer_heads("strided", 4, 8, integration="multihead")
    assert [h[0].name for h in multi] == ["local", "local", "stride", "stride"]
    cyc = [layer_heads("strided", 2, 8, layer=r, layout=["stride", "local", "local", "local"])[0][0].name for r in range(5)]
    assert cyc == ["stride", "local", "local", "local", "stride"]
    with pytest.raises(PatternError, match="integration 'mergd' is unknown"):
        layer_heads("strided", 2, 8, integration="mergd")
    with pytest.raises(PatternError, match="needs n_head >= 2"):
        layer_heads("strided", 1, 8, integration="multihead")


def test_user_pattern_registration_and_hints():
    def every_other(i, j, h):
        return (i - j) % 2 == h % 2

    register_pattern("every_other_t", every_other)
    try:
        assert "every_other_t" in pattern_names()
        m0 = pattern_mask("every_other_t", 10, 4, head=0)
        m1 = pattern_mask("every_other_t", 10, 4, head=1)
        i, j = torch.arange(10)[:, None], torch.arange(10)[None]
        assert torch.equal(m0, (j <= i) & ((i - j) % 2 == 0)) and torch.equal(m1, (j <= i) & ((i - j) % 2 == 1))
        with pytest.raises(PatternError, match="already registered"):
            register_pattern("every_other_t", every_other)
    finally:
        unregister_pattern("every_other_t")

    register_pattern("win3_t", lambda i, j, h: i - j < 3, window=3)
    register_pattern("bad_hint_t", lambda i, j, h: i - j < 5, window=3)
    try:
        check_hints("win3_t", 20)
        with pytest.raises(PatternError, match="hint does not cover"):
            check_hints("bad_hint_t", 20)
    finally:
        unregister_pattern("win3_t")
        unregister_pattern("bad_hint_t")
    with pytest.raises(PatternError, match="built in"):
        register_pattern("local", lambda i, j, h: i == j)
    with pytest.raises(PatternError, match=r"\(q_idx, kv_idx, head\)"):
        register_pattern("two_args_t", lambda i, j: i == j)


@pytest.mark.parametrize("pattern", ["dense", "local", "stride", "block", "summary"])
def test_structures_cover_their_masks(pattern):
    n, l = 40, 8
    (part,) = layer_heads(pattern, 1, l, summary=2)[0]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    cover = structure_cover(part.structure, i, j, n)
    assert not (part.mask(i, j) & ~cover).any()
