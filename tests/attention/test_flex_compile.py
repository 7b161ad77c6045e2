"""``model.compile``: the flex attention path traces into a compiled block as one graph.

Plans (block masks) are built outside torch.compile (``SparseTransformer.forward`` calls each
layer's ``prepare``), so the compiled forward only reads them. On a CPU the check traces with
``fullgraph=True`` (any graph break is an error) through dynamo and AOT autograd (``aot_eager``:
Inductor's CPU FlexAttention has no log-sum-exp output or backward); on a GPU the blocks are
compiled by Inductor and trained, forward and backward against a float64 reference."""

from dataclasses import replace

import pytest
import torch
from torch._dynamo.utils import counters

from sparse_transformer.attention import layer_heads, register_pattern, unregister_pattern
from sparse_transformer.attention.layer import SparseAttention
from sparse_transformer.config import AttentionConfig, ModelConfig
from sparse_transformer.model import SparseTransformer
from tests.helpers import rel_err

pytestmark = pytest.mark.filterwarnings("ignore")

LAYERS = [
    ("strided", dict(integration="merged"), 0),
    ("strided", dict(integration="interleaved"), 0),  # a lone stride layer: SDPA on the transposed view
    ("strided", dict(integration="interleaved"), 1),
    ("fixed", dict(summary=4, integration="merged", summary_heads=2), 0),
    ("strided", dict(integration="multihead"), 0),  # two groups of heads: gathered, run, put back
]


def _compiled_layer_error(heads, n=200, H=2, dh=16, backend="aot_eager"):
    torch.manual_seed(0)
    lay = SparseAttention(H * dh, H, heads, backend="flex")
    ref = SparseAttention(H * dh, H, heads, backend="reference")
    ref.load_state_dict(lay.state_dict())
    x = torch.randn(2, n, H * dh)
    lay.prepare(n, x.device)
    torch._dynamo.reset()
    with torch.no_grad():
        y = torch.compile(lay, fullgraph=True, backend=backend)(x)
        r = ref.double()(x.double())
    return rel_err(y, r)


@pytest.mark.parametrize("pattern,kw,layer", LAYERS)
def test_a_prepared_flex_layer_is_one_graph(pattern, kw, layer):
    heads = layer_heads(pattern, 2, 16, layer=layer, **kw)
    assert _compiled_layer_error(heads) < 1e-5  # fullgraph=True: a graph break would have raised


def test_a_user_pattern_is_one_graph_with_and_without_a_hint():
    for hint in ({}, {"window": 40}):
        register_pattern("compile_user_t", lambda i, j, h: (i - j < 40) & ((i - j) % (h + 2) == 0), **hint)
        try:
            assert _compiled_layer_error(layer_heads("compile_user_t", 2, 16)) < 1e-5
        finally:
            unregister_pattern("compile_user_t")


def test_an_unprepared_length_still_runs_under_compile():
    """A length nobody prepared: the plan is built in a disabled function (a graph break), not traced."""
    heads = layer_heads("strided", 2, 16, integration="merged")
    lay = SparseAttention(32, 2, heads, backend="flex")
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        y = torch.compile(lay, backend="aot_eager")(torch.randn(1, 96, 32))
    assert y.shape == (1, 96, 32) and torch.isfinite(y).all()
    assert sum(counters["graph_break"].values()) >= 1


def test_the_model_prepares_every_layer_and_its_blocks_compile_whole():
    m = ModelConfig(n_layer=4, n_head=2, d_model=32)
    a = AttentionConfig(pattern="fixed", stride=16, summary=4, integration="interleaved", backend="flex")
    torch.manual_seed(0)
    net = SparseTransformer(m, a, (12, 16)).eval()
    torch.nn.init.normal_(net.head.weight, std=0.02)  # zero-initialised logits would hide any difference
    ref = SparseTransformer(m, replace(a, backend="reference"), (12, 16)).double().eval()
    ref.load_state_dict(net.state_dict())
    torch._dynamo.reset()
    counters.clear()
    for blk in net.blocks:
        blk.compile(fullgraph=True, backend="aot_eager")
    idx = torch.randint(0, 256, (2, 192))
    with torch.no_grad():
        out = net(idx)
        assert all((192, "cpu", None, "flex") in blk.attn._prepared for blk in net.blocks)
        assert rel_err(out, ref(idx)) < 1e-5
        net(idx)
    assert sum(counters["graph_break"].values()) == 0
    # layers with the same heads share one prepared plan, so 4 blocks of 2 alternating patterns are 2 graphs
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("pattern,kw", [("strided", dict(integration="merged")),
                                         ("fixed", dict(summary=8, integration="merged", summary_heads=2)),
                                         ("strided", dict(layout=["stride", "local", "local", "local"]))])
def test_compiled_blocks_train_like_the_reference_on_a_gpu(pattern, kw, recompute):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        m = ModelConfig(n_layer=2, n_head=2, d_model=64, recompute=recompute)
        a = AttentionConfig(pattern=pattern, stride=32, backend="flex", **kw)
        torch.manual_seed(0)
        net = SparseTransformer(m, a, (32, 32)).cuda().train()
        torch.nn.init.normal_(net.head.weight, std=0.02)
        ref = SparseTransformer(m, replace(a, backend="reference"), (32, 32)).cuda().double().train()
        ref.load_state_dict(net.state_dict())
        torch._dynamo.reset()
        counters.clear()
        for blk in net.blocks:
            blk.compile(fullgraph=True)
        idx = torch.randint(0, 256, (2, 1024), device="cuda")
        out = net(idx)
        out.float().square().mean().backward()
        r = ref(idx)
        r.square().mean().backward()
        assert sum(counters["graph_break"].values()) == 0
        assert rel_err(out, r) < 1e-5
        for (name, p), q in zip(net.named_parameters(), ref.parameters()):
            if name.endswith("attn.k.bias"):  # adds q·b to a whole row of scores: its gradient is exactly 0
                assert p.grad.norm() < 1e-6 * r.abs().max()
                continue
            assert rel_err(p.grad, q.grad) < 1e-4, name
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_prepared_plans_are_bounded_and_not_pickled():
    import pickle

    lay = SparseAttention(32, 2, layer_heads("fixed", 2, 16, summary=4, integration="merged"), backend="flex")
    for n in range(64, 64 + 20 * 16, 16):
        lay.prepare(n, "cpu")
    assert len(lay._prepared) == 16 and (64 + 19 * 16, "cpu", None, "flex") in lay._prepared  # the newest kept
    copy = pickle.loads(pickle.dumps(lay))  # ddp_spawn pickles the model; mask functions are local closures
    assert copy._prepared == {} and torch.equal(copy.q.weight, lay.q.weight)
