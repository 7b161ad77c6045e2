import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from sparse_transformer.data.store import (FORMATS, META, OWNER, ROW, DamagedStore, StoreWriter, is_prepared,
                                           open_store, read_meta, remove_stale_temporaries, sha256, verify_store,
                                           write_items, write_streams)


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
    write_items(tmp_path / "i", {"train": np.arange(12, dtype=np.uint8).reshape(3, 4)}, {}, "raw")
    code = ("import sys; sys.modules['datasets'] = None; sys.modules['pyarrow'] = None\n"  # importing them now fails
            "from sparse_transformer.data.store import open_store\n"
            f"m, s = open_store({str(tmp_path / 'i')!r}); print(s['train'][2].tolist())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[8, 9, 10, 11]", r.stderr


# ------------------------------------------------------------------------------------------------
# Every store records its files; damage is found and named (issue 16, item 7)
# ------------------------------------------------------------------------------------------------
def _store(tmp_path, fmt, kind="stream"):
    x = np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8)
    if kind == "items":
        return write_items(tmp_path / "s", {"train": x[:2000].reshape(-1, 10), "validation": x[2000:2500].reshape(-1, 10),
                                            "test": x[2500:].reshape(-1, 10)}, {}, fmt)
    return write_streams(tmp_path / "s", {"train": x[:2000], "validation": x[2000:2500], "test": x[2500:]}, {}, fmt)


def _data_files(path, fmt):
    return sorted(f for f in path.rglob("*.u8" if fmt == "raw" else "*.arrow"))


@pytest.mark.parametrize("kind", ["stream", "items"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_store_records_each_files_size_and_sum_and_verifies(tmp_path, fmt, kind):
    p = _store(tmp_path, fmt, kind)
    meta = read_meta(p)
    assert set(meta["files"]) >= {f.relative_to(p).as_posix() for f in _data_files(p, fmt)}
    for rel, rec in meta["files"].items():
        assert rec["bytes"] == (p / rel).stat().st_size and rec["sha256"] == sha256(p / rel)
    assert verify_store(p) == {"files": len(meta["files"]), "bytes": sum(r["bytes"] for r in meta["files"].values())}
    assert not any(n.startswith(".") for n in (f.name for f in p.rglob("*")))  # no owner marker left inside


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_truncated_file_is_named_when_the_store_opens(tmp_path, fmt, split):
    p = _store(tmp_path, fmt)
    f = p / f"{split}.u8" if fmt == "raw" else next(x for x in _data_files(p, fmt) if f"/{split}/" in str(x))
    size = f.stat().st_size
    with open(f, "r+b") as h:
        h.truncate(size - 7)
    with pytest.raises(DamagedStore) as e:
        open_store(p)
    assert e.value.file == f and str(e.value) == f"{f} is damaged: it has {size - 7:,} bytes, but {size:,} were written when it was prepared"
    f.unlink()
    with pytest.raises(DamagedStore, match=f"{f} is damaged: it is missing"):
        open_store(p)


def test_a_raw_store_from_before_file_lists_is_still_checked_by_its_lengths(tmp_path):
    p = _store(tmp_path, "raw")
    meta = read_meta(p)
    del meta["files"]
    (p / META).write_text(json.dumps(meta))
    open_store(p)
    with pytest.raises(DamagedStore, match="records no checksums to verify"):
        verify_store(p)
    with open(p / "test.u8", "r+b") as h:
        h.truncate(10)
    with pytest.raises(DamagedStore, match="test.u8 is damaged: it has 10 bytes, but 500 were written"):
        open_store(p)


@pytest.mark.parametrize("fmt", FORMATS)
def test_flipped_bytes_pass_the_cheap_check_and_fail_verify(tmp_path, fmt):
    p = _store(tmp_path, fmt)
    f = _data_files(p, fmt)[-1]
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    open_store(p)  # same sizes: opening is cheap and does not read the data
    with pytest.raises(DamagedStore) as e:
        verify_store(p)
    assert str(e.value) == f"{f} is damaged: its SHA-256 differs from the one recorded when it was prepared"


@pytest.mark.parametrize("content,what", [
    (None, "it is missing (every prepared folder has one)"),
    ("{not json", "it is not readable JSON (JSONDecodeError"),
    ("[1, 2]", "it is not a JSON mapping"),
    ('{"kind": "stream", "format": "raw", "lengths": {"train": -1, "validation": 0, "test": 0}}', "lengths="),
    ('{"kind": "blob", "format": "raw", "lengths": {"train": 1, "validation": 0, "test": 0}}', "kind='blob'"),
    ('{"kind": "stream", "format": "raw", "lengths": {"train": 1, "validation": 0, "test": 0}, '
     '"files": {"../../etc/passwd": {"bytes": 1, "sha256": "x"}}}', "its file list has '../../etc/passwd'"),
])
def test_a_missing_or_garbled_record_is_named(tmp_path, content, what):
    p = _store(tmp_path, "raw")
    if content is None:
        (p / META).unlink()
    else:
        (p / META).write_text(content)
    for call in (open_store, lambda q: is_prepared(q, "raw"), verify_store):
        with pytest.raises(DamagedStore) as e:
            call(p)
        assert str(e.value).startswith(f"{p / META} is damaged: {what}") and "\n" not in str(e.value)


def test_a_garbled_arrow_dataset_is_named(tmp_path):
    p = _store(tmp_path, "arrow")
    (p / "dataset" / "dataset_dict.json").write_text("{garbage")
    meta = read_meta(p)
    meta["files"]["dataset/dataset_dict.json"]["bytes"] = len("{garbage")
    (p / META).write_text(json.dumps(meta))  # sizes agree: datasets itself finds the damage
    with pytest.raises(DamagedStore, match=r"dataset is damaged: datasets could not load it \("):
        open_store(p)


# ------------------------------------------------------------------------------------------------
# Temporaries of a killed preparation
# ------------------------------------------------------------------------------------------------
KILLED = """
import os, sys
import numpy as np
from sparse_transformer.data.store import StoreWriter
with StoreWriter(sys.argv[1], "stream", {{}}, {fmt!r}) as w:
    w.write("train", np.zeros(200_000, np.uint8))
    os._exit(9)  # killed: no clean-up runs
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_temporary_of_a_killed_preparation_is_removed_by_the_next(tmp_path, fmt):
    r = subprocess.run([sys.executable, "-c", KILLED.format(fmt=fmt), str(tmp_path / "s")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".s.tmp-")  # what the kill left
    assert remove_stale_temporaries(tmp_path / "s") == [tmp_path / left[0]]
    subprocess.run([sys.executable, "-c", KILLED.format(fmt=fmt), str(tmp_path / "s")], timeout=120)
    write_streams(tmp_path / "s", {"train": np.ones(10, np.uint8)}, {}, fmt)  # the next preparation cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_a_temporary_still_being_written_is_kept(tmp_path):
    live = tmp_path / ".s.tmp-live"
    live.mkdir()
    (live / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # this process: alive
    fresh = tmp_path / ".s.tmp-fresh"  # no owner yet (or another host): judged by its age
    fresh.mkdir()
    old = tmp_path / ".s.abc123"  # an older version's temporary, untouched for two hours
    old.mkdir()
    (old / "train.u8").write_bytes(b"x")
    for q in (old, old / "train.u8"):
        os.utime(q, (time.time() - 7200, time.time() - 7200))
    other = tmp_path / ".t.tmp-x"  # another store's
    other.mkdir()
    assert remove_stale_temporaries(tmp_path / "s") == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.tmp-fresh", ".s.tmp-live", ".t.tmp-x"]


def test_a_failed_preparation_leaves_no_folder_it_made(tmp_path):
    with pytest.raises(ValueError):
        with StoreWriter(tmp_path / "cache" / "deep" / "s", "stream", {}, "raw") as w:
            w.write("train", np.zeros(10, np.uint8))
            raise ValueError("bad record")
    assert list(tmp_path.iterdir()) == []
