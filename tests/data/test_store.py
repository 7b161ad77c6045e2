import numpy as np
import pytest

from sparse_transformer.data.store import FORMATS, ROW, StoreWriter, is_prepared, open_store, write_items, write_streams


@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_round_trip_across_rows_and_chunks(tmp_path, fmt):
    x = np.random.default_rng(0).integers(0, 256, 2 * ROW + 123, dtype=np.uint8)
    with StoreWriter(tmp_path / "s", "stream", {"modality": "text"}, fmt) as w:
        for a, b in [(0, 1000), (1000, ROW + 7), (ROW + 7, 2 * ROW)]:  # chunks that straddle stored rows
            w.write("train", x[a:b])
        w.write("validation", x[2 * ROW :])
    meta, s = open_store(tmp_path / "s")
    assert meta["format"] == fmt and meta["lengths"] == {"train": 2 * ROW, "validation": 123, "test": 0}
    assert np.array_equal(s["train"].all(), x[: 2 * ROW])
    assert np.array_equal(s["train"].read(ROW - 5, 10), x[ROW - 5 : ROW + 5])  # a window across two rows
    assert np.array_equal(s["validation"].read(0, 123), x[2 * ROW :]) and len(s["test"]) == 0
    assert s["train"].read(0, 4).dtype == np.uint8
    with pytest.raises(IndexError):
        s["validation"].read(100, 24)


@pytest.mark.parametrize("fmt", FORMATS)
def test_items_round_trip_with_an_empty_split(tmp_path, fmt):
    im = np.random.default_rng(1).integers(0, 256, (7, 12), dtype=np.uint8)
    write_items(tmp_path / "i", {"train": im[:5], "validation": im[5:], "test": im[:0]}, {}, fmt)
    _, s = open_store(tmp_path / "i")
    assert [len(s[k]) for k in ("train", "validation", "test")] == [5, 2, 0]
    assert np.array_equal(np.stack([s["train"][i] for i in range(5)]), im[:5]) and np.array_equal(s["validation"][1], im[6])


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_a_failed_write_leaves_nothing_behind(tmp_path, exc):
    with pytest.raises(exc):
        with StoreWriter(tmp_path / "s", "stream", {}, "arrow") as w:
            w.write("train", np.zeros(ROW * 2, np.uint8))
            raise exc("interrupted")
    assert list(tmp_path.iterdir()) == [] and not is_prepared(tmp_path / "s")


def test_rewrite_replaces_the_old_store_and_format_is_recorded(tmp_path):
    write_streams(tmp_path / "s", {"train": np.ones(10, np.uint8)}, {}, "arrow")
    assert is_prepared(tmp_path / "s", "arrow") and not is_prepared(tmp_path / "s", "raw")
    write_streams(tmp_path / "s", {"train": np.full(4, 7, np.uint8)}, {}, "raw")
    _, s = open_store(tmp_path / "s")
    assert is_prepared(tmp_path / "s", "raw") and np.array_equal(s["train"].all(), [7] * 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_raw_store_reads_without_datasets(tmp_path):
    import subprocess
    import sys

    write_items(tmp_path / "i", {"train": np.arange(12, dtype=np.uint8).reshape(3, 4)}, {}, "raw")
    code = ("import sys; sys.modules['datasets'] = None; sys.modules['pyarrow'] = None\n"  # importing them now fails
            "from sparse_transformer.data.store import open_store\n"
            f"m, s = open_store({str(tmp_path / 'i')!r}); print(s['train'][2].tolist())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[8, 9, 10, 11]", r.stderr
