"""The one checkpoint loader (checkpoint.py): a crafted pickle is refused on every load path (sample,
evaluate, ``resume=`` by path, ``resume=auto`` and ``resume=last``, Lightning's own load,
``lit.load_checkpoint``) without running; a newer format is refused; modules a checkpoint names are
not imported; a checkpoint made at commit 3bd07d2 (numpy RNG state) still loads, samples,
evaluates and resumes; new checkpoints hold tensors and plain values only."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_transformer.checkpoint import FORMAT, FORMAT_KEY, CheckpointError, legacy_numpy_globals, load
from sparse_transformer.training.module import load_checkpoint
from tests import fault_run as fr
from tests.helpers import one_thread  # noqa: F401  (autouse: this module runs on one thread)
from tests.helpers import make_ckpt

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "ckpt_3bd07d2.ckpt"
# the command line the fixture was trained with (tests/fixtures/README.md), less its folders
FIXTURE_ARGS = ["exp=default", "model.n_layer=1", "model.d_model=16", "model.n_head=2", "data.seq_len=64",
                "attention.stride=8", "data.batch_size=2", "data.val_windows=2", "data.max_bytes=4000",
                "model.dropout=0.1", "logger.kind=none", "trainer.enable_progress_bar=false",
                "callbacks.samples.at_end=false", "callbacks.attention_maps.enabled=false"]
TRAIN = [a for a in fr.TINY if not a.startswith("imports")] + ["trainer.max_steps=2", "logger.kind=none"]


class Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(path: Path, marker: Path, raw: bool = False) -> Path:
    """A checkpoint-shaped file whose unpickling runs the payload (torch's zip format, or a bare pickle)."""
    obj = {"state_dict": {}, "hyper_parameters": {"config": {}, "shape": [8, 8]}, "payload": Payload(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    else:
        torch.save(obj, path)
    return path


def files(root: Path) -> set:
    return {p for p in root.rglob("*")}


def test_the_crafted_checkpoint_is_live(tmp_path):
    """The control: an unrestricted load runs the payload (so its absence below means something)."""
    for raw in (False, True):
        marker = tmp_path / f"ran-{raw}"
        try:
            torch.load(crafted(tmp_path / f"x{raw}.ckpt", marker, raw), weights_only=False)
        except RuntimeError:  # a bare pickle: "Invalid magic number", after the payload ran
            assert raw
        assert marker.exists()


# ------------------------------------------------------------------------------------------------
# A crafted pickle on every load path: one line, exit 2, the payload never runs, nothing written
# ------------------------------------------------------------------------------------------------
PATHS = {
    "sample": ("sample", ["ckpt={ckpt}", "progress=false"], "evil.ckpt", "error: ckpt={ckpt} is refused: "),
    "sample-bare-pickle": ("sample", ["ckpt={ckpt}", "progress=false"], "evil.ckpt", "error: ckpt={ckpt} is refused: "),
    "evaluate": ("evaluate", ["ckpt={ckpt}", "progress=false"], "evil.ckpt", "error: ckpt={ckpt} is refused: "),
    "resume-path": ("train", [*TRAIN, "resume={ckpt}", "run_dir={tmp}/run"], "evil.ckpt", "error: resume={ckpt} is refused: "),
    "resume-auto": ("train", [*TRAIN, "resume=auto", "run_dir={tmp}/run"], "run/checkpoints/last.ckpt",
                    "error: resume=auto: {ckpt} is refused: "),
    "resume-last": ("train", [*TRAIN, "resume=last", "run_dir={tmp}/run"], "run/checkpoints/last.ckpt",
                    "error: resume=last: {ckpt} is refused: "),
}


def _refused_on(case: str, tmp_path: Path, run) -> None:
    """``run(module, argv)`` -> (exit code, stderr); asserts one line, exit 2, no payload, nothing written."""
    module, args, where, start = PATHS[case]
    marker = tmp_path / "payload-ran"
    ckpt = crafted(tmp_path / where, marker, raw=case.endswith("bare-pickle"))
    before = files(tmp_path)
    fmt = dict(ckpt=ckpt, tmp=tmp_path)
    code, err = run(module, [*[a.format(**fmt) for a in args], f"data.cache_dir={tmp_path}/data"])
    assert not marker.exists(), "the payload ran"
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start.format(**fmt)), err[-3000:]
    assert "it asks to call or build posix.system while loading" in lines[0] and "nothing in it was run" in lines[0]
    assert files(tmp_path) == before  # nothing written (no run folder, no samples, no data)


@pytest.mark.parametrize("case", list(PATHS))
def test_a_crafted_pickle_is_refused_on_every_cli_load_path(tmp_path, case, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)

    def run(module, argv):
        capsys.readouterr()
        try:
            importlib.import_module(f"sparse_transformer.{module}").main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().err

    _refused_on(case, tmp_path, run)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sample", "evaluate", "resume-path"])
def test_a_crafted_pickle_is_refused_by_the_real_commands(tmp_path, case):
    """The same as processes: the whole of stderr is one line (no traceback, no warning)."""
    def run(module, argv):
        r = subprocess.run([sys.executable, "-m", f"sparse_transformer.{module}", *argv],
                           cwd=tmp_path, env=fr.env(), capture_output=True, text=True, timeout=300)
        return r.returncode, r.stderr

    _refused_on(case, tmp_path, run)


def test_lit_load_checkpoint_refuses_a_crafted_pickle(tmp_path):
    marker = tmp_path / "payload-ran"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(crafted(tmp_path / "evil.ckpt", marker)))
    assert not marker.exists()
    assert "\n" not in str(e.value) and str(e.value).startswith(f"checkpoint {tmp_path / 'evil.ckpt'} is refused: ")


def test_lightnings_own_load_is_weights_only_too(tmp_path, monkeypatch):
    """With the early check taken away, trainer.validate/fit(ckpt_path=...) still never run the payload."""
    from sparse_transformer.cli import train

    monkeypatch.setattr(train, "check_resume_checkpoint", lambda cfg, ckpt: None)
    marker = tmp_path / "payload-ran"
    ckpt = crafted(tmp_path / "evil.ckpt", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train.main([*TRAIN, f"resume={ckpt}", f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data"])
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Format number, imports named by a checkpoint
# ------------------------------------------------------------------------------------------------
def test_a_newer_format_is_refused_in_one_line(tmp_path, capsys):
    from sparse_transformer.cli.sample import main
    from sparse_transformer.cli.train import main as train

    ckpt = make_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt", edit=lambda c: c.update({FORMAT_KEY: FORMAT + 1}))
    message = (f"was written by a newer sparse-transformer (checkpoint format {FORMAT + 1}); this version reads "
               f"formats 0..{FORMAT}: update sparse-transformer to use it")
    with pytest.raises(SystemExit) as e:
        main([f"ckpt={ckpt}", "progress=false"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"error: ckpt={ckpt} {message}\n"
    with pytest.raises(CheckpointError, match="newer sparse-transformer"):
        load_checkpoint(str(ckpt))
    with pytest.raises(SystemExit) as e:
        train([*TRAIN, "resume=last", f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"error: resume=last: {ckpt} {message}\n"
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["checkpoints", "last.ckpt"]
    ok = make_ckpt(tmp_path / "ok" / "last.ckpt", edit=lambda c: c.update({FORMAT_KEY: FORMAT}))
    assert load(ok)[FORMAT_KEY] == FORMAT


def test_modules_a_checkpoint_names_are_imported_only_when_the_command_line_names_them(tmp_path, capsys):
    from sparse_transformer.cli.sample import main

    ckpt = make_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt",
                     edit=lambda c: c["hyper_parameters"]["config"].update(imports=["tests.import_probe"]))
    sys.modules.pop("tests.import_probe", None)
    try:
        main([f"ckpt={ckpt}", "n=1", "length=4", "progress=false", f"out={tmp_path / 'a'}"])
        assert "tests.import_probe" not in sys.modules  # the file named it: not imported
        load_checkpoint(str(ckpt))
        assert "tests.import_probe" not in sys.modules
        main([f"ckpt={ckpt}", "n=1", "length=4", "progress=false", f"out={tmp_path / 'b'}", "imports=[tests.import_probe]"])
        assert "tests.import_probe" in sys.modules  # the command line named it
    finally:
        sys.modules.pop("tests.import_probe", None)
    capsys.readouterr()
    # a checkpoint whose pattern comes from a module it names: told to name the module
    user = make_ckpt(tmp_path / "user" / "last.ckpt", edit=lambda c: c["hyper_parameters"]["config"].update(
        imports=["tests.import_probe"], attention={**c["hyper_parameters"]["config"]["attention"], "pattern": "probe"}))
    with pytest.raises(SystemExit) as e:
        main([f"ckpt={user}", "progress=false", f"out={tmp_path / 'c'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "attention.pattern=probe is unknown" in err
    assert 'the checkpoint names imports=["tests.import_probe"], which are imported only when the command line names them' in err
    assert "tests.import_probe" not in sys.modules and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------------
# Checkpoints made before the format number (commit 3bd07d2)
# ------------------------------------------------------------------------------------------------
def _names(allowed) -> set:
    return {a[1] if isinstance(a, tuple) else f"{a.__module__}.{a.__qualname__}" for a in allowed}


def test_old_checkpoints_need_exactly_the_allowed_numpy_globals():
    assert _names(legacy_numpy_globals()) == {"numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
                                              "numpy.dtypes.UInt32DType", "numpy.core.multiarray._reconstruct"}
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(FIXTURE)) <= _names(legacy_numpy_globals())
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only: refused; the allowed four: read
        torch.load(FIXTURE, weights_only=True)
    ck = load(FIXTURE)
    assert FORMAT_KEY not in ck and ck["global_step"] == 2
    name, keys, *_ = ck["callbacks"]["ResumeState"]["rng"][0]["numpy"]
    assert name == "MT19937" and keys.dtype == np.uint32 and keys.shape == (624,)
    assert not [g for g in torch.serialization.get_safe_globals() if "numpy" in str(g)]  # allowed for the load only


@pytest.mark.parametrize("obj", [np.float64(1.0), np.random.RandomState(0), np.array(["a"], dtype=object)],
                         ids=["numpy-scalar", "RandomState", "object-array"])
def test_nothing_more_than_the_numpy_rng_state_is_allowed(tmp_path, obj):
    path = tmp_path / "x.ckpt"
    torch.save({"x": obj}, path)
    with pytest.raises(CheckpointError, match="is refused: it asks to"):
        load(path)


def test_the_old_fixture_loads_samples_and_evaluates(tmp_path, capsys):
    from sparse_transformer.cli.evaluate import main as evaluate
    from sparse_transformer.cli.sample import main as sample

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(FIXTURE, ckpt)
    lit = load_checkpoint(str(ckpt))
    assert lit.net.num_params() > 0 and lit.skipped_steps == 0
    sample([f"ckpt={ckpt}", "n=2", "length=16", "progress=false", f"out={tmp_path / 's'}"])
    assert np.load(tmp_path / "s" / "tokens.npy").shape == (2, 16)
    evaluate([f"ckpt={ckpt}", "limit=2", "progress=false", f"data.cache_dir={tmp_path}/data", f"out={tmp_path / 'e.json'}"])
    assert json.loads((tmp_path / "e.json").read_text())["tokens"] == 128
    capsys.readouterr()


def test_old_rng_state_is_restored_exactly(tmp_path):
    from sparse_transformer.training.fault import ResumeState, set_rng_states

    saved = load(FIXTURE)["callbacks"]["ResumeState"]
    rs = ResumeState(tmp_path / "last.ckpt")
    rs.load_state_dict(saved)
    set_rng_states(rs._pending)
    old = saved["rng"][0]
    assert np.array_equal(np.random.get_state()[1], old["numpy"][1]) and np.random.get_state()[2] == old["numpy"][2]
    assert torch.equal(torch.get_rng_state(), old["torch"]) and random.getstate() == old["python"]


def test_the_old_fixture_resumes_and_its_next_checkpoint_is_plain(tmp_path, capsys):
    from sparse_transformer.cli.train import main as train

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE, run / "checkpoints" / "last.ckpt")
    summary = train([*FIXTURE_ARGS, "trainer.max_steps=4", "resume=last", f"run_dir={run}", f"data.cache_dir={tmp_path}/data"])
    assert summary["steps"] == 4 and "resuming from" in capsys.readouterr().out
    new = run / "checkpoints" / "last.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(new) == []
    ck = torch.load(new, weights_only=True)  # no allowed globals needed any more
    assert ck[FORMAT_KEY] == FORMAT and ck["global_step"] == 4
    state = ck["callbacks"]["ResumeState"]["rng"][0]
    assert isinstance(state["numpy"]["keys"], torch.Tensor) and isinstance(state["torch"], torch.Tensor)


def test_new_rng_states_are_tensors_and_plain_values_and_round_trip():
    from sparse_transformer.training.fault import rng_states, set_rng_states

    states = rng_states()
    buf = io.BytesIO()
    torch.save(states, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)  # no numpy global allowed
    draws = (np.random.rand(3).tolist(), random.random(), torch.rand(3).tolist())
    np.random.rand(5), random.random(), torch.rand(5)
    set_rng_states(restored)
    assert (np.random.rand(3).tolist(), random.random(), torch.rand(3).tolist()) == draws
