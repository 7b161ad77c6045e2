"""Tokens -> media files: images (uint8 H×W×C, laid out in a grid, PNG), audio (8-bit mu-law at
data.sample_rate, 16-bit PCM WAV) and text (bytes, UTF-8 with replacement characters).

numpy, Pillow and the standard library only, so notebooks can use these without Lightning or W&B.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np

MU = 255


def mulaw_decode(tokens: np.ndarray, mu: int = MU) -> np.ndarray:
    """uint8 mu-law codes 0..mu -> float32 samples in [-1, 1] (the data module's decoder when present)."""
    try:  # the audio DataModule's own decoder, so samples decode exactly as the data was encoded
        from ..data.audio import mulaw_decode as decode

        return decode(tokens, mu)
    except ImportError:
        y = 2 * np.asarray(tokens, dtype=np.float64) / mu - 1
        return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> Path:
    """Mono float samples in [-1, 1] -> 16-bit PCM WAV."""
    path = Path(path)
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm.tobytes())
    return path


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) uint8 images -> one (rows·(H+pad)-pad, cols·(W+pad)-pad, C) uint8 grid."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    N, H, W, C = images.shape
    cols = cols or math.ceil(math.sqrt(N))
    rows = math.ceil(N / cols)
    grid = np.zeros((rows * (H + pad) - pad, cols * (W + pad) - pad, C), dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W] = img
    return grid


def write_png(path: str | Path, image: np.ndarray) -> Path:
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    Image.fromarray(image).save(path)
    return Path(path)


def tokens_to_text(tokens: np.ndarray) -> str:
    return bytes(np.asarray(tokens, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")


def save_samples(tokens: np.ndarray, modality: str, shape, folder: str | Path, stem: str,
                 sample_rate: int = 12000) -> list[Path]:
    """Write (N, n) uint8 samples as media under ``folder``: ``<stem>.png`` (an image grid),
    ``<stem>-<k>.wav`` per audio sample, or ``<stem>.txt`` (text samples separated by rules)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = np.asarray(tokens, dtype=np.uint8)
    if modality == "image":
        imgs = tokens.reshape(len(tokens), *[int(s) for s in shape])
        return [write_png(folder / f"{stem}.png", image_grid(imgs))]
    if modality == "audio":
        return [write_wav(folder / f"{stem}-{k}.wav", mulaw_decode(t), sample_rate) for k, t in enumerate(tokens)]
    text = "".join(f"===== sample {k} =====\n{tokens_to_text(t)}\n" for k, t in enumerate(tokens))
    path = folder / f"{stem}.txt"
    path.write_text(text, encoding="utf-8")
    return [path]
