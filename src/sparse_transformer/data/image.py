"""Images as uint8 sequences: raster order, channels interleaved (r, g, b of pixel 0, then pixel 1,
...), n = H*W*C, one sequence per image; ``data.shape`` = [H, W, C] goes to the model's factorized
positional embeddings (row, column, channel).

Sources (``data.source``):
- a hub name (``uoft-cs/cifar10``, ``benjamin-paine/imagenet-1k-64x64``) or ``local`` with
  ``data.path`` at a saved/parquet dataset folder: the first ``Image`` column, read with
  ``Image(decode=False)`` and decoded here, so a bad record's error names it;
- ``local`` with ``data.path`` at idx files (MNIST / Fashion-MNIST: ``train-images-idx3-ubyte.gz``,
  ``t10k-images-idx3-ubyte.gz``); ``datasets`` has no idx reader, so it is parsed here;
- ``local`` with ``data.path`` at a folder of image files (``datasets``' imagefolder: split
  subfolders train/ validation/ test/ if present).
Images must already be H x W (a wrong size is an error, not silently resized); grey/RGB/RGBA
modes are converted to C channels.

Splits: the source's ``data.test_split`` is the test set and its ``validation`` split the
validation set; what is missing is held out of the train split by a fixed permutation:
``data.val_size`` images for validation (cifar10: 2,000 of 50,000), else ``data.splits`` fractions.

``datasets`` is imported where hub or folder datasets are read (heavy; idx files need none of it).
"""

from __future__ import annotations

import gzip
import io
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from . import hub
from .base import TokenDataModule
from .store import SPLITS, DataError, StoreWriter

SPLIT_SEED = 1234  # the held-out permutation: fixed, so every run (any cfg.seed) compares on the same images
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def decode_image(data: bytes | None, path: str | None, shape, name: str) -> np.ndarray:
    """One image's bytes (or file) -> (H*W*C,) uint8 in raster order, channels interleaved."""
    H, W, C = (int(x) for x in shape)
    try:
        im = Image.open(io.BytesIO(data) if data is not None else path)
        im.load()
    except Exception as e:
        raise DataError(f"image {name} could not be decoded ({type(e).__name__}: {str(e)[:120]}); "
                        f"replace or remove it") from None
    if im.size != (W, H):
        raise DataError(f"image {name} is {im.size[0]}x{im.size[1]} (width x height), but data.shape={[H, W, C]} "
                        f"needs {W}x{H}; resize the images or change data.shape and data.seq_len")
    if im.mode != MODES[C]:
        im = im.convert(MODES[C])
    return np.asarray(im, dtype=np.uint8).reshape(-1)


def _record_tokens(col: str, shape, source: str, record: dict) -> np.ndarray:
    v = record[col]
    return decode_image(v.get("bytes"), v.get("path"), shape, f"{source} record {v.get('path') or '?'}")


# ---------------------------------------------------------------------------------------------
# idx files (MNIST's format): magic 0x0000080D (uint8, D dims), then D big-endian uint32 sizes
# ---------------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"idx file {path} could not be read ({e}); it should be an (optionally gzipped) idx file") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"idx file {path} does not start with an idx uint8 header (00 00 08 D)")
    dims = raw[3]
    sizes = np.frombuffer(raw[4 : 4 + 4 * dims], dtype=">u4").astype(np.int64)
    need = int(np.prod(sizes))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if len(data) != need:
        raise DataError(f"idx file {path} holds {len(data)} bytes after its header but its sizes {list(sizes)} need {need}")
    return data.reshape(*sizes)


def idx_files(path: Path) -> dict[str, Path]:
    files = sorted(path.glob("*images-idx3-ubyte*")) if path.is_dir() else [path]
    out = {}
    for f in files:
        split = "test" if f.name.startswith(("t10k", "test")) else "train"
        out[split] = f
    return out


# ---------------------------------------------------------------------------------------------
def held_out(n: int, k_val: int, k_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-permutation split of n train-split indices into (train, validation, test), each sorted."""
    if k_val + k_test >= n:
        raise DataError(f"the train split has {n} images, too few to hold out {k_val} for validation and {k_test} "
                        f"for test; lower data.val_size or change data.splits")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[k_val + k_test :]), np.sort(perm[:k_val]), np.sort(perm[k_val : k_val + k_test])


def plan_splits(counts: dict[str, int], cfg) -> dict[str, tuple[str, np.ndarray]]:
    """{target split: (source split, indices)} following the module's rules."""
    d = cfg.data
    train_src = "train" if "train" in counts else next(iter(counts))
    plan: dict = {}
    if d.test_split in counts and d.test_split != train_src:
        plan["test"] = (d.test_split, np.arange(counts[d.test_split]))
    if "validation" in counts and "validation" not in (train_src, d.test_split) and d.val_size is None:
        plan["validation"] = ("validation", np.arange(counts["validation"]))
    n = counts[train_src]
    f_train, f_val, f_test = (float(x) for x in d.splits)
    k_val = k_test = 0
    if "validation" not in plan:
        k_val = d.val_size if d.val_size is not None else round(n * f_val / max(f_train + f_val + (0 if "test" in plan else f_test), 1e-12))
        k_val = max(1, k_val)
    if "test" not in plan:
        k_test = round(n * f_test / max(f_train + f_val + f_test, 1e-12))
    tr, va, te = held_out(n, k_val, k_test)
    plan["train"] = (train_src, tr)
    plan.setdefault("validation", (train_src, va))
    plan.setdefault("test", (train_src, te))
    return plan


def cap(plan: dict, n: int, max_bytes: int | None) -> dict:
    """Shrink every split in proportion so all images together hold at most max_bytes tokens."""
    total = sum(len(ix) for _, ix in plan.values()) * n
    if not max_bytes or total <= max_bytes:
        return plan
    r = max_bytes / total
    return {k: (src, ix[: max(1 if len(ix) else 0, int(len(ix) * r))]) for k, (src, ix) in plan.items()}


class ImageDataModule(TokenDataModule):
    modality = "image"
    kind = "items"
    local_hint = "folder of images, idx files, or a saved dataset"

    def key_fields(self) -> dict:
        d = self.cfg.data
        return {**super().key_fields(), "shape": list(d.shape), "val_size": d.val_size, "test_split": d.test_split}

    def item_len(self) -> int:
        return int(np.prod(self.shape))

    def build(self, w: StoreWriter) -> None:
        d = self.cfg.data
        if d.source == "local":
            if not d.path:
                raise DataError("data.source=local needs data.path=<folder of images, idx files, or a saved dataset>")
            p = Path(d.path)
            if not p.exists():
                raise DataError(f"data.path={p} does not exist; point it at a folder of images, idx files or a saved dataset")
            if idx_files(p) and any("idx3" in f.name for f in idx_files(p).values()):
                return self._build_idx(w, p)
            if p.is_dir() and hub.is_dataset_dir(p):
                return self._build_datasets(w, hub.load(str(p)), str(p))
            if p.is_dir() and any(x.suffix.lower() in IMAGE_SUFFIXES for x in p.rglob("*")):
                import datasets

                try:
                    dd = datasets.load_dataset("imagefolder", data_dir=str(p), drop_labels=True)
                except Exception as e:
                    raise DataError(f"data.path={p}: datasets could not read the image folder ({type(e).__name__}: {str(e)[:150]})") from None
                dd = {hub.ALIASES.get(k, k): v for k, v in dd.items()}
                return self._build_datasets(w, dd, str(p))
            raise DataError(f"data.path={p} holds no images, idx files or dataset files; expected *.png/*.jpg, "
                            f"*-images-idx3-ubyte[.gz] or a saved dataset")
        return self._build_datasets(w, hub.load(d.source, local_hint=self.local_hint), d.source)

    def _build_idx(self, w: StoreWriter, p: Path) -> None:
        H, W, C = self.shape
        arrays = {}
        for split, f in idx_files(p).items():
            a = read_idx(f)
            if a.ndim == 3:
                a = a[..., None]
            if a.ndim != 4 or a.shape[1:] != (H, W, C):
                raise DataError(f"idx file {f} holds images of shape {list(a.shape[1:])}, but data.shape={[H, W, C]}; "
                                f"set data.shape={list(a.shape[1:]) + [1] * (4 - a.ndim)} and data.seq_len to match")
            arrays[split] = a.reshape(len(a), -1)
        plan = cap(plan_splits({k: len(v) for k, v in arrays.items()}, self.cfg), self.item_len(), self.cfg.data.max_bytes)
        for split in SPLITS:
            src, ix = plan[split]
            w.write(split, arrays[src][ix])

    def _build_datasets(self, w: StoreWriter, dd: dict, source: str) -> None:
        import datasets

        plan = cap(plan_splits({k: len(v) for k, v in dd.items()}, self.cfg), self.item_len(), self.cfg.data.max_bytes)
        total = sum(len(ix) for _, ix in plan.values())
        bar = tqdm(total=total, desc=f"decoding {source} images", unit="img", mininterval=1.0)
        for split in SPLITS:
            src, ix = plan[split]
            ds = dd[src]
            col = hub.column(ds, ("Image",), ("img", "image"), source, "image")
            ds = ds.select_columns([col]).cast_column(col, datasets.Image(decode=False))
            batch = []
            for start in range(0, len(ix), 1000):
                sel = ix[start : start + 1000]
                rows = ds.select(sel)[col]
                for i, v in zip(sel, rows):
                    name = f"{source} {src}[{int(i)}]" + (f" ({v['path']})" if v.get("path") else "")
                    batch.append(decode_image(v.get("bytes"), v.get("path"), self.shape, name))
                w.write(split, np.stack(batch))
                batch = []
                bar.update(len(sel))
        bar.close()

    def stream_records(self, ds, source: str):
        import datasets

        col = hub.column(ds, ("Image",), ("img", "image"), source, "image")
        ds = ds.select_columns([col]).cast_column(col, datasets.Image(decode=False))
        return ds, partial(_record_tokens, col, self.shape, source)

    def to_image(self, tokens) -> np.ndarray:
        """A sequence back to an (H, W, C) uint8 image (for samples and tests)."""
        return np.asarray(tokens, dtype=np.uint8).reshape(self.shape)
