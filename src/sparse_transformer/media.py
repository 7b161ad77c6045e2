"""Tokens <-> media: 8-bit mu-law audio, WAV, PNG, image grids (the primed part marked), text, and
``write_samples`` (any modality's samples as files: the sample command and the training callback).

A leaf: numpy and the standard library, Pillow (and matplotlib's font lookup) where an image is
drawn; nothing of this package, so data, sampling, training callbacks and notebooks share it.

Conventions: audio tokens are mu-law codes 0..255 (mu = 255); an image's tokens are its pixels in
raster order with the channels interleaved (n = H·W·C); text tokens are bytes.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np

MU = 255
MARK = (255, 80, 0)  # the bar beside an image's primed rows: orange, apart from the grey padding
BACKGROUND = 128  # grey padding between the tiles of a grid
READABLE = 256  # grids are scaled up (nearest neighbour) until each side has at least this many pixels


# ------------------------------------------------------------------------------------------------
# mu-law (ITU-T G.711's continuous form)
# ------------------------------------------------------------------------------------------------
def mulaw_encode(x, mu: int = MU) -> np.ndarray:
    """Float samples in [-1, 1] -> uint8 codes 0..mu (values outside are clipped).

    Rounds half up (floor(v + 0.5)): the data pipeline's rounding, which every model was trained
    on; ``np.round`` would send a code exactly halfway to the even neighbour instead."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.floor((y + 1) / 2 * mu + 0.5).astype(np.uint8)


def mulaw_decode(q, mu: int = MU) -> np.ndarray:
    """uint8 codes -> float32 samples in [-1, 1] (the centre of each code's interval)."""
    y = 2 * np.asarray(q, dtype=np.float64) / mu - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def write_wav(path: str | Path, samples, rate: int) -> Path:
    """Mono float samples in [-1, 1] -> 16-bit PCM WAV at ``rate`` Hz."""
    path = Path(path)
    pcm = np.round(np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm.tobytes())
    return path


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def image_grid(images, cols: int | None = None, pad: int = 2, primed_rows: int = 0) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 images -> one uint8 grid (rows·(H+pad)+pad, cols·(W+pad)+pad, C)
    on grey; 2-D for grey images without a mark. With ``primed_rows`` the left gutter beside each
    image's first ``primed_rows`` rows is painted ``MARK`` (grey images become RGB for it)."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    N, H, W, C = images.shape
    if primed_rows and C == 1:
        images = images.repeat(3, axis=-1)
        C = 3
    cols = cols or math.ceil(math.sqrt(N))
    rows = math.ceil(N / cols)
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, C), BACKGROUND, dtype=np.uint8)
    for k, img in enumerate(images):
        y, x = pad + k // cols * (H + pad), pad + k % cols * (W + pad)
        grid[y : y + H, x : x + W] = img
        if primed_rows:
            grid[y : y + min(primed_rows, H), x - pad : x] = MARK[:C]
    return grid[..., 0] if C == 1 else grid


def upscale(image: np.ndarray, min_side: int = READABLE) -> np.ndarray:
    """Nearest-neighbour upscaling by the smallest integer factor that gives both sides ``min_side``
    pixels or more (pixels stay sharp squares)."""
    s = max(1, math.ceil(min_side / max(1, min(image.shape[:2]))))
    return image.repeat(s, axis=0).repeat(s, axis=1)


def sample_grid(tokens, shape, primed: int = 0, min_side: int = READABLE) -> np.ndarray:
    """(N, H·W·C) pixel tokens of images of ``shape`` -> a readable grid: tiles on grey, the rows
    that hold the first ``primed`` tokens (given, not generated) marked, scaled up to ``min_side``."""
    H, W = int(shape[0]), int(shape[1])
    C = int(shape[2]) if len(shape) > 2 else 1
    imgs = np.asarray(tokens, dtype=np.uint8).reshape(-1, H, W, C)
    return upscale(image_grid(imgs, primed_rows=math.ceil(primed / (W * C))), min_side)


def write_png(path: str | Path, image) -> Path:
    """uint8 (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) -> PNG (other channel counts: the first)."""
    from PIL import Image  # Pillow: a dependency of matplotlib

    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        image = image[..., 0]
    Image.fromarray(image).save(path)
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------
def tokens_to_text(tokens) -> str:
    """Byte tokens -> text (UTF-8; invalid sequences become U+FFFD)."""
    return bytes(np.asarray(tokens).astype(np.uint8).tolist()).decode("utf-8", errors="replace")


def samples_text(tokens, prefix: int | None = None) -> str:
    """(N, n) byte tokens -> one text: each sample under a rule ``===== sample k =====`` (with
    ``prefix``, the rule also says how many of its tokens were given and how many there are)."""
    out = []
    for k, row in enumerate(tokens):
        counts = f" ({prefix} prefix tokens, {len(row)} in all)" if prefix is not None else ""
        out.append(f"===== sample {k}{counts} =====\n{tokens_to_text(row)}\n\n")
    return "".join(out)


# ------------------------------------------------------------------------------------------------
# Samples of any modality
# ------------------------------------------------------------------------------------------------
def write_samples(folder: str | Path, tokens, modality: str, shape=None, *, image: str = "grid.png",
                  audio: str = "sample_{k:03d}.wav", text: str = "samples.txt", prefix: int | None = None,
                  sample_rate: int = 12000) -> list[Path]:
    """(N, n) tokens as the modality's media under ``folder`` (made if missing); returns the paths.

    - image (n = H·W·C of ``shape``): one readable grid, ``image``, its first ``prefix`` tokens marked;
    - audio (mu-law codes): one 16-bit WAV per sample at ``sample_rate``, ``audio.format(k=k)``;
    - text, and images cut short: ``text``, the samples as UTF-8 under rules (``samples_text``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = np.asarray(tokens)
    if modality == "image" and shape is not None and tokens.shape[1] == math.prod(int(s) for s in shape):
        return [write_png(folder / image, sample_grid(tokens, shape, primed=prefix or 0))]
    if modality == "audio":
        return [write_wav(folder / audio.format(k=k), mulaw_decode(row), sample_rate) for k, row in enumerate(tokens)]
    path = folder / text
    path.write_text(samples_text(tokens, prefix), encoding="utf-8")
    return [path]


def printable(b: int) -> str:
    """One visible glyph per byte, for drawing text position by position: ⏎ for a newline, · for
    bytes that are not printable ASCII."""
    if b == 10:
        return "⏎"
    if 32 <= b < 127:
        return chr(b)
    return "·"


def glyph_grid(chars, greys, width: int, cell: tuple[int, int] = (14, 20)) -> np.ndarray:
    """RGBA float image (rows·h, width·w, 4) of ``chars`` in a grid of ``width`` columns, one
    monospace glyph per cell (transparent background; ``greys`` = each glyph's grey level), to lay
    over a heat map with ``imshow`` (one image instead of thousands of text artists)."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    w, h = cell
    nrow = max(1, math.ceil(len(chars) / width))
    img = Image.new("LA", (width * w, nrow * h), (0, 0))
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.truetype(font_manager.findfont("DejaVu Sans Mono"), int(h * 0.7))
    except OSError:
        font = ImageFont.load_default()
    for k, (ch, g) in enumerate(zip(chars, greys)):
        x, y = (k % width) * w + w / 2, (k // width) * h + h / 2
        draw.text((x, y), ch, fill=(int(255 * g), 255), font=font, anchor="mm")
    a = np.asarray(img, dtype=np.float64) / 255.0
    return np.dstack([a[..., 0], a[..., 0], a[..., 0], a[..., 1]])
