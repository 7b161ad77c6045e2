"""Small stand-in data the data tests make: configs, PNG/WAV/idx/zip files, parquet datasets."""

from __future__ import annotations

import gzip
import io
import struct
import wave
from pathlib import Path

import numpy as np

from sparse_transformer.config import load_config


def cfg(tmp_path, *args):
    """A validated config with the cache under tmp_path (tiny model, no logger)."""
    c, _ = load_config([f"data.cache_dir={tmp_path}/cache", "model.n_layer=2", "model.d_model=32", "model.n_head=2",
                        "logger.kind=none", *args])
    return c


def leftovers(tmp_path) -> list[str]:
    """Anything in the cache folder: after a failed preparation there must be nothing."""
    d = Path(tmp_path) / "cache"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def rand_images(n, h, w, c, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[img.shape[2]]
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[2] == 1 else img, mode).save(buf, format="PNG")
    return buf.getvalue()


def write_idx(path: Path, arr: np.ndarray, gz=True) -> Path:
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def image_parquet_dir(root: Path, splits: dict[str, np.ndarray], column="img") -> Path:
    """A local folder that ``datasets.load_dataset(folder)`` reads like a hub image dataset."""
    import datasets

    (root / "data").mkdir(parents=True, exist_ok=True)
    feats = datasets.Features({column: datasets.Image(), "label": datasets.Value("int64")})
    for name, imgs in splits.items():
        ds = datasets.Dataset.from_dict({column: [{"bytes": png_bytes(x), "path": None} for x in imgs],
                                         "label": list(range(len(imgs)))}, features=feats)
        ds.to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return root


def text_parquet_dir(root: Path, splits: dict[str, list[str]]) -> Path:
    import datasets

    (root / "data").mkdir(parents=True, exist_ok=True)
    for name, texts in splits.items():
        datasets.Dataset.from_dict({"text": texts}).to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return root


def tone(freq: float, seconds: float, rate: int, amp=0.5, channels=1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[:, None], channels, axis=1)


def write_wav(path: Path, x: np.ndarray, rate: int, bits: int = 16) -> Path:
    """PCM WAV through the standard library (8/16/24/32-bit), x float (frames, channels) in [-1, 1]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if bits == 8:
        data = np.clip(np.round(x * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    else:
        v = np.clip(np.round(x * (2 ** (bits - 1) - 1)), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).astype(np.int64)
        data = b"".join(int(s).to_bytes(bits // 8, "little", signed=True) for s in v.reshape(-1)) if bits == 24 \
            else v.astype(f"<i{bits // 8}").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(bits // 8)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def write_float_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    """32-bit float WAV (format tag 3), written by hand: the standard library writes PCM only."""
    x = np.asarray(x, dtype="<f4")
    if x.ndim == 1:
        x = x[:, None]
    ch = x.shape[1]
    data = x.tobytes()
    fmt = struct.pack("<HHIIHH", 3, ch, rate, rate * ch * 4, ch * 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


class CountingStream:
    """A token stream of ``n`` tokens 0, 1, ..., 250, 0, 1, ... (``read`` as a store's split), checking each read is inside it."""

    def __init__(self, n):
        self.data = np.arange(n) % 251

    def __len__(self):
        return len(self.data)

    def read(self, start, n):
        assert 0 <= start and start + n <= len(self.data)
        return self.data[start : start + n]
