import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_transformer import media
from sparse_transformer.checkpoint import load_model
from sparse_transformer.cli import sample as sample_mod
from sparse_transformer.config import AttentionConfig, ModelConfig, load_config
from sparse_transformer.data import build_datamodule
from sparse_transformer.training.module import SparseTransformerLM, config_dict
from sparse_transformer.model import (
    SparseTransformer,
    filter_logits,
    sample_next,
)
from sparse_transformer.cli.sample import main
from sparse_transformer.training.evaluation import split_examples
from tests.helpers import TINY, make_ckpt, run_command
from tests.helpers import one_thread  # noqa: F401  (autouse: this module runs on one thread)

ROOT = Path(__file__).resolve().parents[2]


def run(argv, capsys):
    """main(argv) -> (exit code, stdout, stderr)."""
    return run_command(main, [*argv, "progress=false"], capsys)


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("text") / "run" / "checkpoints" / "last.ckpt")


# ------------------------------------------------------------------------------------------------
# Sampling filters
# ------------------------------------------------------------------------------------------------
def test_top_k_keeps_exactly_the_k_most_likely():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]
    assert torch.isfinite(filter_logits(logits, top_k=0)).all()


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.6)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.95)).tolist() == [[True, False, True, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).sum() == 1  # never empty


def test_temperature_zero_is_greedy_and_temperature_reshapes_the_distribution():
    logits = torch.tensor([[1.0, 2.0, 0.0]]).expand(40000, 3)
    assert (sample_next(logits, temperature=0) == 1).all()
    g = torch.Generator().manual_seed(0)
    for T in (0.5, 2.0):
        counts = torch.bincount(sample_next(logits, temperature=T, generator=g), minlength=3).double() / 40000
        want = torch.softmax(torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64) / T, -1)
        assert (counts - want).abs().max() < 0.01, (T, counts, want)


# ------------------------------------------------------------------------------------------------
# model.generate
# ------------------------------------------------------------------------------------------------
def _net(**attention):
    torch.manual_seed(0)
    net = SparseTransformer(ModelConfig(n_layer=2, n_head=2, d_model=32, vocab_size=16),
                            AttentionConfig(**{"stride": 8, "pattern": "fixed", "summary": 2, "integration": "merged",
                                               **attention}), (6, 8)).double().eval()
    torch.nn.init.normal_(net.head.weight, std=1.0)
    return net


def test_sparse_dense_and_no_cache_generate_the_same_tokens():
    net = _net()
    prefix = torch.randint(0, 16, (3, 7))
    outs = {}
    for cache in ("sparse", "dense", "none"):
        g = torch.Generator().manual_seed(5)
        outs[cache] = net.generate(prefix, temperature=0.8, top_k=10, top_p=0.9, generator=g, cache=cache)
        assert outs[cache].shape == (3, 48) and torch.equal(outs[cache][:, :7], prefix)
    assert torch.equal(outs["sparse"], outs["dense"]) and torch.equal(outs["sparse"], outs["none"])
    assert len(set(outs["sparse"][:, 7:].flatten().tolist())) > 3  # really sampled


def test_batch_rows_are_independent_and_a_run_is_reproducible():
    net = _net(pattern="strided", summary=None)
    prefix = torch.randint(0, 16, (3, 5))
    together = net.generate(prefix, 30, temperature=0)
    for r in range(3):
        assert torch.equal(net.generate(prefix[r : r + 1], 30, temperature=0), together[r : r + 1])
    a = net.generate(None, batch=2, generator=torch.Generator().manual_seed(1))
    b = net.generate(None, batch=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (2, 48)


def test_generate_refuses_a_prefix_as_long_as_the_sequence():
    net = _net()
    with pytest.raises(ValueError, match="prefix"):
        net.generate(torch.zeros(1, 48, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------
def test_text_samples_with_a_prompt(text_ckpt, tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, _ = run([f"ckpt={text_ckpt}", "n=3", "batch_size=2", "prompt=Hello, ", f"out={out}"], capsys)
    assert code == 0 and f"samples: {out}" in stdout
    assert sorted(os.listdir(out)) == ["meta.json", "samples.txt", "tokens.npy"]
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (3, 64) and (tokens[:, :7] == np.frombuffer(b"Hello, ", np.uint8)).all()
    text = (out / "samples.txt").read_text()
    assert text.count("===== sample") == 3 and text.count("Hello, ") >= 3
    meta = json.loads((out / "meta.json").read_text())
    assert meta["prefix_tokens"] == 7 and meta["tokens_per_s"] > 0 and meta["n"] == 3


def test_default_folder_is_in_the_run_and_sampling_is_seeded(text_ckpt, capsys):
    code, stdout, _ = run([f"ckpt={text_ckpt}", "n=2", "length=20"], capsys)
    first = Path(stdout.split("samples: ")[1].strip())
    assert code == 0 and first.parent == text_ckpt.parent.parent / "samples"
    code, stdout, _ = run([f"ckpt={text_ckpt}", "sample.n=2", "sample.length=20"], capsys)
    second = Path(stdout.split("samples: ")[1].strip())
    assert second != first and np.array_equal(np.load(first / "tokens.npy"), np.load(second / "tokens.npy"))


def test_priming_with_test_data(text_ckpt, tmp_path, capsys):
    code, _, err = run([f"ckpt={text_ckpt}", "n=2", "prime=0.5", f"out={tmp_path / 's'}"], capsys)
    assert code == 0, err
    tokens = np.load(tmp_path / "s" / "tokens.npy")
    cfg, _ = load_config(TINY + [f"data.cache_dir={text_ckpt.parent.parent.parent / 'data'}"])
    test = split_examples(cfg, 2, 0)  # the same seed picks the same examples
    assert np.array_equal(tokens[:, :32], test[:, :32])
    assert not np.array_equal(tokens[:, 32:], test[:, 32:])


def test_image_models_write_a_grid(tmp_path, capsys):
    ckpt = make_ckpt(tmp_path / "img" / "last.ckpt", "data.modality=image", "data.seq_len=48", "data.shape=[4,4,3]",
                     "attention.stride=4", shape=[4, 4, 3])
    code, _, err = run([f"ckpt={ckpt}", "n=5", f"out={tmp_path / 's'}"], capsys)
    assert code == 0, err
    from PIL import Image

    img = Image.open(tmp_path / "s" / "grid.png")  # 3 x 2 tiles of 4 x 4 with 2 px padding, scaled up to be seen
    s = -(-media.READABLE // (2 * 6 + 2))  # the smallest factor that makes the short side >= READABLE
    assert img.mode == "RGB" and img.size == ((3 * 6 + 2) * s, (2 * 6 + 2) * s)


def test_audio_models_write_wav_files(tmp_path, capsys):
    ckpt = make_ckpt(tmp_path / "aud" / "last.ckpt", "data.modality=audio", "data.sample_rate=16000")
    code, _, err = run([f"ckpt={ckpt}", "n=2", f"out={tmp_path / 's'}"], capsys)
    assert code == 0, err
    for k in range(2):
        with wave.open(str(tmp_path / "s" / f"sample_{k:03d}.wav")) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 64)
            pcm = np.frombuffer(w.readframes(64), "<i2")
        tokens = np.load(tmp_path / "s" / "tokens.npy")[k]
        assert np.abs(pcm / 32767 - media.mulaw_decode(tokens)).max() < 1e-4


def test_a_bf16_flex_checkpoint_samples_on_cpu_with_blocked(tmp_path, capsys):
    ckpt = make_ckpt(tmp_path / "gpu" / "last.ckpt", "attention.backend=flex", "trainer.precision=bf16-true",
                     "attention.integration=merged", dtype=torch.bfloat16)
    code, _, err = run([f"ckpt={ckpt}", "n=2", "backend=blocked", "device=cpu", f"out={tmp_path / 's'}"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["device"] == "cpu" and meta["backend"] == "blocked"


def test_a_failure_while_writing_leaves_nothing(text_ckpt, tmp_path, capsys, monkeypatch):
    def broken(folder, *a):
        (folder / "tokens.npy").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(sample_mod, "write_outputs", broken)
    with pytest.raises(OSError):
        main([f"ckpt={text_ckpt}", "n=1", "length=10", "progress=false", f"out={tmp_path / 'o' / 's'}"])
    assert os.listdir(tmp_path / "o") == []


def _drop(key):
    def edit(ck):
        section, name = key.split(".")
        del ck["hyper_parameters"]["config"][section][name]
    return edit


BAD = [
    (["n=0"], "sample.n=0 must be >= 1"),
    (["n=-3"], "sample.n=-3 must be >= 1"),
    (["temprature=0.5"], "unknown sampling option temprature: did you mean temperature?"),
    (["top_p=0"], "top_p=0"),
    (["cache=paged"], "sample.cache=paged is unknown; valid: sparse, dense, none"),
    (["n=two"], "sample.n=two is not a valid int"),
    (["optim.lr=1"], "optim.lr cannot be set for sampling"),
    (["data.cache_dri=/x"], "unknown sampling option data.cache_dri: did you mean data.cache_dir?"),
    (["data.seq_len=128"], "is from another config: data.seq_len=64 in the checkpoint, 128 on the command line"),
    (["prompt=" + "x" * 64], "the prefix has 64 tokens but samples are 64 long"),
    (["prime_tokens=70"], "the prefix has 70 tokens but samples are 64 long"),
    (["length=20", "prime_tokens=20"], "the prefix has 20 tokens but samples are 20 long"),
    (["length=65"], "sample.length=65 is longer than the model's sequence of 64"),
    (["model.d_model=64"], "is from another config: model.d_model=32 in the checkpoint, 64 on the command line"),
    (["attention.pattern=fixed", "attention.summary=2"], "attention.pattern=\"strided\" in the checkpoint, \"fixed\""),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a)[:30] for a, _ in BAD])
def test_bad_options_fail_with_one_line_and_write_nothing(text_ckpt, tmp_path, capsys, args, message):
    out = tmp_path / "s"
    code, stdout, err = run([f"ckpt={text_ckpt}", *args, f"out={out}"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


BAD_CKPT = [
    (dict(edit=lambda ck: ck["hyper_parameters"]["config"]["model"].update(mixer="moe")),
     "comes from another version of sparse-transformer: its config has keys this version does not know: model.mixer"),
    (dict(edit=_drop("attention.stride")), "another version of sparse-transformer: its config has no value for attention.stride"),
    (dict(edit=lambda ck: ck["hyper_parameters"]["config"]["model"].update(n_layer="four")), "model.n_layer=four is not a valid int"),
    (dict(edit=lambda ck: ck["state_dict"].pop("net.blocks.1.ff.fc1.weight")),
     "its weights do not fit this version's network for its config (another version's or another config's weights): "
     "missing blocks.1.ff.fc1.weight"),
    (dict(edit=lambda ck: ck["state_dict"].update({"net.tok_emb.weight": torch.zeros(256, 48)})),
     "tok_emb.weight is (256, 48) in the file, (256, 32) for the config"),
    (dict(edit=lambda ck: ck.pop("hyper_parameters")), "is not a sparse-transformer checkpoint"),
]


@pytest.mark.parametrize("kw,message", BAD_CKPT, ids=["unknown-key", "missing-key", "bad-value", "missing-weight",
                                                      "wrong-shape", "not-ours"])
def test_checkpoints_from_another_version_or_config_are_refused(tmp_path, capsys, kw, message):
    ckpt = make_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt", **kw)
    code, _, err = run([f"ckpt={ckpt}", "n=2"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "samples").exists()


def test_a_checkpoint_with_the_older_fused_qkv_projection_still_loads(tmp_path, capsys):
    """Before the q/k/v split each layer had one ``qkv`` Linear; such a checkpoint gives the same logits."""
    def fuse(ck):
        sd = ck["state_dict"]
        for r in range(2):
            pre = f"net.blocks.{r}.attn."
            for kind in ("weight", "bias"):
                sd[f"{pre}qkv.{kind}"] = torch.cat([sd.pop(f"{pre}{x}.{kind}") for x in "qkv"])

    plain = make_ckpt(tmp_path / "a" / "last.ckpt", "model.qk_ratio=0.5")
    fused = make_ckpt(tmp_path / "b" / "last.ckpt", "model.qk_ratio=0.5", edit=fuse)
    assert any("qkv" in k for k in torch.load(fused, weights_only=False)["state_dict"])
    x = torch.randint(0, 256, (2, 64))
    a, b = (load_model(str(p), [], device="cpu")[0](x) for p in (plain, fused))
    assert torch.equal(a, b)


def test_missing_or_unreadable_checkpoints_are_refused(tmp_path, capsys):
    code, _, err = run(["n=2"], capsys)
    assert code == 2 and "ckpt=<path> is required" in err
    code, _, err = run([f"ckpt={tmp_path / 'nope.ckpt'}"], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    code, _, err = run([f"ckpt={tmp_path / 'junk.ckpt'}"], capsys)
    assert code == 2 and "is not a readable checkpoint" in err and err.count("\n") == 1


def test_existing_output_folder_and_prompt_for_images_are_refused(text_ckpt, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    code, _, err = run([f"ckpt={text_ckpt}", f"out={tmp_path / 'taken'}"], capsys)
    assert code == 2 and "exists; give a new folder" in err
    ckpt = make_ckpt(tmp_path / "img" / "last.ckpt", "data.modality=image", "data.seq_len=48", "data.shape=[4,4,3]",
                     "attention.stride=4", shape=[4, 4, 3])
    code, _, err = run([f"ckpt={ckpt}", "prompt=hi", f"out={tmp_path / 's'}"], capsys)
    assert code == 2 and "sample.prompt is for text models" in err and not (tmp_path / "s").exists()


def test_a_bad_option_fails_before_torch_is_imported():
    code = ("import sys; from sparse_transformer.cli.sample import main\n"
            "try:\n    main(['ckpt=x', 'temprature=1'])\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.stdout.split() == ["2", "False"], r.stdout + r.stderr
    assert r.stderr.strip() == "error: unknown sampling option temprature: did you mean temperature?"


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in ("n", "temperature", "top_k", "top_p", "prime", "prompt", "cache", "backend", "out"):
        assert f"\n  {name} " in text


@pytest.mark.slow
def test_a_trained_checkpoint_samples_the_same_on_another_backend(tmp_path, capsys):
    """A real Lightning checkpoint trained on `reference`: greedy samples with the sparse cache on
    `blocked` equal a full recomputation per token on `reference`."""
    from sparse_transformer.cli.train import main as train

    train(TINY + ["exp=default", f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "trainer.max_steps=3",
                  "optim.warmup_steps=1", "optim.lr=0.01", "attention.backend=reference", "attention.integration=merged"])
    capsys.readouterr()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    for name, extra in (("a", ["backend=blocked", "cache=sparse"]), ("b", ["backend=reference", "cache=none"])):
        code, _, err = run([f"ckpt={ckpt}", "n=3", "temperature=0", "prompt=The ", f"out={tmp_path / name}", *extra], capsys)
        assert code == 0, err
    a, b = np.load(tmp_path / "a" / "tokens.npy"), np.load(tmp_path / "b" / "tokens.npy")
    assert np.array_equal(a, b) and len(set(a[0, 4:].tolist())) > 1


@pytest.mark.slow
def test_the_benchmark_runs_on_cpu_with_torch_alone(tmp_path):
    """bench/sample.py at tiny sizes: a row per (pattern, n, cache), the flatness verdict, JSON; and it
    imports none of what the GPU machine lacks."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['bench/sample.py', '--quick', '--patterns', 'strided,fixed', '--n', '256,512', '--out', {str(tmp_path)!r}]\n"
            "runpy.run_path('bench/sample.py', run_name='__main__')\n"
            "print('heavy', sorted(m for m in ('omegaconf', 'datasets', 'wandb', 'lightning') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "heavy []" in r.stdout and "strided sparse cache: attention per token" in r.stdout
    (path,) = tmp_path.glob("sample-cpu-quick.json")
    result = json.loads(path.read_text())
    rows = {(x["pattern"], x["n"], x["mode"]): x for x in result["rows"]}
    assert len(rows) == 2 * 2 * 3
    for n in (256, 512):
        assert rows[("strided", n, "sparse")]["keys_per_step"] == 16 + n // 16 - 1  # l + n/l, the diagonal once
        assert rows[("strided", n, "dense")]["keys_per_step"] == n
        assert rows[("fixed", n, "sparse")]["keys_per_step"] <= 16 + 4 * n // 16
        for mode in ("sparse", "dense"):
            r_ = rows[("strided", n, mode)]
            assert r_["step_ms"] > 0 and r_["attn_ms"] > 0 and r_["tokens_per_s"] > 0
        assert rows[("strided", n, "none")]["step_ms"] > 0
    assert result["flatness"][0]["pattern"] == "strided" and "attn_ratio" in result["flatness"][0]
