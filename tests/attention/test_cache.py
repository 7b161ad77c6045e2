import pytest
import torch

from sparse_transformer.attention import (
    layer_heads,
    pattern_mask,
    register_pattern,
    unregister_pattern,
)
from sparse_transformer.attention.cache import KVCache, Planner, _head_slices
from sparse_transformer.attention.patterns import Part, PatternError, union_mask
from sparse_transformer.config import AttentionConfig, ModelConfig
from sparse_transformer.model import SparseTransformer
from tests.helpers import one_thread  # noqa: F401  (autouse: this module runs on one thread)


SPECS = [
    dict(pattern="dense"),
    dict(pattern="local"),
    dict(pattern="stride"),
    dict(pattern="block"),
    dict(pattern="summary", summary=2, summary_heads=2),
    dict(pattern="strided", integration="interleaved"),
    dict(pattern="strided", integration="merged"),
    dict(pattern="strided", integration="multihead"),
    dict(pattern="fixed", integration="interleaved", summary=2),
    dict(pattern="fixed", integration="merged", summary=2, summary_heads=4),
    dict(pattern="fixed", integration="multihead", summary=3, summary_heads=2),
    dict(pattern="strided", layout=["stride", "local", "local", "local"]),
    dict(pattern="strided", integration="merged", model=dict(qk_ratio=0.5), shape=(4, 4, 3)),
]


@pytest.fixture(scope="module")
def user_patterns():
    """One registered pattern per hint, and one without a hint (the cache then masks every key)."""
    register_pattern("t_window", lambda q, k, h: ((q - k) % (h + 1) == 0) & (q - k < 12), window=12, overwrite=True)
    register_pattern("t_block", lambda q, k, h: ((q - k) % 2 == 0) & (q // 8 == k // 8), block=8, overwrite=True)
    register_pattern("t_residue", lambda q, k, h: ((q - k) % 4 == 0) & ((k // 8) % 2 == h % 2), residue=4, overwrite=True)
    register_pattern("t_columns", lambda q, k, h: (k % 8 == 7) | ((k % 8 == 3) & (h == 1)),
                     columns=lambda n: torch.arange(n)[torch.arange(n) % 4 == 3], overwrite=True)
    register_pattern("t_nohint", lambda q, k, h: ((q - k) % 3 == 0) | (k == h), overwrite=True)
    yield ["t_window", "t_block", "t_residue", "t_columns", "t_nohint"]
    for name in ("t_window", "t_block", "t_residue", "t_columns", "t_nohint"):
        unregister_pattern(name)


def _net(shape=(6, 8), model: dict | None = None, **attention):
    torch.manual_seed(0)
    m = ModelConfig(**{"n_layer": 2, "n_head": 4, "d_model": 32, "vocab_size": 64, **(model or {})})
    net = SparseTransformer(m, AttentionConfig(**{"stride": 8, **attention}), shape).eval()
    torch.nn.init.normal_(net.head.weight, std=m.d_model ** -0.5)  # zero-initialised logits would hide errors
    return net


def _cached_logits(net, x, prefix: int, mode: str):
    """Logits of every position from a prefill of ``prefix`` tokens and then one step per position."""
    cache = net.new_cache(x.shape[0], mode=mode)
    out = [net(x[:, :prefix], cache=cache)] if prefix else []
    for t in range(prefix, x.shape[1]):
        out.append(net.step(x[:, t - 1] if t else None, cache)[:, None])
    return torch.cat(out, 1)


def _check_equal(net, mode, prefix):
    x = torch.randint(0, net.cfg.model.vocab_size, (3, net.cfg.seq_len))
    with torch.no_grad():
        net.set_backend("reference")  # the dense masked oracle, teacher-forced
        full = net(x)
        net.set_backend("blocked")
        cached = _cached_logits(net, x, prefix, mode)
    assert full.std() > 0.3  # logits carry signal
    err = (cached - full).abs().max().item()
    assert err < 1e-4, err


@pytest.mark.parametrize("mode", ["sparse", "dense"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_cached_generation_logits_equal_the_full_pass(spec, mode):
    n_layer = 4 if spec.get("layout") else 2
    net = _net(**{**spec, "model": {**spec.get("model", {}), "n_layer": n_layer}})
    for prefix in (0, 13):
        _check_equal(net, mode, prefix)


@pytest.mark.filterwarnings("ignore:pattern t_nohint has no structure hint")
@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_user_patterns_with_and_without_hints(user_patterns, mode):
    for name in user_patterns:
        net = _net(pattern=name)
        _check_equal(net, mode, prefix=5)


def test_a_broken_cache_would_be_caught():
    """The equality test can fail: dropping one allowed key changes the logits."""
    net = _net(pattern="strided", integration="merged")
    x = torch.randint(0, 64, (2, 48))
    planner_plan = Planner.plan

    def drop_first(self, parts, t):
        p = planner_plan(self, parts, t)
        if p.index is not None and p.size > 1:
            return type(p)(p.index[1:], None, p.size - 1)
        return p

    with torch.no_grad():
        full = net(x)
        Planner.plan = drop_first
        try:
            cached = _cached_logits(net, x, 0, "sparse")
        finally:
            Planner.plan = planner_plan
    assert (cached - full).abs().max() > 1e-3


@pytest.mark.parametrize("pattern,summary,slice_", [
    ("dense", None, 0), ("local", None, 0), ("stride", None, 0), ("block", None, 0), ("summary", 4, 0),
    ("summary", 4, 2), ("strided", None, 0), ("fixed", 4, 1),
])
def test_sparse_plans_visit_exactly_the_allowed_keys(pattern, summary, slice_):
    n, l = 200, 16
    parts = tuple(Part(p, l, summary, slice_ if p == "summary" else 0) for p in
                  {"strided": ("local", "stride"), "fixed": ("block", "summary")}.get(pattern, (pattern,)))
    mask = union_mask(parts, torch.arange(n)[:, None], torch.arange(n)[None, :])
    planner = Planner(n, "sparse")
    for t in (0, 1, 15, 16, 17, 100, 127, 199):
        plan = planner.plan(parts, t)
        allowed = mask[t].nonzero()[:, 0]
        if plan.index is None:  # dense: the contiguous keys 0..t
            assert pattern == "dense" and plan.size == t + 1 and torch.equal(allowed, torch.arange(t + 1))
        else:
            assert torch.equal(plan.index, allowed), (t, plan.index, allowed)
            assert plan.size == len(allowed)


def test_keys_per_step_are_l_plus_n_over_l_not_n():
    n, l, c = 4096, 64, 8
    planner = Planner(n, "sparse")
    strided = tuple(Part(p, l) for p in ("local", "stride"))
    fixed = (Part("block", l), Part("summary", l, c))
    worst_strided = max(planner.plan(strided, t).size for t in range(n - 2 * l, n))
    worst_fixed = max(planner.plan(fixed, t).size for t in range(n - 2 * l, n))
    assert worst_strided == l + n // l - 1  # l local keys, n/l strided ones, the diagonal once
    assert worst_fixed <= l + c * n // l
    dense = Planner(n, "dense").plan(strided, n - 1)
    assert dense.index is None and dense.size == n and int(dense.mask.sum()) == worst_strided


def test_a_query_with_no_allowed_key_outputs_exactly_zero():
    heads = layer_heads("summary", 2, 8, summary=2)
    planner = Planner(32, "sparse")
    cache = KVCache(heads, 2, 32, 4, 4, planner)
    for t in range(10):
        q, k, v = (torch.randn(2, 2, 1, 4) for _ in range(3))
        y = cache.attend(q, k, v, 0.5)
        assert not torch.isnan(y).any()
        assert (y == 0).all() == (t < 6), t  # the first summary cells are positions 6 and 7
    dense = KVCache(heads, 2, 32, 4, 4, Planner(32, "dense"))
    y = dense.attend(*(torch.randn(2, 2, 1, 4) for _ in range(3)), 0.5)
    assert (y == 0).all() and not torch.isnan(y).any()


def test_cache_misuse_is_refused():
    heads = layer_heads("strided", 2, 4, integration="merged")
    cache = KVCache(heads, 2, 8, 4, 4, Planner(8))
    x = torch.randn(2, 2, 3, 4)
    cache.attend(x, x, x, 0.5)
    with pytest.raises(ValueError, match="prefix from position 0"):
        cache.attend(x, x, x, 0.5)
    with pytest.raises(ValueError, match="batch of 2"):
        y = torch.randn(3, 2, 1, 4)
        cache.attend(y, y, y, 0.5)
    for _ in range(5):
        y = torch.randn(2, 2, 1, 4)
        cache.attend(y, y, y, 0.5)
    with pytest.raises(ValueError, match="8 positions"):
        cache.attend(y, y, y, 0.5)
    with pytest.raises(PatternError, match="cache mode"):
        Planner(8, "paged")


def test_head_groups_are_views_of_the_cache():
    assert _head_slices([2]) == [slice(2, 3)]
    assert _head_slices([0, 1, 2, 3]) == [slice(0, 4, 1)]
    assert _head_slices([1, 3, 5]) == [slice(1, 6, 2)]
    assert _head_slices([0, 1, 3]) == [slice(0, 1), slice(1, 2), slice(3, 4)]
    heads = layer_heads("fixed", 4, 8, summary=2, summary_heads=2, integration="merged")
    cache = KVCache(heads, 1, 16, 4, 4, Planner(16))
    assert [s for s, _ in cache.groups] == [[slice(0, 3, 2)], [slice(1, 4, 2)]]  # slices 0 and 1 of the summary


def test_pattern_mask_agrees_with_the_plan_for_a_pair():
    """The plans' parts come from layer_heads: the same union pattern_mask documents."""
    n, l, c = 64, 8, 2
    heads = layer_heads("fixed", 2, l, summary=c, summary_heads=2, integration="merged")
    planner = Planner(n)
    for h in range(2):
        m = pattern_mask("fixed", n, l, summary=c, head=h, summary_heads=2)
        for t in (5, 31, 63):
            assert torch.equal(planner.plan(heads[h], t).index, m[t].nonzero()[:, 0])


@pytest.mark.parametrize("pattern", ["strided", "fixed", "dense"])
def test_both_layouts_give_the_same_attention(pattern):
    """Gathering caches are position-major and dense ones head-major; either layout must serve any plan."""
    heads = layer_heads(pattern, 4, 8, summary=2, summary_heads=2, integration="merged")
    torch.manual_seed(0)
    x = [torch.randn(2, 4, 1, 4) for _ in range(40)]
    outs = []
    for major in (True, False):
        cache = KVCache(heads, 2, 40, 4, 4, Planner(40))
        assert cache.position_major == (pattern != "dense")
        cache.position_major = major
        shape = (40, 2, 4, 4) if major else (2, 4, 40, 4)
        cache.k, cache.v = torch.zeros(shape), torch.zeros(shape)
        outs.append(torch.cat([cache.attend(q, q.flip(-1), 2 * q, 0.5) for q in x], 2))
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and outs[0].abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [dict(pattern="strided", integration="merged"), dict(pattern="fixed", summary=2),
                                  dict(pattern="dense")], ids=["strided", "fixed", "dense"])
def test_cached_generation_on_cuda_equals_the_full_pass(spec):
    """The GPU path: plans shipped to the device without a sync, prefix through the auto backend (flex)."""
    net = _net(**spec).cuda()
    x = torch.randint(0, 64, (3, net.cfg.seq_len), device="cuda")
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # training sets "high" (TF32: 1e-3 errors) process-wide
    try:
        with torch.no_grad():
            net.set_backend("reference")
            full = net(x)
            for mode in ("sparse", "dense"):
                net.set_backend("auto")
                cached = _cached_logits(net, x, 13, mode)
                assert (cached - full).abs().max().item() < 1e-4, mode
    finally:
        torch.set_float32_matmul_precision(precision)
