"""The training step on the Lightning path: a non-finite step is skipped on the device with the
weights and AdamW's state left bit-identical, and a steady-state step never waits on the device
(CPU: no host read of a tensor; GPU: ``torch.cuda.set_sync_debug_mode("error")``). Also the
throughput windows and the thinned SIGTERM broadcast."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sparse_transformer.config import load_config
from tests import fault_run as fr
from tests.helpers import one_thread  # noqa: F401  (autouse: torch on one thread)
from tests.sync_hooks import HostReads, SyncDebug

TINY = ["exp=default", "trainer.devices=1", "model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8",
        "data.batch_size=8", "data.val_windows=4", "optim.warmup_steps=3", "trainer.enable_progress_bar=false",
        "callbacks.samples.at_end=false", "callbacks.attention_maps.enabled=false", "trainer.val_check_interval=1000"]
GPU = pytest.mark.gpu


def _fit(tmp_path, *args, callbacks=(), first=(), logger: bool = False):
    """Train through the command's own trainer (build_trainer, build_callbacks); ``first`` callbacks
    run their hooks before all the others. Returns (module, trainer)."""
    from sparse_transformer.data import build_datamodule, prepare_or_exit
    from sparse_transformer.training.loggers import build_logger
    from sparse_transformer.training.module import SparseTransformerLM, config_dict
    from sparse_transformer.training.trainer import build_callbacks, build_trainer

    cfg, _ = load_config([*TINY, f"data.cache_dir={tmp_path}/data", *args])
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    prepare_or_exit(dm)
    lit = SparseTransformerLM(config_dict(cfg), dm.shape)
    out = tmp_path / "run"
    log = build_logger(cfg, out) if logger else False
    trainer = build_trainer(cfg, out, callbacks=[*build_callbacks(cfg, out, log), *callbacks], logger=log)
    for cb in reversed(first):
        trainer.callbacks.insert(0, cb)
    trainer.fit(lit, datamodule=dm)
    return lit, trainer


# ------------------------------------------------------------------------------------------------
# A skipped step leaves everything as it was
# ------------------------------------------------------------------------------------------------
def _state(trainer, lit) -> dict:
    opt = trainer.optimizers[0]
    out = {f"w.{k}": v.detach().clone() for k, v in lit.state_dict().items()}
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        for k, v in opt.state[p].items():  # exp_avg, exp_avg_sq, step
            out[f"opt.{i}.{k}"] = v.detach().clone()
    return out


class _Around(Callback):
    """The weights and AdamW's state before step ``at``, after it and after the next one; with
    ``inf_grad``, one gradient entry is made inf at step ``at`` (the loss stays finite)."""

    def __init__(self, at: int, inf_grad: bool):
        self.at, self.inf_grad, self.states = at, inf_grad, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            self.states["before"] = _state(trainer, pl_module)

    def on_after_backward(self, trainer, pl_module):
        if self.inf_grad and trainer.global_step == self.at:
            pl_module.net.blocks[0].ff.fc1.weight.grad[0, 0] = math.inf

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at + 1:
            self.states["after"] = _state(trainer, pl_module)
        if trainer.global_step == self.at + 2:
            self.states["next"] = _state(trainer, pl_module)


@pytest.mark.parametrize("device,precision", [
    ("cpu", "32-true"), ("cpu", "bf16-mixed"),
    pytest.param("cuda", "bf16-mixed", marks=GPU), pytest.param("cuda", "16-mixed", marks=GPU)])
@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_a_skipped_step_leaves_weights_and_adamw_state_bit_identical(tmp_path, monkeypatch, device, precision, bad):
    from sparse_transformer.training.module import SparseTransformerLM

    at = 3
    if bad == "loss":
        orig = SparseTransformerLM._nll

        def nll(self, batch):
            n, c = orig(self, batch)
            return (n * float("nan"), c) if self.training and self.trainer.global_step == at else (n, c)

        monkeypatch.setattr(SparseTransformerLM, "_nll", nll)
    probe = _Around(at, inf_grad=bad == "grad")
    lit, trainer = _fit(tmp_path, f"trainer.accelerator={device}", f"trainer.precision={precision}", "optim.grad_clip=1.0",
                        "trainer.max_steps=6", "trainer.log_every_n_steps=2", callbacks=[probe])
    opt = trainer.optimizers[0]
    assert opt.param_groups[0]["fused"] and trainer.gradient_clip_val is None  # fused AdamW, clipped by us
    s = probe.states
    assert s["before"].keys() == s["after"].keys() and any(k.endswith(".exp_avg_sq") for k in s["before"])
    changed = [k for k in s["before"] if not torch.equal(s["before"][k], s["after"][k])]
    assert changed == [], f"the skipped step changed {changed[:5]}"
    # the next step is taken: the weights and both moments move, the step count goes on
    moved = [k for k in s["after"] if not torch.equal(s["after"][k], s["next"][k])]
    assert any(k.startswith("w.") for k in moved) and any(k.endswith(".exp_avg") for k in moved)
    steps = {int(v) for k, v in s["after"].items() if k.endswith(".step")}
    if precision == "16-mixed":  # the GradScaler may have skipped an early overflow of its own
        assert len(steps) == 1 and 0 < steps.pop() <= at
        # an inf gradient is the scaler's skip under fp16 (it backs off), not a bad step
        assert lit.skipped_steps == (1 if bad == "loss" else 0)
    else:
        assert steps == {at} and lit.skipped_steps == 1  # steps 0..at-1 were taken, this one skipped


# ------------------------------------------------------------------------------------------------
# No host read in a steady-state step
# ------------------------------------------------------------------------------------------------
K = 4  # log_every_n_steps, throughput window and warm-up: the host reads the device after steps 3, 7, 11, ...
STEADY = [f"trainer.log_every_n_steps={K}", f"callbacks.throughput.window={K}", f"callbacks.throughput.warmup={K}",
          "trainer.enable_progress_bar=true", "logger.kind=csv"]


def test_a_steady_training_step_reads_nothing_from_the_device(tmp_path):
    """The CPU stand-in for the GPU test below: a host read of a tensor is a sync on a GPU. With the
    progress bar, the CSV logger, throughput, clipping, bf16 and the non-finite check all on."""
    probe = HostReads(K)
    probe.install()
    try:
        _fit(tmp_path, "trainer.accelerator=cpu", "trainer.precision=bf16-mixed", "trainer.max_steps=16", *STEADY,
             "data.max_bytes=20000", first=[probe], logger=True)
    finally:
        probe.uninstall()
    assert probe.steady == 6  # steps 8, 9, 10, 12, 13, 14
    assert probe.reads == [], "host reads in a steady step:\n" + "\n".join(probe.reads[:5])


@pytest.mark.slow
def test_a_steady_ddp_training_step_reads_nothing_from_the_device(tmp_path):
    """Two gloo processes: the loss's mean over ranks (logged only on the steps written), the
    ranks' SIGTERM agreement and Lightning's own SIGTERM broadcast come every K steps only."""
    res = fr.train(tmp_path / "data", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                   "data.batch_size=4", "trainer.max_steps=16", *STEADY, "trainer.enable_progress_bar=false",
                   "data.max_bytes=20000", "imports=[tests.sync_hooks]", run=tmp_path / "run", hooks={"ST_SYNC_EVERY": K, "ST_SYNC_OUT": tmp_path})
    fr.ok(res)
    for rank in (0, 1):
        report = (tmp_path / f"rank{rank}.txt").read_text()
        assert report == "steady 6\n", f"rank {rank}: host reads in a steady step:\n{report[:4000]}"


@GPU
@pytest.mark.parametrize("args", [
    ["attention.pattern=dense"],  # SDPA
    [],  # strided, flex
    ["model.compile=true"],  # strided, flex, the whole network compiled
    ["model.compile=true", "model.compile_mode=cudagraphs"],  # ... and replayed as CUDA graphs
], ids=["dense", "strided", "strided-compiled", "strided-cudagraphs"])
def test_a_steady_training_step_never_synchronises_on_a_gpu(tmp_path, args):
    probe = SyncDebug(K)
    try:
        _fit(tmp_path, "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed", "optim.grad_clip=1.0",
             "trainer.max_steps=24", *STEADY, "data.max_bytes=200000", *args, first=[probe], logger=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert probe.steady == 12  # steps 8-10, 12-14, 16-18, 20-22


@GPU
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_a_steady_ddp_training_step_never_synchronises_on_two_gpus(tmp_path):
    # From step 12: DDP times its first 10 iterations with CUDA events it waits on (its runtime
    # logging; then every 100th), which is PyTorch's, not this framework's
    res = fr.train(tmp_path / "data", "trainer.accelerator=gpu", "trainer.devices=2", "trainer.strategy=ddp",
                   "trainer.precision=bf16-mixed", "data.batch_size=4", "trainer.max_steps=24", *STEADY,
                   "trainer.enable_progress_bar=false", "data.max_bytes=200000", "imports=[tests.sync_hooks]",
                   run=tmp_path / "run", hooks={"ST_SYNC_EVERY": K, "ST_SYNC_FROM": 3 * K, "ST_SYNC_OUT": tmp_path},
                   timeout=900)
    fr.ok(res)  # a synchronising call in a steady step raises there (its traceback in stderr)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["steady 9\n"] * 2  # 12-14, 16-18, 20-22


# ------------------------------------------------------------------------------------------------
# Throughput windows
# ------------------------------------------------------------------------------------------------
def test_throughput_is_measured_once_per_window_after_the_warmup(tmp_path, monkeypatch):
    """Windows of 3 steps after 2 warm-up steps, over a run with a short last batch (2 epochs of 11
    batches, the 11th of 5 windows): the clock is read (after a synchronisation on a GPU) at each
    window's end only, and tokens/s is the window's tokens over the time between two reads."""
    from sparse_transformer.training.callbacks import throughput

    clock = iter(float(t) for t in range(1000))  # each read: one more second
    reads = []

    def now(trainer):
        reads.append(trainer.global_step)
        return next(clock)

    monkeypatch.setattr(throughput.WindowThroughput, "_now", staticmethod(now))
    logged = []
    monkeypatch.setattr(throughput.WindowThroughput, "_log",
                        lambda self, trainer, tok, smp: logged.append((trainer.global_step, tok, smp)))
    _fit(tmp_path, "trainer.accelerator=cpu", "trainer.max_steps=-1", "trainer.max_epochs=2", "data.max_bytes=6000",
         "callbacks.throughput.window=3", "callbacks.throughput.warmup=2", "logger.kind=csv", logger=True)
    # 22 steps: the clock starts after step 2 and is read at the ends of steps 5, 8, ..., 20
    assert reads == [2, 5, 8, 11, 14, 17, 20]
    batches = [8] * 10 + [5]  # windows per epoch: 85 windows of 64 tokens
    per_step = batches + batches
    expect = [(end, sum(per_step[end - 3:end]) * 64 / 1.0, sum(per_step[end - 3:end]) / 1.0) for end in reads[1:]]
    assert logged == expect  # the window with the short batch (steps 9-11) counts its 5 windows


def test_validation_inside_a_window_is_not_counted(tmp_path, monkeypatch):
    """Validation after steps 4 and 8 (trainer.val_check_interval=4), windows of 4 steps after 2:
    the clock stops at each validation's start and restarts at its end (each read: one second)."""
    from sparse_transformer.training.callbacks import throughput

    clock = iter(float(t) for t in range(1000))
    reads, logged = [], []

    def now(trainer):
        reads.append(trainer.global_step)
        return next(clock)

    monkeypatch.setattr(throughput.WindowThroughput, "_now", staticmethod(now))
    monkeypatch.setattr(throughput.WindowThroughput, "_log",
                        lambda self, trainer, tok, smp: logged.append((trainer.global_step, tok, smp)))
    _fit(tmp_path, "trainer.accelerator=cpu", "trainer.max_steps=10", "data.max_bytes=6000", "trainer.val_check_interval=4",
         "callbacks.throughput.window=4", "callbacks.throughput.warmup=2", "logger.kind=csv", logger=True)
    assert reads == [2, 4, 4, 6, 8, 8, 10]  # start; validation start and end; window end; ...
    # each window: 4 batches of 8 windows of 64 tokens over 2 s (1 before the validation, 1 after)
    assert logged == [(6, 4 * 8 * 64 / 2, 4 * 8 / 2), (10, 4 * 8 * 64 / 2, 4 * 8 / 2)]


def test_throughput_metrics(tmp_path):
    from sparse_transformer.training.callbacks.throughput import WindowThroughput

    class Trainer:
        world_size = 4

        class _logger_connector:
            @staticmethod
            def log_metrics(m):
                got.update(m)

    got = {}
    cb = WindowThroughput(peak_flops=1e12)
    cb.train_fpt, cb.peak = 3e6, 1e12
    cb._log(Trainer, 1000.0, 2.0)
    assert got == {"train/device/items_per_sec": 1000.0, "train/items_per_sec": 4000.0, "train/device/samples_per_sec": 2.0,
                   "train/device/flops_per_sec": 3e9, "train/device/mfu": 3e-3}


# ------------------------------------------------------------------------------------------------
# DDP agreement every log_every_n_steps
# ------------------------------------------------------------------------------------------------
def test_lightnings_sigterm_broadcast_runs_at_the_first_batch_and_every_k_steps():
    from sparse_transformer.training.fault import thin_lightning_sigterm_broadcast

    calls = []

    class Loop:
        _batches_that_stepped = 0

        def _broadcast_sigterm_tensor(self):
            calls.append(self._batches_that_stepped)

    class Trainer:
        log_every_n_steps = 4

        class fit_loop:
            epoch_loop = Loop()

    loop = Trainer.fit_loop.epoch_loop
    loop._batches_that_stepped = 5  # a resumed run: the first batch is not a multiple of 4
    thin_lightning_sigterm_broadcast(Trainer)
    for step in range(5, 14):
        loop._batches_that_stepped = step
        loop._broadcast_sigterm_tensor()
    assert calls == [5, 8, 12]


def test_max_time_is_checked_every_log_every_n_steps(tmp_path):
    """trainer.max_time through StepTimer: checked (a broadcast under DDP) only at the steps where
    the host reads the device. The limit runs out during step 1; the run ends after step 3."""

    class RunOut(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 1:
                (timer,) = [c for c in trainer.callbacks if type(c).__name__ == "StepTimer"]
                timer._duration = 0.0

    _, trainer = _fit(tmp_path, "trainer.accelerator=cpu", "trainer.max_steps=20", "trainer.max_time=00:01:00:00",
                      "trainer.log_every_n_steps=3", first=[RunOut()])
    assert trainer.global_step == 3
