"""Every bad input to train, sample and evaluate gets one line (issue 16, item 9).

A table of cases, each a command line (placeholders such as ``<ckpt>`` filled in below) and the
text its error line must hold (the key or file it names). Each case runs the command's
``main(argv)`` in-process (a few as real processes, ``python -m ...``) and asserts: exit code 2
(bad input), exactly one line on stderr, starting ``error:`` and naming the key or file, no
traceback, and nothing created, changed or removed under the case's folder, the shared data and
checkpoints, or the working folder.

``BAD_INPUT_TABLE=<file>`` also appends how each case ended to that file, one JSON line a case
(``clean``, ``traceback``, ``silent``: exit 0, ``messy``: another code or not one line, and
``wrote``: files changed); ``python tests/cli/test_bad_input.py <file>`` tabulates it per command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests import fault_run as fr
from tests.helpers import TINY, make_ckpt

ROOT = Path(__file__).resolve().parents[2]
MODULE = {"train": "sparse_transformer.train", "sample": "sparse_transformer.sample", "eval": "sparse_transformer.evaluate"}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes through permission bits (see read_only)


@dataclass
class Case:
    id: str
    cmd: str  # train | sample | eval
    args: list[str]
    says: str  # the error line holds this (the key or file, and what is wrong)
    setup: Callable | None = None  # (folders, monkeypatch) before the snapshot
    proc: bool = False  # a real process (python -m ...) instead of main(argv)


# ------------------------------------------------------------------------------------------------
# Setups: what a case needs in its own folder (<tmp>) besides <file>, a plain file
# ------------------------------------------------------------------------------------------------
BASE_YAML = (ROOT / "conf" / "config.yaml").read_text()


def experiment(text: str) -> Callable:
    """conf/ in <tmp>/conf with conf/exp/bad.yaml holding ``text`` (the commands read that folder)."""
    def setup(f, monkeypatch):
        from sparse_transformer.config import load

        conf = f["tmp"] / "conf"
        (conf / "exp").mkdir(parents=True)
        (conf / "config.yaml").write_text(BASE_YAML)
        (conf / "exp" / "bad.yaml").write_text(text)
        monkeypatch.setattr(load, "CONF_DIR", conf)
    return setup


def finished_run(f, monkeypatch):
    """<tmp>/done: a run that finished (config, a checkpoint, metrics, summary)."""
    run = f["tmp"] / "done"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(f["ckpt"], run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text("exp: default\n")
    (run / "metrics.csv").write_text("step,train/loss\n0,5.5\n")
    (run / "summary.json").write_text('{"steps": 300}')


def corrupt_run(f, monkeypatch):
    """<tmp>/broken: a run whose only checkpoint is truncated."""
    run = f["tmp"] / "broken"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(f["trunc"], run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text("exp: default\n")


def runs_is_a_file(f, monkeypatch):
    (f["cwd"] / "runs").write_text("not a folder")


def read_only(f, monkeypatch):
    """<tmp>/ro, a folder its user cannot write. Root writes through permission bits: there, the
    probe that tells (``files.folder_problem``) is refused as the kernel would refuse anyone else."""
    ro = f["tmp"] / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if IS_ROOT:
        from sparse_transformer import files

        real = files.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(ro.resolve()):
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def no_triton_interpreter(f, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the tests' interpreter would let triton run on a CPU


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------
def T(id_, args, says, **kw):
    return Case(id_, "train", args, says, **kw)


def S(id_, args, says, **kw):
    return Case(id_, "sample", args, says, **kw)


def E(id_, args, says, **kw):
    return Case(id_, "eval", args, says, **kw)


TRAIN = [
    # keys that only Lightning or torch checked
    T("beta1-1.5", ["optim.beta1=1.5"], "optim.beta1=1.5"),
    T("beta1-neg", ["optim.beta1=-0.1"], "optim.beta1=-0.1"),
    T("beta2-1", ["optim.beta2=1.0"], "optim.beta2=1.0"),
    T("lr-inf", ["optim.lr=inf"], "optim.lr=inf"),
    T("lr-nan", ["optim.lr=nan"], "optim.lr=nan"),
    T("lr-0", ["optim.lr=0"], "optim.lr=0"),
    T("weight-decay-neg", ["optim.weight_decay=-1"], "optim.weight_decay=-1"),
    T("grad-clip-neg", ["optim.grad_clip=-1"], "optim.grad_clip=-1"),
    T("min-lr-ratio-2", ["optim.min_lr_ratio=2"], "optim.min_lr_ratio=2"),
    T("eval-batch-neg", ["data.eval_batch_size=-1"], "data.eval_batch_size=-1"),
    T("batch-0", ["data.batch_size=0"], "data.batch_size=0"),
    T("vocab-10", ["model.vocab_size=10"], "model.vocab_size=10"),
    T("vocab-1", ["model.vocab_size=1"], "model.vocab_size=1"),
    T("accelerator-gpu", ["trainer.accelerator=gpu"], "trainer.accelerator=gpu"),
    T("accelerator-cuda-2", ["trainer.accelerator=cuda", "trainer.devices=2"], "trainer.accelerator=cuda"),
    T("max-time-banana", ["trainer.max_time=banana"], "trainer.max_time=banana"),
    T("max-time-short", ["trainer.max_time=00:05"], "trainer.max_time=00:05"),
    T("max-time-neg", ["trainer.max_time=00:00:-5:00"], "trainer.max_time=00:00:-5:00"),
    T("val-interval-neg", ["trainer.val_check_interval=-1"], "trainer.val_check_interval=-1"),
    T("val-interval-0", ["trainer.val_check_interval=0"], "trainer.val_check_interval=0"),
    T("val-interval-2.5", ["trainer.val_check_interval=2.5"], "trainer.val_check_interval=2.5"),
    T("limit-val-1.5", ["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches=1.5"),
    T("backend-flex-cpu", ["attention.backend=flex"], "attention.backend=flex"),
    T("backend-triton-cpu", ["attention.backend=triton"], "attention.backend=triton", setup=no_triton_interpreter),
    T("backend-sdpa-strided", ["attention.backend=sdpa"], "attention.backend=sdpa"),
    T("d-model-1e6", ["model.d_model=1000000"], "parameters"),
    T("d-model-65536", ["model.d_model=65536", "model.n_head=64"], "parameters", proc=True),  # see run_case
    T("log-every-0", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0"),
    T("val-windows-0", ["data.val_windows=0"], "data.val_windows=0"),
    T("persistent-no-workers", ["data.persistent_workers=true"], "data.persistent_workers"),
    T("workers-neg", ["data.num_workers=-1"], "data.num_workers=-1"),
    T("devices-neg-cpu", ["trainer.accelerator=cpu", "trainer.devices=-1"], "trainer.devices=-1"),
    T("devices-list-cpu", ["trainer.accelerator=cpu", "trainer.devices=[0,1]"], "trainer.devices"),
    T("devices-0", ["trainer.devices=0"], "trainer.devices=0"),
    T("splits-sum", ["data.splits=[0.5,0.5,0.5]"], "data.splits"),
    T("max-steps-0", ["trainer.max_steps=0"], "trainer.max_steps=0"),
    T("max-epochs-0", ["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    T("dropout-1", ["model.dropout=1.0"], "model.dropout=1.0"),
    T("stride-0", ["attention.stride=0"], "attention.stride=0"),
    T("seq-not-multiple", ["data.seq_len=60"], "data.seq_len=60"),
    T("pattern-unknown", ["attention.pattern=strided2"], "attention.pattern=strided2"),
    T("fixed-no-summary", ["attention.pattern=fixed"], "attention.summary"),
    T("image-no-shape", ["data.modality=image"], "data.shape"),
    T("fp16-cpu", ["trainer.precision=16-mixed"], "trainer.precision=16-mixed"),
    T("accumulate-0", ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
    T("checkpoint-every-0", ["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps=0"),
    # the command line itself
    T("unknown-key", ["model.n_layers=2"], "model.n_layers"),
    T("bad-type", ["model.n_layer=two"], "model.n_layer=two"),
    T("not-key-value", ["foo"], "'foo'"),
    T("exp-missing", ["exp=nope"], "exp=nope"),
    T("exp-escape", ["exp=../../x"], "exp=../../x"),
    T("imports-missing", ["imports=[no_such_module_xyz]"], "no_such_module_xyz"),
    T("interp-cli", ["optim.lr=${nonexistent.key}"], "nonexistent.key"),
    # interpolation errors in an experiment file
    T("interp-missing", ["exp=bad"], "nonexistent.key", setup=experiment("optim:\n  lr: ${nonexistent.key}\n")),
    T("interp-unclosed", ["exp=bad"], "optim.lr", setup=experiment("optim:\n  lr: ${optim.beta1\n")),
    T("interp-env", ["exp=bad"], "ST_NOT_SET_ANYWHERE", setup=experiment("optim:\n  lr: ${oc.env:ST_NOT_SET_ANYWHERE}\n")),
    T("interp-type", ["exp=bad"], "optim.beta1=pydoc", setup=experiment("optim:\n  beta1: ${data.source}\n")),
    T("interp-resolver", ["exp=bad"], "no_such_resolver", setup=experiment("optim:\n  lr: ${no_such_resolver:1}\n")),
    # folders: files, under files, unwritable
    T("run-dir-file", ["run_dir=<file>"], "<file>"),
    T("run-dir-under-file", ["run_dir=<file>/run"], "<file>"),
    T("run-dir-unwritable", ["run_dir=<tmp>/ro/run"], "<tmp>/ro", setup=read_only),
    T("cache-dir-file", ["data.cache_dir=<file>"], "data.cache_dir"),
    T("cache-dir-under-file", ["data.cache_dir=<file>/data"], "data.cache_dir"),
    T("cache-dir-unwritable", ["data.cache_dir=<tmp>/ro/data"], "data.cache_dir", setup=read_only),
    T("runs-is-a-file", ["run_dir=null"], "runs", setup=runs_is_a_file),
    # checkpoints to resume from
    T("resume-truncated", ["resume=<trunc>"], "<trunc>"),
    T("resume-empty", ["resume=<empty>"], "<empty>"),
    T("resume-text", ["resume=<text>"], "<text>"),
    T("resume-folder", ["resume=<tmp>"], "resume="),
    T("resume-newer", ["resume=<newer>"], "newer"),
    T("resume-not-a-dict", ["resume=<tensor>"], "not a checkpoint"),
    T("resume-missing", ["resume=<tmp>/nope.ckpt"], "nope.ckpt"),
    T("resume-last-corrupt", ["run_dir=<tmp>/broken", "resume=last"], "last.ckpt", setup=corrupt_run),
    T("resume-auto-corrupt", ["run_dir=<tmp>/broken", "resume=auto"], "last.ckpt", setup=corrupt_run),
    T("resume-last-no-run", ["run_dir=<tmp>/none", "resume=last"], "resume=last"),
    # a finished run is never overwritten by accident
    T("rerun-finished", ["run_dir=<tmp>/done"], "resume=last", setup=finished_run),
    # real processes: exit code, one line, no traceback as a user sees them
    T("proc-max-time", ["trainer.max_time=banana"], "trainer.max_time=banana", proc=True),
    T("proc-d-model-1e6", ["model.d_model=1000000"], "parameters", proc=True),
    T("proc-resume-truncated", ["resume=<trunc>"], "<trunc>", proc=True),
]

SAMPLE = [
    S("no-ckpt", ["ckpt=null"], "ckpt="),
    S("ckpt-missing", ["ckpt=<tmp>/nope.ckpt"], "nope.ckpt"),
    S("ckpt-truncated", ["ckpt=<trunc>"], "<trunc>"),
    S("ckpt-empty", ["ckpt=<empty>"], "<empty>"),
    S("ckpt-text", ["ckpt=<text>"], "<text>"),
    S("ckpt-folder", ["ckpt=<tmp>"], "ckpt="),
    S("ckpt-newer", ["ckpt=<newer>"], "newer"),
    S("ckpt-not-a-dict", ["ckpt=<tensor>"], "not a checkpoint"),
    S("ckpt-nan", ["ckpt=<nan>"], "non-finite"),
    S("n-0", ["n=0"], "sample.n=0"),
    S("temperature-neg", ["temperature=-1"], "sample.temperature=-1"),
    S("top-p-0", ["top_p=0"], "sample.top_p=0"),
    S("top-p-1.5", ["top_p=1.5"], "sample.top_p=1.5"),
    S("top-k-neg", ["top_k=-1"], "sample.top_k=-1"),
    S("top-k-huge", ["top_k=100000"], "top_k=100000"),
    S("prime-1", ["prime=1.0"], "sample.prime=1.0"),
    S("prime-tokens-64", ["prime_tokens=64"], "prefix"),
    S("length-0", ["length=0"], "sample.length=0"),
    S("length-huge", ["length=100000"], "sample.length=100000"),
    S("batch-0", ["batch_size=0"], "sample.batch_size=0"),
    S("device-cuda", ["device=cuda"], "device=cuda"),
    S("device-tpu", ["device=tpu"], "device=tpu"),
    S("backend-triton-cpu", ["backend=triton"], "backend=triton", setup=no_triton_interpreter),
    S("backend-sdpa-strided", ["backend=sdpa"], "backend=sdpa"),
    S("cache-bogus", ["cache=bogus"], "sample.cache=bogus"),
    S("seed-abc", ["seed=abc"], "sample.seed=abc"),
    S("out-file", ["out=<file>"], "<file>"),
    S("out-under-file", ["out=<file>/samples"], "<file>"),
    S("out-existing-folder", ["out=<tmp>"], "exists"),
    S("out-unwritable", ["out=<tmp>/ro/s"], "<tmp>/ro", setup=read_only),
    S("cache-dir-file-prime", ["prime=0.5", "data.cache_dir=<file>"], "data.cache_dir"),
    S("cache-dir-under-file-prime", ["prime=0.5", "data.cache_dir=<file>/data"], "data.cache_dir"),
    S("arch-override", ["model.n_layer=3"], "model.n_layer"),
    S("train-key", ["optim.lr=1"], "optim.lr"),
    S("eval-option", ["split=test"], "split"),
    S("unknown-option", ["nn=3"], "nn"),
    S("not-key-value", ["foo"], "'foo'"),
    S("imports-missing", ["imports=[no_such_module_xyz]"], "no_such_module_xyz"),
    S("data-eval-batch-neg", ["data.eval_batch_size=-1"], "data.eval_batch_size=-1"),
    S("data-val-windows-0", ["data.val_windows=0"], "data.val_windows=0"),
    S("proc-ckpt-truncated", ["ckpt=<trunc>"], "<trunc>", proc=True),
    S("proc-out-under-file", ["out=<file>/samples"], "<file>", proc=True),
]

EVAL = [
    E("no-ckpt", ["ckpt=null"], "ckpt="),
    E("ckpt-missing", ["ckpt=<tmp>/nope.ckpt"], "nope.ckpt"),
    E("ckpt-truncated", ["ckpt=<trunc>"], "<trunc>"),
    E("ckpt-empty", ["ckpt=<empty>"], "<empty>"),
    E("ckpt-text", ["ckpt=<text>"], "<text>"),
    E("ckpt-folder", ["ckpt=<tmp>"], "ckpt="),
    E("ckpt-newer", ["ckpt=<newer>"], "newer"),
    E("ckpt-nan", ["ckpt=<nan>"], "non-finite"),
    E("split-train", ["split=train"], "eval.split=train"),
    E("min-context-neg", ["min_context=-1"], "eval.min_context=-1"),
    E("min-context-64", ["min_context=64"], "eval.min_context=64"),
    E("batch-0", ["batch_size=0"], "eval.batch_size=0"),
    E("limit-0", ["limit=0"], "eval.limit=0"),
    E("device-cuda", ["device=cuda"], "device=cuda"),
    E("backend-triton-cpu", ["backend=triton"], "backend=triton", setup=no_triton_interpreter),
    E("backend-sdpa-strided", ["backend=sdpa"], "backend=sdpa"),
    E("out-folder", ["out=<tmp>"], "<tmp>"),
    E("out-under-file", ["out=<file>/x.json"], "<file>"),
    E("out-unwritable", ["out=<tmp>/ro/x.json"], "<tmp>/ro", setup=read_only),
    E("cache-dir-file", ["data.cache_dir=<file>"], "data.cache_dir"),
    E("cache-dir-under-file", ["data.cache_dir=<file>/data"], "data.cache_dir"),
    E("data-eval-batch-neg", ["data.eval_batch_size=-1"], "data.eval_batch_size=-1"),
    E("arch-override", ["model.d_model=64"], "model.d_model"),
    E("unknown-option", ["min_ctx=4"], "min_ctx"),
    E("proc-ckpt-nan", ["ckpt=<nan>"], "non-finite", proc=True),
]

CASES = TRAIN + SAMPLE + EVAL


# ------------------------------------------------------------------------------------------------
# Shared inputs: prepared data and checkpoints, made once
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shared")
    data = root / "data"
    ckpt = make_ckpt(root / "run" / "checkpoints" / "last.ckpt", f"data.cache_dir={data}")
    nan = make_ckpt(root / "nan" / "checkpoints" / "last.ckpt", f"data.cache_dir={data}",
                    edit=lambda ck: ck["state_dict"]["net.blocks.0.ff.fc1.weight"].view(-1)[:5].fill_(float("nan")))
    newer = make_ckpt(root / "newer" / "last.ckpt", f"data.cache_dir={data}",
                      edit=lambda ck: ck.update(sparse_transformer_format=99))
    raw = ckpt.read_bytes()
    (root / "trunc.ckpt").write_bytes(raw[: len(raw) // 2])
    (root / "empty.ckpt").write_bytes(b"")
    (root / "text.ckpt").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), root / "tensor.ckpt")
    # the data prepared and an evaluation written, so that a case finds them and must add nothing
    from sparse_transformer.cli.evaluate import main as evaluate

    evaluate([f"ckpt={ckpt}", "limit=1", "progress=false"])
    return {"root": root, "data": data, "ckpt": ckpt, "nan": nan, "newer": newer, "trunc": root / "trunc.ckpt",
            "empty": root / "empty.ckpt", "text": root / "text.ckpt", "tensor": root / "tensor.ckpt"}


def base_args(case: Case, f: dict) -> list[str]:
    given = {a.split("=", 1)[0] for a in case.args}
    if case.cmd == "train":
        base = ["exp=default", *TINY, f"data.cache_dir={f['data']}", "trainer.max_steps=2", "optim.warmup_steps=1",
                "callbacks.samples.at_end=false", "callbacks.attention_maps.enabled=false"]
        if "run_dir" not in given:
            base.append(f"run_dir={f['tmp']}/run")
        return [a for a in base if a.split("=", 1)[0] not in given]
    base = ["progress=false", "device=cpu"] if "device" not in given else ["progress=false"]
    if "ckpt" not in given:
        base.append(f"ckpt={f['ckpt']}")
    if "out" not in given:
        base.append(f"out={f['tmp']}/{'samples' if case.cmd == 'sample' else 'eval.json'}")
    if case.cmd == "sample":
        base += ["n=2", "batch_size=2"] if "batch_size" not in given else ["n=2"]
    else:
        base += [] if "limit" in given else ["limit=2"]
    return base


def fill(arg: str, f: dict) -> str:
    for k, v in f.items():
        arg = arg.replace(f"<{k}>", str(v))
    return arg.replace("=null", "=") if arg == "ckpt=null" else arg


def snapshot(*roots: Path) -> dict:
    out = {}
    for r in roots:
        for dirpath, dirnames, filenames in os.walk(r):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else "dir"
    return out


def memory_limit() -> None:
    """16 GiB of address space: a model too large for memory fails to allocate (before the check
    that refuses it existed, one 17 GB matrix after another until the kernel killed the test run)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def run_case(case: Case, argv: list[str], cwd: Path, capfd) -> tuple[int | None, str, str | None]:
    """(exit code or None where an exception escaped, stderr, the exception's name)."""
    if case.proc:
        res = subprocess.run([sys.executable, "-m", MODULE[case.cmd], *argv], cwd=cwd, env=fr.env(), capture_output=True,
                             text=True, timeout=300, preexec_fn=memory_limit)
        return res.returncode, res.stderr, None
    if case.cmd == "train":
        from sparse_transformer.cli.train import main
    elif case.cmd == "sample":
        from sparse_transformer.cli.sample import main
    else:
        from sparse_transformer.cli.evaluate import main
    code, escaped = None, None
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # what a user would see as a traceback
        escaped = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return code, capfd.readouterr().err, escaped


@pytest.mark.parametrize("case", CASES, ids=[f"{c.cmd}-{c.id}" for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, shared, tmp_path, monkeypatch, capfd):
    from sparse_transformer.cli import common

    monkeypatch.delenv(common.RUN_ENV, raising=False)
    monkeypatch.setattr(common, "_named_here", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same cases on a GPU machine
    f = {**shared, "tmp": tmp_path, "file": tmp_path / "a-file", "cwd": tmp_path / "cwd"}
    f["file"].write_text("a file, not a folder\n")
    f["cwd"].mkdir()
    monkeypatch.chdir(f["cwd"])
    if case.setup:
        case.setup(f, monkeypatch)
    argv = [fill(a, f) for a in base_args(case, f) + case.args]
    argv = [a for a in argv if a != "run_dir=null"]
    before = snapshot(tmp_path, shared["root"])
    capfd.readouterr()
    try:
        code, err, escaped = run_case(case, argv, f["cwd"], capfd)
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o700)
    after = snapshot(tmp_path, shared["root"])
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    lines = err.strip().splitlines()
    says = fill(case.says, f)
    one_line = len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0]
    kind = ("traceback" if escaped or "Traceback" in err else "silent" if code == 0
            else "clean" if code == 2 and one_line else "messy")
    record(case, kind, bool(changed), code, escaped or (lines[-1] if lines else ""))
    assert escaped is None and "Traceback" not in err, f"{escaped or err[-2000:]}"
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert says in lines[0], lines[0]
    assert not changed, f"wrote {changed[:5]}"


# ------------------------------------------------------------------------------------------------
# The before/after table
# ------------------------------------------------------------------------------------------------
def record(case: Case, kind: str, wrote: bool, code, last: str) -> None:
    path = os.environ.get("BAD_INPUT_TABLE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"cmd": case.cmd, "id": case.id, "kind": kind, "wrote": wrote, "code": code,
                                 "line": last[:300]}) + "\n")


def table(path: str) -> str:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines()]
    kinds = ("clean", "traceback", "silent", "messy")
    out = ["| command | tried | " + " | ".join(kinds) + " | wrote something |", "|---" * (len(kinds) + 3) + "|"]
    for cmd in ("train", "sample", "eval", None):
        sel = [r for r in rows if cmd is None or r["cmd"] == cmd]
        counts = [sum(r["kind"] == k for r in sel) for k in kinds]
        out.append(f"| {cmd or 'all'} | {len(sel)} | " + " | ".join(map(str, counts)) + f" | {sum(r['wrote'] for r in sel)} |")
    return "\n".join(out)


if __name__ == "__main__":  # PYTHONPATH=src:. python tests/cli/test_bad_input.py <BAD_INPUT_TABLE file>
    print(table(sys.argv[1]))
