import math

import pytest
import torch

from sparse_transformer.config import AttentionConfig, ModelConfig, load_config
from sparse_transformer.data import build_datamodule
from sparse_transformer.model import NetConfig, SparseTransformer, gelu
from tests.helpers import rel_err

SPECS = [
    dict(pattern="dense"),
    dict(pattern="strided", integration="interleaved"),
    dict(pattern="strided", integration="merged"),
    dict(pattern="strided", integration="multihead"),
    dict(pattern="fixed", integration="interleaved", summary=2),
    dict(pattern="fixed", integration="merged", summary=2, summary_heads=2),
    dict(pattern="fixed", integration="multihead", summary=2),
    dict(pattern="strided", layout=["stride", "local", "local", "local"]),
]


def _net(shape=(6, 8), model: dict | None = None, **attention):
    torch.manual_seed(0)
    return SparseTransformer(ModelConfig(**{"n_layer": 4, "n_head": 2, "d_model": 32, **(model or {})}),
                             AttentionConfig(**{"stride": 8, **attention}), shape)


def test_init_statistics_match_the_formulas():
    N, d = 6, 256
    net = _net(model=dict(n_layer=N, n_head=4, d_model=d, ffn_mult=4.0), shape=(16, 16, 3))
    def near(t, std):
        assert abs(t.std().item() - std) / std < 0.1, (t.shape, t.std().item(), std)
    near(net.tok_emb.weight, math.sqrt(0.125 / d))
    for emb in net.pos_emb:
        near(emb.weight, math.sqrt(0.125 / (d * 3)))
    for blk in net.blocks:
        for lin in (blk.attn.q, blk.attn.k, blk.attn.v):
            near(lin.weight, math.sqrt(0.125 / d))
        near(blk.ff.fc1.weight, math.sqrt(0.125 / d))
        near(blk.attn.proj.weight, math.sqrt(0.125 / d) / math.sqrt(2 * N))
        near(blk.ff.fc2.weight, math.sqrt(0.125 / (4 * d)) / math.sqrt(2 * N))
        for b in (blk.attn.q.bias, blk.attn.k.bias, blk.attn.v.bias, blk.attn.proj.bias, blk.ff.fc1.bias, blk.ff.fc2.bias):
            assert torch.count_nonzero(b) == 0
    assert torch.count_nonzero(net.head.weight) == 0


def test_gelu_is_the_papers():
    x = torch.linspace(-4, 4, 101)
    assert torch.allclose(gelu(x), x * torch.sigmoid(1.702 * x))


@pytest.mark.parametrize("backend", ["reference", "blocked"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_model_is_causal(spec, backend):
    net = _net(backend=backend, **spec).double()
    torch.nn.init.normal_(net.head.weight, std=0.1)  # zero logits would hide everything
    x = torch.randint(0, 256, (2, 48))
    y = net(x)
    for t in (0, 20, 47):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % 256
        y2 = net(x2)
        assert torch.equal(y2[:, : t + 1], y[:, : t + 1]), t  # logit t predicts token t: sees only < t
        if t < 47:
            assert not torch.equal(y2[:, t + 1 :], y[:, t + 1 :])


def test_recompute_gives_the_same_gradients():
    x = torch.randint(0, 256, (2, 48))
    grads = []
    for recompute in (False, True):
        net = _net(pattern="fixed", summary=2, integration="merged", model=dict(recompute=recompute, dropout=0.1))
        torch.nn.init.normal_(net.head.weight, std=0.1)
        torch.manual_seed(1)
        net(x).logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert rel_err(grads[1], grads[0]) < 1e-5


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="longer than the model's 48 positions"):
        _net()(torch.zeros(1, 49, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# Positions: the model factorizes the data's shape
# ------------------------------------------------------------------------------------------------
def test_a_text_models_positions_are_the_stride_wide_rows_they_always_were():
    """The DataModule hands out the sequence's shape [n]; the network lays it out as (n/l, l), the
    factorization the data module computed for it before (and that older checkpoints store)."""
    cfg, _ = load_config(["data.seq_len=64", "attention.stride=8", "model.n_layer=1", "model.d_model=16"])
    shape = build_datamodule(cfg).shape
    assert shape == [64]
    net = SparseTransformer.from_config(cfg, shape)
    assert net.cfg.shape == (8, 8) and [e.num_embeddings for e in net.pos_emb] == [8, 8]
    t = torch.arange(64)
    assert torch.equal(net.coords, torch.stack([t // 8, t % 8], -1))
    old = SparseTransformer.from_config(cfg, [8, 8])  # what a checkpoint of an older version stores
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert torch.equal(old.coords, net.coords)


def test_an_images_positions_are_its_rows_columns_and_channels():
    net = _net(shape=(4, 4, 3), stride=12)
    assert net.cfg.shape == (4, 4, 3) and net.cfg.seq_len == 48
    with pytest.raises(ValueError, match="a sequence of 50 positions does not fill rows of attention.stride=8"):
        _net(shape=(50,))


def test_the_deprecated_flat_netconfig_builds_the_same_network():
    with pytest.warns(DeprecationWarning, match="NetConfig is deprecated"):
        spec = NetConfig(n_layer=4, n_head=2, d_model=32, shape=(6, 8), stride=8, pattern="fixed", summary=2)
    torch.manual_seed(0)
    old = SparseTransformer(spec)
    new = _net(pattern="fixed", summary=2)
    assert old.cfg == new.cfg
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    with pytest.warns(DeprecationWarning):  # its shape was the positions': a 1-D one stays one table
        assert SparseTransformer(NetConfig(shape=(50,), stride=8)).cfg.shape == (50,)
