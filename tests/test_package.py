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


def _entries() -> list[str]:
    """Every ``python -m sparse_transformer.<x>``: modules with a ``__main__`` block, packages with ``__main__.py``."""
    src = ROOT / "src"
    out = []
    for path in sorted((src / "sparse_transformer").rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        if path.name == "__main__.py":
            out.append(name.rsplit(".", 1)[0])
        elif 'if __name__ == "__main__":' in path.read_text():
            out.append(name)
    return out


ENTRIES = _entries()


def test_the_documented_commands_are_entries():
    assert {f"sparse_transformer.{m}" for m in ("train", "sample", "evaluate", "data", "sweep")} <= set(ENTRIES)


@pytest.mark.parametrize("module", ENTRIES)
def test_every_command_answers_help(module):
    r = _help("-m", module)
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-2000:]


@pytest.mark.slow  # each imports torch (~5 s)
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_every_bench_script_answers_help(script):
    r = _help(f"bench/{script}")
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-2000:]


OLD_PATHS = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as seen:
    from sparse_transformer.lit import SparseTransformerLM, load_checkpoint
    from sparse_transformer.callbacks import build_callbacks, sample_uncached, flops_per_token
    from sparse_transformer.callbacks.fault import AtomicCheckpointIO, ResumeState, RunCSVLogger
    from sparse_transformer.callbacks.samples import save_samples
    from sparse_transformer.callbacks.wandb_mode import wandb_mode
    from sparse_transformer.train import build_trainer, main, run_dir
    from sparse_transformer.sample import load_model
    from sparse_transformer.evaluate import ContextWindows, score
import sparse_transformer.callbacks.samples as old, sparse_transformer.training.callbacks.samples as new
from sparse_transformer.training.module import SparseTransformerLM as Module
assert old is new and SparseTransformerLM is Module
print("|".join(str(w.message).split(" ")[0] for w in seen if w.category is DeprecationWarning))
"""


def test_old_import_paths_work_for_one_release_with_a_deprecation_warning():
    r = subprocess.run([sys.executable, "-c", OLD_PATHS], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().split("|") == [
        "sparse_transformer.lit", "sparse_transformer.callbacks",  # one warning per old package
        "sparse_transformer.train.build_trainer", "sparse_transformer.train.run_dir",  # one per moved name
        "sparse_transformer.sample.load_model", "sparse_transformer.evaluate.ContextWindows",
        "sparse_transformer.evaluate.score"]
