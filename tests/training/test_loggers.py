"""W&B logging, offline: where runs go, and what a run folder holds afterwards."""

import collections
import json
import struct
import time
from pathlib import Path

import pytest
import yaml

from sparse_transformer.training.callbacks import wandb_mode as wm
from sparse_transformer.config import load_config

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8",
        "data.batch_size=4", "trainer.enable_progress_bar=false", "data.val_windows=4", "optim.warmup_steps=2"]


def test_wandb_is_the_default_logger_where_it_is_installed(monkeypatch):
    cfg, _ = load_config([])
    assert cfg.logger.kind == "wandb"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg, _ = load_config([])
    assert cfg.logger.kind == "csv"


def test_wandb_goes_offline_without_a_key_or_a_network(monkeypatch):
    monkeypatch.setattr(wm, "_netrc_has", lambda host: False)
    monkeypatch.setattr(wm, "_reachable", lambda host, port, timeout=3.0: host == "api.wandb.ai")
    assert wm.wandb_mode({}) == ("offline", "no W&B API key (wandb login or WANDB_API_KEY)")
    assert wm.wandb_mode({"WANDB_API_KEY": "k"})[0] == "online"
    assert wm.wandb_mode({"WANDB_API_KEY": "k", "WANDB_BASE_URL": "https://wandb.example.org"}) == \
        ("offline", "wandb.example.org is unreachable")
    assert wm.wandb_mode({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}) == ("disabled", "WANDB_MODE")
    assert wm.wandb_mode({"WANDB_MODE": "dryrun"})[0] == "offline"
    assert wm.wandb_mode({"WANDB_MODE": "online"})[0] == "online"  # the user's word wins


def read_wandb_log(path) -> list:
    """The records of an offline run's transaction log (``run-<id>.wandb``).

    Written by hand: wandb >= 0.2x writes it from its Go core and ships no Python reader. The format
    is a 7-byte header (":W&B", magic, version) and LevelDB's log format: 32 KiB blocks of records
    (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last), each payload a protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
    return records


def test_run_folder_holds_the_logged_metrics_and_media(tmp_path, monkeypatch):
    from sparse_transformer.cli.train import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    summary = main(TINY + [f"run_dir={run}", f"data.cache_dir={tmp_path}/data", "trainer.max_steps=6",
                           "trainer.log_every_n_steps=1", "callbacks.samples.every_n_steps=3", "callbacks.samples.count=2",
                           "callbacks.samples.length=8", "callbacks.throughput.window=2", "callbacks.throughput.warmup=2", "callbacks.throughput.peak_flops=1e12",
                           "callbacks.attention_maps.queries=[10,63]", "logger.log_model=true", "logger.tags=[t1]"])
    # the run folder, readable without W&B
    assert {"train/bpd", "train/loss", "val/bpd", "lr-AdamW/pg1", "train/device/items_per_sec",
            "train/device/mfu"} <= set(summary["metrics"])
    m = summary["metrics"]
    assert m["train/items_per_sec"] == m["train/device/items_per_sec"] > 0  # all devices: one here
    assert summary["metrics"]["val/bpd"] == summary["val_bpd_end"] < 8.0
    assert json.loads((run / "summary.json").read_text())["metrics"] == summary["metrics"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000003.txt", "step-000006.txt"]
    assert "===== sample 1 =====" in (run / "samples" / "step-000006.txt").read_text()
    assert sorted(p.name for p in (run / "attention").iterdir()) == [
        "step-000000-q10.png", "step-000000-q63.png", "step-000006-q10.png", "step-000006-q63.png"]
    # the W&B run, offline, in the run folder
    (wdir,) = (run / "wandb").glob("offline-run-*")
    for _ in range(40):  # wandb's core may still be flushing the log when finish() returns
        records = read_wandb_log(next(wdir.glob("run-*.wandb")))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.5)
    kinds = collections.Counter(r.WhichOneof("record_type") for r in records)
    assert kinds["run"] == 1 and kinds["exit"] == 1
    (rrun,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert rrun.project == "sparse-transformer" and rrun.display_name == "run" and list(rrun.tags) == ["t1"]
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    keys = set().union(*history)
    for key in ("train/bpd", "val/bpd", "lr-AdamW/pg1", "train/device/items_per_sec", "train/device/flops_per_sec",
                "train/device/mfu", "trainer/global_step", "samples/text/_type", "attention/q10/_type"):
        assert key in keys, key
    mfu = [float(h["train/device/mfu"]) for h in history if "train/device/mfu" in h]
    tok = [float(h["train/device/items_per_sec"]) for h in history if "train/device/items_per_sec" in h]
    fps = [float(h["train/device/flops_per_sec"]) for h in history if "train/device/flops_per_sec" in h]
    assert mfu and all(m > 0 for m in mfu) and fps[-1] / 1e12 == pytest.approx(mfu[-1])
    assert fps[-1] / tok[-1] > 6 * 30_000  # FLOPs per token: at least 6 N
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    assert config["optim"]["lr"] == 2e-3 and config["model"]["n_layer"] == 2 and config["shape"] == [64]
    assert "config" not in config  # the resolved config sits at the top level, as sweep parameters name it
    assert config["model"] == yaml.safe_load((run / "config.yaml").read_text())["model"]
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert any(a.type == "model" and [m.path for m in a.manifest.contents] == ["model.ckpt"] for a in artifacts)
    media = {p.relative_to(wdir / "files" / "media").parts[:2] for p in (wdir / "files" / "media").rglob("*.*")}
    assert {("images", "attention"), ("table", "samples")} <= media
