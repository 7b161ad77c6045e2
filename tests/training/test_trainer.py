"""The Trainer a config builds (training/trainer.py) and what the console shows
(training/callbacks/progress.py): strategy, precision, checkpoints, progress bar, model summary,
early stopping, the warm-up warning and quiet logs."""

import logging
import sys
import warnings

import pytest
import torch

from sparse_transformer.cli.train import main
from sparse_transformer.config import load_config
from sparse_transformer.training.callbacks import progress
from sparse_transformer.training.loggers import RunWandbLogger, quiet_logs
from sparse_transformer.training.module import SparseTransformerLM, config_dict
from sparse_transformer.training.trainer import build_trainer

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8",
        "data.batch_size=4", "logger.kind=none", "trainer.enable_progress_bar=false", "data.val_windows=4",
        "data.max_bytes=20000", "callbacks.samples.at_end=false", "callbacks.attention_maps.enabled=false"]


def test_the_trainer_is_built_from_the_config(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    from sparse_transformer.training.module import SparseTransformerLM, config_dict
    from sparse_transformer.training.trainer import build_trainer

    cfg, _ = load_config(["trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=2", "trainer.strategy=ddp",
                          "trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=3", "model.recompute=true",
                          "model.compile=true", "trainer.checkpoint_every_n_steps=7", "logger.kind=none",
                          "trainer.log_every_n_steps=6", "trainer.max_time=00:01:00:00"])
    trainer = build_trainer(cfg, tmp_path)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2 and trainer.num_nodes == 2
    assert trainer.precision == "bf16-mixed" and trainer.accumulate_grad_batches == 3
    assert type(trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
    assert trainer.checkpoint_callback._every_n_train_steps == 7 and trainer.checkpoint_callback.save_last
    assert trainer.gradient_clip_val is None  # optim.grad_clip is applied in the module's optimizer_step
    # the host reads the device every log_every_n_steps: the progress bar and the max_time check
    (bar,) = [c for c in trainer.callbacks if type(c).__name__ == "ProgressBar"]
    (timer,) = [c for c in trainer.callbacks if type(c).__name__ == "StepTimer"]
    assert bar.refresh_rate == 6 and timer._duration == 3600 and timer.state_key == "Timer"
    lit = SparseTransformerLM(config_dict(cfg), [8, 32])
    assert all(b.recompute for b in lit.net.blocks)
    lit.configure_model()  # model.compile: the whole network wrapped by torch.compile (compiled on first call)
    assert lit.net._compiled_call_impl is not None and all(b._compiled_call_impl is None for b in lit.net.blocks)
    cfg.model.compile_mode = "blocks"
    lit = SparseTransformerLM(config_dict(cfg), [8, 32])
    lit.configure_model()  # each block its own graph
    assert lit.net._compiled_call_impl is None and all(b._compiled_call_impl is not None for b in lit.net.blocks)
    from lightning.pytorch.strategies import FSDPStrategy

    from sparse_transformer.model import Block
    from sparse_transformer.training.trainer import build_strategy

    fsdp = build_strategy(load_config(["trainer.strategy=fsdp"])[0])  # on a GPU machine; sharded per block
    assert isinstance(fsdp, FSDPStrategy) and fsdp.kwargs["auto_wrap_policy"].__class__.__name__ == "ModuleWrapPolicy"
    assert Block in fsdp.kwargs["auto_wrap_policy"]._module_classes


def test_early_stopping_is_off_by_default_and_watches_val_bpd(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping

    cfg, _ = load_config(["logger.kind=none"])
    assert cfg.trainer.early_stopping == 0
    assert not [c for c in build_trainer(cfg, tmp_path).callbacks if isinstance(c, EarlyStopping)]
    cfg.trainer.early_stopping = 3
    (es,) = [c for c in build_trainer(cfg, tmp_path).callbacks if isinstance(c, EarlyStopping)]
    assert (es.monitor, es.mode, es.patience) == ("val/bpd", "min", 3)


@pytest.mark.slow
def test_early_stopping_ends_a_run_whose_validation_stops_improving(tmp_path):
    """A learning rate of 1e-12 leaves val/bpd where it is: two validations without improvement stop the run."""
    summary = main(["exp=default", *TINY, f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data",
                    "optim.lr=1e-12", "optim.warmup_steps=0", "trainer.max_steps=40", "trainer.val_check_interval=2",
                    "trainer.early_stopping=2"])
    assert summary["steps"] == 6  # validations at steps 2 (best), 4 and 6 (no better): stopped


def test_a_warmup_as_long_as_the_run_is_warned_about():
    cfg, _ = load_config(["optim.warmup_steps=100"])
    lit = SparseTransformerLM(config_dict(cfg), [8, 32])

    class Trainer:  # what configure_optimizers reads
        estimated_stepping_batches, fast_dev_run = 50, False

    lit._trainer = Trainer()
    with pytest.warns(UserWarning, match=r"optim.warmup_steps=100 is not below the run's 50 optimizer steps.*"
                                         r"e.g. optim.warmup_steps=5"):
        lit.configure_optimizers()
    Trainer.estimated_stepping_batches = 101
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lit.configure_optimizers()


def test_the_console_is_rich_in_a_terminal_and_plain_otherwise(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    table, bar = progress.console_callbacks(True, 7)
    assert type(bar) is progress.ProgressBar and bar.refresh_rate == 7 and table._summarize_kwargs == {"rich": False}
    assert [type(c) for c in progress.console_callbacks(False, 7)] == [progress.ModelTable]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    table, bar = progress.console_callbacks(True, 7)
    assert type(bar) is progress.RichBar and bar.every == 7 and table._summarize_kwargs == {"rich": True}


def test_the_model_summary_has_no_flops(caplog):
    data = [(" ", ["0", "1"]), ("Name", ["net", "val_bpd"]), ("Type", ["SparseTransformer", "MeanMetric"]),
            ("Params", ["42.4 K", "0"]), ("Mode", ["train", "train"]), ("FLOPs", ["0", "0"])]
    with caplog.at_level(logging.INFO):
        progress.ModelTable.summarize(data, 42368, 42368, 0.169, {"train": 37, "eval": 0}, total_flops=0)
    text = caplog.text
    assert "SparseTransformer" in text and "Total params: 42.4 K" in text and "FLOP" not in text.upper()


def test_quiet_logs_drop_the_tips_and_the_pytree_line(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    quiet_logs()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero_info("GPU available: False, used: False")
    assert "Tip" not in caplog.text and "GPU available" in caplog.text
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`", FutureWarning)
    assert seen == []
    assert "anonymous" not in RunWandbLogger(project="p", save_dir=".", mode="offline")._wandb_init


@pytest.fixture
def cpu_fsdp(monkeypatch):
    """FSDP on this CPU as it runs on one GPU: a gloo group of one process (torch's FSDP takes a CPU
    given device_id=cpu; Lightning passes None; BlockFSDP, a subclass, passes Lightning's GPU check),
    and bf16-mixed with the GPU's autocast, which runs layer_norm in fp32 (CPU autocast leaves it
    mixed-dtype, an error)."""
    import socket

    import torch.distributed as dist
    import torch.nn.functional as F
    from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    init, layer_norm = FSDP.__init__, F.layer_norm

    def on_cpu(self, module, *args, device_id=None, **kwargs):
        init(self, module, *args, device_id=device_id or torch.device("cpu"), **kwargs)

    def fp32_layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        if not torch.is_autocast_enabled("cpu"):
            return layer_norm(x, shape, weight, bias, eps)
        with torch.autocast("cpu", enabled=False):
            return layer_norm(x.float(), shape, *(None if t is None else t.float() for t in (weight, bias)), eps)

    monkeypatch.setattr(FSDP, "__init__", on_cpu)
    monkeypatch.setattr(F, "layer_norm", fp32_layer_norm)
    monkeypatch.setattr(FSDPPrecision, "forward_context", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_trains_under_its_root_after_the_validation_before_training(tmp_path, cpu_fsdp):
    """``fit`` validates, trains and validates one module with one strategy. Lightning's FSDP wrapped
    no root at the second stage (the blocks were already wrapped): the blocks trained as FSDP units
    without one, and last.ckpt failed (an H200, bf16-mixed: 'FSDP assumes net.blocks.0.ln1.weight is
    in the state_dict'). The root is kept: every block is checkpointed and the model learns."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from sparse_transformer.training import trainer

    cfg, _ = load_config(["exp=default", *TINY, f"data.cache_dir={tmp_path}/data", "trainer.accelerator=cpu",
                          "trainer.devices=1", "trainer.precision=bf16-mixed", "optim.grad_clip=1.0",
                          "trainer.max_steps=6", "optim.warmup_steps=2", "optim.lr=3e-3"])
    cfg.trainer.strategy = "fsdp"  # after the config's checks, which refuse it without a GPU
    built = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(trainer, "build_strategy", lambda cfg, _build=trainer.build_strategy: built.append(_build(cfg)) or built[-1])
        summary = trainer.fit(cfg, tmp_path / "run")
    (strategy,) = built
    assert isinstance(strategy.model, FSDP) and strategy.model.module is strategy.lightning_module  # the root
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    names = {n for n, _ in SparseTransformerLM(config_dict(cfg), [64]).named_parameters()}
    assert set(ck["state_dict"]) == names and ck["global_step"] == 6
    assert summary["steps"] == 6 and summary["val_bpd_end"] < summary["val_bpd_start"] - 0.3


def test_a_reused_fsdp_root_moves_the_metrics_to_the_device_again(monkeypatch):
    """Lightning's FSDP set-up moves torchmetrics to the device after wrapping (FSDP does not move
    them); a stage that reuses the root must too: on an H200 the validate after fit met its val
    MeanMetric on the CPU, where the previous stage's teardown had left it."""
    from torchmetrics import MeanMetric

    from sparse_transformer.training.trainer import BlockFSDP

    lit = torch.nn.Module()
    lit.val_loss = MeanMetric()
    root = torch.nn.Module()
    root.module = lit
    strategy = BlockFSDP()
    strategy._fsdp_root = root
    moved = []
    monkeypatch.setattr(MeanMetric, "to", lambda self, device: moved.append((self, device)) or self)
    monkeypatch.setattr(BlockFSDP, "root_device", property(lambda self: torch.device("cuda", 0)))
    assert strategy._setup_model(lit) is root
    assert moved == [(lit.val_loss, torch.device("cuda", 0))]
