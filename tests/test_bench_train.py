"""bench/train.py and bench/ddp.py on the CPU: the profiler-trace arithmetic (kernel-interval union,
groups, gpu_busy), argument parsing, records and reports, and smoke runs of both scripts at tiny
sizes (the GPU machine runs them with little time to spare, so every CPU-testable piece is tested)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import one_thread  # noqa: F401  (autouse: tiny CPU steps run faster on one thread)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model=dict(n_layer=2, n_head=2, d_model=32), shape=(8, 16), batch=2, recompute=False,
            attention=dict(pattern="strided", stride=16, layout=["stride", "local"]))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bt():
    return _load("train")


@pytest.fixture(scope="module")
def bd():
    return _load("ddp")


# ------------------------------------------------------------------------------------------------
# bench/train.py: profiler arithmetic
# ------------------------------------------------------------------------------------------------
def test_union_counts_overlaps_once(bt):
    assert bt.union_length([]) == 0
    assert bt.union_length([(0, 10)]) == 10
    assert bt.union_length([(0, 10), (20, 25)]) == 15  # disjoint: a gap of 10 is idle
    assert bt.union_length([(0, 10), (5, 15)]) == 15  # overlapping streams
    assert bt.union_length([(0, 10), (2, 3), (4, 9)]) == 10  # nested
    assert bt.union_length([(0, 10), (10, 12)]) == 12  # touching
    assert bt.union_length([(30, 40), (0, 10), (5, 12), (39, 41), (7, 7)]) == 23  # unsorted, an empty one
    assert bt.union_length([(5, 5), (3, 2)]) == 0  # empty and inverted intervals cover nothing


def test_device_events_are_kernels_copies_and_sets_of_a_chrome_trace(bt):
    trace = {"traceEvents": [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 50},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 1, "dur": 2},
        {"ph": "X", "cat": "kernel", "name": "nvjet_tst_128x256", "ts": 10.5, "dur": 4.25},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD (Device -> Device)", "ts": 20, "dur": 1},
        {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "ts": 30, "dur": 2},
        {"ph": "s", "cat": "ac2g", "name": "flow", "ts": 10},
        {"ph": "X", "cat": "kernel", "name": "no duration", "ts": 40},
        {"ph": "M", "name": "process_name", "ts": 0, "args": {}},
    ]}
    ev = bt.device_events(trace)
    assert ev == [("nvjet_tst_128x256", 10.5, 14.75), ("Memcpy DtoD (Device -> Device)", 20.0, 21.0), ("Memset (Device)", 30.0, 32.0)]
    assert bt.device_events(trace["traceEvents"]) == ev  # a bare event list too


def test_breakdown_gives_busy_idle_and_groups_per_step(bt):
    # two steps of 100 µs kernels each, in µs; one attention kernel overlaps a matmul on another stream
    events = [("nvjet_tst_gemm", 0, 400), ("triton_tem_fused_flex_attention_0", 300, 600), ("triton_poi_fused_add_0", 700, 800),
              ("multi_tensor_apply_kernel<FusedAdamMathFunctor>", 900, 1000), ("cub::DeviceRadixSortOnesweepKernel", 1000, 1100)]
    b = bt.breakdown(events, steps=2, step_s=1e-3)  # 1 ms per step unprofiled
    assert b["kernel_union_ms_per_step"] == pytest.approx(0.45)  # (600 + 100 + 200) µs of union / 2 steps
    assert b["gpu_busy"] == pytest.approx(0.45)
    assert b["idle_ms_per_step"] == pytest.approx(0.55)
    g = b["kernel_ms_per_step"]
    assert g["matmul"] == pytest.approx(0.2) and g["attention"] == pytest.approx(0.15)
    assert g["triton fused (inductor)"] == pytest.approx(0.05) and g["optimizer"] == pytest.approx(0.05)
    assert g["other"] == pytest.approx(0.05) and g["elementwise+copies"] == 0
    assert sum(g.values()) > b["kernel_union_ms_per_step"]  # sums double-count the overlap; the union does not
    assert b["kernels_per_step"] == 2.5 and b["top_kernels"][0]["name"] == "nvjet_tst_gemm"
    assert bt.breakdown([], steps=2, step_s=1e-3)["gpu_busy"] is None  # no device activity (a CPU run)


@pytest.mark.parametrize("name, group", [
    ("nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNN", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_32x5_tn", "matmul"),
    ("void splitKreduce_kernel<32, 16, int, float>", "matmul"),
    ("triton_tem_fused_mm_3", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x32", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80", "attention"),
    ("triton_tem_fused_flex_attention_backward_2", "attention"),
    ("triton_poi_fused__to_copy_add_native_layer_norm_0", "triton fused (inductor)"),
    ("triton_red_fused_native_layer_norm_backward_1", "triton fused (inductor)"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<TensorListMetadata<4>, FusedAdamMathFunctor<float, 4>>", "optimizer"),
    ("void at::native::lpnorm_cleanup<float, NormType::Two>", "optimizer"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise+copies"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>", "elementwise+copies"),
    ("Memcpy DtoD (Device -> Device)", "elementwise+copies"),
    ("Memset (Device)", "elementwise+copies"),
    ("void cub::DeviceRadixSortOnesweepKernel<...>", "other"),
])
def test_kernel_groups_of_real_kernel_names(bt, name, group):
    assert bt.kernel_group(name) == group


def test_own_triton_kernels_count_as_attention_whatever_their_names(bt, tmp_path, monkeypatch):
    pytest.importorskip("triton")
    (tmp_path / "fake_backend.py").write_text(
        "import triton\n\n@triton.jit\ndef _band_fwd(x):\n    pass\n\n"
        "@triton.autotune(configs=[triton.Config({})], key=[])\n@triton.jit\ndef _band_bwd_dq(x):\n    pass\n\n"
        "def attend(q):\n    return q\n")
    spec = importlib.util.spec_from_file_location("sparse_transformer.attention.backends._fake_for_test", tmp_path / "fake_backend.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    own = bt.own_kernel_names()
    assert {"_band_fwd", "_band_bwd_dq"} <= own
    assert bt.kernel_group("_band_bwd_dq", own) == "attention" and bt.kernel_group("_band_bwd_dq") == "other"


def test_a_cpu_profile_parses_and_has_no_device_time(bt):
    x = torch.randn(64, 64)
    trace = bt.profile_trace(lambda: x @ x, 2, "cpu")
    assert any(ev.get("cat") == "cpu_op" for ev in trace["traceEvents"])
    assert bt.device_events(trace) == []


# ------------------------------------------------------------------------------------------------
# bench/train.py: arguments, shapes, dense kernels, records
# ------------------------------------------------------------------------------------------------
def test_arguments_defaults_and_one_line_errors(bt, capsys):
    a = bt.parse_args([])
    assert a.modes == ["model", "cudagraphs"] and a.shapes == ["imagenet64", "enwik8"] and a.backend == "auto"
    assert a.batches == "shape" and a.recompute == "shape" and (a.steps, a.repeats, a.time_budget) == (10, 3, None)
    a = bt.parse_args(["--modes", "eager,model,cudagraphs,blocks", "--batches", "2,4,8", "--backend", "triton",
                       "--shapes", "classical", "--time-budget", "500"])
    assert a.modes == ["eager", "model", "cudagraphs", "blocks"] and a.batches == [2, 4, 8] and a.time_budget == 500
    for bad in (["--modes", "compiled"], ["--shapes", "imagenet"], ["--batches", "0"], ["--batches", "two"],
                ["--recompute", "maybe"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as e:
            bt.parse_args(bad)
        assert e.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_plan_uses_each_shapes_batch_and_recompute_unless_given(bt):
    p = bt.plan(bt.parse_args(["--shapes", "imagenet64,classical", "--modes", "model"]))
    assert p == [("imagenet64", 2, "model", False), ("classical", 1, "model", True)]
    p = bt.plan(bt.parse_args(["--shapes", "enwik8", "--modes", "eager,cudagraphs", "--batches", "2,4", "--recompute", "both"]))
    assert len(p) == 8 and p[0] == ("enwik8", 2, "eager", False) and p[-1] == ("enwik8", 4, "cudagraphs", True)


def test_classical_shape_is_the_experiments_model(bt):
    cfg = bt.net_config(bt.SHAPES["classical"], dense=False, recompute=True, backend="flex")
    m, a = cfg.model, cfg.attention
    assert (cfg.seq_len, m.n_layer, m.d_model, m.n_head, a.stride) == (65536, 48, 512, 16, 256)
    assert (a.pattern, a.integration, a.layout, m.recompute, a.backend) == ("strided", "interleaved", None, True, "flex")
    dense = bt.net_config(bt.SHAPES["classical"], dense=True, recompute=True, backend="flex")
    assert dense.attention.pattern == "dense" and dense.attention.backend == "auto" and dense.model.recompute
    assert bt.TARGETS == {"imagenet64": 3.5, "enwik8": 2.0, "classical": 20.0}


def test_dense_kernel_timing_records_errors_and_picks_the_fastest(bt):
    times = bt.time_dense_kernels(1, 2, 64, 8, 16, "cpu", rep=1)  # d_qk != d_v, as cifar10's half-size QK
    assert set(times) == {"default", "cudnn", "flash", "efficient"}
    assert isinstance(times["default"], float) and str(times["cudnn"]).startswith("error")
    assert bt.ranked_kernels({"default": 5.0, "cudnn": 4.9, "flash": 5.7, "efficient": "error: no"}) == ["cudnn", "default", "flash"]
    assert bt.ranked_kernels({"default": 5.0, "cudnn": 5.0}) == ["default", "cudnn"]
    assert bt.ranked_kernels({"cudnn": "error: x"}) == []


def test_the_dense_arm_falls_back_to_the_next_fastest_kernel(bt, monkeypatch):
    tried = []

    def run_arm(name, spec, dense, mode, batch, rc, args, device):
        tried.append(torch.backends.cuda.flash_sdp_enabled())  # what sdpa_kernel(<kernel>) switched on
        if len(tried) == 1:
            raise RuntimeError("CUDA graph capture failed\nmore")
        return {"tokens_per_s": 1}

    monkeypatch.setattr(bt, "run_arm", run_arm)
    times = {"default": 5.0, "cudnn": 4.0, "flash": 4.5, "efficient": "error: no"}
    r = bt.run_dense("tiny", TINY, "cudagraphs", 2, False, None, "cpu", times, lambda: False)
    assert tried == [False, True]  # cuDNN first (flash off), then flash
    assert r["dense_kernel"] == "flash" and r["dense_kernels_failed"] == {"cudnn": "RuntimeError: CUDA graph capture failed"}
    assert r["dense_kernel_ms"] is times
    tried.clear()

    def fails(*a):
        tried.append(1)
        raise ValueError("no")

    monkeypatch.setattr(bt, "run_arm", fails)
    with pytest.raises(RuntimeError, match="every SDPA kernel"):
        bt.run_dense("tiny", TINY, "model", 2, False, None, "cpu", times, lambda: False)
    assert len(tried) == 3


def test_resolved_backends_read_the_prepared_plans(bt):
    for dense, want in ((True, ["sdpa"]), (False, ["blocked"])):
        net = bt.build(bt.net_config(TINY, dense, False))
        assert bt.resolved_backends(net, "cpu") == want  # before prepare: resolved per layer
        net.prepare(128, "cpu")
        assert bt.resolved_backends(net, "cpu") == want


def _rec(shape, mode, batch, dense, tok, **kw):
    return dict(shape=shape, arm="dense-sdpa" if dense else "strided", mode=mode, batch=batch, recompute=False, tokens_per_s=tok,
                mfu=0.2, gpu_busy=0.9, peak_mem_gb=10.0, backend=["sdpa"] if dense else ["flex"], **kw)


def test_pairs_targets_best_batch_table_and_plot(bt, tmp_path):
    recs = []
    for batch, (d, s) in {2: (80_000, 200_000), 4: (85_000, 300_000), 8: (86_000, 290_000)}.items():
        dense = _rec("imagenet64", "cudagraphs", batch, True, d, dense_kernel="cudnn")
        sparse = _rec("imagenet64", "cudagraphs", batch, False, s)
        bt.compare(dense, sparse)
        recs += [dense, sparse]
    assert recs[1]["speedup_vs_dense"] == 2.5 and recs[1]["target_speedup"] == 3.5 and recs[1]["meets_target"] is False
    assert recs[3]["meets_target"] is True  # 300k / 85k = 3.53
    err = dict(shape="enwik8", arm="fixed", mode="model", batch=2, recompute=False, error="PatternError: triton")
    skip = dict(shape="enwik8", arm="dense-sdpa", mode="model", batch=2, recompute=False, skipped="time budget of 1 s spent")
    bt.compare(skip, err)
    recs += [skip, err]
    (best,) = bt.best_batches(recs)
    assert best["batch"] == 4 and best["batches_tried"] == [2, 4, 8] and best["dense_tokens_per_s"] == 85_000
    t = bt.table(recs)
    assert t.count("\n") == 2 + 3  # header, rule, 4 pairs
    assert "| imagenet64 | cudagraphs | 4 | False | 85,000 (cudnn) | 300,000 (flex) | 3.53× (3.5×) ✓" in t
    assert "2.50× (3.5×) ✗" in t and "PatternError: triton" in t and "| skipped |" in t
    assert bt.row(err).endswith("PatternError: triton") and "skipped: time budget" in bt.row(skip)
    bt.write(tmp_path / "train-x.json", recs, {"card": "test"})
    bt.main(["--report", str(tmp_path / "train-x.json")])
    if bt.pyplot() is not None:
        assert (tmp_path / "train-x.png").stat().st_size > 1000


def test_cpu_smoke_run_both_arms_append_and_time_budget(bt, tmp_path, monkeypatch):
    """The whole loop with a tiny model, eager, on the CPU: dense then sparse arm, timing with
    repeats, the profiler pass, records, partial and final JSON; then --append and --time-budget."""
    monkeypatch.setitem(bt.SHAPES, "tiny", TINY)
    monkeypatch.setitem(bt.TARGETS, "tiny", 1.0)
    common = ["--device", "cpu", "--shapes", "tiny", "--modes", "eager", "--steps", "2", "--repeats", "2",
              "--profile-steps", "1", "--out", str(tmp_path)]
    bt.main(common)
    res = json.loads((tmp_path / "train-cpu.json").read_text())
    dense, sparse = res["runs"]
    assert dense["arm"] == "dense-sdpa" and dense["backend"] == ["sdpa"] and dense["dense_kernel"] in ("default", "flash")
    assert set(dense["dense_kernel_ms"]) == {"default", "cudnn", "flash", "efficient"}
    assert sparse["backend"] == ["blocked"] and sparse["dense_kernel"] == dense["dense_kernel"]
    for r in (dense, sparse):
        assert r["tokens_per_s"] > 0 and len(r["step_s_runs"]) == 2 and r["steps_timed"] == 2 and r["graph_breaks"] == 0
        assert r["gpu_busy"] is None and r["kernels_per_step"] == 0 and r["profiled_steps"] == 1
        assert 0 <= r["mfu"] < 1 and r["loss"] > 0 and r["card"] == "cpu" and r["batch"] == 2 and r["recompute"] is False
    assert sparse["speedup_vs_dense"] == pytest.approx(sparse["tokens_per_s"] / dense["tokens_per_s"], rel=1e-2)
    assert sparse["target_speedup"] == 1.0 and isinstance(sparse["meets_target"], bool)
    assert res["best_batch"][0]["batch"] == 2 and res["meta"]["repeats"] == 2

    first = tmp_path / "first.json"
    first.write_text((tmp_path / "train-cpu.json").read_text())
    bt.main(common + ["--append", str(first), "--batches", "3", "--time-budget", "0"])
    runs = json.loads((tmp_path / "train-cpu.json").read_text())["runs"]
    assert [r.get("batch") for r in runs] == [2, 2, 3, 3]
    assert "tokens_per_s" in runs[0] and all("time budget" in r["skipped"] for r in runs[2:])


def test_the_train_bench_imports_nothing_the_gpu_machine_lacks():
    code = ("import runpy, sys\nsys.argv = ['bench/train.py', '--help']\n"
            "try:\n    runpy.run_path('bench/train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('heavy', sorted(m for m in ('omegaconf', 'datasets', 'wandb', 'lightning') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr
    assert "heavy []" in r.stdout and "--time-budget" in r.stdout


# ------------------------------------------------------------------------------------------------
# bench/ddp.py
# ------------------------------------------------------------------------------------------------
def _csv_file(path: Path, rows: list[dict]) -> Path:
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path


def test_ddp_reads_windows_and_losses_from_metrics_csv(bd, tmp_path):
    rows = [{"step": s, "epoch": 0, "train/loss": 5 - s / 10} for s in range(40)]
    rows += [{"step": s, "train/device/items_per_sec": 1000 + s, "train/items_per_sec": 2000 + 2 * s, "train/device/mfu": 0.1}
             for s in (19, 29, 39)]
    rows += [{"step": 40, "validate/device/items_per_sec": 5}]
    windows, loss = bd.read_metrics(_csv_file(tmp_path / "new.csv", rows), 2, 10, 10, warmup_key=True)
    assert [w["tokens_per_s"] for w in windows] == [2038, 2058, 2078]  # all devices, as logged
    assert [w["tokens_per_s_per_gpu"] for w in windows] == [1019, 1029, 1039] and windows[0]["mfu"] == 0.1
    assert len(loss) == 40 and loss[3] == pytest.approx(4.7)
    # an older callback: a rolling window logged every step; keep the windows past warm-up, disjoint
    rows = [{"step": s, "train/device/items_per_sec": 100 * s} for s in range(1, 40)]
    windows, _ = bd.read_metrics(_csv_file(tmp_path / "old.csv", rows), 1, 10, 10, warmup_key=False)
    assert [w["step"] for w in windows] == [19, 29, 39] and windows[0]["tokens_per_s"] == 1900  # × 1 GPU


def test_ddp_medians_spread_efficiency_and_loss_comparison(bd):
    def rec(gpus, batch, rep, tok, curve=None, bpd=4.8):
        return dict(exp="enwik8", gpus=gpus, batch_per_gpu=batch, repeat=rep, tokens_per_s=tok, val_bpd_end=bpd,
                    curve=curve is not None, loss_curve=curve or [[0, 4.0]])
    records = [rec(1, 2, 0, 100_000), rec(2, 2, 0, 185_000), rec(1, 2, 1, 96_000), rec(2, 2, 1, 190_000),
               rec(1, 2, 2, 104_000), rec(2, 2, 2, 180_000),
               # the loss-curve runs (logged every step): compared, never counted in the throughput
               rec(2, 2, 0, 1, [[0, 5.0], [1, 4.91]]), rec(1, 4, 0, 150_000, [[0, 5.0], [1, 4.9]], bpd=4.81),
               dict(exp="enwik8", gpus=2, batch_per_gpu=2, repeat=3, error="exit 1: boom")]
    table = bd.settings(records)
    one = next(t for t in table if (t["gpus"], t["batch_per_gpu"]) == (1, 2))
    two = next(t for t in table if (t["gpus"], t["batch_per_gpu"]) == (2, 2))
    assert one["tokens_per_s"] == 100_000 and one["spread"] == 0.08 and one["tokens_per_s_runs"] == [100_000, 96_000, 104_000]
    assert two["tokens_per_s"] == 185_000 and two["tokens_per_s_per_gpu"] == 92_500 and two["errors"] == ["exit 1: boom"]
    assert two["runs"] == 4 and two["ok_runs"] == 3
    (d,) = bd.derive(records, table, 2, [1, 2])
    assert d["scaling_efficiency"] == 0.925 and d["meets_target"] is True and d["target_efficiency"] == 0.9
    assert d["val_bpd_k_gpus"] == 4.8 and d["val_bpd_one_gpu"] == 4.81
    assert d["max_abs_train_loss_diff"] == 0.01 and d["train_loss_steps_compared"] == 2


def test_ddp_arguments_and_command(bd, capsys):
    a = bd.parse_args(["--exp", "enwik8", "--exp", "imagenet64,cifar10", "--gpus", "2", "data.num_workers=2"])
    assert a.exp == ["enwik8", "imagenet64", "cifar10"] and a.counts == [1, 2] and a.overrides == ["data.num_workers=2"]
    assert bd.parse_args([]).exp == ["enwik8", "imagenet64"] and bd.parse_args([]).repeats == 3
    for bad in (["--gpus", "x"], ["--window", "1"], ["oops"]):
        with pytest.raises(SystemExit) as e:
            bd.parse_args(bad)
        assert e.value.code == 2
    capsys.readouterr()
    a = SimpleNamespace(**{**vars(bd.parse_args(["data.shape=[8,8,4]"])), "text": "/t.txt", "cache_dir": "/c"})
    cmd = bd.command("imagenet64", 2, 2, a, Path("/run"), warmup_key=True)
    assert "callbacks.throughput.warmup=10" in cmd and "trainer.max_steps=40" in cmd and "trainer.strategy=ddp" in cmd
    assert cmd.index("data.shape=[64,64,3]") < cmd.index("data.shape=[8,8,4]")  # the user's override wins
    assert "data.path=/t.txt" in cmd and "data.format=raw" in cmd and "model.dropout=0.0" in cmd
    assert not any("throughput.warmup" in c for c in bd.command("enwik8", 1, 2, a, Path("/run"), warmup_key=False))


def test_ddp_plan_runs_the_loss_comparison_first_then_interleaves_repeats(bd):
    p = bd.plan(bd.parse_args(["--exp", "enwik8,imagenet64", "--repeats", "3"]))
    assert p[:8] == [("enwik8", 1, 2, 0, False), ("enwik8", 2, 2, 0, False), ("enwik8", 2, 2, 0, True), ("enwik8", 1, 4, 0, True),
                     ("imagenet64", 1, 2, 0, False), ("imagenet64", 2, 2, 0, False), ("imagenet64", 2, 2, 0, True),
                     ("imagenet64", 1, 4, 0, True)]
    assert p[8:] == [(e, k, 2, r, False) for r in (1, 2) for e in ("enwik8", "imagenet64") for k in (1, 2)]


def test_ddp_throughput_runs_log_per_window_and_loss_curve_runs_every_step(bd):
    # a per-step log reads the loss on the host every step: a sync the throughput runs must not pay
    a = SimpleNamespace(**{**vars(bd.parse_args([])), "text": "/t.txt", "cache_dir": "/c"})
    assert "trainer.log_every_n_steps=10" in bd.command("enwik8", 2, 2, a, Path("/run"), True)
    assert "trainer.log_every_n_steps=1" in bd.command("enwik8", 2, 2, a, Path("/run"), True, curve=True)


def test_ddp_time_budget_records_skipped_runs(bd, tmp_path, capsys):
    bd.main(["--accelerator", "cpu", "--gpus", "1", "--exp", "enwik8", "--repeats", "2", "--time-budget", "0",
             "--text-mb", "0.01", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "ddp-cpu.json").read_text())
    assert len(res["runs"]) == 2 and all("time budget" in r["skipped"] for r in res["runs"])
    assert res["settings"][0]["tokens_per_s"] is None and len(res["settings"][0]["errors"]) == 2
    assert "skipped: time budget" in capsys.readouterr().out


def test_ddp_a_run_past_its_timeout_is_killed_with_its_children(bd, tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))\ntime.sleep(60)\n")
    monkeypatch.setattr(bd, "command", lambda *a, **k: [sys.executable, "-c", code])
    r = bd.run("enwik8", 2, 2, SimpleNamespace(run_timeout=3), tmp_path, True, 0)
    assert r["error"] == "timed out after 3 s" and r["gpus"] == 2
    pid = int(pid_file.read_text())
    for _ in range(50):  # killed: gone, or a zombie until init reaps it
        try:
            if "\tZ" in Path(f"/proc/{pid}/status").read_text():
                break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the run's child process outlived the timeout")


def test_ddp_local_text_is_torch_sources(bd, tmp_path):
    p = bd.build_text(tmp_path / "t.txt", 0.25)
    data = p.read_bytes()
    assert len(data) == 2**18 and b"import" in data


@pytest.mark.slow
def test_ddp_bench_runs_one_and_two_cpu_processes(tmp_path):
    """bench/ddp.py end to end with gloo: 1 and 2 processes, a tiny enwik8-shaped model on the
    auto text: per-window throughput, the table, efficiency and the equal-global-batch losses."""
    cmd = [sys.executable, "bench/ddp.py", "--accelerator", "cpu", "--gpus", "2", "--exp", "enwik8", "--repeats", "1",
           "--warmup-steps", "2", "--window", "2", "--windows", "2", "--text-mb", "1", "--val-windows", "2",
           "--out", str(tmp_path), "model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.seq_len=256",
           "attention.stride=16", "attention.summary=4", "model.recompute=false",
           "attention.summary_heads=2"]  # enwik8's 4 summary slices need 4 heads; this model has 2
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "ddp-cpu.json").read_text())
    assert [(x["gpus"], x["batch_per_gpu"], x["curve"]) for x in res["runs"]] == [(1, 2, False), (2, 2, False), (2, 2, True), (1, 4, True)]
    for x in res["runs"]:
        assert "error" not in x and len(x["windows"]) == 2 and x["tokens_per_s"] > 0
    (d,) = res["derived"]
    assert d["scaling_efficiency"] > 0 and d["train_loss_steps_compared"] == 6 and d["max_abs_train_loss_diff"] < 1e-3
    assert "weak-scaling efficiency" in r.stdout
