"""Fault tolerance: exact resume after SIGKILL, a checkpoint on SIGTERM, non-finite steps skipped,
atomic checkpoint writes, the resumable loader and metrics.csv, and the config checks around them.

The resume tests compare per-step training losses with an uninterrupted run to 1e-6 (float32,
CPU). They use dropout, validation every 6 steps and kills mid-epoch and at an epoch's end: a
resume that dropped the RNG states, or restarted the epoch's data (Lightning's behaviour for a
loader without ``state_dict``), moves the curve by about 1e-3 and 4e-2.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from sparse_transformer.training.fault import SIGTERM_EXIT, AtomicCheckpointIO
from sparse_transformer.training.loggers import RunCSVLogger
from sparse_transformer.config import ConfigError, load_config
from tests import fault_run as fr

RUN = ["model.dropout=0.1", "trainer.checkpoint_every_n_steps=4", "trainer.val_check_interval=6", "trainer.max_steps=24"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    fr.ok(fr.train(data, *RUN, run=run))
    return run


def _ckpt(run):  # weights_only: what training writes is tensors and plain values (RNG states included)
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _loader_position(ckpt) -> int:
    return ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"]


def _same_final_state(a, b) -> None:
    ca, cb = _ckpt(a), _ckpt(b)
    assert ca["global_step"] == cb["global_step"]
    for k, v in ca["state_dict"].items():
        assert torch.allclose(v, cb["state_dict"][k], rtol=0, atol=1e-6), k
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert all(torch.allclose(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-5, atol=1e-12) for i in sa)
    assert ca["lr_schedulers"][0]["last_epoch"] == cb["lr_schedulers"][0]["last_epoch"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reproduces_the_uninterrupted_loss_curve(data, reference, tmp_path):
    run, mark = tmp_path / "run", tmp_path / "mark"
    # killed after step 13 (last checkpoint: step 12, batch 1 of epoch 1), resumed, killed again
    # after step 21 (checkpoint 20, batch 9 of epoch 1), resumed to the end
    for kill_after, saved, resume in ((13, 12, []), (21, 20, ["resume=last"])):
        mark.unlink(missing_ok=True)
        proc = fr.start(data, *RUN, *resume, run=run, hooks={"ST_HOOK_BLOCK_AT": kill_after, "ST_HOOK_MARK": mark})
        fr.wait_for(mark, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        ckpt = _ckpt(run)
        assert ckpt["global_step"] == saved
        assert _loader_position(ckpt) == saved - fr.EPOCH  # mid-epoch: that many batches of epoch 1 done
        assert len(ckpt["callbacks"]["ResumeState"]["rng"]) == 1  # one rank's random states
    res = fr.ok(fr.train(data, *RUN, "resume=last", run=run))
    assert "resuming from" in res.stdout
    ref, got = fr.curve(reference), fr.curve(run)
    assert sorted(got) == list(range(24))
    assert fr.max_diff(ref, got) <= 1e-6
    _same_final_state(reference, run)
    val = fr.curve(run, "val/bpd")  # validations before the kills survive in metrics.csv
    assert {5, 11, 17, 23} <= set(val)


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_and_the_resumed_run_continues_exactly(data, reference, tmp_path):
    run, mark = tmp_path / "run", tmp_path / "mark"
    # SIGTERM during step 10: the step after it (11, the epoch's last batch) is the last one run
    proc = fr.start(data, *RUN, run=run, hooks={"ST_HOOK_BLOCK_AT": 10, "ST_HOOK_MARK": mark})
    fr.wait_for(mark, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == SIGTERM_EXIT, err[-3000:]
    assert f"stopped by SIGTERM at step 11; checkpoint {run}/checkpoints/last.ckpt; continue with resume=last" in err
    ckpt = _ckpt(run)
    assert ckpt["global_step"] == 11 and _loader_position(ckpt) == fr.EPOCH
    fr.ok(fr.train(data, *RUN, "resume=last", run=run))
    assert fr.max_diff(fr.curve(reference), fr.curve(run)) <= 1e-6
    _same_final_state(reference, run)


# ------------------------------------------------------------------------------------------------
def _nan_at(monkeypatch, steps: set):
    from sparse_transformer.training.module import SparseTransformerLM

    orig = SparseTransformerLM._nll

    def nll(self, batch):
        n, c = orig(self, batch)
        if self.training and self._trainer is not None and self.trainer.global_step in steps:
            n = n * float("nan")
        return n, c

    monkeypatch.setattr(SparseTransformerLM, "_nll", nll)


def _tiny(tmp_path, *extra):
    return [a for a in fr.TINY if not a.startswith("imports")] + [
        f"data.cache_dir={tmp_path}/data", f"run_dir={tmp_path}/run", "trainer.max_steps=8", *extra]


def test_a_nonfinite_loss_skips_its_step_and_is_counted(tmp_path, monkeypatch):
    from sparse_transformer.cli.train import main

    _nan_at(monkeypatch, {3, 4})
    summary = main(_tiny(tmp_path, "trainer.max_bad_steps=3"))
    assert summary["steps"] == 8 and summary["metrics"]["train/skipped_steps"] == 2
    ckpt = _ckpt(tmp_path / "run")
    adam = ckpt["optimizer_states"][0]["state"]
    assert all(int(s["step"]) == 6 for s in adam.values())  # two of eight updates skipped
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert ckpt["nonfinite_loss"] == {"skipped_steps": 2, "bad_in_a_row": 0}
    loss, skipped = fr.curve(tmp_path / "run"), fr.curve(tmp_path / "run", "train/skipped_steps")
    assert [k for k, v in loss.items() if math.isnan(v)] == [3, 4] and skipped[2] == 0 and skipped[7] == 2


def test_k_nonfinite_losses_in_a_row_stop_the_run_naming_the_step(tmp_path, monkeypatch, capsys):
    from sparse_transformer.cli.train import main

    _nan_at(monkeypatch, {3, 4, 5})
    with pytest.raises(SystemExit) as e:
        main(_tiny(tmp_path, "trainer.max_bad_steps=3"))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the training loss or gradient norm was nan/inf for 3 steps in a row "
                          "(trainer.max_bad_steps=3), at global steps 3-5 (epoch 0, batches 3-5); every rank skipped them.")


def test_skipped_steps_are_counted_every_log_every_n_steps(tmp_path, monkeypatch, capsys):
    """The host reads the device's skip flags every trainer.log_every_n_steps (4) steps: the count
    lags, the checkpoint and the summary have it exact, and a run of bad steps stops the run at the
    next read, naming the steps it spans."""
    from sparse_transformer.cli.train import main

    _nan_at(monkeypatch, {2, 5})
    summary = main(_tiny(tmp_path, "trainer.max_bad_steps=3", "trainer.log_every_n_steps=4", "trainer.max_steps=10"))
    skipped = fr.curve(tmp_path / "run", "train/skipped_steps")
    assert skipped == {3: 1, 7: 2}  # logged and read at the same steps
    assert summary["skipped_steps"] == 2 and _ckpt(tmp_path / "run")["nonfinite_loss"] == {"skipped_steps": 2, "bad_in_a_row": 0}
    assert all(int(s["step"]) == 8 for s in _ckpt(tmp_path / "run")["optimizer_states"][0]["state"].values())

    _nan_at(monkeypatch, {5, 6, 7, 8})
    with pytest.raises(SystemExit) as e:
        main(_tiny(tmp_path, "trainer.max_bad_steps=3", "trainer.log_every_n_steps=4", "trainer.max_steps=20",
                   "run_dir=" + str(tmp_path / "run2")))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # read at step 7 (steps 5-7 bad): it names the run as far as the read saw it
    assert err.startswith("error: the training loss or gradient norm was nan/inf for 3 steps in a row "
                          "(trainer.max_bad_steps=3), at global steps 5-7 (epoch 0, batches 5-7)")


# ------------------------------------------------------------------------------------------------
def test_an_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"version": 1, "w": torch.arange(5)}, path)

    def dies_half_way(obj, f, *a, **k):
        f.write(b"\0" * 4096)
        raise KeyboardInterrupt  # the write stops half way

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"version": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from sparse_transformer.training import fault
    path, mode = sys.argv[1], sys.argv[2]
    fault.AtomicCheckpointIO().save_checkpoint({"version": 1}, path)
    real = torch.save
    def half_then_hang(obj, f, *a, **k):  # write part of the checkpoint, then wait for the SIGKILL
        f.write(b"PK" + b"x" * 1_000_000); f.flush(); print("half", flush=True); time.sleep(60)
    torch.save = half_then_hang
    if mode == "atomic":
        fault.AtomicCheckpointIO().save_checkpoint({"version": 2}, path)
    else:  # what a plain torch.save(obj, path) does
        with open(path, "wb") as f:
            torch.save({"version": 2}, f)
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["atomic", "plain"])
def test_sigkill_during_a_checkpoint_write(tmp_path, mode):
    """Killed half way through writing version 2: the atomic writer leaves version 1 readable (and
    its next save removes the stale temporary file); the control, a plain write, is corrupt."""
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), mode], env=fr.env(), cwd=fr.ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if mode == "plain":
        with pytest.raises(Exception):
            torch.load(path, weights_only=False)
        return
    assert torch.load(path, weights_only=False)["version"] == 1
    assert len(list(tmp_path.glob(".last.ckpt.tmp-*"))) == 1
    AtomicCheckpointIO().save_checkpoint({"version": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_the_training_loader_continues_at_its_saved_position(workers):
    from sparse_transformer.data.base import ResumableLoader

    ds = torch.arange(40)
    kw = dict(batch_size=4, num_workers=workers, persistent_workers=workers > 0)
    full = [b.tolist() for b in ResumableLoader(ds, **kw)]
    first = ResumableLoader(ds, **kw)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state == {"batches": 3}
    again = ResumableLoader(ds, **kw)
    again.load_state_dict(state)
    assert len(again) == 10 and [b.tolist() for b in again] == full[3:]
    assert again.state_dict() == {"batches": 10}
    assert [b.tolist() for b in again] == full  # the next epoch starts at its beginning


def test_metrics_csv_is_kept_and_rewound_on_resume(tmp_path):
    log = RunCSVLogger(tmp_path)
    for step in range(6):
        log.log_metrics({"train/loss": float(step)}, step=step)  # written as logged
    assert len(fr.curve(tmp_path)) == 6
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("1")  # a row cut short by a kill (from "12,...")
    resumed = RunCSVLogger(tmp_path, keep=True)
    resumed.rewind(4)  # the checkpoint covers steps 0-3; 4 and 5 are logged again
    resumed.log_metrics({"train/loss": 40.0}, step=4)
    assert fr.curve(tmp_path) == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 40.0}
    RunCSVLogger(tmp_path).log_metrics({"train/loss": 1.0}, step=0)  # a fresh run starts a new file
    assert fr.curve(tmp_path) == {0: 1.0}


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["resume=last"], "resume=last needs run_dir=<the run folder to continue> (or resume=<checkpoint path>)"),
    (["resume=last", "run_dir=/nonexistent/run"],
     "resume=last: /nonexistent/run/checkpoints/last.ckpt does not exist; give run_dir=<a run folder with a checkpoint> or resume=auto"),
    (["resume=/nonexistent.ckpt"], "resume=/nonexistent.ckpt is not a checkpoint file; valid: last, auto or the path of a .ckpt"),
    (["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps=0 must be >= 1 or null"),
    (["trainer.max_bad_steps=-1"], "trainer.max_bad_steps=-1 must be >= 0 (0: never stop)"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 must be >= 1"),
    (["trainer.accelerator=cpu", "trainer.precision=16-mixed"],
     "trainer.precision=16-mixed needs a GPU (fp16 AMP with loss scaling); on CPU use bf16-mixed or 32"),
    (["trainer.accelerator=cpu", "trainer.strategy=fsdp"], "trainer.strategy=fsdp needs a GPU; on CPU use ddp (gloo) or auto"),
    (["trainer.devices=0"], "trainer.devices=0 must be >= 1, -1 (all) or auto"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0 must be >= 1"),
    (["trainer.accelerator=tpu"], "trainer.accelerator=tpu is unknown; valid: auto, cpu, gpu, cuda"),
])
def test_bad_trainer_and_resume_values_are_one_line_errors(args, message):
    with pytest.raises(ConfigError) as e:
        load_config(args)
    assert str(e.value) == message


def test_a_bad_resume_exits_2_and_writes_nothing(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sparse_transformer.train", "resume=last", f"run_dir={tmp_path}/run"],
                         env=fr.env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: resume=last: ")
    assert list(tmp_path.iterdir()) == []


def test_processes_of_external_launchers_agree_on_a_run_folder(monkeypatch):
    from sparse_transformer.cli import common as train
    from sparse_transformer.cli.common import LaunchError, shared_run_name

    cfg, _ = load_config(["exp=default"])
    for k in ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "WORLD_SIZE",
              "TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", train.RUN_ENV):
        monkeypatch.delenv(k, raising=False)
    assert shared_run_name() is None
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert shared_run_name() is None  # one task: a process of its own, named by time
    monkeypatch.setenv("SLURM_NTASKS", "16")
    for rank in ("0", "9"):
        monkeypatch.setenv("SLURM_PROCID", rank)
        assert str(train.run_dir(cfg)) == "runs/default/slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert shared_run_name() == "slurm-77_3"
    for k in ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "0f8c2b1e-5a8d-4b6e-9a61-2d3f4c5b6a79")  # --standalone
    assert shared_run_name() == "torchrun-0f8c2b1e"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id
    with pytest.raises(LaunchError, match="pass --rdzv-id=<job name> or run_dir="):
        train.run_dir(cfg)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with pytest.raises(LaunchError, match="was not started by rank 0"):  # no id, not rank 0, no folder passed
        train.run_dir(cfg)
    monkeypatch.setenv(train.RUN_ENV, "runs/x/y")  # rank 0 passed its folder (Lightning's launcher)
    assert str(train.run_dir(cfg)) == "runs/x/y"


@pytest.mark.parametrize("arg, message", [
    ("trainer.strategy=fsdp", "error: trainer.strategy=fsdp needs a GPU and none is available; use ddp (gloo on CPU) or auto"),
    ("trainer.precision=16-mixed", "error: trainer.precision=16-mixed needs a GPU and none is available; use bf16-mixed or 32"),
])
def test_gpu_only_settings_without_a_gpu_exit_2_before_anything_is_written(tmp_path, capsys, arg, message):
    from sparse_transformer.cli.train import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is there")
    with pytest.raises(SystemExit) as e:
        main(_tiny(tmp_path, arg))
    assert e.value.code == 2 and capsys.readouterr().err.strip() == message
    assert not (tmp_path / "run").exists()


def test_resume_auto_starts_fresh_then_continues(tmp_path, capsys):
    from sparse_transformer.cli.train import main

    first = main(_tiny(tmp_path, "resume=auto", "trainer.max_steps=3"))
    assert first["steps"] == 3 and "resuming from" not in capsys.readouterr().out
    second = main(_tiny(tmp_path, "resume=auto", "trainer.max_steps=5"))
    assert second["steps"] == 5 and f"resuming from {tmp_path}/run/checkpoints/last.ckpt" in capsys.readouterr().out
    assert sorted(fr.curve(tmp_path / "run")) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------
# The checkpoints kept before last.ckpt, and resuming past a damaged one
# ------------------------------------------------------------------------------------------------
def _steps_kept(folder) -> dict:
    return {p.name: torch.load(p, weights_only=True)["global_step"] for p in sorted(folder.glob("*.ckpt"))}


def test_last_ckpt_moves_down_to_previous_and_the_oldest_is_dropped(tmp_path):
    folder = tmp_path / "checkpoints"
    io = AtomicCheckpointIO(keep=3)
    for step in range(1, 6):
        io.save_checkpoint({"global_step": step}, folder / "last.ckpt")
    assert _steps_kept(folder) == {"last.ckpt": 5, "previous.ckpt": 4, "previous-2.ckpt": 3}
    io.save_checkpoint({"global_step": 5, "again": True}, folder / "last.ckpt")  # SIGTERM, then the end: same step
    assert _steps_kept(folder) == {"last.ckpt": 5, "previous.ckpt": 4, "previous-2.ckpt": 3}
    AtomicCheckpointIO(keep=2).save_checkpoint({"global_step": 6}, folder / "last.ckpt")  # a resumed run keeping fewer
    assert _steps_kept(folder) == {"last.ckpt": 6, "previous.ckpt": 5}
    AtomicCheckpointIO(keep=2).save_checkpoint({"global_step": 1}, folder / "best.ckpt")  # only last.ckpt moves down
    AtomicCheckpointIO(keep=2).save_checkpoint({"global_step": 7}, folder / "best.ckpt")
    assert _steps_kept(folder) == {"best.ckpt": 7, "last.ckpt": 6, "previous.ckpt": 5}
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt", "previous.ckpt"]  # no temporaries


def test_a_run_keeps_last_previous_and_best(tmp_path):
    from sparse_transformer.cli.train import main

    main(_tiny(tmp_path, "trainer.checkpoint_every_n_steps=2", "trainer.val_check_interval=3", "trainer.max_steps=8"))
    kept = _steps_kept(tmp_path / "run" / "checkpoints")
    assert kept["last.ckpt"] == 8 and kept["previous.ckpt"] == 6 and set(kept) == {"last.ckpt", "previous.ckpt", "best.ckpt"}
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] in (3, 6)  # saved after a validation that improved val/bpd
    main(_tiny(tmp_path, "trainer.checkpoint_every_n_steps=2", "trainer.max_steps=4", "trainer.keep_checkpoints=1",
               "trainer.save_best=false", f"run_dir={tmp_path}/one"))
    assert _steps_kept(tmp_path / "one" / "checkpoints") == {"last.ckpt": 4}


def _truncate(path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])


@pytest.mark.parametrize("resume", ["auto", "last"])
def test_a_truncated_last_ckpt_resumes_from_the_previous_one_with_one_line(tmp_path, capsys, resume):
    from sparse_transformer.cli.train import main

    main(_tiny(tmp_path, "trainer.checkpoint_every_n_steps=2", "trainer.max_steps=6"))
    ck = tmp_path / "run" / "checkpoints"
    _truncate(ck / "last.ckpt")
    capsys.readouterr()
    summary = main(_tiny(tmp_path, f"resume={resume}", "trainer.checkpoint_every_n_steps=2", "trainer.max_steps=8"))
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: resume={resume}: {ck / 'last.ckpt'} is not a readable "
                                                         "checkpoint (") and warnings[0].endswith(
        f"(set aside as last.ckpt.damaged); resuming from the checkpoint kept before it, {ck / 'previous.ckpt'} (step 4)")
    assert f"resuming from {ck / 'previous.ckpt'}" in out and summary["steps"] == 8
    # the good one it resumed from was moved down, never the damaged one (kept aside for a look)
    assert _steps_kept(ck) == {"last.ckpt": 8, "previous.ckpt": 6} and (ck / "last.ckpt.damaged").is_file()


def test_a_missing_last_ckpt_resumes_from_previous(tmp_path, capsys):
    """A kill between the renames that move last.ckpt down leaves previous.ckpt and no last.ckpt."""
    from sparse_transformer.cli.train import main

    main(_tiny(tmp_path, "trainer.checkpoint_every_n_steps=2", "trainer.max_steps=4"))
    ck = tmp_path / "run" / "checkpoints"
    (ck / "last.ckpt").rename(ck / "previous.ckpt")
    capsys.readouterr()
    assert main(_tiny(tmp_path, "resume=last", "trainer.max_steps=6"))["steps"] == 6
    assert f"warning: resume=last: {ck / 'last.ckpt'} is missing; resuming from" in capsys.readouterr().err


def test_no_readable_checkpoint_is_one_line_naming_each(tmp_path, capsys):
    from sparse_transformer.cli.train import main

    main(_tiny(tmp_path, "trainer.checkpoint_every_n_steps=2", "trainer.max_steps=4"))
    ck = tmp_path / "run" / "checkpoints"
    for name in ("last.ckpt", "previous.ckpt"):
        _truncate(ck / name)
    before = sorted(p for p in (tmp_path / "run").rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(_tiny(tmp_path, "resume=auto", "trainer.max_steps=6"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert f"{ck / 'last.ckpt'} is not a readable checkpoint" in err[0] and f"{ck / 'previous.ckpt'} is not a readable" in err[0]
    assert err[0].endswith(f"no checkpoint in {ck} reads: give resume=<a good checkpoint> or a new run_dir")
    assert sorted(p for p in (tmp_path / "run").rglob("*")) == before


# ------------------------------------------------------------------------------------------------
# No checkpoint with non-finite weights
# ------------------------------------------------------------------------------------------------
def test_a_checkpoint_with_nonfinite_weights_is_never_written(tmp_path, monkeypatch, capsys):
    """Weights made nan after step 2 (a finite loss whose update overflows would do the same): the
    save at step 3 is refused, the run stops with one line (exit 1), last.ckpt stays step 2's."""
    from sparse_transformer.cli.train import main
    from sparse_transformer.training.module import SparseTransformerLM

    orig = SparseTransformerLM.on_train_batch_end

    def poison(self, outputs, batch, batch_idx):
        orig(self, outputs, batch, batch_idx)
        if self.trainer.global_step == 2:  # after the callbacks' hooks: step 2's checkpoint is saved, finite
            with torch.no_grad():
                self.net.blocks[0].ff.fc1.weight[0, :3] = float("nan")

    monkeypatch.setattr(SparseTransformerLM, "on_train_batch_end", poison)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(_tiny(tmp_path, "trainer.checkpoint_every_n_steps=1", "trainer.max_steps=6", "trainer.max_bad_steps=0"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[-1].startswith(
        "error: the weights are not finite at global step 3 (3 of ") and "net.blocks.0.ff.fc1.weight" in err[-1]
    assert "no checkpoint was written" in err[-1] and "lower optim.lr" in err[-1]
    assert not any(line.startswith("Traceback") for line in err)
    ck = tmp_path / "run" / "checkpoints"
    assert _steps_kept(ck) == {"last.ckpt": 2, "previous.ckpt": 1, **({"best.ckpt": _steps_kept(ck)["best.ckpt"]}
                                                                       if (ck / "best.ckpt").exists() else {})}
    for p in ck.glob("*.ckpt"):
        assert all(torch.isfinite(v).all() for v in torch.load(p, weights_only=True)["state_dict"].values())
