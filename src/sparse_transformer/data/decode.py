"""Audio files to samples and tokens: this project's own WAV reader (PCM 8/16/24/32-bit, float
32/64, WAVE_FORMAT_EXTENSIBLE), other formats (FLAC, OGG, MP3) through ``soundfile`` where it is
installed, band-limited resampling, and mu-law tokens. Used by the audio DataModule (files, hub
records) and by the bach renderer (FluidSynth's WAV output).

``soundfile`` and ``scipy`` are optional and imported where they are used (a fallback exists for each).
"""

from __future__ import annotations

import io
import struct
from math import gcd

import numpy as np

from ..media import mulaw_encode
from .store import DataError


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
