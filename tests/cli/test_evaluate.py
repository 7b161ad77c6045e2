import json
import math

import pytest
import torch

from sparse_transformer.config import load_config
from sparse_transformer.data.text import TextDataModule
from sparse_transformer.cli.evaluate import main
from sparse_transformer.training.module import SparseTransformerLM
from tests.helpers import one_thread  # noqa: F401  (autouse: this module runs on one thread)
from tests.helpers import TINY, make_ckpt, run_command


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("ev") / "run" / "checkpoints" / "last.ckpt")


def run(argv, capsys):
    """main(argv) -> (exit code, stdout, stderr)."""
    return run_command(main, [*argv, "progress=false"], capsys)


def test_bits_per_dim_over_the_whole_test_split(ckpt, capsys):
    code, stdout, err = run([f"ckpt={ckpt}"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    path = ckpt.parent.parent / "eval" / "test_bpd.json"
    assert json.loads(path.read_text()) == result
    # an independent computation: the LightningModule's loss over the DataModule's test windows
    raw = torch.load(ckpt, weights_only=False)
    lit = SparseTransformerLM(**raw["hyper_parameters"])
    lit.load_state_dict(raw["state_dict"])
    cfg, _ = load_config(TINY + [f"data.cache_dir={ckpt.parent.parent.parent / 'data'}"])
    dm = TextDataModule(cfg)
    dm.prepare_data()
    dm.setup("test")
    nats, count = 0.0, 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            s, c = lit._nll(batch)
            nats, count = nats + float(s), count + int(c)
    assert result["tokens"] == count == len(dm.splits["test"]) and result["complete"]
    assert result["bits_per_dim"] == pytest.approx(nats / count / math.log(2), rel=1e-6)


def test_min_context_scores_the_same_tokens_with_more_context(ckpt, tmp_path, capsys):
    code, stdout, err = run([f"ckpt={ckpt}", "min_context=48", f"out={tmp_path / 'e.json'}"], capsys)
    assert code == 0, err
    ctx = json.loads((tmp_path / "e.json").read_text())
    code, stdout, _ = run([f"ckpt={ckpt}", "eval.split=test", f"out={tmp_path / 'f.json'}"], capsys)
    plain = json.loads(stdout)
    assert ctx["tokens"] == plain["tokens"] and ctx["windows"] > 3 * plain["windows"] - 3
    assert ctx["min_context"] == 48 and ctx["short_context_tokens"] == 48
    assert ctx["bits_per_dim"] != plain["bits_per_dim"]  # the same tokens, scored with other contexts


def test_limit_and_validation_split(ckpt, tmp_path, capsys):
    code, stdout, _ = run([f"ckpt={ckpt}", "split=validation", "limit=2", f"out={tmp_path / 'v.json'}"], capsys)
    r = json.loads(stdout)
    assert code == 0 and r["windows"] == 2 and r["tokens"] == 128 and r["complete"] is False


@pytest.mark.parametrize("args,message", [
    (["min_context=64"], "eval.min_context=64 must be below the model's sequence length 64"),
    (["min_context=-1"], "eval.min_context=-1 must be >= 0"),
    (["split=train"], "eval.split=train is unknown; valid: test, validation"),
    (["min_ctx=4"], "unknown evaluation option min_ctx: did you mean min_context?"),
    (["model.n_head=4"], "is from another config: model.n_head=2 in the checkpoint, 4 on the command line"),
])
def test_bad_options_fail_with_one_line_and_write_nothing(ckpt, tmp_path, capsys, args, message):
    code, _, err = run([f"ckpt={ckpt}", *args, f"out={tmp_path / 'x.json'}"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_min_context_is_refused_for_splits_of_separate_examples(tmp_path, capsys, monkeypatch):
    """Images are separate examples: no stream to slide windows over."""
    import sparse_transformer.data as data

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(48, dtype=torch.long), torch.ones(48, dtype=torch.bool)

    class FakeImages:
        def prepare_data(self):
            pass

        def setup(self, stage):
            pass

        def test_dataloader(self):
            return torch.utils.data.DataLoader(Items())

    monkeypatch.setattr(data, "build_datamodule", lambda cfg: FakeImages())
    img = make_ckpt(tmp_path / "img" / "last.ckpt", "data.modality=image", "data.seq_len=48", "data.shape=[4,4,3]",
                    "attention.stride=4", shape=[4, 4, 3])
    code, _, err = run([f"ckpt={img}", "min_context=8"], capsys)
    assert code == 2 and "eval.min_context applies to token streams (text, audio); this image split" in err
    code, stdout, _ = run([f"ckpt={img}"], capsys)
    assert code == 0 and json.loads(stdout)["tokens"] == 3 * 48


def test_a_streamed_split_is_scored_to_its_end_or_to_the_limit(ckpt):
    """Streamed hub splits are iterable datasets without a length."""
    from sparse_transformer.training.evaluation import score
    from sparse_transformer.checkpoint import load_model

    class Streamed(torch.utils.data.IterableDataset):
        def __iter__(self):
            for i in range(5):
                yield torch.full((64,), i, dtype=torch.long), torch.ones(64, dtype=torch.bool)

    net = load_model(str(ckpt), [], device="cpu")[0]
    nats, count, windows = score(net, Streamed(), 2, None, False)
    assert (count, windows) == (5 * 64, 5) and nats > 0
    assert score(net, Streamed(), 2, 3, False)[1:] == (3 * 64, 3)
