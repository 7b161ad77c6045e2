"""bench/kernel_resources.py on a CPU: a kernel compiled for sm_90 without a GPU, its registers,
spilled bytes and shared memory read back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("triton")


def test_kernels_compile_for_hopper_and_report_their_resources(tmp_path):
    r = subprocess.run([sys.executable, "bench/kernel_resources.py", "--kernels", "seq_fwd,fixed_dq,persistent_dkdv",
                        "--dims", "32",
                        "--configs", "one", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "TRITON_INTERPRET": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "kernel-resources-sm90.json").read_text())
    rows = res["rows"]
    # "one": the first tuned candidate (forward list for seq_fwd, backward list for fixed_dq, the
    # persistent list for persistent_dkdv); the seq kernels for both of their passes (band, stride)
    assert [(x["kernel"], x["seq_pass"]) for x in rows] == [("seq_fwd", "band"), ("seq_fwd", "stride"), ("fixed_dq", "-"),
                                                            ("persistent_dkdv", "band"), ("persistent_dkdv", "stride")]
    for x in rows:
        assert "error" not in x, x
        assert 0 < x["regs"] <= 255 and x["stack"] >= 0 and x["shared"] > 0
        # compiled as launched (divisibility hints): the key/value loads are pipelined; without the
        # hints the compiler cannot prove wide loads and pipelines none, which would misreport them
        assert x["pipelined_loads"] > 0
        # ptxas issues the MMA steps back to back (the band forward's were serialised until its loop
        # was known to run at least once: tl.assume in _seq_fwd; a persistent kernel's would be if
        # its accumulators restarted outside the MMA)
        assert x["wgmma_serialized"] is False, x
    assert "| seq_fwd | band | 32/32 | BM=64 BN=64 | 4 | 2 |" in r.stdout
