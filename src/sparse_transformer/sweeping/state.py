"""The local runner's state, ``<out>/trials.json``: one record per trial (id, parameters, status,
metric, command, run folder). A restart skips finished trials and runs failed ones again.

The runner joins trial ids to paths and deletes trial folders, so the file is checked before it is
used (ids ``trial-<number>``, each once; the sweep's parameters; a known status), and a folder is
deleted only when it really lies inside the sweep folder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..files import write_json
from .spec import SweepError

TRIAL_ID = re.compile(r"trial-[0-9]{3,6}")  # the runner's trial ids: trial-000, trial-001, ...
STATUSES = ("running", "finished", "failed", "invalid")
FIX = "the file was edited or damaged: fix it, or move it away or pass --out <new folder>"


def save_state(state: dict, path: Path) -> None:
    write_json(path, state)


def load_state(state_file: Path, sweep: dict) -> dict:
    """``trials.json`` as the runner wrote it; SweepError (one line) if it is not."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        raise SweepError(f"{state_file} is not the runner's state ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"move it away or pass --out <new folder>") from None
    if not isinstance(state, dict) or not isinstance(state.get("trials"), list):
        raise SweepError(f"{state_file} is not the runner's state (a mapping with a trials list); {FIX}")
    seen = set()
    for k, t in enumerate(state["trials"]):
        tid = t.get("id") if isinstance(t, dict) else None
        if not isinstance(tid, str) or not TRIAL_ID.fullmatch(tid) or tid in seen:
            raise SweepError(f"{state_file}: trial {k} has id {tid!r}; valid: trial-<number> (trial-000, trial-001, ...), "
                             f"each once; {FIX}")
        seen.add(tid)
        if not isinstance(t.get("params"), dict) or set(t["params"]) != set(sweep["parameters"]):
            raise SweepError(f"{state_file}: trial {tid} has parameters {sorted(t.get('params') or [])}, not the sweep's "
                             f"{sorted(sweep['parameters'])}; {FIX}")
        if t.get("status") not in STATUSES:
            raise SweepError(f"{state_file}: trial {tid} has status {t.get('status')!r}; valid: {', '.join(STATUSES)}; {FIX}")
    return state


def remove_trial_folder(tdir: Path, out: Path) -> None:
    """Delete a trial's folder, only if it is a real folder inside the sweep folder ``out``."""
    root, target = out.resolve(), tdir.resolve()
    if tdir.is_symlink() or target == root or not target.is_relative_to(root):
        raise SweepError(f"refusing to delete {tdir}: it resolves to {target}, not a trial folder inside {root}")
    shutil.rmtree(target)
