"""The ``bach`` audio corpus: the Bach chorales that ``music21`` ships (about 410 scores), rendered to
mono audio at ``data.sample_rate`` and mu-law encoded.

Each score becomes a list of notes (start s, duration s, MIDI pitch) at a fixed tempo (the
chorales carry no tempo marks). Two renderers (``data.synth``):
- ``fluidsynth``: the FluidSynth program with a General MIDI soundfont (Debian's
  ``fluid-soundfont-gm``), from a MIDI file written here (church organ, GM program 19);
- ``simple``: this module's additive synthesizer (four organ-like harmonics, attack/release
  envelope), numpy only: what runs where FluidSynth is not installed.
``auto`` takes FluidSynth when the program and a soundfont are found.

``music21`` is optional (``make data-deps``) and slow to import: it is imported where scores are read.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import struct
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..media import mulaw_encode
from .decode import read_wav
from .store import DataError

BPM = 80  # quarter notes per minute: not in the scores; a common chorale tempo (chosen)
ORGAN = 19  # General MIDI program 20 (0-based 19): church organ
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
              "/usr/share/soundfonts/FluidR3_GM.sf2", "/usr/share/soundfonts/default.sf2")
SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")  # not .rntxt: roman-numeral analyses, not the notes


def bach_tracks() -> list[str]:
    try:
        from music21 import corpus
    except ImportError:
        raise DataError("data.source=bach needs the music21 package (pip install music21, or make data-deps)") from None
    paths = sorted(str(p) for p in corpus.getComposer("bach") if Path(p).suffix in SCORE_SUFFIXES)
    if not paths:
        raise DataError("music21's corpus has no Bach scores here; reinstall music21 (pip install --force-reinstall music21)")
    return paths


def soundfont() -> str | None:
    for p in [os.environ.get("SOUNDFONT", "")] + list(SOUNDFONTS):
        if p and Path(p).is_file():
            return p
    return None


def resolve_synth(synth: str) -> str:
    if synth == "auto":
        return "fluidsynth" if shutil.which("fluidsynth") and soundfont() else "simple"
    if synth == "fluidsynth" and not (shutil.which("fluidsynth") and soundfont()):
        raise DataError("data.synth=fluidsynth needs the fluidsynth program and a GM soundfont "
                        "(apt-get install fluidsynth fluid-soundfont-gm, or SOUNDFONT=<file.sf2>); or use data.synth=simple")
    return synth


def score_notes(path: str, bpm: float = BPM) -> np.ndarray:
    """(k, 3) float64: start seconds, duration seconds, MIDI pitch of every sounding note."""
    from music21 import converter

    try:
        score = converter.parse(path).stripTies(inPlace=False)
    except Exception as e:
        raise DataError(f"score {path} could not be parsed by music21 ({type(e).__name__}: {str(e)[:120]})") from None
    spq = 60.0 / bpm
    rows = [(float(n.offset) * spq, float(n.quarterLength) * spq, float(p.ps))
            for n in score.flatten().notes if n.quarterLength > 0 for p in n.pitches]
    if not rows:
        raise DataError(f"score {path} has no notes")
    return np.asarray(sorted(rows), dtype=np.float64)


def simple_synth(notes: np.ndarray, sr: int, attack: float = 0.02, release: float = 0.08) -> np.ndarray:
    """Additive synthesis: harmonics 1-4 (amplitudes 1, 1/2, 1/3, 1/4) under a linear attack/release envelope."""
    end = notes[:, 0] + notes[:, 1]
    out = np.zeros(int(np.ceil((end.max() + release) * sr)) + 1, dtype=np.float64)
    for start, dur, pitch in notes:
        f = 440.0 * 2 ** ((pitch - 69) / 12)
        n = int((dur + release) * sr)
        t = np.arange(n) / sr
        wave = sum(np.sin(2 * np.pi * h * f * t) / h for h in range(1, 5) if h * f < sr / 2)
        env = np.minimum(1.0, t / attack) * np.clip((dur + release - t) / release, 0.0, 1.0)
        i = int(start * sr)
        out[i : i + n] += 0.1 * wave * env
    peak = np.abs(out).max()
    return (out * min(1.0, 0.95 / peak) if peak > 0 else out).astype(np.float32)


def write_midi(notes: np.ndarray, path: str | Path, bpm: float = BPM, program: int = ORGAN) -> None:
    """A format-0 MIDI file of the notes (a few lines: avoids another dependency)."""
    tpq = 480
    ticks = lambda s: int(round(s * bpm / 60 * tpq))  # noqa: E731
    events = []  # (tick, order, bytes): note-offs before note-ons at the same tick
    for start, dur, pitch in notes:
        p = int(round(pitch))
        events.append((ticks(start), 1, bytes([0x90, p, 80])))
        events.append((ticks(start + dur), 0, bytes([0x80, p, 0])))
    events.sort(key=lambda e: (e[0], e[1]))

    def vlq(v: int) -> bytes:
        out = [v & 0x7F]
        while v > 0x7F:
            v >>= 7
            out.append(0x80 | (v & 0x7F))
        return bytes(reversed(out))

    us = int(60e6 / bpm)
    track = bytearray(b"\x00\xff\x51\x03" + us.to_bytes(3, "big") + bytes([0, 0xC0, program]))
    last = 0
    for t, _, ev in events:
        track += vlq(t - last) + ev
        last = t
    track += b"\x00\xff\x2f\x00"
    Path(path).write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(track)) + track)


def fluidsynth_render(notes: np.ndarray, sr: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
        write_midi(notes, mid)
        r = subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(sr), "-T", "wav", "-O", "s16",
                            "-F", str(wav), soundfont(), str(mid)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or not wav.exists():
            raise DataError(f"fluidsynth failed ({r.returncode}): {(r.stderr or r.stdout).strip()[:200]}; try data.synth=simple")
        x, rate = read_wav(wav.read_bytes(), str(wav))
    if rate != sr:
        raise DataError(f"fluidsynth wrote {rate} Hz audio, not the {sr} Hz asked; try data.synth=simple")
    return x.mean(axis=1)


def render_one(path: str, sr: int, synth: str) -> np.ndarray:
    notes = score_notes(path)
    x = fluidsynth_render(notes, sr) if synth == "fluidsynth" else simple_synth(notes, sr)
    peak = float(np.abs(x).max())
    return mulaw_encode(x * (0.9 / peak) if peak > 0 else x)  # every chorale at the same peak level


class Renderer:
    """Renders scores to mu-law tokens on every core, one process pool for all splits (starting
    one costs music21's import in each worker)::

        with Renderer(sr, synth) as render:
            for tokens in render(paths): ...
    """

    def __init__(self, sr: int, synth: str):
        self.fn = partial(render_one, sr=sr, synth=resolve_synth(synth))
        self.synth = self.fn.keywords["synth"]
        self.workers = os.cpu_count() or 1
        self.pool = None

    def __enter__(self) -> "Renderer":
        if self.workers > 1:
            self.pool = mp.get_context("spawn").Pool(self.workers)  # spawn: no forked copies of torch/Lightning state
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()

    def __call__(self, paths: list[str], desc: str = "bach"):
        """Each score's tokens, in order; in batches so that stopping early (data.max_bytes) wastes little."""
        bar = tqdm(total=len(paths), desc=f"{desc} ({self.synth})", unit="score", mininterval=1.0)
        try:
            step = 2 * self.workers
            for i in range(0, len(paths), step):
                batch = paths[i : i + step]
                for tokens in (self.pool.map(self.fn, batch) if self.pool else map(self.fn, batch)):
                    yield tokens
                    bar.update()
        finally:
            bar.close()
