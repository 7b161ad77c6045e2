"""sparse_transformer.media: mu-law round trips, WAV and PNG files, image grids with the primed
part marked, text; and that it stays a leaf."""

import ast
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparse_transformer import media

SRC = Path(media.__file__)


def test_mulaw_round_trip_error_bound_and_codes():
    x = np.linspace(-1, 1, 200_001)
    q = media.mulaw_encode(x)
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255 and np.all(np.diff(q.astype(int)) >= 0)
    assert media.mulaw_encode(np.array([0.0]))[0] == 128
    assert media.mulaw_encode(np.array([5.0, -5.0])).tolist() == [255, 0]
    y = media.mulaw_decode(q)
    assert y.dtype == np.float32 and np.all(np.diff(media.mulaw_decode(np.arange(256))) > 0)
    assert media.mulaw_decode([0])[0] == pytest.approx(-1) and media.mulaw_decode([255])[0] == pytest.approx(1)
    err = np.abs(y - x)
    # half a code step in the companded domain, times the slope of the expansion, at the interval's far end
    bound = (1 / 255) * np.log(256) / 255 * (1 + 255 * np.abs(x)) * 256 ** (1 / 255) + 1e-6
    assert np.all(err <= bound), float((err / bound).max())
    assert err[np.abs(x) < 0.01].max() < 3.5e-4 and err.max() < 0.025  # fine near zero, ~2% at full scale
    assert np.array_equal(media.mulaw_encode(media.mulaw_decode(np.arange(256))), np.arange(256))  # a right inverse


def test_mulaw_rounds_half_up_like_the_data_the_models_saw():
    """A sample exactly halfway between codes 32 and 33 gets 33 (floor(v + 0.5), the data pipeline's
    rounding); ``np.round`` (half to even) would give 32."""
    x = np.array([-0.2403285007116145])
    y = np.sign(x) * np.log1p(255 * np.abs(x)) / np.log1p(255)
    assert ((y + 1) / 2 * 255)[0] == 32.5  # exactly halfway in float64
    assert media.mulaw_encode(x)[0] == 33


def test_write_wav_header_length_and_samples(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0])  # the last two are clipped
    path = media.write_wav(tmp_path / "a.wav", x, 16000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 7)
        pcm = np.frombuffer(w.readframes(7), "<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]
    assert path.stat().st_size == 44 + 2 * 7  # a plain RIFF header and the PCM


def test_image_grid_places_each_image_in_its_tile():
    imgs = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 3, 3), np.uint8)  # image k is all k
    grid = media.image_grid(imgs, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)  # 3 columns, 2 rows of tiles
    assert (grid[1:3, 1:4] == 0).all() and (grid[1:3, 5:8] == 1).all() and (grid[4:6, 5:8] == 4).all()
    assert (grid[4:6, 9:12] == media.BACKGROUND).all()  # an empty tile
    assert media.image_grid(imgs[..., 0]).ndim == 2  # grey scale


def test_sample_grid_png_is_readable_and_marks_the_primed_rows(tmp_path):
    H, W, C, N = 6, 5, 3, 4
    tokens = np.random.default_rng(0).integers(0, 256, (N, H * W * C))
    primed = 2 * W * C + 1  # two whole rows and one channel of the third
    path = media.write_png(tmp_path / "g.png", media.sample_grid(tokens, (H, W, C), primed=primed))
    img = np.asarray(Image.open(path))
    grid = media.image_grid(tokens.reshape(N, H, W, C))  # 2 x 2 tiles, unmarked, unscaled
    s = img.shape[0] // grid.shape[0]
    assert min(img.shape[:2]) >= media.READABLE and img.shape[:2] == (grid.shape[0] * s, grid.shape[1] * s)
    small = img[::s, ::s]  # nearest neighbour: every s x s block is one pixel of the grid
    assert np.array_equal(np.repeat(np.repeat(small, s, 0), s, 1), img)
    pad = 2
    for k in range(N):
        y, x = pad + k // 2 * (H + pad), pad + k % 2 * (W + pad)
        assert np.array_equal(small[y : y + H, x : x + W], tokens[k].reshape(H, W, C))  # the image itself is intact
        assert (small[y : y + 3, x - pad : x] == media.MARK).all()  # beside the primed rows (3: the partial one too)
        assert (small[y + 3 : y + H, x - pad : x] == media.BACKGROUND).all()  # beside the generated ones
    grey = tokens[:, : H * W]
    assert np.array_equal(media.sample_grid(grey, (H, W)), media.upscale(media.image_grid(grey.reshape(N, H, W))))
    marked = media.sample_grid(grey, (H, W), primed=W)  # grey images turn RGB for the mark
    assert marked.ndim == 3 and (marked[pad * s : (pad + 1) * s, : pad * s] == media.MARK).all()


def test_text_tokens_and_glyphs():
    assert media.tokens_to_text(np.frombuffer(b"hello\xffworld", np.uint8)) == "hello\ufffdworld"
    assert [media.printable(b) for b in (104, 32, 10, 7, 200)] == ["h", " ", "⏎", "·", "·"]
    g = media.glyph_grid(list("abc"), [0.0, 0.5, 1.0], width=2, cell=(10, 16))
    assert g.shape == (2 * 16, 2 * 10, 4) and g[..., 3].max() > 0.5 and g[16:, 10:, 3].max() == 0  # 3 glyphs, 1 empty


def test_media_imports_nothing_of_ours():
    tree = ast.parse(SRC.read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not relative and not [m for m in imported if m.startswith("sparse_transformer")]
