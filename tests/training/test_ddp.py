"""Two CPU processes (gloo): Lightning's own launcher and torchrun.

With 2 ranks of batch 4 the ranks see different windows whose union is, step by step, the batch
of 8 one process sees, so the weights match a 1-process run to float rounding. A nan loss on one
rank skips that step on both (the other rank's loss was finite), with no hang. Rank 0 alone names
the run folder and writes its files; SIGTERM stops both ranks after the same step and the run
resumes exactly.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from sparse_transformer.training.fault import SIGTERM_EXIT
from tests import fault_run as fr

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=4", "model.dropout=0",
       "trainer.max_steps=6"]
NAN_ON_RANK_1 = {"ST_HOOK_NAN": "1:2"}  # rank 1's loss is nan at global step 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def ddp_run(data, tmp_path_factory):
    """2 processes started by Lightning, no run_dir: (result, run folder, traces, cwd)."""
    cwd = tmp_path_factory.mktemp("cwd")
    trace = tmp_path_factory.mktemp("trace")
    res = fr.ok(fr.train(data, *DDP, hooks={**NAN_ON_RANK_1, "ST_HOOK_TRACE": trace}, cwd=cwd))
    runs = list((cwd / "runs" / "default").iterdir())
    assert len(runs) == 1, runs  # named once, by rank 0
    traces = {r: [json.loads(x) for x in (trace / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    return res, runs[0], traces


def _one_process(data, tmp_path, monkeypatch):
    """The same run in one process with batch 8 (and the nan at step 2): windows seen per step."""
    from sparse_transformer.training.module import SparseTransformerLM
    from sparse_transformer.cli.train import main

    seen: dict = {}
    orig = SparseTransformerLM._nll

    def nll(self, batch):
        n, c = orig(self, batch)
        if self.training and self._trainer is not None:
            step = self.trainer.global_step
            seen[step] = sorted(map(tuple, batch[0][:, :8].tolist()))
            if step == 2:
                n = n * float("nan")
        return n, c

    monkeypatch.setattr(SparseTransformerLM, "_nll", nll)
    args = [a for a in fr.TINY if not a.startswith("imports")]
    main([*args, f"data.cache_dir={data}", f"run_dir={tmp_path}/one", "trainer.accelerator=cpu",
          "model.dropout=0", "trainer.max_steps=6", "data.batch_size=8"])
    return tmp_path / "one", seen


@pytest.mark.slow
def test_two_processes_match_one_process_at_equal_global_batch(data, ddp_run, tmp_path, monkeypatch):
    res, run, traces = ddp_run
    assert res.stdout.count("run folder:") == 2  # rank 0's two lines; rank 1 prints none
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "summary.json", "metrics.csv", "checkpoints"}
    one, seen = _one_process(data, tmp_path, monkeypatch)
    t0, t1 = traces[0], traces[1]
    assert [t["step"] for t in t0] == [t["step"] for t in t1] == list(range(6))
    for a, b in zip(t0, t1):
        assert not set(map(tuple, a["first"])) & set(map(tuple, b["first"]))  # the ranks' windows differ
        assert sorted(map(tuple, a["first"] + b["first"])) == seen[a["step"]]  # together: one process's batch
    # step 2 was skipped on rank 0 too, though its own loss was finite; train/loss is the mean over
    # ranks (the global batch's loss), so it shows rank 1's nan there and only there
    loss, skipped = fr.curve(run), fr.curve(run, "train/skipped_steps")
    assert not math.isfinite(loss[2]) and all(math.isfinite(loss[s]) for s in (0, 1, 3, 4, 5))
    assert skipped[1] == 0 and skipped[5] == 1
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(one / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    assert all(int(s["step"]) == 5 for s in a["optimizer_states"][0]["state"].values())
    for k, v in a["state_dict"].items():
        assert torch.allclose(v, b["state_dict"][k], rtol=0, atol=1e-5), k
    assert sum((v - b["state_dict"][k]).abs().sum() for k, v in a["state_dict"].items()) > 0  # trained apart
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (run, one))
    assert abs(s1["val_bpd_end"] - s2["val_bpd_end"]) < 1e-4  # validation windows split over the ranks, each once


@pytest.mark.slow
def test_sigterm_stops_both_ranks_after_the_same_step_and_the_run_resumes_exactly(data, ddp_run, tmp_path):
    _, reference, _ = ddp_run
    run, mark = tmp_path / "run", tmp_path / "mark"
    proc = fr.start(data, *DDP, run=run, hooks={**NAN_ON_RANK_1, "ST_HOOK_BLOCK_AT": 3, "ST_HOOK_MARK": mark})
    fr.wait_for(mark, proc)
    proc.send_signal(signal.SIGTERM)  # to rank 0, which passes it on to the rank it started
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == SIGTERM_EXIT, err[-3000:]
    assert "stopped by SIGTERM at step 4" in err
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and len(ckpt["callbacks"]["ResumeState"]["rng"]) == 2  # both ranks' states
    fr.ok(fr.train(data, *DDP, "resume=last", run=run))
    assert fr.max_diff(fr.curve(reference), fr.curve(run)) <= 1e-6
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.allclose(v, b[k], rtol=0, atol=1e-6) for k, v in a.items())


@pytest.mark.slow
def test_under_ddp_the_ranks_agree_on_sigterm_every_log_every_n_steps(data, tmp_path):
    """The agreement (an all-reduce read on the host) is made every trainer.log_every_n_steps (3)
    steps, not every step: a SIGTERM during step 4 stops both ranks after step 6."""
    run, mark = tmp_path / "run", tmp_path / "mark"
    proc = fr.start(data, *DDP, "trainer.log_every_n_steps=3", "trainer.max_steps=12", run=run,
                    hooks={"ST_HOOK_BLOCK_AT": 4, "ST_HOOK_MARK": mark})
    fr.wait_for(mark, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == SIGTERM_EXIT, err[-3000:]
    assert "stopped by SIGTERM at step 6" in err
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6 and len(ckpt["callbacks"]["ResumeState"]["rng"]) == 2


@pytest.mark.slow
def test_torchrun_ranks_derive_the_same_run_folder(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "sparse_transformer.train", *fr.command(data, *DDP, "trainer.max_steps=2")[3:]]
    res = subprocess.run(cmd, env=fr.env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "runs" / "default").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("torchrun-") and len(runs[0].name) == len("torchrun-") + 8
    assert (runs[0] / "config.yaml").is_file() and (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert res.stdout.count("run folder:") == 2
