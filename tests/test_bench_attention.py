"""bench/attention.py on the CPU: argument parsing, shapes, the choice of the dense baseline, records,
table, summary and plot, and the whole bench at a tiny size with a fake timer (CUDA timing and the
flex and triton kernels need the GPU machine)."""

import contextlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import one_thread  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "bench" / "attention.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def test_arguments(bench):
    a = bench.parse_args([])
    assert (a.lengths, a.extra_head_dims, a.backends, a.dtypes, a.qk_dim) == ([4096, 16384, 65536], [32, 128], ["flex", "triton"], ["bf16"], None)
    assert a.patterns == ["local", "stride", "strided", "fixed"]
    q = bench.parse_args(["--quick"])
    assert (q.lengths, q.extra_head_dims) == ([4096, 16384], [])
    assert bench.parse_args(["--quick", "--lengths", "1024"]).lengths == [1024]
    a = bench.parse_args(["--dtypes", "bf16,fp16", "--qk-dim", "32", "--backends", "triton", "--extra-head-dims", ""])
    assert (a.dtypes, a.qk_dim, a.backends, a.extra_head_dims) == (["bf16", "fp16"], 32, ["triton"], [])
    for bad in (["--dtypes", "fp32"], ["--patterns", "local,nope"], ["--backends", ""], ["--qk-dim", "0"]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(bad)
        assert e.value.code == 2


def test_shapes_hold_tokens_constant(bench):
    shapes = bench.plan_shapes(bench.parse_args([]))
    assert [(s.n, s.head_dim, s.qk_dim, s.batch, s.heads, s.stride) for s in shapes] == [
        (4096, 64, 64, 32, 16, 64), (16384, 64, 64, 8, 16, 128), (65536, 64, 64, 2, 16, 256),
        (16384, 32, 32, 8, 16, 128), (16384, 128, 128, 8, 16, 128)]
    assert all(s.batch * s.heads * s.n == 128 * 16384 and s.dtype == "bf16" and not s.long for s in shapes)
    shapes = bench.plan_shapes(bench.parse_args(["--quick", "--dtypes", "bf16,fp16", "--qk-dim", "32", "--long"]))
    assert [(s.n, s.dtype, s.qk_dim, s.head_dim) for s in shapes if not s.long] == [
        (4096, "bf16", 32, 64), (16384, "bf16", 32, 64), (4096, "fp16", 32, 64), (16384, "fp16", 32, 64)]
    assert [(s.n, s.batch, s.heads, s.dtype) for s in shapes if s.long] == [(262144, 1, 8, "bf16"), (1048576, 1, 8, "bf16")]


def test_fixed_heads_at_16k(bench):
    shape = bench.plan_shapes(bench.parse_args(["--lengths", "16384", "--extra-head-dims", ""]))[0]
    heads = bench.heads_for("fixed", shape)
    assert len(heads) == 16
    summaries = [p for parts in heads for p in parts if p.name == "summary"]
    assert len(summaries) == 16 and {(p.summary, p.slice) for p in summaries} == {(32, s) for s in range(4)}  # 4 slices of l = 128


def _rec(bench, pattern, backend, ms, kernel=None, n=16384, d=64, error=None, pairs=1000, **kw):
    shape = bench.Shape(n, 8, 16, d, d, "bf16")
    r = bench.base_record(shape, pattern, backend, sdpa_kernel=kernel)
    if error:
        return dict(r, error=error, **kw)
    return dict(r, fwd_ms=ms / 3, fwdbwd_ms=ms, fwdbwd_min_ms=ms * 0.9, fwdbwd_max_ms=ms * 1.1, pairs=pairs,
                peak_mem_gb=1.0, max_abs_diff=None, **kw)


def test_the_fastest_dense_kernel_is_the_baseline(bench):
    dense = [_rec(bench, "dense", "sdpa", 36.0, "default"), _rec(bench, "dense", "sdpa", 0, "cudnn", error="refused"),
             _rec(bench, "dense", "sdpa", 30.0, "flash"), _rec(bench, "dense", "sdpa", 30.0, "efficient")]
    best = bench.fastest(dense)
    assert best["sdpa_kernel"] == "flash"  # the first of equals
    local = bench.with_baseline(_rec(bench, "local", "flex", 2.0, pairs=100), best)
    assert local["dense_kernel"] == "flash" and local["dense_fwdbwd_ms"] == 30.0
    assert (local["speedup_vs_dense"], local["fwd_speedup_vs_dense"], local["ideal_speedup"]) == (15.0, 15.0, 10.0)
    assert local["target_speedup"] == 20 and local["meets_target"] is False
    fixed = bench.with_baseline(_rec(bench, "fixed", "flex", 10.0), best)
    assert fixed["target_speedup"] == 2.5 and fixed["meets_target"] is True
    assert bench.with_baseline(_rec(bench, "fixed", "flex", 10.0, d=32), best)["target_speedup"] is None
    failed = bench.with_baseline(_rec(bench, "stride", "triton", 0, error="unknown"), best)
    assert failed["dense_kernel"] == "flash" and failed["speedup_vs_dense"] is None and failed["meets_target"] is None
    assert bench.fastest([dense[1]]) is None
    none = bench.with_baseline(_rec(bench, "local", "flex", 2.0), None)
    assert none["dense_kernel"] is None and none["speedup_vs_dense"] is None
    assert none["speedup_vs_dense_graph"] is None and none["meets_target_graph"] is None


def test_the_graph_timings_have_their_own_fastest_dense_kernel(bench):
    """In CUDA-graph replay the fastest dense kernel may be another one; each speed-up is against the
    fastest timed the same way, and a record without graph timings has no graph speed-up."""
    dense = [_rec(bench, "dense", "sdpa", 36.0, "default", fwdbwd_graph_ms=35.0),
             _rec(bench, "dense", "sdpa", 30.0, "flash", fwdbwd_graph_ms=32.0),
             _rec(bench, "dense", "sdpa", 40.0, "efficient", fwdbwd_graph_ms=None)]
    best, best_graph = bench.fastest(dense), bench.fastest(dense, "fwdbwd_graph_ms")
    assert best["sdpa_kernel"] == "flash" and best_graph["sdpa_kernel"] == "flash"
    dense[0]["fwdbwd_graph_ms"] = 20.0
    best_graph = bench.fastest(dense, "fwdbwd_graph_ms")
    assert best_graph["sdpa_kernel"] == "default"
    local = bench.with_baseline(_rec(bench, "local", "triton", 2.0, fwdbwd_graph_ms=0.8), best, best_graph)
    assert (local["speedup_vs_dense"], local["meets_target"]) == (15.0, False)
    assert (local["dense_kernel_graph"], local["dense_fwdbwd_graph_ms"], local["speedup_vs_dense_graph"]) == ("default", 20.0, 25.0)
    assert local["meets_target_graph"] is True
    eager_only = bench.with_baseline(_rec(bench, "local", "triton", 2.0), best, best_graph)
    assert eager_only["speedup_vs_dense_graph"] is None and eager_only["meets_target_graph"] is None
    assert bench.fastest([dense[2]], "fwdbwd_graph_ms") is None


def test_measured_record_counts_both_head_dims(bench):
    base = bench.base_record(bench.Shape(4096, 2, 16, 64, 32, "fp16"), "local", "triton")
    r = bench.measured_record(base, fwd=[1.0, 3.0, 2.0], fwdbwd=[4.0, 2.0, 9.0, 3.0], pairs=10**9, tiles=None,
                              peak_gb=0.5, recompiles=0, setup_s=1.23)
    assert (r["fwd_ms"], r["fwdbwd_ms"], r["fwdbwd_min_ms"], r["fwdbwd_max_ms"], r["reps"]) == (2.0, 3.5, 2.0, 9.0, 4)
    flops = 2 * 10**9 * (32 + 64) * 2
    assert r["fwd_tflops"] == round(flops / 2e-3 / 1e12, 2) and r["useful_tflops"] == round(3.5 * flops / 3.5e-3 / 1e12, 2)
    assert r["dtype"] == "float16" and r["flop_ratio"] is None and r["kernel_options"] is None and r["sdpa_chosen"] is None
    assert (r["fwd_graph_ms"], r["fwdbwd_graph_ms"]) == (None, None) and "graph_error" not in r
    g = bench.measured_record(base, fwd=[1.0], fwdbwd=[4.0], pairs=1, tiles=None, peak_gb=None, recompiles=0, setup_s=0.0,
                              graph=dict(fwd=[0.5, 0.7, 0.6], fwdbwd=[2.0, 1.0]))
    assert (g["fwd_graph_ms"], g["fwdbwd_graph_ms"]) == (0.6, 1.5)
    e = bench.measured_record(base, fwd=[1.0], fwdbwd=[4.0], pairs=1, tiles=None, peak_gb=None, recompiles=0, setup_s=0.0,
                              graph=dict(error="RuntimeError: capture failed"))
    assert e["fwdbwd_graph_ms"] is None and e["graph_error"] == "RuntimeError: capture failed" and e["fwdbwd_ms"] == 4.0
    assert bench.base_record(bench.Shape(4096, 2, 16, 64, 64, "bf16"), "local", "flex")["kernel_options"] == "default"


def test_each_arm_gets_the_models_layout(bench, monkeypatch):
    """q, k, v are (B, H, n, d) views of contiguous (B, n, H, d) leaves, d_qk != d_v allowed; the
    upstream gradient is a view of the same kind. Attention is prepared once per arm, as the layer
    does, and every call passes the prepared state."""
    seen, prepared = {}, []

    def prepare(heads, n, device, backend, dims):
        prepared.append((n, str(device), backend, dims))
        return spy, "the-state"

    def spy(q, k, v, heads, scale, prepared=None):
        assert prepared == "the-state" and scale == 16 ** -0.5
        seen.update(shapes=[tuple(x.shape) for x in (q, k, v)], views=[x.transpose(1, 2).is_contiguous() for x in (q, k, v)],
                    contiguous=[x.is_contiguous() for x in (q, k, v)], calls=seen.get("calls", 0) + 1)
        s = (q @ k.transpose(-1, -2)).float().masked_fill(torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).triu(1), -1e9)
        out = s.softmax(-1).to(v.dtype) @ v
        if out.requires_grad:  # not in the no_grad forward
            out.register_hook(lambda g: seen.update(grad_view=g.transpose(1, 2).is_contiguous()))
        return out

    monkeypatch.setattr(bench.backends, "prepare", prepare)
    env = bench.Env(device="cpu", timer=lambda fn: [fn(), 1.0][1:])
    rec, out = bench.measure(bench.Shape(64, 2, 4, 32, 16, "bf16"), "local", "mine", env)
    assert prepared == [(64, "cpu", "mine", (16, 32))] and seen["calls"] > 3
    assert seen["shapes"] == [(2, 4, 64, 16), (2, 4, 64, 16), (2, 4, 64, 32)]
    assert seen["views"] == [True] * 3 and seen["contiguous"] == [False] * 3 and seen["grad_view"]
    assert out.shape == (2, 4, 64, 32) and rec["fwdbwd_ms"] == 1.0 and rec["qk_dim"] == 16 and rec["peak_mem_gb"] is None


def _fake_timer(script):
    """Runs fn once and answers the next timings of `script` (then 1 ms)."""
    it = iter(script)

    def timer(fn):
        fn()
        return list(next(it, [1.0]))

    return timer


def test_the_bench_end_to_end_on_cpu(bench, tmp_path, capsys):
    """SDPA kernels the CPU lacks (cuDNN, efficient) and backends that are unknown (triton) or refuse the
    CPU (flex) are error records; the fastest working dense kernel is every record's baseline; JSON and
    PNG are written, each plot line once."""
    # default: fwd 1 ms, fwd+bwd 10 ms; then flash: 1 ms, 5 ms (4-6): flash is the baseline
    timer = _fake_timer([[1.0], [10.0, 9.0, 11.0], [1.0], [5.0, 4.0, 6.0]])
    recs = bench.main(["--lengths", "256", "--extra-head-dims", "", "--patterns", "local,stride,fixed", "--backends",
                       "blocked,reference,triton,flex", "--out", str(tmp_path), "--tag=-t"],
                      env=bench.Env(device="cpu", timer=timer), tokens=512, heads=2)
    assert json.loads((tmp_path / "attention-cpu-t.json").read_text()) == recs
    assert all(r["n"] == 256 and r["batch"] == 1 and r["heads"] == 2 and not r["long"] and not r["variant"] for r in recs)
    dense = {r["sdpa_kernel"]: r for r in recs if r["backend"] == "sdpa"}
    assert list(dense) == ["default", "cudnn", "flash", "efficient"]
    assert "error" in dense["cudnn"] and "error" in dense["efficient"]
    assert dense["flash"]["fwdbwd_ms"] == 5.0 and dense["flash"]["fwdbwd_min_ms"] == 4.0 and dense["default"]["sdpa_chosen"] == "flash"
    assert dense["flash"]["max_abs_diff"] == 0.0 and dense["flash"]["diff_vs"] == "sdpa:default"
    assert all(r["dense_kernel"] == "flash" and r["dense_fwdbwd_ms"] == 5.0 for r in recs)
    arms = {(r["pattern"], r["backend"]): r for r in recs if r["backend"] != "sdpa"}
    assert len(arms) == 3 * 4
    for p in ("local", "stride"):
        ok = arms[(p, "blocked")]
        assert "error" not in ok and ok["speedup_vs_dense"] == 5.0 and ok["ideal_speedup"] > 1 and ok["flop_ratio"] is None
        assert ok["diff_vs"] is None and arms[(p, "reference")]["diff_vs"] == "blocked" and arms[(p, "reference")]["max_abs_diff"] < 0.05
        # triton runs here only in the tests' interpreter (its own tests check it); flex has no CPU backward
        assert "error" not in arms[(p, "triton")] and "CUDA" in arms[(p, "flex")]["error"]
    assert all("error" in arms[("fixed", b)] for b in ("blocked", "reference"))  # c = 32 > l = 16: no summary slice
    keys = {"pattern", "backend", "n", "stride", "summary", "batch", "heads", "head_dim", "dtype", "fwd_ms", "fwdbwd_ms",
            "useful_tflops", "fwd_tflops", "pairs", "flop_ratio", "peak_mem_gb", "recompiles_in_timed_steps", "kernel_options",
            "dense_fwdbwd_ms", "speedup_vs_dense", "fwd_speedup_vs_dense", "ideal_speedup", "setup_s", "card", "torch",
            "triton", "commit", "dense_kernel", "target_speedup", "fwdbwd_min_ms", "fwdbwd_max_ms"}
    assert all(keys <= set(r) for r in recs if "error" not in r)
    out = capsys.readouterr().out
    assert "sdpa:default=flash" in out and "fwd+bwd speed-up vs the fastest dense kernel" in out
    assert (tmp_path / "attention-cpu-t.png").exists()
    lines = bench.plot_lines(recs, "bfloat16")
    assert list(lines) == ["dense, fastest SDPA kernel: flash", "local (blocked)", "local (reference)", "local (triton)",
                           "stride (blocked)", "stride (reference)", "stride (triton)"]
    assert lines["dense, fastest SDPA kernel: flash"] == {256: 5.0}


def test_long_shapes_and_variants_on_cpu(bench, tmp_path, monkeypatch):
    """--long and --variants go the same way: long shapes time dense only up to LONG_DENSE_MAX; the
    variants (flex: errors on a CPU) reuse the main run's dense baseline at their n."""
    monkeypatch.setattr(bench, "LONG_LENGTHS", (256, 512))
    monkeypatch.setattr(bench, "LONG_DENSE_MAX", 256)
    monkeypatch.setattr(bench, "VARIANT_N", 256)
    recs = bench.main(["--lengths", "256", "--extra-head-dims", "", "--patterns", "local", "--backends", "blocked",
                       "--long", "--variants", "--out", str(tmp_path)],
                      env=bench.Env(device="cpu", timer=_fake_timer([[1.0], [3.0], [1.0], [2.0]])), tokens=512, heads=2)
    main = [r for r in recs if not r["long"] and not r["variant"]]
    assert {r["dense_kernel"] for r in main} == {"flash"}
    long = {(r["n"], r["backend"], r["sdpa_kernel"]): r for r in recs if r["long"]}
    assert {k for k in long if k[1] == "sdpa"} == {(256, "sdpa", k) for k in bench.DENSE_KERNELS}  # none at 512
    assert long[(512, "blocked", None)]["pattern"] == "strided" and long[(512, "blocked", None)]["dense_kernel"] is None
    assert long[(256, "blocked", None)]["dense_kernel"] == "default" and long[(256, "blocked", None)]["heads"] == 8
    variants = [r for r in recs if r["variant"]]
    assert len(variants) == 2 * len(bench.VARIANT_OPTIONS) and all(r["backend"] == "flex" and "error" in r for r in variants)
    assert all(r["dense_kernel"] == "flash" for r in variants)  # the main run's baseline, not re-measured
    assert json.loads((tmp_path / "attention-cpu.json").read_text()) == recs


def _synthetic(bench):
    """Records of three lengths, two dtypes and two head dims, with long, variant and error records."""
    recs = []
    for dtype in ("bf16", "fp16"):
        for n, d, winner in ((4096, 64, "cudnn"), (16384, 64, "flash"), (65536, 64, "cudnn"), (16384, 32, "flash")):
            shape = bench.Shape(n, 128 * 16384 // (16 * n), 16, d, d, dtype)
            dense = []
            for k in bench.DENSE_KERNELS:
                base = bench.base_record(shape, "dense", "sdpa", sdpa_kernel=k)
                ms = 0.01 * n * (0.5 if k == winner else 1.0)
                dense.append(bench.measured_record(base, fwd=[ms / 3], fwdbwd=[ms], pairs=16 * n * (n + 1) // 2, tiles=None,
                                                   peak_gb=1.0, recompiles=0, setup_s=0.1, chosen=k))
            best = bench.fastest(dense)
            recs += [bench.with_baseline(r, best) for r in dense]
            for p, ratio in (("local", 9.1), ("stride", 7.4), ("strided", 3.5), ("fixed", 1.9)):
                for backend in ("flex", "triton"):
                    base = bench.base_record(shape, p, backend)
                    if backend == "triton" and p == "fixed":
                        recs.append(bench.with_baseline(dict(base, error="KeyError: no kernel"), best))
                        continue
                    ms = best["fwdbwd_ms"] / ratio / (3 if backend == "triton" else 1)
                    recs.append(bench.with_baseline(bench.measured_record(base, fwd=[ms / 3], fwdbwd=[ms], pairs=16 * n * 100,
                                tiles=None, peak_gb=0.1, recompiles=0, setup_s=1.0), best))
        long = bench.Shape(262144, 1, 8, 64, 64, dtype, long=True)
        recs.append(bench.with_baseline(bench.measured_record(bench.base_record(long, "strided", "flex"), fwd=[1.0], fwdbwd=[2.0],
                    pairs=10**9, tiles=None, peak_gb=1.0, recompiles=0, setup_s=1.0), None))
        var = bench.base_record(bench.Shape(16384, 8, 16, 64, 64, dtype), "local", "flex", kernel_options={"num_warps": 8}, variant=True)
        recs.append(bench.with_baseline(bench.measured_record(var, fwd=[1.0], fwdbwd=[2.0], pairs=10**9, tiles=None, peak_gb=1.0,
                                                              recompiles=0, setup_s=1.0), recs[1]))
    return [dict(r, card="NVIDIA H200") for r in recs]


def test_the_plot_draws_each_line_once(bench, tmp_path):
    recs = _synthetic(bench)
    lines = bench.plot_lines(recs, "bfloat16")
    dense = "dense, fastest SDPA kernel: cudnn/flash"
    assert list(lines)[0] == dense and lines[dense] == {4096: 20.48, 16384: 81.92, 65536: 327.68}
    assert set(lines) == {dense} | {f"{p} ({b})" for p in bench.PATTERNS for b in ("flex", "triton")} - {"fixed (triton)"}
    assert all(set(pts) == {4096, 16384, 65536} for pts in lines.values())  # head dim 64 only; no long, variant or fp16 point
    labels = bench.plot(recs, tmp_path / "a.png", "bfloat16")
    assert labels == list(lines) and len(set(labels)) == len(labels) and (tmp_path / "a.png").stat().st_size > 10_000


def test_table_and_summary(bench):
    recs = _synthetic(bench)
    table = bench.table(recs).splitlines()
    assert len(table) == 1 + len(recs)
    assert any("x9.10 flash" in row for row in table)
    assert any("error: KeyError: no kernel" in row for row in table)
    s = bench.summary(recs)
    assert s.count("n=16384 d_qk=64: dense flash 81.92 ms") == 2 and s.count("n=65536 d_qk=64: dense cudnn 327.68 ms") == 2
    assert "9.10x! (>=20)" in s and "27.30x (>=20)" in s and "1.90x! (>=2.5)" in s
    row = next(line for line in s.splitlines() if line.strip().startswith("triton"))
    assert "error! (>=2.5)" in row  # no result is a miss


def test_short_calls_get_more_reps(bench):
    assert len(bench._repeat(lambda: 1.0, 2, 5, 0.05, 100)) == 50  # ~min_s of timed reps
    assert len(bench._repeat(lambda: 1.0, 2, 5, 1.0, 100)) == 100  # at most max_rep
    assert len(bench._repeat(lambda: 100.0, 2, 5, 0.05, 100)) == 5  # at least rep


def test_cuda_timing_and_memory_calls(bench, monkeypatch):
    """The CUDA-only calls (events, synchronisation, peak memory, cache) with a stand-in torch.cuda."""
    calls = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            calls.append("record")

        def elapsed_time(self, other):
            return 2.0

    for name, fn in (("Event", Event), ("synchronize", lambda: calls.append("sync")), ("empty_cache", lambda: calls.append("empty")),
                     ("reset_peak_memory_stats", lambda: calls.append("reset")), ("memory_allocated", lambda: 2**30),
                     ("max_memory_allocated", lambda: 3 * 2**30)):
        monkeypatch.setattr(torch.cuda, name, fn)
    assert bench.cuda_times(lambda: calls.append("fn"), warmup=1, rep=3, min_s=0.0) == [2.0] * 3
    assert calls[:4] == ["record", "fn", "record", "sync"] and calls.count("fn") == 4
    env = bench.Env()
    calls.clear()
    base = env.memory_baseline()
    assert base == 2**30 and calls == ["sync", "reset"] and env.peak_gb(base) == 2.0
    env.free(collect=True)
    assert calls[-1] == "empty"


def test_graph_timing_captures_after_a_side_stream_warm_up(bench, monkeypatch):
    """graph_times with a stand-in torch.cuda: two warm-up calls on a side stream, one captured call,
    then only replays are timed (the function is not called again), and the graph's memory is freed."""
    calls = []

    class Stream:
        def wait_stream(self, other):
            calls.append("wait")

    class Graph:
        def replay(self):
            calls.append("replay")

    @contextlib.contextmanager
    def ctx(name):
        calls.append(f"enter {name}")
        yield
        calls.append(f"exit {name}")

    for name, fn in (("Stream", Stream), ("current_stream", Stream), ("stream", lambda s: ctx("stream")),
                     ("CUDAGraph", Graph), ("graph", lambda g: ctx("graph")), ("empty_cache", lambda: calls.append("empty"))):
        monkeypatch.setattr(torch.cuda, name, fn)
    env = bench.Env(timer=lambda fn: [fn(), fn(), 0.25][2:])
    assert bench.graph_times(lambda: calls.append("fn"), env) == [0.25]
    assert calls == ["wait", "enter stream", "fn", "fn", "exit stream", "wait", "enter graph", "fn", "exit graph",
                     "replay", "replay", "empty"]


def test_graph_timings_keep_what_could_be_captured_and_the_switch_turns_them_off(bench, monkeypatch):
    def fake(fn, env):
        if fn == "fb":
            raise RuntimeError("operation not permitted when stream is capturing")
        return [0.5, 0.7, 0.6]

    monkeypatch.setattr(bench, "graph_times", fake)
    env = bench.Env(device="cpu")
    got = bench.graph_timings("f", "fb", env)
    assert got["fwd"] == [0.5, 0.7, 0.6] and "fwdbwd" not in got
    assert got["error"].startswith("fwdbwd: RuntimeError: operation not permitted")
    fields = bench._graph_fields(got)
    assert (fields["fwd_graph_ms"], fields["fwdbwd_graph_ms"]) == (0.6, None) and "fwdbwd" in fields["graph_error"]
    assert bench.default_env(bench.parse_args([])).graphs is True
    assert bench.default_env(bench.parse_args(["--no-graphs"])).graphs is False
    quick = bench.default_env(bench.parse_args(["--quick", "--no-graphs"]))
    assert (quick.rep, quick.graphs) == (5, False)
