"""The package's doors: its public names and its commands (``python -m sparse_transformer.<cmd>`` and
the bench scripts answer --help)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparse_transformer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _help(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *cmd, "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)


def test_the_public_names_resolve_and_importing_the_package_loads_no_torch():
    for name in sparse_transformer.__all__:
        assert getattr(sparse_transformer, name) is not None, name
    code = "import sys, sparse_transformer\nprint(sorted(m for m in ('torch', 'omegaconf') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr


@pytest.mark.parametrize("module", ["train", "sample", "evaluate", "data", "sweep"])
def test_every_command_answers_help(module):
    r = _help("-m", f"sparse_transformer.{module}")
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-2000:]


@pytest.mark.slow  # each imports torch (~5 s)
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_every_bench_script_answers_help(script):
    r = _help(f"bench/{script}")
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-2000:]
