"""The triton backend's kernels against the float64 reference: forward, the log-sum-exp, and
dq/dk/dv, on fresh random inputs of every pattern family, head dims d_qk != d_v, lengths that are
not multiples of l or of the tiles, and empty rows (exactly 0, zero gradient).

On a CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when
there is no GPU), at small sizes and small tiles, so CI checks the kernels' arithmetic and masks;
on a GPU the same checks run compiled, autotuned, at the head dims and dtypes the models use."""

import math
from dataclasses import replace

import pytest
import torch

from sparse_transformer.attention import attend, layer_heads, pattern_mask
from sparse_transformer.attention.patterns import Part
from sparse_transformer.attention.backends import PatternError, check, resolve
from sparse_transformer.attention.backends import triton as tb
from sparse_transformer.config import AttentionConfig, ModelConfig
from sparse_transformer.model import SparseTransformer
from tests.helpers import rel_err

pytestmark = [pytest.mark.filterwarnings("ignore"),
              pytest.mark.skipif(not tb.available(), reason="needs Triton (and a GPU or TRITON_INTERPRET=1)")]
DEV = "cuda" if torch.cuda.is_available() else "cpu"

# (pattern, layer_heads keywords, layer index) covering every kernel family and head grouping
CASES = {
    "local": ("local", {}, 0),
    "stride": ("stride", {}, 0),
    "strided-merged": ("strided", dict(integration="merged"), 0),
    "strided-multihead": ("strided", dict(integration="multihead"), 0),  # a band group and a stride group
    "fixed-merged-slices": ("fixed", dict(summary=2, summary_heads=2, integration="merged"), 0),
    "summary-only": ("summary", dict(summary=2, summary_heads=2), 0),
    "block-only": ("fixed", dict(summary=2, integration="interleaved"), 0),
    "fixed-multihead": ("fixed", dict(summary=2, summary_heads=2, integration="multihead"), 0),
}


def _grads(heads, n, dtype, dk, dv, B=1, seed=0, device=DEV, scale_q=1.0):
    """(out, dq, dk, dv) of the triton backend and of the float64 reference on the same rounded inputs."""
    H = len(heads)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, H, d, generator=g) for d in (dk, dk, dv))
    q = q * scale_q
    leaves = [t.to(device, dtype).requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    out = attend(*[t.transpose(1, 2) for t in leaves], heads, backend="triton")
    ref = attend(*[t.transpose(1, 2) for t in ref_leaves], heads, backend="reference")
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(device)
    got = torch.autograd.grad(out, leaves, go.to(dtype))
    want = torch.autograd.grad(ref, ref_leaves, go)
    return (out, *got), (ref, *want)


def _errors(heads, n, dtype, dk, dv, **kw):
    got, want = _grads(heads, n, dtype, dk, dv, **kw)
    assert all(torch.isfinite(x).all() for x in got)
    return [rel_err(a, b) for a, b in zip(got, want)]


@pytest.fixture
def tiles():
    """Set the interpreter's (BM, BN) for one test (the GPU autotunes its own)."""
    old = tb.INTERPRET_TILES

    def set_(bm, bn):
        tb.INTERPRET_TILES = (bm, bn)

    yield set_
    tb.INTERPRET_TILES = old


@pytest.mark.skipif(DEV != "cpu", reason="interpreter sizes; the GPU test below covers the GPU")
@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_the_float64_reference_fp32(case, tiles):
    pattern, kw, layer = CASES[case]
    tiles(16, 32) if case.startswith("fixed") else tiles(32, 16)  # BM != BN: rows and keys cross tile edges differently
    heads = layer_heads(pattern, 2, 8, layer=layer, **kw)
    errs = _errors(heads, 45, torch.float32, 16, 32, seed=hash(case) % 1000)  # 45: not a multiple of l = 8 or a tile
    assert max(errs) < 1e-5, errs


@pytest.mark.skipif(DEV != "cpu", reason="interpreter sizes")
@pytest.mark.parametrize("case", ["strided-merged", "fixed-merged-slices"])
def test_kernels_fp16_and_square_tiles(case, tiles):
    pattern, kw, layer = CASES[case]
    tiles(16, 16)
    heads = layer_heads(pattern, 2, 8, layer=layer, **kw)
    errs = _errors(heads, 40, torch.float16, 32, 16, B=2, seed=3)
    assert max(errs) < 2e-3, errs


@pytest.mark.skipif(DEV != "cpu", reason="interpreter sizes")
@pytest.mark.parametrize("bm,bn", [(16, 16), (16, 32), (32, 16)])
def test_full_tiles_skip_the_mask_only_where_every_key_is_allowed(bm, bn, tiles, monkeypatch):
    """FULL_ENV=1 (opt-in): the row-tile and key-tile kernels skip the mask on tile pairs every row
    wholly attends. At the edges of that test: a band of l = 47 (a row tile 32 rows after a key tile
    reaches exactly l back: masked), the band's interior (l = 40) and a stride pass's tiles below its
    diagonal, a column pass that skips 2 and 3 diagonals (EXCL 2, 3: the tile just below the
    diagonal is not full), forward and backward; row and key tiles of the same and of different sizes."""
    tiles(bm, bn)
    monkeypatch.setenv(tb.SHORT_ROWS_ENV, "0")
    monkeypatch.setenv(tb.FULL_ENV, "1")
    for pattern, l in (("local", 47), ("local", 40), ("stride", 4), ((Part("local", 8), Part("stride", 4)), 4),
                       ((Part("local", 12), Part("stride", 4)), 4)):
        heads = layer_heads(pattern, 1, l, integration="merged") if isinstance(pattern, str) else (pattern,)
        assert max(_errors(heads, 80, torch.float32, 16, 16, seed=l)) < 1e-5, pattern


@pytest.mark.skipif(DEV != "cpu", reason="interpreter sizes")
@pytest.mark.parametrize("kernels", ["one-program", "row-and-key-tiles", "persistent", "persistent-bwd"])
def test_stride_longer_than_one_tile_and_wide_band(tiles, kernels, monkeypatch):
    """Residue sequences of several tiles (n/l = 20 rows with 16-row tiles) and a band of several
    key tiles (l = 40): the loops' bounds, not just one tile. The stride passes run as one program
    per residue sequence (two 16-row tiles, 20 rows), or as the row-tile and key-tile kernels, or
    (opt-in) every pass as persistent kernels (three programs, each walking several tiles of every
    residue sequence: a tile's step count varies along a causal residue), or the backward only."""
    tiles(16, 16)
    launched, persistent = [], []
    launch, launch_p = tb._launch_short, tb._launch_persistent
    monkeypatch.setattr(tb, "_launch_short", lambda *a, **kw: launched.append(a[:3]) or launch(*a, **kw))
    monkeypatch.setattr(tb, "_launch_persistent", lambda *a, **kw: persistent.append(a[0]) or launch_p(*a, **kw))
    monkeypatch.setenv(tb.SHORT_ROWS_ENV, "128" if kernels == "one-program" else "0")
    monkeypatch.setenv(tb.PERSISTENT_ENV, {"persistent": "1", "persistent-bwd": "bwd"}.get(kernels, "0"))
    wide = ((Part("local", 12), Part("stride", 4)),)  # a band of 3 l: the column pass skips 3 diagonals (EXCL 3)
    for pattern, l in (("stride", 4), ("local", 40), ("strided", 4), (wide, 4)):
        heads = layer_heads(pattern, 1, l, integration="merged") if isinstance(pattern, str) else pattern
        assert max(_errors(heads, 80, torch.float32, 16, 16, seed=l)) < 1e-5, pattern
    # the stride passes (one residue sequence per (b, h, r): 4 of 20 rows)
    assert launched == ([(k, 4, 20) for k in ("seq_fwd_short", "seq_short") * 3] if kernels == "one-program" else [])
    one, two = ["persistent_fwd", "persistent_dq", "persistent_dkdv"], ["persistent_fwd"] * 2 + ["persistent_dq",
                                                                                                 "persistent_dkdv"] * 2
    want = {"persistent": one + one + two + two,  # stride, local, strided, wide
            "persistent-bwd": [k for k in one + one + two + two if k != "persistent_fwd"]}.get(kernels, [])
    assert persistent == want, persistent


@pytest.mark.skipif(DEV != "cpu", reason="interpreter sizes")
def test_a_sequence_short_enough_for_one_program_in_every_pass(tiles, monkeypatch):
    """n <= two row tiles: the band pass too runs as one program per (b, h) sequence, and merged
    strided's second pass reads the Δ its first pass stored."""
    tiles(16, 16)
    launched = []
    launch = tb._launch_short
    monkeypatch.setattr(tb, "_launch_short", lambda *a, **kw: launched.append(a[:3]) or launch(*a, **kw))
    for pattern, l in (("local", 8), ("strided", 4), ("strided", 8)):
        heads = layer_heads(pattern, 2, l, integration="merged")
        assert max(_errors(heads, 30, torch.float32, 16, 16, B=2, seed=l)) < 1e-5, (pattern, l)
    assert ("seq_short", 4, 30) in launched and ("seq_short", 2 * 2 * 4, 8) in launched


@pytest.mark.skipif(DEV != "cpu", reason="interpreter sizes")
@pytest.mark.parametrize("band", ["fused", "split", "persistent"])
def test_band_backward_in_one_kernel(tiles, band, monkeypatch):
    """The local pass's backward as one kernel (opt-in; key tile j attended by row tiles j..j+2: l <= 2·16 + 1
    with 16-row tiles; each program's first row tiles take the previous program's key tiles), as
    the dq and dk/dv kernels, or (opt-in) as persistent kernels, forward too (three programs each
    walking several tiles of both (b, h) sequences): l from
    under one tile to the largest the one kernel takes, and one beyond it; alone and as strided's band."""
    tiles(16, 16)
    launched, persistent = [], []
    launch, launch_p = tb._launch_band, tb._launch_persistent
    monkeypatch.setattr(tb, "_launch_band", lambda *a, **kw: launched.append(a[:2]) or launch(*a, **kw))
    monkeypatch.setattr(tb, "_launch_persistent", lambda *a, **kw: persistent.append(a[0]) or launch_p(*a, **kw))
    monkeypatch.setenv(tb.BAND_ENV, "split" if band == "persistent" else band)
    monkeypatch.setenv(tb.PERSISTENT_ENV, "1" if band == "persistent" else "0")
    for pattern, l in (("local", 8), ("local", 24), ("local", 33), ("local", 34), ("strided", 20)):
        heads = layer_heads(pattern, 2, l, integration="merged")
        assert max(_errors(heads, 150, torch.float32, 16, 16, B=2, seed=l)) < 1e-5, (pattern, l)
    assert launched == ([(150, 4)] * 4 if band == "fused" else [])
    # the band passes (strided's second pass, 8-row residues, takes the one-program kernels)
    assert persistent == (["persistent_fwd", "persistent_dq", "persistent_dkdv"] * 5 if band == "persistent" else [])


@pytest.mark.skipif(DEV != "cpu", reason="interpreter sizes")
def test_many_full_tiles_match_the_reference(tiles):
    """Sizes where many tiles are attended in full by every row (a wide band, long residue
    sequences, summary cells of many earlier blocks), not only edge tiles."""
    tiles(16, 16)
    cases = [("local", 48, {}, 100), ("stride", 4, {}, 150), ("strided", 4, dict(integration="merged"), 150),
             ("fixed", 8, dict(summary=2, summary_heads=2, integration="merged"), 200),
             ("summary", 8, dict(summary=3, summary_heads=2), 190)]
    for pattern, l, kw, n in cases:
        heads = layer_heads(pattern, 2, l, **kw)
        errs = _errors(heads, n, torch.float32, 16, 16, seed=n)
        assert max(errs) < 1e-5, (pattern, errs)


def test_empty_rows_are_exactly_zero_with_zero_gradient(tiles):
    """A summary-only head: the first block's rows before its slice attend nothing."""
    tiles(16, 16)
    n, l, c = 40, 8, 2
    heads = layer_heads("summary", 2, l, summary=c, summary_heads=2)
    got, want = _grads(heads, n, torch.float32, 16, 16, seed=5)
    mask = torch.stack([pattern_mask("summary", n, l, summary=c, head=h, summary_heads=2) for h in range(2)])
    empty = ~mask.any(-1)  # (H, n)
    assert empty.any()
    out, dq = got[0], got[1]
    assert (out.transpose(1, 2)[0][empty.T] == 0).all() and (out[0][empty] == 0).all()
    assert (dq[0].transpose(0, 1)[empty] == 0).all()
    assert max(rel_err(a, b) for a, b in zip(got, want)) < 1e-5


def test_merged_log_sum_exp_is_the_unions_even_at_large_logits(tiles):
    """The strided epilogue merges the band's and the column's softmax: its lse is the union's,
    and logits of ~1e3 (no running maximum would overflow exp) stay finite and exact."""
    tiles(16, 16)
    n, l = 48, 8
    heads = layer_heads("strided", 2, l, integration="merged")
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, n, 2, 16, generator=g).to(DEV) for _ in range(3))
    q = q * 40.0  # scores up to ~1e3
    o, lse = tb.attend_with_lse(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), heads, 0.25)
    s = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * 0.25
    m = torch.stack([pattern_mask("strided", n, l) for _ in range(2)]).to(DEV)
    want = torch.logsumexp(s.masked_fill(~m, float("-inf")), -1)
    assert torch.isfinite(o).all()
    assert rel_err(lse, want) < 1e-6
    ref = attend(*(x.double().transpose(1, 2) for x in (q, k, v)), heads, backend="reference", scale=0.25)
    assert rel_err(o, ref) < 1e-5


def test_a_model_on_triton_matches_the_reference_model_and_compiles_in_one_graph(tiles):
    """The whole network (strided layout + fixed) with the kernels as custom ops: same logits and
    gradients as the reference backend, and torch.compile(fullgraph=True) traces it (0 breaks)."""
    tiles(16, 16)
    torch.manual_seed(0)
    for m, a in ((ModelConfig(n_layer=2, n_head=2, d_model=32),
                  AttentionConfig(pattern="strided", stride=8, layout=["stride", "local"], backend="triton")),
                 (ModelConfig(n_layer=1, n_head=2, d_model=64, qk_ratio=0.5),
                  AttentionConfig(pattern="fixed", stride=8, summary=2, summary_heads=2, integration="merged",
                                  backend="triton"))):
        net = SparseTransformer(m, a, (5, 8)).to(DEV)
        for blk in net.blocks:  # non-zero heads so gradients reach the attention
            torch.nn.init.normal_(blk.attn.proj.weight, std=0.1)
        torch.nn.init.normal_(net.head.weight, std=0.1)
        ref = SparseTransformer(m, replace(a, backend="reference"), (5, 8)).to(DEV).double()
        ref.load_state_dict(net.state_dict())
        x = torch.randint(0, 256, (2, 40), device=DEV)
        y = net(x)
        r = ref(x)
        assert rel_err(y, r) < 1e-5
        y.square().mean().backward()
        r.square().mean().backward()
        for (name, p), pr in zip(net.named_parameters(), ref.parameters()):
            if name.endswith("attn.k.bias"):  # exactly 0 (softmax ignores a shift of every score): compare its size
                assert p.grad.abs().max() < 1e-8, name
            else:
                assert rel_err(p.grad, pr.grad) < 1e-4, name
        net.prepare(40, x.device)
        torch._dynamo.reset()
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager")  # a graph break would raise
        assert rel_err(compiled(x), r) < 1e-5


def test_what_the_kernels_take_and_what_auto_does():
    strided = layer_heads("strided", 4, 8, integration="merged")
    groups = tb.plan(layer_heads("fixed", 4, 8, summary=2, summary_heads=2, integration="multihead"))
    assert [(g.kind, g.heads, g.block, g.has_summary, g.slices, g.slice_mod) for g in groups] == [
        ("fixed", (0, 1), True, False, (0, 0), 1), ("fixed", (2, 3), False, True, (0, 1), 2)]
    assert tb.unsupported(strided, (16, 32)) is None
    assert "head dims 48" in tb.unsupported(strided, (48, 48))
    assert "dense" in tb.unsupported(layer_heads("dense", 2, 8))
    # an explicit backend that cannot run gets one line naming the key and what is valid
    with pytest.raises(PatternError, match=r"attention.backend=triton cannot run head dims 24.*use attention.backend=auto"):
        check("triton", strided, (24, 24), torch.device(DEV))
    assert resolve("auto", strided, torch.device("cpu"), (16, 16)) == "blocked"  # auto never picks triton off a GPU


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-2), (torch.float32, 1e-5)],
                         ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("dims", [(32, 32), (64, 64), (128, 128), (64, 128)], ids=lambda d: f"d{d[0]}-{d[1]}")
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_kernels_match_the_float64_reference(case, dims, dtype, tol):
    pattern, kw, layer = CASES[case]
    kw = {**kw, "summary": 32, "summary_heads": 4} if "summary" in kw else kw
    heads = layer_heads(pattern, 4, 128, layer=layer, **kw)
    n = 1000 if dims != (64, 64) else 1408  # not a multiple of l = 128; 1408 = 11 l
    errs = _errors(heads, n, dtype, *dims, B=2, seed=dims[0] + n)
    assert max(errs) < tol, errs


# the head dims and dtypes of the GPU tests of the one-program and band kernels (fp32: IEEE dots)
GPU_DTYPES = pytest.mark.parametrize("dims,dtype,tol", [((64, 64), torch.bfloat16, 2e-2), ((32, 32), torch.float16, 2e-2),
                                            ((64, 128), torch.bfloat16, 2e-2), ((64, 64), torch.float32, 1e-5)],
                         ids=["d64-bf16", "d32-fp16", "d64-128-bf16", "d64-fp32"])


@pytest.mark.gpu
@pytest.mark.slow
@GPU_DTYPES
@pytest.mark.parametrize("pattern", ["stride", "strided"])
def test_gpu_short_residue_sequences_match_the_reference(pattern, dims, dtype, tol):
    """Stride passes run as one program per residue sequence: 125 rows (two 64-row tiles), 63 (one
    or two) and 16 (the smallest tile); 250 rows, and fp32 with IEEE dots, take the row-tile and
    key-tile kernels."""
    for l in (8, 16, 64, 4):
        heads = layer_heads(pattern, 4, l, integration="merged")
        errs = _errors(heads, 1000, dtype, *dims, B=2, seed=l)
        assert max(errs) < tol, (l, errs)


@pytest.mark.gpu
@pytest.mark.slow
@GPU_DTYPES
def test_gpu_a_sequence_of_at_most_128_rows_runs_every_pass_as_one_program(dims, dtype, tol, monkeypatch):
    """n <= 128: the band pass too runs one program per (b, h) (bf16/fp16; fp32 with IEEE dots keeps
    the row-tile and key-tile kernels on a GPU), alone, as merged strided's first pass, and a band
    wider than the sequence."""
    launched = []
    launch = tb._launch_short
    monkeypatch.setattr(tb, "_launch_short", lambda *a, **kw: launched.append(a[:3]) or launch(*a, **kw))
    for pattern, l, n in (("local", 32, 128), ("local", 128, 100), ("strided", 8, 128), ("strided", 16, 77)):
        heads = layer_heads(pattern, 4, l, integration="merged")
        errs = _errors(heads, n, dtype, *dims, B=2, seed=n + l)
        assert max(errs) < tol, (pattern, l, n, errs)
    bands = [a for a in launched if a[0] == "seq_short" and a[1] == 2 * 4]
    assert bands == ([] if dtype == torch.float32 else [("seq_short", 8, n) for n in (128, 100, 128, 77)]), launched


@pytest.mark.gpu
@pytest.mark.slow
@GPU_DTYPES
@pytest.mark.parametrize("band", ["fused", "persistent", "full-tiles"])
def test_gpu_band_backward_matches_the_reference(band, dims, dtype, tol, monkeypatch):
    """The band's opt-in kernels at l 40, 128, 129, 130 and as strided's band: its one-kernel backward
    (64-row tiles: l up to 129; l 130 takes the dq and dk/dv kernels), or the persistent forward, dq
    and dk/dv (every l, and stride passes of 375 and 187 rows; not fp32 with IEEE dots, which keeps
    the row-tile and key-tile kernels); or the row-tile and key-tile kernels skipping the mask on full
    tiles (opt-in FULL_ENV, compiled: a run-time branch around the select)."""
    monkeypatch.setenv(tb.BAND_ENV, "fused" if band == "fused" else "split")
    monkeypatch.setenv(tb.PERSISTENT_ENV, "1" if band == "persistent" else "0")
    monkeypatch.setenv(tb.FULL_ENV, "1" if band == "full-tiles" else "0")
    for pattern, l in (("local", 40), ("local", 128), ("local", 129), ("local", 130), ("strided", 128), ("stride", 4),
                       ("strided", 8)):
        heads = layer_heads(pattern, 4, l, integration="merged")
        errs = _errors(heads, 1500, dtype, *dims, B=2, seed=l)
        assert max(errs) < tol, (pattern, l, errs)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_backward_is_deterministic():
    heads = layer_heads("fixed", 8, 64, summary=16, summary_heads=4, integration="merged")
    q, k, v = (torch.randn(2, 4096, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    go = torch.randn(2, 8, 4096, 64, device="cuda", dtype=torch.bfloat16)

    def step():
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), heads, backend="triton")
        return (out, *torch.autograd.grad(out, (q, k, v), go))

    first, second = step(), step()
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # no atomics: bit-identical


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_a_cuda_graph_captures_the_kernels():
    heads = layer_heads("strided", 8, 64, integration="merged")
    q, k, v = (torch.randn(2, 4096, 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    run = lambda: attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), heads, backend="triton")  # noqa: E731
    want = run()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = run()
    for x in (q, k, v):
        x.normal_()
    want = run()  # new inputs in place: the replay must read them
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["model", "cudagraphs"])
def test_gpu_a_compiled_model_trains_like_the_eager_one(mode):
    """compile_network (whole model; with CUDA graphs) over the triton kernels: the same losses as
    eager for a few AdamW steps (bf16 autocast), and no graph break."""
    from torch._dynamo.utils import counters

    from sparse_transformer.model import compile_network

    m = ModelConfig(n_layer=4, n_head=4, d_model=128)
    a = AttentionConfig(pattern="strided", stride=64, layout=["stride", "local"], backend="triton")
    losses = {}
    for arm in ("eager", mode):
        torch.manual_seed(0)
        net = SparseTransformer(m, a, (16, 64)).cuda()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
        x = torch.randint(0, 256, (2, 1024), device="cuda")
        if arm != "eager":
            torch._dynamo.reset()
            counters.clear()
            compile_network(net, mode)
        out = []
        for _ in range(5):
            if arm == "cudagraphs":
                torch.compiler.cudagraph_mark_step_begin()
            net.prepare(1024, x.device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = net(x)
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, 256), x.view(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            out.append(float(loss))
        losses[arm] = out
        if arm != "eager":
            assert sum(counters["graph_break"].values()) == 0
    assert all(math.isfinite(x) for x in losses[mode])
    assert max(abs(a - b) for a, b in zip(losses["eager"], losses[mode])) < 2e-2, losses
