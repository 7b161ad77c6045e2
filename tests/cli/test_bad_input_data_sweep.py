"""Bad input to the data and sweep commands (issue 16, item 9): each case gives exactly one line on
stderr naming what is wrong and what is valid, exit code 2, no traceback, and no new files.

The commands run in-process through their ``main(argv)`` (as the other CLI tests do), in a fresh
working folder; two cases run them as ``python -m`` subprocesses, as users do. A case is
``(id, setup, argv, expected)``: ``setup(t)`` prepares the folder ``t`` before the snapshot of its
files, ``argv`` may name ``{t}`` (that folder) and ``{prepared}`` (a prepared store's cache folder,
copied into ``t`` by setup where a case damages it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_transformer.cli.data import main as data_main
from sparse_transformer.cli.sweep import main as sweep_main
from sparse_transformer.sweeping.search import sweeps_engine_available
from tests.sweeping.helpers import make_sweep, no_trial

ROOT = Path(__file__).resolve().parents[2]
TEXT = ("It was the best of times, it was the worst of times. " * 100).encode()  # 5,300 bytes
SMALL = ["data.seq_len=64", "attention.stride=8", "model.n_layer=2", "model.d_model=32", "model.n_head=2",
         "logger.kind=none"]
LOCAL = ["data.source=local", "data.path={t}/t.txt", "data.cache_dir={t}/cache", *SMALL]
PREPARED = ["data.source=local", "data.path={src}", "data.cache_dir={t}/cache", *SMALL]  # the prepared stores' source


# ------------------------------------------------------------------------------------------------
# Set-ups
# ------------------------------------------------------------------------------------------------
def text_file(t: Path, data: bytes = TEXT, name: str = "t.txt") -> None:
    (t / name).write_bytes(data)


def a_file(t: Path) -> None:
    (t / "afile").write_text("a file, not a folder")


def unwritable(t: Path) -> str:
    """A folder this process cannot write: under /sys as root (root may write any ordinary folder), else a chmod 500 one."""
    if os.geteuid() == 0:
        return "/sys/sparse-transformer-test/x"
    (t / "ro").mkdir(mode=0o500, exist_ok=True)
    return str(t / "ro" / "x")


def prepared_copy(fmt: str, damage=None):
    """Copy the module's prepared store of format ``fmt`` into t/cache, then ``damage(store folder)``."""

    def setup(t: Path, prepared: dict) -> None:
        shutil.copytree(prepared[fmt], t / "cache")
        if damage:
            damage(next((t / "cache").iterdir()))

    return setup


def truncate(rel: str, keep: int = 100):
    def damage(store: Path) -> None:
        f = next(store.glob(rel))
        with open(f, "r+b") as h:
            h.truncate(keep)
    return damage


def flip(rel: str):
    def damage(store: Path) -> None:
        f = next(store.glob(rel))
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
    return damage


def write(rel: str, content: str | None):
    def damage(store: Path) -> None:
        if content is None:
            (store / rel).unlink()
        else:
            (store / rel).write_text(content)
    return damage


# ------------------------------------------------------------------------------------------------
# The data command
# ------------------------------------------------------------------------------------------------
DATA_CASES = [
    ("unknown-key", None, ["data.sorce=pydoc"], "unknown key data.sorce in the command line: did you mean data.source?"),
    ("not-an-int", None, ["data.seq_len=abc"], "data.seq_len=abc is not a valid int"),
    ("unknown-modality", None, ["data.modality=video"], "data.modality=video is unknown; valid: text, image, audio"),
    ("unknown-format", None, ["data.format=zip"], "data.format=zip is unknown; valid: arrow, raw"),
    ("seq-len-not-multiple-of-stride", None, ["data.seq_len=100"], "data.seq_len=100 must be a multiple of attention.stride="),
    ("splits-over-one", None, ["data.splits=[0.5,0.6,0.1]"], "data.splits=[0.5, 0.6, 0.1] must be three fractions"),
    ("batch-size-zero", None, ["data.batch_size=0"], "data.batch_size=0 must be >= 1"),
    ("max-bytes-zero", None, ["data.max_bytes=0"], "data.max_bytes=0 must be >= 1 or null"),
    ("sample-rate-too-low", None, ["data.modality=audio", "data.sample_rate=10"], "data.sample_rate=10 must be >= 1000"),
    ("image-without-shape", None, ["data.modality=image"], "data.shape=None must be [H, W, C] with C in 1, 3, 4"),
    ("no-such-experiment", None, ["exp=nosuch"], "experiment exp=nosuch does not exist: valid: bach, cifar10"),
    ("experiment-outside-conf", None, ["exp=../../etc/passwd"], "exp=../../etc/passwd is not an experiment name"),
    ("not-key-value", None, ["oops"], "argument 'oops' is not key=value (e.g. model.n_layer=4)"),
    ("verify-not-a-bool", None, ["verify=maybe"], "verify=maybe is not valid; valid: verify=true or verify=false"),
    ("verify-without-value", None, ["verify"], "verify needs a value; valid: verify=true or verify=false"),
    ("rebuild-not-a-bool", None, ["--rebuild=2"], "rebuild=2 is not valid; valid: rebuild=true or rebuild=false"),
    ("cache-dir-is-a-file", lambda t, _: (text_file(t), a_file(t)),
     [*LOCAL, "data.cache_dir={t}/afile"], "data.cache_dir={t}/afile is a file, not a folder; give a folder that can be written"),
    ("cache-dir-under-a-file", lambda t, _: (text_file(t), a_file(t)),
     [*LOCAL, "data.cache_dir={t}/afile/sub"], "data.cache_dir={t}/afile/sub is under {t}/afile, which is a file, not a folder"),
    ("cache-dir-unwritable", lambda t, _: (text_file(t), unwritable(t)),
     [*LOCAL, "data.cache_dir={unwritable}"], "data.cache_dir={unwritable} cannot be written ("),
    ("local-without-path", None, ["data.source=local", "data.cache_dir={t}/cache", *SMALL],
     "data.source=local needs data.path=<text file, zip or folder>"),
    ("local-path-missing", None, [*LOCAL, "data.path={t}/nope.txt"], "data.path={t}/nope.txt does not exist; point it at"),
    ("local-file-empty", lambda t, _: text_file(t, b""), LOCAL, "data.path={t}/t.txt is empty; give a file with text in it"),
    ("local-folder-empty", lambda t, _: (t / "empty").mkdir(), [*LOCAL, "data.path={t}/empty"],
     "data.path={t}/empty is an empty folder; put text files in it"),
    ("too-little-data-for-seq-len", lambda t, _: text_file(t, b"x" * 300), LOCAL,
     "has 15 tokens, fewer than data.seq_len=64; lower data.seq_len, raise data.max_bytes or change data.splits"),
    ("hub-unreachable", None, ["data.source=nobody/no-such-dataset-xyz", "data.cache_dir={t}/cache", *SMALL],
     "data.source=nobody/no-such-dataset-xyz: this machine is offline"),
    ("audio-folder-without-audio", lambda t, _: ((t / "songs").mkdir(), (t / "songs" / "notes.txt").write_text("la")),
     ["data.modality=audio", "data.source=local", "data.path={t}/songs", "data.cache_dir={t}/cache", *SMALL],
     "data.path={t}/songs holds no audio files (.aif"),
    ("image-folder-without-images", lambda t, _: ((t / "pics").mkdir(), (t / "pics" / "notes.txt").write_text("la")),
     ["data.modality=image", "data.shape=[4,4,1]", "data.seq_len=16", "attention.stride=4", "data.source=local",
      "data.path={t}/pics", "data.cache_dir={t}/cache"], "data.path={t}/pics holds no images, idx files or dataset files"),
    ("damaged-train-u8-truncated", prepared_copy("raw", truncate("train.u8")), [*PREPARED, "data.format=raw"],
     "/train.u8 is damaged: it has 100 bytes, but "),
    ("damaged-test-u8-truncated", prepared_copy("raw", truncate("test.u8", 3)), [*PREPARED, "data.format=raw"],
     "/test.u8 is damaged: it has 3 bytes, but "),
    ("damaged-test-u8-missing", prepared_copy("raw", write("test.u8", None)), [*PREPARED, "data.format=raw"],
     "/test.u8 is damaged: it is missing"),
    ("damaged-arrow-truncated", prepared_copy("arrow", truncate("dataset/train/*.arrow")), PREPARED,
     ".arrow is damaged: it has 100 bytes, but "),
    ("damaged-raw-bytes-flipped-verify", prepared_copy("raw", flip("train.u8")), [*PREPARED, "data.format=raw", "verify=true"],
     "/train.u8 is damaged: its SHA-256 differs from the one recorded when it was prepared"),
    ("damaged-arrow-bytes-flipped-verify", prepared_copy("arrow", flip("dataset/train/*.arrow")), [*PREPARED, "--verify=true"],
     ".arrow is damaged: its SHA-256 differs from the one recorded when it was prepared"),
    ("damaged-record-missing", prepared_copy("raw", write("sparse_transformer.json", None)), [*PREPARED, "data.format=raw"],
     "/sparse_transformer.json is damaged: it is missing (every prepared folder has one)"),
    ("damaged-record-garbled", prepared_copy("arrow", write("sparse_transformer.json", "{garbled")), PREPARED,
     "/sparse_transformer.json is damaged: it is not readable JSON (JSONDecodeError"),
    ("damaged-record-lengths", prepared_copy("raw", write("sparse_transformer.json", '{"kind": "stream", "format": "raw", '
                                                           '"lengths": {"train": "many"}}')),
     [*PREPARED, "data.format=raw"], "/sparse_transformer.json is damaged: lengths={{'train': 'many'}} (valid: a count for each of"),
]
REBUILD_HINT = "; rebuild it: make data EXP=default ARGS='"  # every damaged case names the command that rebuilds it


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """The cache folder of a small prepared text store in each format (copied by the cases that damage one)."""
    root = tmp_path_factory.mktemp("prepared")
    text_file(root)
    out = {"src": root / "t.txt"}
    for fmt in ("raw", "arrow"):
        data_main([a.format(t=root) for a in LOCAL] + [f"data.cache_dir={root}/{fmt}", f"data.format={fmt}"])
        out[fmt] = root / fmt
    return out


def snapshot(t: Path) -> list:
    return sorted((str(p.relative_to(t)), p.is_dir()) for p in t.rglob("*"))


def one_line(err: str) -> str:
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("error: "), err
    return err[len("error: "):-1]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_command(case, tmp_path, monkeypatch, capsys, prepared):
    name, setup, argv, expected = case
    monkeypatch.chdir(tmp_path)
    fill = {"t": tmp_path, "unwritable": unwritable(tmp_path), "src": prepared["src"]}
    if setup is not None:
        setup(tmp_path, prepared)
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        data_main([a.format(**fill) for a in argv])
    err = one_line(capsys.readouterr().err)
    assert e.value.code == 2 and expected.format(**fill) in err, err
    if name.startswith("damaged-"):
        assert REBUILD_HINT in err and err.endswith("rebuild=true'"), err
    assert snapshot(tmp_path) == before  # nothing written, nothing left behind


# ------------------------------------------------------------------------------------------------
# The sweep command
# ------------------------------------------------------------------------------------------------
def sweep_file(t: Path, **change) -> None:
    make_sweep(t, {"optim.lr": {"values": [1e-3, 2e-3]}}, **change)


def raw_sweep(text: str | bytes):
    def setup(t: Path) -> None:
        (t / "s.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def state(content: str | None):
    """A sweep, and a damaged state file (None: a folder where trials.json should be)."""
    def setup(t: Path) -> None:
        sweep_file(t)
        (t / "out").mkdir()
        if content is None:
            (t / "out" / "trials.json").mkdir()
        else:
            (t / "out" / "trials.json").write_text(content)
    return setup


LOCAL_S = ["local", "{t}/s.yaml", "--trials", "1"]
SWEEP_CASES = [
    ("out-is-a-file", lambda t: (sweep_file(t), a_file(t)), [*LOCAL_S, "--out={t}/afile"],
     "the sweep folder {t}/afile is a file, not a folder; pass --out <a folder that can be written>"),
    ("out-under-a-file", lambda t: (sweep_file(t), a_file(t)), [*LOCAL_S, "--out", "{t}/afile/x"],
     "the sweep folder {t}/afile/x is under {t}/afile, which is a file, not a folder"),
    ("out-unwritable", sweep_file, [*LOCAL_S, "--out={unwritable}"], "the sweep folder {unwritable} cannot be written ("),
    ("default-out-under-a-file", lambda t: (sweep_file(t), (t / "sweeps").write_text("x")), LOCAL_S,
     "the sweep folder sweeps/s is under sweeps, which is a file, not a folder"),
    ("trials-zero", sweep_file, ["local", "{t}/s.yaml", "--trials", "0"], "N=0: give the number of trials, at least 1"),
    ("trials-not-a-number", sweep_file, ["local", "{t}/s.yaml", "--trials=two"], "N=two is not a whole number"),
    ("trials-missing", sweep_file, ["local", "{t}/s.yaml"], "N is missing: make sweep-local SWEEP=<name> N=<trials>"),
    ("no-such-sweep", None, ["local", "nosuch", "--trials", "1"], "sweep 'nosuch' does not exist"),
    ("sweep-name-outside-conf", None, ["check", "../exp/default"], "is neither a .yaml file nor a sweep name in conf/sweep/"),
    ("no-sweep-given", None, ["local", "", "--trials", "1"], "no sweep given: make sweep-local SWEEP=<name> N=<trials>"),
    ("engine-unknown", sweep_file, [*LOCAL_S, "--engine", "optuna"],
     "argument --engine: invalid choice: 'optuna' (choose from 'auto', 'sweeps', 'builtin')"),
    pytest.param(("engine-sweeps-missing", sweep_file, [*LOCAL_S, "--engine=sweeps"],
                  "--engine sweeps: the sweeps package is not installed (pip install"), id="engine-sweeps-missing",
                 marks=pytest.mark.skipif(sweeps_engine_available(), reason="the sweeps package is installed")),
    ("bayes-without-sweeps-builtin", lambda t: sweep_file(t, method="bayes"), [*LOCAL_S, "--engine=builtin"],
     "method=bayes needs W&B's sweeps package"),
    ("seed-not-an-int", sweep_file, [*LOCAL_S, "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    ("no-command", None, [], "the following arguments are required: {{check,create,agent,local}}"),
    ("unknown-command", None, ["frob"], "invalid choice: 'frob' (choose from 'check', 'create', 'agent', 'local')"),
    ("check-without-name", None, ["check"], "the following arguments are required: name"),
    ("misspelt-option", sweep_file, [*LOCAL_S, "--trails=2"], "unrecognized argument '--trails=2' for local"),
    ("override-on-check", sweep_file, ["check", "{t}/s.yaml", "trainer.max_steps=3"],
     "unrecognized argument 'trainer.max_steps=3' for check; key=value overrides go after 'local <name>'"),
    ("args-sets-a-sweep-parameter", sweep_file, [*LOCAL_S, "optim.lr=0.1"],
     "ARGS optim.lr=0.1: optim.lr is a parameter of the sweep; ARGS may set only other keys"),
    ("args-unknown-key", sweep_file, [*LOCAL_S, "trainer.max_stepz=3"], "unknown key trainer.max_stepz in ARGS: did you mean"),
    ("args-bad-value", sweep_file, [*LOCAL_S, "trainer.max_steps=-5"], "ARGS: trainer.max_steps=-5 must be -1 (off) or >= 1"),
    ("args-exp", sweep_file, [*LOCAL_S, "exp=enwik8"], "ARGS exp=enwik8: exp cannot be overridden here"),
    ("args-run-dir", sweep_file, [*LOCAL_S, "run_dir={t}/r"], "run_dir cannot be overridden here (every trial gets its own"),
    ("yaml-syntax", raw_sweep("method: [grid\n"), LOCAL_S, "{t}/s.yaml is not valid YAML: "),
    ("yaml-not-a-mapping", raw_sweep("- grid\n- random\n"), LOCAL_S,
     "{t}/s.yaml must be a mapping (method, metric, parameters, command)"),
    ("yaml-not-text", raw_sweep(b"\xff\xfe\x00\x81garbage"), LOCAL_S, "{t}/s.yaml cannot be read (UnicodeDecodeError"),
    ("yaml-unknown-top-key", lambda t: sweep_file(t, early_stop=True), LOCAL_S, "unknown top-level key 'early_stop'; valid:"),
    ("metric-never-logged", lambda t: sweep_file(t, metric="val/loss"), LOCAL_S,
     "metric 'val/loss' is never logged by sparse_transformer.train; valid: val/bpd"),
    ("command-runs-another-program", lambda t: sweep_file(t, command=["bash", "-c", "rm -rf ~", "${args_no_hyphens}"]),
     LOCAL_S, "does not run this project's training; valid: [${{env}}, ${{interpreter}}, -m, sparse_transformer.train"),
    ("state-not-json", state("{half"), [*LOCAL_S, "--out={t}/out"],
     "{t}/out/trials.json is not the runner's state (JSONDecodeError"),
    ("state-is-a-folder", state(None), [*LOCAL_S, "--out={t}/out"],
     "{t}/out/trials.json is not the runner's state (IsADirectoryError"),
    ("state-without-trials", state('{"trials": 3}'), [*LOCAL_S, "--out={t}/out"],
     "{t}/out/trials.json is not the runner's state (a mapping with a trials list)"),
    ("agent-count-zero", None, ["agent", "me/proj/abc123", "--count", "0"], "COUNT=0: an agent must run at least 1 trial"),
    ("agent-without-id", None, ["agent", "--count=2"], "no sweep id given: make agent SWEEP_ID=<entity/project/id>"),
    ("create-offline", None, ["create", "patterns"],
     "make sweep needs the W&B server, but W&B is offline here (WANDB_MODE); run the sweep offline instead"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) if type(c) is tuple else c for c in SWEEP_CASES])
def test_sweep_command(case, tmp_path, monkeypatch, capsys):
    name, setup, argv, expected = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(subprocess, "run", no_trial)
    fill = {"t": tmp_path, "unwritable": unwritable(tmp_path)}
    if setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path)
    rc = sweep_main([a.format(**fill) for a in argv])
    err = one_line(capsys.readouterr().err)
    assert rc == 2 and expected.format(**fill) in err, err
    assert snapshot(tmp_path) == before  # nothing written: no sweeps/ folder, no state


# ------------------------------------------------------------------------------------------------
# As users run them: python -m, in a subprocess
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,expected", [
    (["sparse_transformer.data", *PREPARED], "/sparse_transformer.json is damaged: it is not readable JSON"),
    (["sparse_transformer.sweep", "local", "patterns", "--trials=1", "--out={t}/afile"],
     "the sweep folder {t}/afile is a file, not a folder"),
], ids=["data-garbled-record", "sweep-out-is-a-file"])
def test_python_m(argv, expected, tmp_path, prepared):
    prepared_copy("arrow", write("sparse_transformer.json", "{garbled"))(tmp_path, prepared)
    a_file(tmp_path)
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "offline"}
    r = subprocess.run([sys.executable, "-m", *[a.format(t=tmp_path, src=prepared["src"]) for a in argv]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    err = one_line(r.stderr)
    assert r.returncode == 2 and expected.format(t=tmp_path) in err, r.stderr
    assert snapshot(tmp_path) == before
