"""Audio as 8-bit mu-law tokens (vocabulary 256): mono, ``data.sample_rate`` (12 kHz, as in the
paper), one stream per split cut into windows of seq_len like text.

Decoding is this project's own (``decode.py``; ``datasets``' ``Audio`` decodes through torchcodec
and FFmpeg, which the GPU machine lacks). Hub datasets are read with ``Audio(decode=False)`` and
their bytes decoded the same way.

Sources (``data.source``):
- ``bach``: the Bach chorales that ``music21`` ships, rendered to audio (``music.py``);
- ``local``: ``data.path`` a folder (or one file) of audio files. Split subfolders
  train/ validation/ test/ are used when present, and so is MAESTRO's ``maestro-v*.csv`` split
  column; otherwise whole tracks are assigned to splits by ``data.splits`` (a fixed permutation),
  so no piece is in two splits;
- a hub name (or a saved/parquet dataset folder): its first ``Audio`` column. Splits are taken by
  name only: ``train``, ``validation`` and ``data.test_split``; a missing validation or test split
  is held out of ``train`` (whole records, by ``data.splits``). A source without a ``train`` split
  has all its records, whatever their splits, divided by ``data.splits`` the same way, so no
  record is in two splits.
``data.max_bytes`` caps each split at its ``data.splits`` share of the cap.

``datasets`` is imported where hub records are read (heavy; local files and bach need none of it).
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import hub, music
from .base import TokenDataModule
from .decode import audio_tokens, decode_audio, read_wav, resample  # noqa: F401  (also their old import path)
from .store import SPLITS, DataError, StoreWriter

SPLIT_SEED = 1234  # fixed track permutation: the same held-out tracks for every cfg.seed
AUDIO_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".opus"}


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


def audio_records(ds, source: str):
    """A split with only its audio column, named ``audio``, as undecoded ``{bytes, path}`` records."""
    import datasets

    col = hub.column(ds, ("Audio",), ("audio",), source, "audio")
    ds = ds.select_columns([col]).cast_column(col, datasets.Audio(decode=False))
    return ds.rename_column(col, "audio") if col != "audio" else ds


def hub_splits(dd: dict, test_split: str, fractions, source: str) -> dict:
    """{train, validation, test: records} of a hub DatasetDict, by split name only (see the module's
    docstring); what is held out is whole records through ``assign_tracks``, so splits are disjoint."""
    import datasets

    named = {"train": "train" if "train" in dd else None,
             "test": test_split if test_split in dd and test_split != "train" else None}
    named["validation"] = "validation" if "validation" in dd and named["test"] != "validation" else None
    if named["train"] is None:  # every record, whatever its split, divided by data.splits
        pool = datasets.concatenate_datasets([audio_records(ds, source) for ds in dd.values()])
        plan = assign_tracks(list(range(len(pool))), fractions)
        return {s: pool.select(plan[s]) for s in SPLITS}
    out = {s: audio_records(dd[name], source) for s, name in named.items() if name is not None}
    missing = [s for s in ("validation", "test") if s not in out]
    if missing:  # whole records of the train split held out by data.splits
        train, plan = out["train"], assign_tracks(list(range(len(out["train"]))), fractions)
        out.update({s: train.select(plan[s]) for s in missing})
        out["train"] = train.select(plan["train"] + [i for s in ("validation", "test") if s not in missing for i in plan[s]])
    return {s: out[s] for s in SPLITS}


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
            plan = assign_tracks(music.bach_tracks(), d.splits)
            with music.Renderer(d.sample_rate, d.synth) as render:
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
        d = self.cfg.data
        for split, ds in hub_splits(dd, d.test_split, d.splits, source).items():
            fn = partial(_record_tokens, "audio", d.sample_rate, source)
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
        return audio_records(ds, source), partial(_record_tokens, "audio", self.cfg.data.sample_rate, source)
