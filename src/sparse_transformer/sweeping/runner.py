"""The offline runner (``make sweep-local``): a sweep's trials run here, one subprocess each.

Trials are drawn by W&B's search engine where the ``sweeps`` package is installed, else by the
built-in sampler; each runs the command line a W&B agent would build, plus the run's ``key=value``
overrides (``ARGS``), with its output in ``<out>/trial-<k>/train.log`` and its run folder in
``<out>/trial-<k>/run/``; the metric is read from the run's ``summary.json``. While a trial runs,
its latest progress line is shown (refreshed in place on a terminal, every minute otherwise).
The state (``<out>/trials.json``) lets a restart skip finished trials; the leaderboard is printed
and written to ``<out>/leaderboard.csv``. The default ``<out>`` is ``sweeps/<name>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ConfigError, load_config
from ..files import folder_problem, remove_stale, write_json
from .command import agent_command, trial_args
from .leaderboard import describe, finite, format_leaderboard, leaderboard, searched, write_leaderboard
from .search import NEEDS_SWEEPS, draw_builtin, draw_sweeps, sweeps_engine_available
from .spec import SweepError, check_overrides, load_sweep
from .state import load_state, remove_trial_folder, save_state

RUN_ENV = "SPARSE_TRANSFORMER_RUN_DIR"  # train.run_dir() honours it (the folder rank 0 names)
ENGINES = ("auto", "sweeps", "builtin")
SRC = Path(__file__).resolve().parents[2]  # the folder holding the package: src/sparse_transformer/sweeping/runner.py
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ------------------------------------------------------------------------------------------------
# A trial's process, its progress and its outcome
# ------------------------------------------------------------------------------------------------
def child_env(name: str) -> dict:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")  # an offline runner; WANDB_MODE=online still uploads
    env.setdefault("WANDB_RUN_GROUP", f"sweep-{name}")
    # ``python`` (the agent's ${interpreter}) resolves to this interpreter, and this package's
    # source comes first on the path, as `make` sets it.
    bindir = str(Path(sys.executable).parent)
    if (Path(bindir) / "python").exists():
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def last_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty line of a log, progress-bar updates (``\\r``) counting as lines."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    parts = [ANSI.sub("", p).strip() for p in re.split(r"[\r\n]+", text)]
    return next((p for p in reversed(parts) if p), "")


class TrialProgress:
    """While a trial runs, its log's latest line: rewritten in place on a terminal (every second),
    printed as a new line every ``every`` seconds otherwise (a log file, CI)."""

    def __init__(self, log: Path, prefix: str, enabled: bool = True, stream=None, every: float | None = None):
        self.log, self.prefix, self.enabled = log, prefix, enabled
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every if every is not None else (1.0 if self.tty else 60.0)
        self._stop = threading.Event()
        self._shown = ""

    def _show(self) -> None:
        line = last_line(self.log)
        if not line or line == self._shown:
            return
        self._shown = line
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\x1b[K" + (self.prefix + line)[:width])
        else:
            self.stream.write(self.prefix + line + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._show()

    def __enter__(self) -> "TrialProgress":
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            if self.tty and self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()


def outcome(rc: int, summary: Path, log: Path, metric: str) -> dict:
    """A finished process's record: finished with its metric, or failed with why (a non-zero exit,
    no summary, the metric not logged, or not a finite number)."""
    if rc != 0 or not summary.exists():
        return {"status": "failed", "error": f"exit {rc}: {last_line(log)}"}
    try:
        logged = json.loads(summary.read_text()).get("metrics", {})
    except (OSError, ValueError, AttributeError) as e:
        return {"status": "failed", "error": f"{summary} is not the run's summary ({type(e).__name__})"}
    if metric not in logged:
        return {"status": "failed", "error": f"metric {metric} was not logged by the run "
                                             f"(logged: {', '.join(logged) or 'nothing'})"}
    if not finite(logged[metric]):
        return {"status": "failed", "metric": None,
                "error": f"{metric}={logged[metric]} is not a finite number (the run diverged)"}
    return {"status": "finished", "metric": logged[metric]}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One start of the runner: the sweep, where its state lives, and how trials are run."""

    sweep: dict
    out: Path
    state: dict
    env: dict
    overrides: list[str]
    say: Callable[..., None]
    progress: bool

    @property
    def state_file(self) -> Path:
        return self.out / "trials.json"

    @property
    def metric(self) -> str:
        return self.sweep["metric"]["name"]

    def save(self) -> None:
        save_state(self.state, self.state_file)


def run_trial(run: Run, t: dict, k: int, n: int) -> None:
    """Run trial ``t`` (the ``k``-th of ``n``) in its own fresh folder and record what came of it."""
    tdir = run.out / t["id"]
    if tdir.exists() or tdir.is_symlink():
        remove_trial_folder(tdir, run.out)
    tdir.mkdir(parents=True)
    write_json(tdir / "args.json", t["params"], indent=None)  # what ${args_json_file} names, as an agent writes it
    cmd = agent_command(run.sweep, t["params"], str(tdir / "args.json")) + run.overrides
    t.update(command=cmd, run_dir=str(tdir / "run"), status="running", metric=None, error=None)
    try:  # a combination the training command line rejects never runs
        load_config(trial_args(run.sweep, cmd, t["params"], run.overrides))
    except ConfigError as e:
        t.update(status="invalid", error=str(e))
        run.save()
        run.say(f"[{t['id']}] invalid: {e}")
        return
    run.save()
    run.say(f"[{t['id']}] ({k + 1}/{n}) {' '.join(cmd)}")
    t0 = time.time()
    with open(tdir / "train.log", "w") as log, TrialProgress(tdir / "train.log", f"[{t['id']}] ", run.progress):
        rc = subprocess.run(cmd, env={**run.env, RUN_ENV: t["run_dir"]}, stdout=log, stderr=subprocess.STDOUT).returncode
    t.update(rc=rc, minutes=round((time.time() - t0) / 60, 2))
    t.update(outcome(rc, Path(t["run_dir"]) / "summary.json", tdir / "train.log", run.metric))
    run.save()
    run.say(f"[{t['id']}] {t['status']} in {t['minutes']} min: {describe(t, run.metric, searched(run.sweep))}")


def _engine(engine: str, sweep: dict, seed: int) -> Callable:
    if engine not in ENGINES:
        raise SweepError(f"--engine {engine} is not valid; valid: {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "sweeps" if sweeps_engine_available() else "builtin"
    if engine == "sweeps" and not sweeps_engine_available():
        raise SweepError(f"--engine sweeps: the sweeps package is not installed ({NEEDS_SWEEPS})")
    if engine == "builtin" and sweep["method"] == "bayes":
        draw_builtin(sweep, [], seed)  # raises the one-line error
    return draw_sweeps if engine == "sweeps" else draw_builtin


def _open_state(out: Path, sweep: dict, path: Path, engine: str, overrides: list[str]) -> dict:
    """The state in ``out`` (checked; of this very sweep and overrides), or a new one."""
    problem = folder_problem(out)
    if problem:
        raise SweepError(f"the sweep folder {out} {problem}; pass --out <a folder that can be written>")
    doc = json.dumps(sweep, sort_keys=True) + (json.dumps(overrides) if overrides else "")
    digest = hashlib.sha1(doc.encode()).hexdigest()[:12]
    state_file = out / "trials.json"
    if not state_file.exists():
        return {"sweep": path.stem, "file": str(path), "digest": digest, "engine": engine, "overrides": overrides,
                "trials": []}
    state = load_state(state_file, sweep)
    if state.get("digest") != digest:
        raise SweepError(f"{out} holds trials of a different {path} (or other ARGS: {state.get('overrides') or 'none'} "
                         f"then, {overrides or 'none'} now); move it away or pass --out <folder>")
    return state


def run_local(name: str, trials, engine: str = "auto", out: str | Path | None = None, seed: int = 0,
              quiet: bool = False, allow_any_command: bool = False, overrides: list[str] = ()) -> list[dict]:
    """Run a sweep's first ``trials`` trials here (skipping finished ones); return every trial
    record, the finished ones ranked. Raises SweepError before anything runs on bad input."""
    if trials is None or int(trials) < 1:
        raise SweepError(f"N={trials}: give the number of trials, at least 1 (make sweep-local SWEEP=<name> N=<trials>)")
    sweep, path = load_sweep(name, allow_any_command)
    draw = _engine(engine, sweep, seed)
    overrides = check_overrides(sweep, list(overrides)) if overrides else []
    out = Path(out) if out else Path("sweeps") / path.stem
    state = _open_state(out, sweep, path, "sweeps" if draw is draw_sweeps else "builtin", overrides)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out / "trials.json")  # temporaries of a runner killed while it saved
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    run = Run(sweep, out, state, child_env(path.stem), overrides, say, progress=not quiet)
    say(f"sweep {path.stem}: {sweep['method']} search with "
        f"{'W&B sweeps' if draw is draw_sweeps else 'the built-in sampler'}, {trials} trials, "
        f"{sweep['metric'].get('goal', 'minimize')} {run.metric}"
        f"{'; ARGS ' + ' '.join(overrides) if overrides else ''}; state in {run.state_file}")
    for i in range(int(trials)):
        recs = state["trials"]
        if i < len(recs) and recs[i]["status"] in ("finished", "invalid"):
            say(f"[{recs[i]['id']}] {recs[i]['status']} already: {describe(recs[i], run.metric, searched(sweep))}")
            continue
        if i < len(recs):
            t = recs[i]  # interrupted or failed: run the same parameters again
            say(f"[{t['id']}] again ({t['status']} before)")
        else:
            params = draw(sweep, recs, seed)
            if params is None:
                say(f"the grid is exhausted after {len(recs)} trials")
                break
            t = {"id": f"trial-{i:03d}", "params": params}
            recs.append(t)
        run_trial(run, t, i, int(trials))
    rows = leaderboard(state["trials"], sweep)
    write_leaderboard(rows, out / "leaderboard.csv")
    say(format_leaderboard(rows, run.metric))
    say(f"leaderboard: {out / 'leaderboard.csv'}")
    return rows
