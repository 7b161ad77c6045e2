"""Run folders (cli/common.py, cli/train.py): a folder named from the clock is made exclusively at
the start, so runs started in the same second never share one; a folder holding a run is not
reused without resume (or overwrite=true); the ranks of a job agree on one folder.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparse_transformer.cli import common
from sparse_transformer.config import load_config
from tests import fault_run as fr

STAMP = "20990101-000000"  # every process reads the same second off the clock


def _clear_launch_env(monkeypatch) -> None:
    for k in ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "WORLD_SIZE",
              "TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", common.RUN_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(common, "_named_here", None)


def _start(cwd: str, barrier, queue) -> None:
    """One process: wait for the others, name its run folder, write its pid into it (as a run writes
    its config), report the folder."""
    os.chdir(cwd)
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_NTASKS", common.RUN_ENV):
        os.environ.pop(k, None)
    common._named_here = None
    common.time.strftime = lambda fmt: STAMP
    cfg, _ = load_config(["exp=default"])
    barrier.wait()
    try:
        out = common.run_dir(cfg)
        with open(out / "owner.txt", "a") as f:
            f.write(f"{os.getpid()}\n")
        queue.put(str(out))
    except Exception as e:  # reported, not lost in the child
        queue.put(f"error: {type(e).__name__}: {e}")


def test_ten_processes_started_in_the_same_second_get_ten_folders(tmp_path):
    ctx = mp.get_context("fork")
    n = 10
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_start, args=(str(tmp_path), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert not [g for g in got if g.startswith("error")], got
    base = Path("runs") / "default"
    assert sorted(got) == sorted(str(base / (STAMP if k == 1 else f"{STAMP}-{k}")) for k in range(1, n + 1))
    for folder in got:  # each folder was made for one process only
        assert len((tmp_path / folder / "owner.txt").read_text().split()) == 1


def test_the_stamped_folder_exists_as_soon_as_it_is_named_and_rank_0_passes_it_on(tmp_path, monkeypatch):
    _clear_launch_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.time, "strftime", lambda fmt: STAMP)
    (tmp_path / "runs" / "default" / STAMP).mkdir(parents=True)  # another run took this second
    cfg, _ = load_config(["exp=default"])
    out = common.run_dir(cfg)
    assert out == Path("runs/default") / f"{STAMP}-2" and out.is_dir() and list(out.iterdir()) == []
    assert os.environ[common.RUN_ENV] == str(out) and common.made_here(out)
    # the processes Lightning starts (LOCAL_RANK > 0) read it from the environment and make nothing
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert common.run_dir(cfg) == out
    assert sorted(p.name for p in (tmp_path / "runs" / "default").iterdir()) == [STAMP, f"{STAMP}-2"]
    # a later run in the same process (rank 0) names a new one
    monkeypatch.delenv("LOCAL_RANK")
    assert common.run_dir(cfg) == Path("runs/default") / f"{STAMP}-3"


def test_a_file_in_the_way_of_the_stamped_folder_is_an_error_not_a_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(common.time, "strftime", lambda fmt: STAMP)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / STAMP).write_text("a file where the folder would go")
    with pytest.raises(FileExistsError):
        common.stamped_folder(tmp_path / "a", create=True)
    (tmp_path / "runs").write_text("a file above it")
    with pytest.raises(NotADirectoryError):
        common.stamped_folder(tmp_path / "runs" / "default", create=True)


def test_job_id_folders_and_an_explicit_run_dir_with_resume_auto_are_reused(tmp_path, monkeypatch):
    _clear_launch_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    cfg, _ = load_config(["exp=default"])
    assert common.run_dir(cfg) == common.run_dir(cfg) == Path("runs/default/slurm-77")
    assert not (tmp_path / "runs").exists()  # made by the run's first write, as before: every rank derives it
    cfg, _ = load_config(["exp=default", f"run_dir={tmp_path}/r", "resume=auto"])
    assert common.run_dir(cfg) == tmp_path / "r"


# ------------------------------------------------------------------------------------------------
# A folder holding a run
# ------------------------------------------------------------------------------------------------
def _tiny(tmp_path, *extra):
    return [a for a in fr.TINY if not a.startswith("imports")] + [
        f"data.cache_dir={tmp_path}/data", f"run_dir={tmp_path}/run", "trainer.max_steps=3",
        "trainer.checkpoint_every_n_steps=1", "optim.warmup_steps=1", *extra]


def test_a_finished_run_is_not_overwritten_unless_asked(tmp_path, capsys):
    from sparse_transformer.cli.train import main

    main(_tiny(tmp_path, "seed=1"))
    run = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert {p.name for p in before} >= {"config.yaml", "summary.json", "metrics.csv", "last.ckpt", "previous.ckpt"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(_tiny(tmp_path, "seed=2"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: run_dir={run} holds a run (config.yaml, summary.json, metrics.csv, "
                             f"checkpoints/last.ckpt") and "resume=last" in err[0] and "overwrite=true" in err[0]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # untouched

    summary = main(_tiny(tmp_path, "seed=2", "overwrite=true", "trainer.max_steps=2"))
    assert summary["steps"] == 2
    assert "seed: 2" in (run / "config.yaml").read_text()
    kept = {p.name: torch.load(p, weights_only=True)["global_step"] for p in (run / "checkpoints").glob("*.ckpt")}
    assert kept["last.ckpt"] == 2 and kept["previous.ckpt"] == 1  # nothing of the replaced run's
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_only_rank_0_looks_for_a_run_in_the_folder(tmp_path, monkeypatch):
    """The processes Lightning starts run the command again after rank 0 wrote config.yaml."""
    from sparse_transformer.cli.train import check_not_a_run, prepare
    from sparse_transformer.training import preflight

    _clear_launch_env(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("exp: default\n")
    cfg, _ = load_config(_tiny(tmp_path))
    with pytest.raises(Exception, match="holds a run"):
        check_not_a_run(cfg, run)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert prepare(cfg, preflight) == (run, None)


# ------------------------------------------------------------------------------------------------
# The real command, started three times in the same second
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_three_real_runs_started_in_the_same_second_keep_their_own_folders(tmp_path):
    data = tmp_path / "data"
    fr.ok(fr.train(data, "trainer.max_steps=1", run=tmp_path / "warm"))  # the data prepared once
    cmd = [*fr.command(data, "trainer.max_steps=2", "trainer.checkpoint_every_n_steps=1"), "imports=[tests.fault_hooks]"]
    env = fr.env({"ST_HOOK_STAMP": STAMP, "ST_HOOK_START_AT": str(time.time() + 8)})
    procs = [subprocess.Popen([*cmd, f"seed={k}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    folders = sorted((tmp_path / "runs" / "default").iterdir())
    assert [f.name for f in folders] == [STAMP, f"{STAMP}-2", f"{STAMP}-3"]
    seeds = set()
    for f in folders:
        seeds.add(next(line for line in (f / "config.yaml").read_text().splitlines() if line.startswith("seed:")))
        assert torch.load(f / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
        assert set(fr.curve(f)) == {0, 1}  # its own metrics, two steps
    assert seeds == {"seed: 0", "seed: 1", "seed: 2"}  # each run's config is its own
