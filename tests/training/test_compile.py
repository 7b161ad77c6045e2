"""``model.compile`` through the train command: ``compile_network`` in ``model.compile_mode`` with
static shapes, attention plans prepared before each compiled call, over two epochs whose last
training batch is short, with validation (eval mode, no_grad, its own batch sizes) in between.

On the CPU, torch.compile's backend is replaced by a recording ``aot_eager`` (Inductor on 2 cores
takes minutes): the graphs must have no symbolic sizes (the GPU crash, Inductor's ``NameError:
name 's48' is not defined``, came from a batch dimension made dynamic on a short batch) and, for
the whole network, no graph breaks. On a GPU, the real thing through the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from sparse_transformer.config import COMPILE_MODES, ConfigError, load_config
from tests import fault_run as fr
from tests.helpers import one_thread  # noqa: F401  (autouse: torch on one thread)


def test_compile_modes_are_the_models():
    from sparse_transformer import model

    assert COMPILE_MODES == model.COMPILE_MODES


def test_an_unknown_compile_mode_is_one_line_and_exit_2(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(["model.compile_mode=graphs"])
    assert str(e.value) == "model.compile_mode=graphs is unknown; valid: blocks, model, cudagraphs"
    res = subprocess.run([sys.executable, "-m", "sparse_transformer.train", "model.compile=true", "model.compile_mode=fast",
                          f"run_dir={tmp_path}/run"], env=fr.env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr == "error: model.compile_mode=fast is unknown; valid: blocks, model, cudagraphs\n"
    assert list(tmp_path.iterdir()) == []


def test_cudagraphs_without_a_gpu_exit_2_before_anything_is_written(tmp_path, capsys):
    from sparse_transformer.cli.train import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is there")
    with pytest.raises(SystemExit) as e:
        main(["model.compile=true", "model.compile_mode=cudagraphs", f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: model.compile_mode=cudagraphs needs a GPU and none is available; use model or blocks\n"
    assert not (tmp_path / "run").exists()


def test_sample_and_attention_map_hooks_ignore_torch_compile():
    """Their one-off passes (token by token, one window) through a network compiled for static
    shapes would compile it once per length: build_callbacks runs their hooks eagerly."""
    from lightning.pytorch.callbacks import Callback

    from sparse_transformer.training.trainer import _eager

    compiled = []
    f = torch.compile(lambda x: x + 1, backend=lambda gm, example_inputs: compiled.append(1) or gm)

    class Hook(Callback):
        def on_train_end(self, trainer, pl_module):
            return f(torch.ones(2))

    assert torch.equal(_eager(Hook()).on_train_end(None, None), torch.full((2,), 2.0)) and compiled == []
    f(torch.ones(2))
    assert compiled == [1]  # outside the hook it compiles


# 2 epochs of 11 training batches, the last of 5 windows; validation windows 6: batches of 4 and 2
CPU_RUN = ["exp=default", "model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8",
           "data.batch_size=8", "data.val_windows=6", "data.eval_batch_size=4", "data.max_bytes=6000", "optim.warmup_steps=3",
           "trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.val_check_interval=null", "logger.kind=none",
           "trainer.enable_progress_bar=false", "model.compile=true"]


@pytest.mark.slow
@pytest.mark.parametrize("mode,graphs", [
    ("model", 4),  # one per (batch 8 or 5, training) and (batch 4 or 2, validation): no graph break
    ("blocks", 8),  # the same per block pattern (local, stride)
])
def test_compiled_training_with_a_short_batch_and_validation_has_static_shapes(tmp_path, monkeypatch, mode, graphs):
    from torch._dynamo.backends.debugging import aot_eager

    from sparse_transformer.cli.train import main

    seen = []

    def recording(gm, example_inputs):
        sizes = [n for n in gm.graph.nodes if n.op == "placeholder" and isinstance(n.meta.get("example_value"), torch.SymInt)]
        seen.append(len(sizes))
        return aot_eager(gm, example_inputs)

    compile_ = torch.compile

    def compile_here(fn=None, **kwargs):
        kwargs.pop("mode", None)
        return compile_(fn, **{**kwargs, "backend": recording})

    monkeypatch.setattr(torch, "compile", compile_here)
    torch._dynamo.reset()
    summary = main([*CPU_RUN, f"model.compile_mode={mode}", f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data"])
    torch._dynamo.reset()
    assert summary["steps"] == 22
    assert math.isfinite(summary["val_bpd_end"]) and summary["val_bpd_end"] < summary["val_bpd_start"] - 1.0
    assert seen and all(n == 0 for n in seen), f"symbolic sizes in compiled graphs: {seen}"
    assert len(seen) == graphs


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["model", "blocks", "cudagraphs"])
def test_compiled_training_through_the_command_line_on_a_gpu(tmp_path, mode):
    """The default experiment at n = 1024 for 2 epochs of 176 windows in batches of 12 (the last of
    8), validated at each epoch's end on 8 windows in batches of 5 (then 3), bf16, flex attention."""
    from sparse_transformer.data import build_datamodule, prepare_or_exit

    args = ["exp=default", "data.seq_len=1024", "data.max_bytes=200000", "data.batch_size=12", "data.eval_batch_size=5",
            "data.val_windows=8", f"data.cache_dir={tmp_path}/data"]
    cfg, _ = load_config(args)
    dm = build_datamodule(cfg)
    prepare_or_exit(dm)
    assert [b[0].shape[0] for b in dm.train_dataloader()][-2:] == [12, 8]  # a short last batch
    assert [b[0].shape[0] for b in dm.val_dataloader()] == [5, 3]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sparse_transformer.train", *args, f"run_dir={run}", "trainer.max_steps=-1",
           "trainer.max_epochs=2", "trainer.val_check_interval=null", "optim.warmup_steps=5", "logger.kind=csv",
           "trainer.enable_progress_bar=false", "trainer.accelerator=gpu", "trainer.devices=1",
           "model.compile=true", f"model.compile_mode={mode}"]
    res = subprocess.run(cmd, env=fr.env(), cwd=fr.ROOT, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-6000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 30
    assert math.isfinite(summary["val_bpd_end"]) and summary["val_bpd_end"] < summary["val_bpd_start"] - 1.0
    assert fr.curve(run, "val/bpd")  # validated inside fit too (each epoch's end)
    assert summary["metrics"]["train/device/items_per_sec"] > 0
