"""Registers, spilled bytes and shared memory of each triton kernel of the attention backend at each
autotuning candidate, compiled for a GPU architecture on any machine: no GPU is needed (Triton's
compiler and the ptxas and cuobjdump it bundles). It also shows that every kernel compiles for that
architecture, which Triton's CPU interpreter (the tests) does not.

    PYTHONPATH=src python3 bench/kernel_resources.py [--arch 90] [--dims 64,32] [--configs tuned] \
        [--kernels seq_fwd,fixed_dq,...]

Arguments are specialised as the launcher does at a representative launch (an int equal to 1 a
constant, ints divisible by 16 and the pointers with divisibility hints): without that the compiler
cannot prove vector-wide loads and neither pipelines them nor allocates registers as it will. A
kernel that spills (stack > 0) moves registers through local memory inside its loop; "pipelined
loads" counts the loads the software pipeliner turned into asynchronous copies.
The row-tile, key-tile and persistent seq kernels are compiled for both of their passes (the band,
whose RS = P = 1 are constants, and a stride pass). On sm_90 ptxas also says whether it serialises the kernel's
wgmma instructions (its C7515 note: each MMA step waited for before the next issues), as it did the
band forward until its loop was known to run at least once.
Writes ``kernel-resources-sm<arch>.json`` (``-full-tiles`` with ``--full-tiles``) under ``--out`` and
prints a table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

POINTERS = {"Q", "K", "V", "O", "LSE", "DO", "DQ", "DELTA", "DK", "DV_"}
FLOATS = {"scale_log2e", "scale"}


def kernel_table(K, full_tiles: bool = False) -> dict:
    """name: (jit function, the constexpr flags of its first pass, which candidate list it takes);
    ``full_tiles``: the row-tile and key-tile seq kernels that skip the mask on full tiles."""
    first_fwd, first_bwd = dict(EXCL=0, MERGE=False), dict(EXCL=0, ACCUM=False)
    full = dict(FULL=full_tiles)
    return {
        "seq_fwd": (K._seq_fwd, {**first_fwd, **full}, "fwd"), "seq_dq": (K._seq_bwd_dq, {**first_bwd, **full}, "bwd"),
        "seq_dkdv": (K._seq_bwd_dkdv, {**first_bwd, **full}, "bwd"), "seq_short": (K._seq_bwd_short, first_bwd, "short"),
        "seq_fwd_short": (K._seq_fwd_short, first_fwd, "short"),
        "band_bwd": (K._band_bwd, {}, "band"),
        "persistent_fwd": (K._persistent_fwd, first_fwd, "persistent_fwd"),
        "persistent_dq": (K._persistent_dq, first_bwd, "persistent_bwd"),
        "persistent_dkdv": (K._persistent_dkdv, first_bwd, "persistent_bwd"),
        "fixed_fwd": (K._fixed_fwd, dict(HAS_BLOCK=True, HAS_SUMMARY=True), "fwd"),
        "fixed_dq": (K._fixed_bwd_dq, dict(HAS_BLOCK=True, HAS_SUMMARY=True), "bwd"),
        "fixed_dkdv_own": (K._fixed_bwd_dkdv_own, dict(HAS_BLOCK=True), "bwd"),
        "fixed_dkdv_summary": (K._fixed_bwd_dkdv_summary, {}, "bwd"),
    }


def tiles(c: tuple) -> tuple[dict, int, int]:
    """(constexpr tiles, warps, stages) of a candidate tuple (BM, BN, warps, stages) of triton.CONFIG_SETS,
    or ("short", HALF, warps) of the one-program backward (at its largest problem, T = 128 rows), or
    ("band", TILE, CH, warps, stages) of the band's one-kernel backward."""
    if c[0] == "short":
        return dict(T=128, HALF=c[1]), c[2], 1
    if c[0] == "band":
        return dict(TILE=c[1], CH=c[2]), c[3], c[4]
    if len(c) == 5:  # a persistent kernel's (BM, BN, warps, stages, programs an SM)
        bm, bn, w, s, occ = c
        return dict(BM=bm, BN=bn, OCC=occ), w, s
    bm, bn, w, s = c
    return dict(BM=bm, BN=bn), w, s


# Integer arguments at a representative launch (16k tokens, B 8, H 16, d 64 in (B, n, H, d) layout,
# l 128, c 32): Triton's launcher specialises an int equal to 1 as a constant and one divisible
# by 16 with a divisibility hint, and 16-byte-aligned pointers likewise; without them the compiler
# cannot prove vector-wide loads, does not pipeline them, and the registers it reports differ.
def launch_values(kernel: str, seq_pass: str = "stride") -> dict:
    """The ints of ``kernel``'s launch: for the seq kernels a stride pass or (``seq_pass`` band) the
    local band of l, whose RS = P = 1 the launcher specialises as constants (the fixed kernels take
    none of RS, P, W)."""
    n, H, d, l = 16384, 16, 64, 128
    rows = dict(sqb=n * H * d, sqn=H * d, sqh=d)
    ints = {f"s{x}{y}": rows[f"sq{y}"] for x in ("q", "k", "v", "o", "do", "dq", "dk", "dv") for y in "bnh"}
    ints.update(n=n, H=H, Hg=H, H0=0, S=4, L=l, C=32, G=(n // l - 1) * 32, B=2 * 1024 * 1024 // (n * H))
    if kernel == "band_bwd" or seq_pass == "band":
        ints.update(RS=1, P=1, W=l)
    else:
        ints.update(RS=l, P=l, W=n + 1)
    return ints


def seq_passes(kernel: str) -> tuple[str, ...]:
    """The passes a kernel is compiled for: the row-tile, key-tile and persistent seq kernels run the
    band (local, strided's first pass) and the stride passes, specialised differently; the others one."""
    seq = kernel in ("seq_fwd", "seq_dq", "seq_dkdv") or kernel.startswith("persistent")
    return ("band", "stride") if seq else ("-",)


def compile_for(fn, consts: dict, arch: int, warps: int, stages: int, dtype: str = "bf16", values: dict | None = None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    values = values or {}
    consts = dict(consts)
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name not in consts and values.get(name) == 1:
            consts[name] = 1  # what the launcher does with an int equal to 1
        if name in consts:
            sig[name] = "constexpr"
        elif name in POINTERS:
            sig[name] = "*fp32" if name in ("LSE", "DELTA") else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in values and values[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=warps, num_stages=stages))


def resources(kernel, arch: int = 90) -> dict:
    """Registers and stack (spilled bytes) per thread from cuobjdump, shared memory from Triton, and
    whether ptxas serialises the kernel's wgmma instructions (its C7515 note: each MMA step waited for
    before the next is issued; Hopper only)."""
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = Path(tmp) / "k.cubin", Path(tmp) / "k.ptx"
        cubin.write_bytes(kernel.asm["cubin"])
        ptx.write_text(kernel.asm["ptx"])
        out = subprocess.run([str(bin_dir / "cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                             text=True).stdout
        note = subprocess.run([str(bin_dir / "ptxas"), f"-arch=sm_{arch}a", "-v", str(ptx), "-o", str(Path(tmp) / "k.o")],
                              capture_output=True, text=True) if arch == 90 else None
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
    ttgir = kernel.asm["ttgir"]
    return dict(regs=int(m.group(1)) if m else None, stack=int(m.group(2)) if m else None,
                shared=int(kernel.metadata.shared), pipelined_loads=ttgir.count("async_copy_global_to_local"),
                wgmma_serialized=None if note is None else "C7515" in note.stdout + note.stderr)


def measure(fn, flags: dict, name: str, seq_pass: str, dqk: int, dv: int, c: tuple, arch: int) -> dict:
    """One row: a kernel compiled at one candidate for one pass and head dims, or the compiler's error."""
    t, w, st = tiles(c)
    t0 = time.time()
    row = dict(kernel=name, seq_pass=seq_pass, d_qk=dqk, d_v=dv, **t, warps=w, stages=st, arch=arch)
    try:
        row.update(resources(compile_for(fn, dict(flags, IEEE=False, DQK=dqk, DV=dv, **t), arch, w, st,
                                         values=launch_values(name, seq_pass)), arch))
    except Exception as e:  # noqa: BLE001  a config the compiler refuses is a result too
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    row["compile_s"] = round(time.time() - t0, 1)
    return row


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10: 90 (H100/H200), 80 (A100)")
    ap.add_argument("--dims", default="64,32", help="head dims d (d_qk = d_v), comma-separated; 64/128 for d_qk 64, d_v 128")
    ap.add_argument("--configs", default="tuned", help="candidate sets of the backend (its CONFIG_SETS), comma-separated")
    ap.add_argument("--kernels", default="all", help="comma-separated kernel names, or all")
    ap.add_argument("--full-tiles", action="store_true",
                    help="the seq kernels' variant that skips the mask on full tiles (SPARSE_TRANSFORMER_TRITON_FULL_TILES=1)")
    ap.add_argument("--out", default="bench/results")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "0"  # compiled kernels, not the interpreter's (read when triton.jit decorates)
    from sparse_transformer.attention.backends import _triton_kernels as K
    from sparse_transformer.attention.backends import triton as tb

    table = kernel_table(K, args.full_tiles)
    names = list(table) if args.kernels == "all" else [k.strip() for k in args.kernels.split(",")]
    unknown = [k for k in names if k not in table]
    if unknown:
        raise SystemExit(f"--kernels: unknown {', '.join(unknown)}; valid: {', '.join(table)}")
    sets = [s.strip() for s in args.configs.split(",")]
    bad = [s for s in sets if s not in tb.CONFIG_SETS]
    if bad:
        raise SystemExit(f"--configs: unknown {', '.join(bad)}; valid: {', '.join(tb.CONFIG_SETS)}")
    dims = [tuple(int(x) for x in d.split("/")) * (2 if "/" not in d else 1) for d in args.dims.split(",")]
    rows = []
    print("| kernel | pass | d_qk/d_v | tiles | warps | stages | registers | spilled bytes | shared KB | pipelined loads "
          "| wgmma serialised |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        fn, flags, kind = table[name]
        cands = ([("short", h, w) for h, w in tb._SHORT] if kind == "short"
                 else [("band", tb.BAND_TILE, *c) for c in tb._BAND] if kind == "band"
                 else list(tb._PERSISTENT_FWD if kind == "persistent_fwd" else tb._PERSISTENT_BWD)[:1 if sets == ["one"] else None]
                 if kind.startswith("persistent")
                 else list(dict.fromkeys(c for s in sets for c in tb.CONFIG_SETS[s][kind])))
        for seq_pass in seq_passes(name):
            for dqk, dv in dims:
                for c in cands:
                    rows.append(row := measure(fn, flags, name, seq_pass, dqk, dv, c, args.arch))
                    tile = " ".join(f"{k}={v}" for k, v in tiles(c)[0].items())
                    print(f"| {name} | {seq_pass} | {dqk}/{dv} | {tile} | {row['warps']} | {row['stages']} | "
                          f"{row.get('regs', '–')} | {row.get('stack', row.get('error', '–'))} | "
                          f"{row.get('shared', 0) / 1024:.0f} | {row.get('pipelined_loads', '–')} | "
                          f"{row.get('wgmma_serialized', '–')} |", flush=True)
    import triton

    from sparse_transformer import files

    path = Path(args.out) / f"kernel-resources-sm{args.arch}{'-full-tiles' if args.full_tiles else ''}.json"
    files.write_json(path, dict(arch=args.arch, triton=triton.__version__, configs=sets, full_tiles=args.full_tiles, rows=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
