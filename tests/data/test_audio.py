import builtins
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from sparse_transformer.data import audio as A
from sparse_transformer.data import music
from sparse_transformer.data.audio import AudioDataModule, assign_tracks, read_wav
from sparse_transformer.data.store import DataError
from sparse_transformer.media import mulaw_encode
from tests.data.helpers import cfg, leftovers, tone, write_float_wav, write_wav

AUD = ["data.modality=audio", "data.seq_len=64", "attention.stride=8", "data.batch_size=4"]


def _dm(tmp_path, *args):
    dm = AudioDataModule(cfg(tmp_path, *AUD, *args))
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_own_wav_reader_matches_the_standard_library_writer(tmp_path, bits):
    x = tone(300, 0.05, 8000, amp=0.7, channels=2) * np.array([1.0, -0.5])
    write_wav(tmp_path / "a.wav", x, 8000, bits)
    y, rate = read_wav((tmp_path / "a.wav").read_bytes(), "a.wav")
    assert rate == 8000 and y.shape == x.shape and y.dtype == np.float32
    assert np.abs(y - x).max() < (2.0 / 2 ** (bits - 1) + 1e-6)


def test_float_wav_and_non_audio_files(tmp_path):
    x = tone(440, 0.02, 16000, amp=0.9)
    write_float_wav(tmp_path / "f.wav", x, 16000)
    y, rate = read_wav((tmp_path / "f.wav").read_bytes(), "f.wav")
    assert rate == 16000 and np.allclose(y, x, atol=1e-7)
    with pytest.raises(DataError, match="audio file notes.txt is not a WAV file"):
        A.read_wav(b"just some text, not audio", "notes.txt")
    with pytest.raises(DataError, match=r"audio file x\.wav is not a WAV file"):
        A.decode_audio(b"OggS garbage garbage garbage", "x.wav")


@pytest.mark.parametrize("use_scipy", [True, False])
def test_resampling_keeps_pitch_and_level(monkeypatch, use_scipy):
    if not use_scipy:
        real = builtins.__import__
        monkeypatch.setattr(builtins, "__import__", lambda n, *a, **k: (_ for _ in ()).throw(ImportError(n))
                            if n.startswith("scipy") else real(n, *a, **k))
    elif pytest.importorskip("scipy") is None:
        return
    x = tone(440, 1.0, 44100, amp=0.5)[:, 0].astype(np.float32)
    y = A.resample(x, 44100, 12000)
    assert abs(len(y) - 12000) <= 1
    spec = np.abs(np.fft.rfft(y[1000:-1000] * np.hanning(len(y) - 2000)))
    f = np.argmax(spec) * 12000 / (len(y) - 2000)
    assert abs(f - 440) < 2 and abs(np.abs(y[1000:-1000]).max() - 0.5) < 0.02
    hi = tone(8000, 0.5, 44100, amp=0.5)[:, 0]  # above the new Nyquist (6 kHz): filtered out, not aliased
    assert np.abs(A.resample(hi, 44100, 12000)[500:-500]).max() < 0.02


def test_tracks_go_whole_to_one_split_deterministically():
    names = [f"t{i}" for i in range(40)]
    a, b = assign_tracks(names, [0.8, 0.1, 0.1]), assign_tracks(names, [0.8, 0.1, 0.1])
    assert a == b and [len(a[k]) for k in ("train", "validation", "test")] == [32, 4, 4]
    assert sorted(a["train"] + a["validation"] + a["test"]) == sorted(names)


def test_local_folder_mono_12khz_streams_and_splits(tmp_path):
    src = tmp_path / "wavs"
    src.mkdir()
    freqs = [200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100]
    for i, f in enumerate(freqs):  # stereo 24 kHz 16-bit: mixed to mono, resampled to 12 kHz
        write_wav(src / f"track{i:02d}.wav", tone(f, 0.1, 24000, amp=0.5, channels=2), 24000)
    dm = _dm(tmp_path, "data.source=local", f"data.path={src}", "data.splits=[0.8,0.1,0.1]")
    plan = assign_tracks(sorted(src.glob("*.wav")), [0.8, 0.1, 0.1])
    for split in ("train", "validation", "test"):
        assert len(dm.splits[split]) == 1200 * len(plan[split])  # 0.1 s at 12 kHz per track
        ref = np.concatenate([mulaw_encode(A.resample(tone(freqs[int(p.stem[-2:])], 0.1, 24000, 0.5)[:, 0].astype(np.float32),
                                                      24000, 12000)) for p in plan[split]])
        got = dm.splits[split].all()
        assert got.dtype == np.uint8 and np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # 16-bit input rounding
    x, m = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 64) and x.dtype == torch.int64 and m.all() and dm.shape == [64]  # the sequence; the model lays it out as (8, 8)
    scored = sum(int(m.sum()) for _, m in dm.val_dataloader())
    assert scored == len(dm.splits["validation"])


def test_split_subfolders_and_cap(tmp_path):
    for split, n in (("train", 3), ("valid", 1), ("test", 1)):
        (tmp_path / "w" / split).mkdir(parents=True)
        for i in range(n):
            write_wav(tmp_path / "w" / split / f"{i}.wav", tone(300 + 100 * i, 0.2, 12000), 12000)
    dm = _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/w")
    assert [len(dm.splits[k]) for k in ("train", "validation", "test")] == [7200, 2400, 2400]
    dm = _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/w", "data.max_bytes=4000", "data.splits=[0.5,0.25,0.25]")
    assert [len(dm.splits[k]) for k in ("train", "validation", "test")] == [2000, 1000, 1000]


def test_non_audio_file_is_named_and_nothing_is_left(tmp_path):
    (tmp_path / "w").mkdir()
    for i in range(3):
        write_wav(tmp_path / "w" / f"{i}.wav", tone(300, 0.1, 12000), 12000)
    (tmp_path / "w" / "9.wav").write_text("this is a text file with a .wav name")
    with pytest.raises(DataError, match=r"audio file .*9\.wav is not a WAV file"):
        _dm(tmp_path, "data.source=local", f"data.path={tmp_path}/w", "data.splits=[0.5,0.25,0.25]")
    assert leftovers(tmp_path) == []


def test_simple_synth_and_midi_writer():
    simple_synth, write_midi = music.simple_synth, music.write_midi
    notes = np.array([[0.0, 0.5, 69.0], [0.5, 0.5, 81.0]])  # A4 then A5
    x = simple_synth(notes, 12000)
    assert x.dtype == np.float32 and 0.1 < np.abs(x).max() <= 0.95 and len(x) >= 12000
    spec = np.abs(np.fft.rfft(x[1000:5000]))
    assert abs(np.argmax(spec) * 12000 / 4000 - 440) < 4
    with tempfile.TemporaryDirectory() as d:
        write_midi(notes, Path(d) / "a.mid")
        raw = (Path(d) / "a.mid").read_bytes()
    assert raw[:4] == b"MThd" and raw[14:18] == b"MTrk" and bytes([0x90, 69, 80]) in raw and raw.endswith(b"\xff\x2f\x00")


@pytest.mark.slow
def test_bach_renders_real_chorales(tmp_path, monkeypatch):
    pytest.importorskip("music21")
    paths = music.bach_tracks()
    assert len(paths) > 400
    monkeypatch.setattr(music, "bach_tracks", lambda: paths[:6])
    dm = _dm(tmp_path, "data.source=bach", "data.synth=simple", "data.splits=[0.67,0.17,0.16]")
    assert [len(dm.meta["lengths"]) for _ in [0]] == [3] and all(len(dm.splits[k]) > 12000 * 5 for k in ("validation", "test"))
    tok = dm.splits["train"].all()
    assert len(np.unique(tok)) > 100  # real music, not silence


def test_hub_style_audio_column_is_decoded_by_our_code(tmp_path):
    (tmp_path / "hub" / "data").mkdir(parents=True)
    # stored as a plain {bytes, path} struct, then cast to Audio: encoding through the Audio feature
    # needs torchcodec, which is exactly what this project avoids
    feats = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    for split, n in (("train", 6), ("test", 1)):
        recs = []
        for i in range(n):
            write_wav(tmp_path / f"{split}{i}.wav", tone(300 + 50 * i, 0.1, 24000), 24000)
            recs.append({"bytes": (tmp_path / f"{split}{i}.wav").read_bytes(), "path": f"{split}{i}.wav"})
        ds = datasets.Dataset.from_dict({"audio": recs}, features=feats).cast_column("audio", datasets.Audio(decode=False))
        assert type(ds.features["audio"]).__name__ == "Audio"
        ds.to_parquet(
            str(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    dm = _dm(tmp_path, f"data.source={tmp_path / 'hub'}", "data.splits=[0.6,0.2,0.2]")
    sizes = [len(dm.splits[k]) for k in ("train", "validation", "test")]
    assert sizes == [1200 * 5, 1200, 1200]  # validation: one whole record held out of train; test: the test split


def _hub_folder(root, splits: dict[str, int], column="audio"):
    """A parquet dataset folder shaped like a hub audio dataset; record r of split s is a tone of its own."""
    (root / "data").mkdir(parents=True)
    feats = datasets.Features({column: {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    freqs = {}
    for split, n in splits.items():
        recs = []
        for i in range(n):
            name = f"{split}{i}.wav"
            freqs[name] = 200 + 37 * len(freqs)
            write_wav(root / name, tone(freqs[name], 0.1, 12000), 12000)
            recs.append({"bytes": (root / name).read_bytes(), "path": name})
        ds = datasets.Dataset.from_dict({column: recs}, features=feats).cast_column(column, datasets.Audio(decode=False))
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root, {name: A.audio_tokens((root / name).read_bytes(), name, 12000) for name in freqs}


def _records_in(stream, tokens: dict) -> list[str]:
    """Which records a prepared split holds, in order (each record is 1200 tokens: 0.1 s at 12 kHz)."""
    got = stream.all()
    assert len(got) % 1200 == 0
    out = []
    for k in range(0, len(got), 1200):
        out += [name for name, t in tokens.items() if np.array_equal(t, got[k : k + 1200])]
    assert len(out) == len(got) // 1200
    return out


@pytest.mark.parametrize("splits", [{"test": 20}, {"validation": 6, "test": 14}, {"other": 12, "extra": 8}])
def test_a_hub_source_without_a_train_split_is_divided_disjointly(tmp_path, splits):
    """Issue 16, item 13: with only a test split, the first split was taken as train and 95 of 100
    records were in both. Now every record lands in exactly one split, by data.splits."""
    src, tokens = _hub_folder(tmp_path / "hub", splits)
    dm = _dm(tmp_path, f"data.source={src}", "data.splits=[0.6,0.2,0.2]")
    held = {s: _records_in(dm.splits[s], tokens) for s in ("train", "validation", "test")}
    every = held["train"] + held["validation"] + held["test"]
    assert sorted(every) == sorted(tokens) and len(set(every)) == len(every)  # each record once
    assert [len(held[s]) for s in ("train", "validation", "test")] == [12, 4, 4]


def test_hub_splits_are_taken_by_name_only(tmp_path):
    src, tokens = _hub_folder(tmp_path / "hub", {"test": 3, "train": 5, "validation": 2})  # train not first
    dm = _dm(tmp_path, f"data.source={src}")
    held = {s: _records_in(dm.splits[s], tokens) for s in ("train", "validation", "test")}
    assert held == {"train": [f"train{i}.wav" for i in range(5)], "validation": ["validation0.wav", "validation1.wav"],
                    "test": ["test0.wav", "test1.wav", "test2.wav"]}
    # data.test_split=validation: validation is then held out of train, not the same records twice
    dm = _dm(tmp_path / "v", f"data.source={src}", "data.test_split=validation", "data.splits=[0.6,0.2,0.2]")
    held = {s: _records_in(dm.splits[s], tokens) for s in ("train", "validation", "test")}
    assert held["test"] == ["validation0.wav", "validation1.wav"] and not set(held["validation"]) & set(held["test"])
    assert sorted(held["train"] + held["validation"]) == [f"train{i}.wav" for i in range(5)]
