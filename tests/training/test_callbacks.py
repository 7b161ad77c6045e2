"""Samples, media, attention maps and FLOP counting (no Trainer: each piece on its own)."""

import wave

import numpy as np
import pytest
import torch

from sparse_transformer.training.callbacks import attention_maps as am
from sparse_transformer.training.callbacks import samples, throughput
from sparse_transformer.config import AttentionConfig, ModelConfig, main_config
from sparse_transformer.model import SparseTransformer


def tiny_net(shape=(8, 8), pattern="strided", stride=8, **kw) -> SparseTransformer:
    torch.manual_seed(0)
    net = SparseTransformer(ModelConfig(n_layer=2, n_head=2, d_model=32),
                            AttentionConfig(pattern=pattern, stride=stride, backend="reference", **kw), shape)
    with torch.no_grad():  # the logit layer starts at 0 (uniform); give it something to say
        net.head.weight.normal_(0, 0.5)
    return net.eval()


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
def test_uncached_sampler_is_the_autoregressive_chain():
    """The network's uncached loop (``generate(cache="none")``, the one uncached sampler). Near-zero temperature = greedy decoding; compare with a decode that feeds only the prefix
    (another path through the model: shorter inputs, no padding with zeros)."""
    net = tiny_net()
    got = net.generate(batch=2, length=20, temperature=1e-6, generator=torch.Generator().manual_seed(0), cache="none")
    idx = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        for t in range(20):
            nxt = net(torch.cat([idx, torch.zeros(2, 1, dtype=torch.long)], 1))[:, t].argmax(-1)
            idx = torch.cat([idx, nxt[:, None]], 1)
    assert got.shape == (2, 20) and torch.equal(got, idx)


def test_sampler_draws_from_the_model_distribution():
    """At temperature 1 the first token's empirical frequencies follow softmax(logits) at t=0."""
    net = tiny_net(shape=(4, 4), stride=4)
    with torch.no_grad():
        p = torch.softmax(net(torch.zeros(1, 16, dtype=torch.long))[0, 0], -1)
    draws = net.generate(batch=4000, length=1, generator=torch.Generator().manual_seed(1), cache="none")[:, 0]
    freq = torch.bincount(draws, minlength=256).double() / 4000
    assert 0.5 * (freq - p.double()).abs().sum() < 0.08  # total variation; a uniform draw would be ~0.5


def test_samples_come_from_the_kv_cache_sampler():
    """The callback draws with the network's cached generate: the same tokens as generate itself."""
    net = tiny_net()
    tokens, name = samples.generate(net, 3, 5, temperature=0.5, seed=3)
    assert "KV cache" in name and tokens.shape == (3, 5)
    ref = net.eval().generate(batch=3, length=5, temperature=0.5, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(tokens, ref.numpy().astype(np.uint8))


# ------------------------------------------------------------------------------------------------
# Sample files
# ------------------------------------------------------------------------------------------------
def test_save_samples_writes_each_modality(tmp_path):
    rng = np.random.default_rng(0)
    png = samples.save_samples(rng.integers(0, 256, (4, 4 * 4 * 3)), "image", (4, 4, 3), tmp_path, "img")
    from PIL import Image

    assert Image.open(png[0]).size == (14 * 19, 14 * 19)  # 2 x 2 tiles of 4 with 2 px padding, x19: >= 256 px
    wavs = samples.save_samples(rng.integers(0, 256, (2, 600)), "audio", None, tmp_path, "snd", sample_rate=12000)
    with wave.open(str(wavs[1])) as w:
        assert (w.getframerate(), w.getnframes(), w.getnchannels(), w.getsampwidth()) == (12000, 600, 1, 2)
    txt = samples.save_samples(np.frombuffer(b"hello\xffworld", np.uint8)[None], "text", None, tmp_path, "t")
    assert "hello\ufffdworld" in txt[0].read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Attention maps
# ------------------------------------------------------------------------------------------------
def test_attention_image_lays_keys_out_like_the_data():
    probs = np.zeros(4 * 5 * 3)
    probs[(2 * 5 + 3) * 3 + 1] = 0.7  # pixel (2, 3), channel 1
    probs[(2 * 5 + 3) * 3 + 2] = 0.3
    img = am.attention_image(probs, (4, 5, 3))
    assert img.shape == (4, 5) and img[2, 3] == pytest.approx(1.0) and img.sum() == pytest.approx(1.0)
    assert am._cell((2 * 5 + 3) * 3 + 2, (4, 5, 3)) == (2, 3)
    assert am.attention_image(np.arange(64), (8, 8))[3, 5] == 29 and am._cell(29, (8, 8)) == (3, 5)
    assert am.default_queries(192, (8, 8, 3)) == [63, 126, 191]
    assert am.default_layers(128) == [0, 18, 36, 54, 73, 91, 109, 127]


def test_draw_attention_maps_over_an_image(tmp_path):
    net = tiny_net(shape=(4, 4, 3), pattern="fixed", stride=12, summary=3, integration="merged")
    image = np.random.default_rng(0).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    figs = am.draw_attention_maps(net, torch.from_numpy(image.reshape(-1).astype(np.int64)), (4, 4, 3), image=image)
    assert [q for q, _ in figs] == [15, 30, 47]
    fig = figs[0][1]
    assert len(fig.axes) == 2 * 2 and fig.axes[0].get_title() == "head 0"
    assert am.save_figure(fig, tmp_path / "m.png").stat().st_size > 1000
    assert net.training is False


# ------------------------------------------------------------------------------------------------
# FLOPs for MFU
# ------------------------------------------------------------------------------------------------
def test_flops_per_token_counts_attended_pairs():
    n, l = 64, 8
    net = tiny_net(pattern="strided", stride=l)  # interleaved: layer 0 local, layer 1 stride
    i = np.arange(n)
    local, stride = np.minimum(i + 1, l).mean(), (i // l + 1).mean()
    per_pair = 2 * (16 + 16)  # d_qk/H + d/H with d = 32, H = 2
    attn = 2 * per_pair * (local + stride)  # two heads per layer
    assert throughput.attention_flops_per_token(net) == pytest.approx(attn)
    N = net.num_params(non_embedding=True)
    assert throughput.flops_per_token(net) == pytest.approx(6 * N + 3 * attn)
    assert throughput.flops_per_token(net, train=False) == pytest.approx(2 * N + attn)
    dense = tiny_net(pattern="dense")
    assert throughput.attention_flops_per_token(dense) == pytest.approx(2 * 2 * per_pair * (n + 1) / 2)


def test_mean_keys_sampled_rows_estimate_the_exact_mean(monkeypatch):
    net = tiny_net(pattern="fixed", stride=8, summary=2, integration="merged")
    parts = net.blocks[0].attn.heads[0]
    exact = throughput.mean_keys(parts, 1024)
    monkeypatch.setattr(throughput, "EXACT_UP_TO", 100)
    assert throughput.mean_keys(parts, 1024, rows=512) == pytest.approx(exact, rel=0.05)


def test_callback_settings_are_validated(capsys):
    for arg, msg in [("callbacks.samples.count=0", "callbacks.samples.count=0 must be >= 1"),
                     ("callbacks.attention_maps.queries=[300]", "must be positions in 0..255"),
                     ("callbacks.throughput.peak_flops=-1", "must be > 0 or null"),
                     ("callbacks.throughput.warmup=-1", "callbacks.throughput.warmup=-1 must be >= 0"),
                     ("callbacks.throughput.window=0", "callbacks.throughput.window=0 must be >= 1"),
                     ("callbacks.samples.evry=3", "did you mean callbacks.samples.every_n_steps?")]:
        with pytest.raises(SystemExit) as e:
            main_config([arg])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and err.count("\n") == 1


@pytest.mark.parametrize("world_size", [1, 2])
def test_callbacks_skip_their_forward_under_fsdp(tmp_path, monkeypatch, world_size):
    # their forward passes call FSDP units outside the root's forward: a dtype error under mixed
    # precision (H200); on 2+ devices a hang
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    trainer = SimpleNamespace(strategy=FSDPStrategy.__new__(FSDPStrategy), world_size=world_size, global_step=3,
                              fast_dev_run=False, loggers=[], datamodule=None)
    monkeypatch.setattr(samples, "generate", lambda *a, **k: pytest.fail("a forward outside FSDP's own"))
    monkeypatch.setattr(am, "draw_attention_maps", lambda *a, **k: pytest.fail("a forward outside FSDP's own"))
    module = SimpleNamespace(cfg=main_config(["data.modality=text"]), net=SimpleNamespace(cfg=SimpleNamespace(shape=(8,))))
    with pytest.warns(UserWarning, match="skipped under trainer.strategy=fsdp"):
        assert samples.SamplesCallback(tmp_path).log_samples(trainer, module) == []
    cb = am.AttentionMapsCallback(tmp_path)
    cb._tokens = torch.zeros(8, dtype=torch.long)
    with pytest.warns(UserWarning, match="skipped under trainer.strategy=fsdp"):
        assert cb.draw(trainer, module) == []
