"""analysis.geometry: pair counts against masks and the design's definitions, reach windows
against the connectivity checker, layer masks and labels."""

import pytest
import torch

from sparse_transformer import analysis as A
from sparse_transformer.attention import (
    check_connectivity,
    heads_mask,
    layer_heads,
    pattern_mask,
    register_pattern,
    stack_masks,
    unregister_pattern,
)
from tests.analysis.helpers import ALL, C_, L_, heads_of
from tests.helpers import brute_mask


@pytest.mark.parametrize("n", [1, 7, 64, 77])
def test_keys_per_query_match_the_masks(n):
    for pattern in ALL:
        for parts in heads_of(pattern):
            assert torch.equal(A.keys_per_query(parts, n), heads_mask((parts,), n)[0].sum(1)), (pattern, parts)


def test_keys_per_query_against_the_design_definitions():
    n = 50
    for pattern in ("dense", "local", "stride", "block"):
        (parts,) = heads_of(pattern, n_head=1)
        assert torch.equal(A.keys_per_query(parts, n), brute_mask(pattern, n, L_).sum(1))
    for s in (0, 1):
        parts = heads_of("summary")[s]
        assert torch.equal(A.keys_per_query(parts, n), brute_mask("summary", n, L_, C_, s).sum(1))


def test_keys_per_query_fallback_for_a_user_pattern():
    name = "analysis_test_every_third"
    register_pattern(name, lambda q, k, h: (q - k) % 3 == 0, overwrite=True)
    try:
        (parts,) = layer_heads(name, 1, 4)
        n = 40
        assert torch.equal(A.keys_per_query(parts, n), torch.arange(n) // 3 + 1)
    finally:
        unregister_pattern(name)


def test_reach_windows_agree_with_the_checker():
    n = 64
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for kw in ({"pattern": "fixed", "summary": C_}, {"pattern": "strided"}, {"pattern": "local"}):
        layers = stack_masks(kw.pop("pattern"), n, L_, 3, n_head=2, **kw)
        rep = check_connectivity(layers)
        wins = A.reach_windows(layers)
        assert [int((causal & ~r).sum()) for _, r in wins] == [w[2] for w in rep.windows]
        img = A.reach_image(wins[0][1])
        assert int((img == 2).sum()) == rep.windows[0][2] and not (img[~causal] != 0).any()


def test_layer_labels_and_connectivity_table():
    assert A.layer_labels("strided", 8, 3) == ["local", "stride", "local"]
    assert A.layer_labels("fixed", 8, 1, n_head=2, summary=2, summary_heads=2, integration="merged") == [
        "block+summary | block+summary[1]"]
    rows = A.connectivity_table({"s": {"pattern": "strided", "n_layer": 3}, "l": {"pattern": "local", "n_layer": 2}}, 64, 8)
    assert rows[0]["ok"] and not rows[1]["ok"] and not rows[1]["stack_ok"]


def test_layer_masks_and_integration_panels():
    m = A.layer_masks("strided", 32, 4, n_layer=2, n_head=2, integration="multihead")
    assert m.shape == (2, 2, 32, 32)
    assert torch.equal(m[0, 0], pattern_mask("local", 32, 4)) and torch.equal(m[1, 1], pattern_mask("stride", 32, 4))
    panels = A.integration_panels("strided", 32, 4, n_layer=2, n_head=2, integration="interleaved")
    assert list(panels) == ["L0 H0: local", "L0 H1: local", "L1 H0: stride", "L1 H1: stride"]
