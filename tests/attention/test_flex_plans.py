"""The flex backend's plans, checked on a CPU: mask functions and call structure through eager
FlexAttention (forward only), and the tile lists against the exact masks. Kernels run on the GPU
(test_flex.py)."""

import warnings

import pytest
import torch

from sparse_transformer.attention import attend, layer_heads, register_pattern, unregister_pattern
from sparse_transformer.attention.backends import flex
from tests.helpers import rel_err

pytestmark = pytest.mark.filterwarnings("ignore")

CONFIGS = [
    ("dense", "merged", 1), ("local", "merged", 1), ("stride", "merged", 1), ("block", "merged", 1),
    ("summary", "merged", 2), ("strided", "merged", 1), ("strided", "interleaved", 1), ("strided", "multihead", 1),
    ("fixed", "merged", 4), ("fixed", "interleaved", 1), ("fixed", "multihead", 2),
]
SIZES = [(1024, 32, 8), (300, 16, 4), (256, 128, 32), (200, 8, 2), (640, 256, 32)]


@pytest.fixture
def eager_flex():
    flex.COMPILE = False
    yield
    flex.COMPILE = True


def _heads(pattern, integration, sh, l, c, layer):
    return layer_heads(pattern, 4, l, layer=layer, summary=c, summary_heads=min(sh, l // c), integration=integration)


@pytest.mark.parametrize("n,l,c", [s if s[0] == 300 else pytest.param(*s, marks=pytest.mark.slow) for s in SIZES])
@pytest.mark.parametrize("pattern,integration,sh", CONFIGS)
def test_flex_masks_match_reference_forward(pattern, integration, sh, n, l, c, eager_flex):
    g = torch.Generator().manual_seed(n)
    for layer in (0, 1):
        heads = _heads(pattern, integration, sh, l, c, layer)
        q, k, v = (torch.randn(1, 4, n, 16, generator=g, dtype=torch.float64) for _ in range(3))
        ref = attend(q, k, v, heads, backend="reference")
        assert rel_err(flex.attend(q, k, v, heads, 0.25), ref) < 1e-10


@pytest.mark.parametrize("n,l,c", SIZES)
@pytest.mark.parametrize("pattern,integration,sh", CONFIGS)
def test_tiles_cover_the_pattern_and_full_tiles_are_full(pattern, integration, sh, n, l, c):
    from torch.nn.attention.flex_attention import create_mask

    for layer in (0, 1):
        heads = _heads(pattern, integration, sh, l, c, layer)
        for idx, parts in flex.groups(heads):
            plan = flex.plan_for(parts, n, "cpu")
            for call in plan.calls:
                bm = call.block_mask
                Q, KV = bm.seq_lengths
                Hc = len(idx) * (call.width if call.kind == "residue_view" else 1)  # the view's heads are (r, h)
                exact = create_mask(bm.mask_mod, 1, Hc, Q, KV, device="cpu")[0]  # (H, Q, KV)
                T = flex.TILE
                nq, nk = -(-Q // T), -(-KV // T)
                padded = torch.zeros(Hc, nq * T, nk * T, dtype=torch.bool)
                padded[:, :Q, :KV] = exact
                any_tile = padded.view(Hc, nq, T, nk, T).any(4).any(2).any(0)  # tiles with an allowed pair
                listed = torch.zeros(nq, nk, dtype=torch.bool)
                full = torch.zeros(nq, nk, dtype=torch.bool)
                for r in range(nq):
                    listed[r, bm.kv_indices[0, 0, r, : bm.kv_num_blocks[0, 0, r]].long()] = True
                    full[r, bm.full_kv_indices[0, 0, r, : bm.full_kv_num_blocks[0, 0, r]].long()] = True
                assert not (any_tile & ~(listed | full)).any(), (pattern, integration, layer, call.kind)
                assert not (listed & full).any()
                valid = torch.zeros(nq * T, nk * T, dtype=torch.bool)
                valid[:Q, :KV] = True
                all_tile = (padded | ~valid).view(Hc, nq, T, nk, T).all(4).all(2).all(0)
                assert not (full & ~all_tile).any(), (pattern, integration, layer, call.kind)
                assert call.tiles == int(listed.sum() + full.sum()) * (call.width if call.kind == "residue_view" else 1)


def test_flop_ratio_is_about_two_for_one_block_wide_patterns():
    n, l = 16384, 128
    for pattern in ("local", "stride", "strided"):
        heads = layer_heads(pattern, 1, l, integration="merged")
        tiles = flex.computed_tiles(heads, n)
        from sparse_transformer.attention.patterns import attended_pairs

        ratio = tiles * flex.TILE**2 / attended_pairs(heads, n)
        assert 1.5 < ratio < 2.2, (pattern, ratio)


@pytest.mark.slow
def test_user_patterns_run_through_flex(eager_flex):
    def fn(i, j, h):
        return ((i - j) % 3 == 0) & (i - j < 40) | ((j % 64) >= 60 - h)

    for hint in ({}, {"window": 200}):
        register_pattern("flex_user_t", (lambda i, j, h: (i - j < 40) & ((i - j) % (h + 2) == 0)) if hint else fn, **hint)
        try:
            heads = layer_heads("flex_user_t", 2, 16)
            q, k, v = (torch.randn(1, 2, 300, 16, dtype=torch.float64) for _ in range(3))
            ref = attend(q, k, v, heads, backend="reference")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert rel_err(flex.attend(q, k, v, heads, 0.25), ref) < 1e-10
        finally:
            unregister_pattern("flex_user_t")


@pytest.mark.parametrize("n", [320, 300])  # a free transposed view (16 divides n) and the padded, permuted order
def test_a_user_residue_pattern_runs_through_flex(n, eager_flex):
    register_pattern("flex_residue_t", lambda i, j, h: ((i - j) % 16 == 0) & ((i - j) // 16 % (h + 2) == 0), residue=16)
    try:
        heads = layer_heads("flex_residue_t", 2, 16)
        q, k, v = (torch.randn(1, 2, n, 16, dtype=torch.float64) for _ in range(3))
        ref = attend(q, k, v, heads, backend="reference")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert rel_err(flex.attend(q, k, v, heads, 0.25), ref) < 1e-10
        assert {c.kind for c in flex.plan_for(heads, n, "cpu").calls} == {"residue_view" if n % 16 == 0 else "residue"}
    finally:
        unregister_pattern("flex_residue_t")
