"""Audio as 8-bit mu-law tokens (vocabulary 256): mono, ``data.sample_rate`` (12 kHz, as in the
paper), one stream per split cut into windows of seq_len like text.

Decoding is this project's own (``datasets``' ``Audio`` decodes through torchcodec and FFmpeg,
which the GPU machine lacks): WAV (PCM 8/16/24/32-bit, float 32/64, WAVE_FORMAT_EXTENSIBLE) is
parsed here; other formats (FLAC, OGG, MP3) go through ``soundfile`` when it is installed. Hub
datasets are read with ``Audio(decode=False)`` and their bytes decoded the same way.

Sources (``data.source``):
- ``bach``: the Bach chorales that ``music21`` ships, rendered to audio (``music.py``);
- ``local``: ``data.path`` a folder (or one file) of audio files. Split subfolders
  train/ validation/ test/ are used when present, and so is MAESTRO's ``maestro-v*.csv`` split
  column; otherwise whole tracks are assigned to splits by ``data.splits`` (a fixed permutation),
  so no piece is in two splits;
- a hub name: its first ``Audio`` column, with its own splits (missing ones held out as above).
``data.max_bytes`` caps each split at its ``data.splits`` share of the cap.
"""

from __future__ import annotations

import csv
import io
import struct
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..media import mulaw_encode
from . import hub
from .base import TokenDataModule
from .store import SPLITS, DataError, StoreWriter

SPLIT_SEED = 1234  # fixed track permutation: the same held-out tracks for every cfg.seed
AUDIO_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".opus"}


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------
def read_wav(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """A WAV file's bytes -> (float32 samples (frames, channels) in [-1, 1], sample rate)."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise DataError(f"audio file {name} is not a WAV file (no RIFF/WAVE header)")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            payload = body  # a truncated last chunk keeps what is there
            break
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None or len(fmt) < 16:
        raise DataError(f"audio file {name} is a WAV file without a fmt or data chunk; it is damaged")
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real format is the sub-format's first 2 bytes
        tag = struct.unpack("<H", fmt[24:26])[0]
    width = bits // 8
    if channels < 1 or width < 1 or align != channels * width:
        raise DataError(f"audio file {name} has an inconsistent WAV header ({channels} channels, {bits} bits, align {align})")
    frames = len(payload) // align
    raw = np.frombuffer(payload[: frames * align], dtype=np.uint8)
    if tag == 1 and width == 1:
        x = (raw.astype(np.float32) - 128) / 128
    elif tag == 1 and width in (2, 4):
        x = np.frombuffer(raw, dtype=f"<i{width}").astype(np.float32) / float(1 << (bits - 1))
    elif tag == 1 and width == 3:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif tag == 3 and width in (4, 8):
        x = np.frombuffer(raw, dtype=f"<f{width}").astype(np.float32)
    else:
        raise DataError(f"audio file {name} uses WAV format tag {tag} with {bits} bits, which this reader does not "
                        f"decode (PCM 8/16/24/32 or float 32/64); convert it to 16-bit PCM WAV")
    return x.reshape(frames, channels), int(rate)


def decode_audio(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Bytes of an audio file -> (mono float32 samples, sample rate)."""
    if data[:4] in (b"RIFF", b"RF64"):
        x, rate = read_wav(data, name)
    else:
        try:
            import soundfile
        except ImportError:
            raise DataError(f"audio file {name} is not a WAV file and soundfile is not installed to decode other "
                            f"formats (pip install soundfile); convert it to WAV or install soundfile") from None
        try:
            x, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as e:
            why = str(e).split(": ")[-1][:120]  # libsndfile's reason, without the BytesIO repr before it
            raise DataError(f"audio file {name} is not a WAV file and soundfile could not decode it either ({why}); "
                            f"replace or remove it") from None
    if len(x) == 0:
        raise DataError(f"audio file {name} has no samples")
    return x.mean(axis=1).astype(np.float32), rate


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling (scipy's polyphase filter when scipy is there, else a windowed sinc)."""
    if rate == target:
        return x
    from math import gcd

    g = gcd(rate, target)
    up, down = target // g, rate // g
    try:
        from scipy.signal import resample_poly

        return resample_poly(x, up, down).astype(np.float32)
    except ImportError:
        pass
    # Fallback: each output sample is a Kaiser-windowed sinc over the 2*16 nearest inputs, low-passed
    # at the lower of the two Nyquist rates; processed in blocks to bound memory.
    cutoff = min(1.0, target / rate)
    half = int(np.ceil(16 / cutoff))
    n_out = int(len(x) * target // rate)
    xp = np.pad(x.astype(np.float64), half + 1)
    out = np.empty(n_out, dtype=np.float32)
    for s in range(0, n_out, 8192):
        t = np.arange(s, min(s + 8192, n_out)) * (rate / target)
        base = np.floor(t).astype(np.int64)
        k = np.arange(-half, half + 1)
        idx = base[:, None] + k[None, :]
        d = t[:, None] - idx
        w = cutoff * np.sinc(cutoff * d) * np.kaiser(2 * half + 1, 8.6)[None, :]
        out[s : s + len(t)] = (xp[idx + half + 1] * w).sum(axis=1)
    return out


def audio_tokens(data: bytes, name: str, target: int) -> np.ndarray:
    x, rate = decode_audio(data, name)
    return mulaw_encode(resample(x, rate, target))


def _record_tokens(col: str, target: int, source: str, record: dict) -> np.ndarray:
    v = record[col]
    data = v.get("bytes") or Path(v["path"]).read_bytes()
    return audio_tokens(data, f"{source} record {v.get('path') or '?'}", target)


# ---------------------------------------------------------------------------------------------
# Track lists and splits
# ---------------------------------------------------------------------------------------------
def assign_tracks(names: list, fractions) -> dict[str, list]:
    """Whole tracks to train/validation/test by fractions, through a fixed permutation."""
    f = np.asarray([float(x) for x in fractions])
    f = f / f.sum()
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    k_val, k_test = (int(round(len(names) * x)) for x in f[1:])
    if len(names) >= 3:
        k_val, k_test = max(1, k_val), max(1 if f[2] > 0 else 0, k_test)
    val, test, train = perm[:k_val], perm[k_val : k_val + k_test], perm[k_val + k_test :]
    return {"train": [names[i] for i in sorted(train)], "validation": [names[i] for i in sorted(val)],
            "test": [names[i] for i in sorted(test)]}


def local_tracks(p: Path, fractions) -> dict[str, list[Path]]:
    if not p.exists():
        raise DataError(f"data.path={p} does not exist; point it at a folder of audio files (WAV; FLAC/OGG/MP3 with soundfile)")
    if p.is_file():
        return {"train": [p], "validation": [], "test": []}
    files = sorted(x for x in p.rglob("*") if x.is_file() and x.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"data.path={p} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    csvs = sorted(p.glob("maestro-v*.csv"))
    if csvs:  # MAESTRO's own split
        out = {s: [] for s in SPLITS}
        with open(csvs[-1], newline="") as f:
            for row in csv.DictReader(f):
                q = p / row["audio_filename"]
                if q.exists() and row.get("split") in out:
                    out[row["split"]].append(q)
        if out["train"]:
            return out
    sub = {hub.ALIASES.get(x.name, x.name): x for x in p.iterdir() if x.is_dir()}
    if "train" in sub:
        return {s: sorted(f for f in files if sub.get(s) and sub[s] in f.parents) for s in SPLITS}
    return assign_tracks(files, fractions)


class AudioDataModule(TokenDataModule):
    modality = "audio"
    kind = "stream"
    local_hint = "folder of audio files"

    def key_fields(self) -> dict:
        d = self.cfg.data
        k = {**super().key_fields(), "sample_rate": d.sample_rate, "test_split": d.test_split}
        if d.source == "bach":
            k["synth"] = d.synth  # as given, so the carried folder is found where auto would pick another; meta says which ran
        return k

    def _caps(self) -> dict[str, int | None]:
        d = self.cfg.data
        f = np.asarray([float(x) for x in d.splits])
        f = f / f.sum()
        return {s: (int(d.max_bytes * x) if d.max_bytes else None) for s, x in zip(SPLITS, f)}

    def build(self, w: StoreWriter) -> None:
        d = self.cfg.data
        caps = self._caps()
        if d.source == "bach":
            from .music import Renderer, bach_tracks

            plan = assign_tracks(bach_tracks(), d.splits)
            with Renderer(d.sample_rate, d.synth) as render:
                w.meta["synth"] = render.synth
                for split in SPLITS:
                    self._write(w, split, render(plan[split], desc=f"bach {split}"), caps[split])
            return
        if d.source == "local":
            if not d.path:
                raise DataError("data.source=local needs data.path=<folder of audio files>")
            plan = local_tracks(Path(d.path), d.splits)
            for split in SPLITS:
                gen = (audio_tokens(f.read_bytes(), str(f), d.sample_rate) for f in
                       tqdm(plan[split], desc=f"decoding {split} audio", unit="file", mininterval=1.0))
                self._write(w, split, gen, caps[split])
            return
        self._build_hub(w, hub.load(d.source, local_hint=self.local_hint), d.source, caps)

    def _build_hub(self, w: StoreWriter, dd: dict, source: str, caps) -> None:
        import datasets

        d = self.cfg.data
        have = {"train": dd.get("train"), "validation": dd.get("validation"), "test": dd.get(d.test_split)}
        train = have["train"] if have["train"] is not None else next(iter(dd.values()))
        missing = [s for s in ("validation", "test") if have[s] is None]
        if missing:  # hold whole records of the train split out by data.splits
            plan = assign_tracks(list(range(len(train))), d.splits)
            for s in missing:
                have[s] = train.select(plan[s])
            have["train"] = train.select(plan["train"] + [i for s in ("validation", "test") if s not in missing for i in plan[s]])
        for split in SPLITS:
            ds = have[split]
            col = hub.column(ds, ("Audio",), ("audio",), source, "audio")
            ds = ds.select_columns([col]).cast_column(col, datasets.Audio(decode=False))
            fn = partial(_record_tokens, col, d.sample_rate, source)
            gen = (fn(r) for r in tqdm(ds, desc=f"decoding {split} audio", unit="rec", mininterval=1.0))
            self._write(w, split, gen, caps[split])

    @staticmethod
    def _write(w: StoreWriter, split: str, tokens, limit: int | None) -> None:
        left = limit
        for t in tokens:
            if left is not None:
                t = t[:left]
                left -= len(t)
            w.write(split, t)
            if left is not None and left <= 0:
                if hasattr(tokens, "close"):
                    tokens.close()
                return

    def stream_records(self, ds, source: str):
        import datasets

        col = hub.column(ds, ("Audio",), ("audio",), source, "audio")
        ds = ds.select_columns([col]).cast_column(col, datasets.Audio(decode=False))
        return ds, partial(_record_tokens, col, self.cfg.data.sample_rate, source)
