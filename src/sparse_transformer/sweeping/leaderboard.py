"""The leaderboard: finished trials ranked by the sweep's metric (its goal), then the others with
their errors. A trial whose metric is not a finite number (the run diverged) counts as failed and
is ranked last, whatever its goal."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..files import atomic_file
from .spec import fmt


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def searched(sweep: dict) -> list[str]:
    """The parameters that vary (not a single ``value``): the leaderboard's columns."""
    return [k for k, s in sweep["parameters"].items() if "value" not in s]


def describe(t: dict, metric: str, keys: list[str]) -> str:
    p = " ".join(f"{k}={fmt(t['params'][k])}" for k in keys)
    return f"{metric}={t['metric']:.4f} ({p})" if finite(t.get("metric")) else f"{t.get('error')} ({p})"


def _ranked(t: dict) -> bool:
    return t["status"] == "finished" and finite(t.get("metric"))


def leaderboard(trials: list[dict], sweep: dict) -> list[dict]:
    """Finished trials ranked by the metric (goal), then the others (failed, invalid, non-finite) with their errors."""
    metric, goal = sweep["metric"]["name"], sweep["metric"].get("goal", "minimize")
    done = sorted((t for t in trials if _ranked(t)), key=lambda t: t["metric"], reverse=goal == "maximize")
    rest = [t for t in trials if not _ranked(t)]
    rows = []
    for rank, t in enumerate(done + rest, 1):
        status, error = t["status"], t.get("error") or ""
        if status == "finished" and not _ranked(t):  # a state file from before non-finite metrics failed
            status, error = "failed", f"{metric}={t.get('metric')} is not a finite number (the run diverged)"
        rows.append({"rank": rank if _ranked(t) else "", "trial": t["id"], metric: t.get("metric"),
                     **{k: fmt(t["params"][k]) for k in searched(sweep)}, "minutes": t.get("minutes"),
                     "status": status, "run_dir": t.get("run_dir"), "error": error})
    return rows


def write_leaderboard(rows: list[dict], path: Path) -> None:
    with atomic_file(path, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def format_leaderboard(rows: list[dict], metric: str) -> str:
    if not rows:
        return "no trials"
    cols = [c for c in rows[0] if c not in ("run_dir", "error")]

    def cell(r, c):
        v = r.get(c)
        return f"{v:.4f}" if c == metric and isinstance(v, float) else ("" if v is None else str(v))

    width = {c: max(len(c), *(len(cell(r, c)) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(cell(r, c).ljust(width[c]) for c in cols) for r in rows]
    lines += [f"{r['trial']}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(lines)
