"""files.py: atomic writes leave the old target or the new one, never a part or a temporary."""

import json

import pytest

from sparse_transformer import files


def test_write_json_and_text_replace_whole(tmp_path):
    p = tmp_path / "a" / "x.json"
    files.write_json(p, {"a": 1})
    files.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    files.write_text(tmp_path / "t.txt", "hi")
    assert (tmp_path / "t.txt").read_text() == "hi"
    assert sorted(f.name for f in (tmp_path / "a").iterdir()) == ["x.json"]


def test_failed_write_keeps_old_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "x.txt"
    files.write_text(p, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_file(p) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError):
        with files.atomic_folder(out) as tmp:
            (tmp / "a").write_text("1")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with files.atomic_folder(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(FileExistsError):
        with files.atomic_folder(out) as tmp:
            (tmp / "b").write_text("2")
    with files.atomic_folder(out, replace=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(f.name for f in out.iterdir()) == ["b"]
    assert [f.name for f in tmp_path.iterdir()] == ["run"]


def test_remove_stale(tmp_path):
    p = tmp_path / "last.ckpt"
    (tmp_path / ".last.ckpt.tmp-123").write_text("x")
    (tmp_path / ".other.tmp-1").write_text("x")
    files.remove_stale(p)
    assert [f.name for f in tmp_path.iterdir()] == [".other.tmp-1"]
