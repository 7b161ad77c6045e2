"""Execute the notebooks: read each jupytext ``# %%`` script, inject parameters after its
``parameters`` cell (papermill's convention), run it on a Python kernel (nbclient) and write the
executed ``.ipynb`` and an ``.html`` with the figures.

    python notebooks/run.py                          # both notebooks, their own parameters
    python notebooks/run.py attention_maps -p TRAIN_STEPS=60 -p 'DEMO="image"'
    python notebooks/run.py attention_maps -p CHECKPOINT=runs/default/<stamp>/checkpoints/last.ckpt
    python notebooks/run.py --preset small --out /tmp/nb   # what the tests run

Output (default ``notebooks/out/``, git-ignored): ``<name>.ipynb``, ``<name>.html`` and
``figures/<name>/*.png`` plus ``figures/<name>/results.json``.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = ("attention_patterns", "attention_maps")

PATH_PARAMS = ("CHECKPOINT", "DATA_DIR", "WORK_DIR", "FIG_DIR")

# Parameters small enough for a 2-core CPU in well under a minute each (the tests use them).
PRESETS = {
    "small": {
        # n = 4096: at 2048 (l = 64) flex runs stride as 64 sequences of 32, a tile each: strided as run would
        # exceed half of the naive layout's tiles, which tests/test_notebooks.py checks it stays under
        "attention_patterns": {"N_REAL": 4096, "STRIDE_REAL": 64, "SUMMARY_REAL": 16, "TILE_MAX_N": 1024,
                               "SCALING_NS": [2**k for k in range(6, 17)]},
        "attention_maps": {"TRAIN_STEPS": 40, "N_EXAMPLES": 2,
                           "TRAIN_ARGS": ["model.n_layer=2", "model.n_head=4", "model.d_model=32", "data.seq_len=128",
                                          "data.batch_size=8", "attention.stride=16", "optim.warmup_steps=10",
                                          "data.val_windows=2"]},
    },
}


def inject(nb, params: dict):
    """Insert a cell assigning ``params`` after the cell tagged ``parameters`` (or first)."""
    import nbformat

    if not params:
        return nb
    src = "# Parameters (injected)\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    at = next((k + 1 for k, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), 0)
    nb.cells.insert(at, cell)
    return nb


def execute(name: str, out_dir: str | Path, params: dict | None = None, timeout: int = 900) -> dict:
    """Run notebook ``name`` (``notebooks/<name>.py``); returns paths and seconds."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"FIG_DIR": str(out_dir / "figures" / name), **(params or {})}
    if name == "attention_maps":
        params.setdefault("WORK_DIR", str(out_dir / "work"))
    nb = inject(jupytext.read(HERE / f"{name}.py"), params)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env = dict(os.environ)  # the kernel's environment: this package's src first on its path
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT / "src"), env.get("PYTHONPATH")) if x)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, whatever the caller uses
    t0, cpu0 = time.time(), _children_cpu()
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}})
        client.execute(env=env)
    finally:
        seconds = time.time() - t0
        ipynb = out_dir / f"{name}.ipynb"
        nbformat.write(nb, ipynb)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out_dir / f"{name}.html").write_text(html, encoding="utf-8")
    return {"name": name, "ipynb": str(ipynb), "html": str(out_dir / f"{name}.html"),
            "figures": str(out_dir / "figures" / name), "seconds": round(seconds, 1),
            "cpu_seconds": round(_children_cpu() - cpu0, 1)}


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished child processes: the kernel, once it has exited."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(NOTEBOOKS), help=f"notebooks to run (default: {' '.join(NOTEBOOKS)})")
    ap.add_argument("--out", default=str(HERE / "out"), help="output folder (default notebooks/out)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="a parameter preset (small: what the tests run)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter (a Python literal), e.g. -p TRAIN_STEPS=60; repeatable")
    args = ap.parse_args(argv)
    for name in args.names:
        if name not in NOTEBOOKS:
            print(f"error: unknown notebook {name!r}; valid: {', '.join(NOTEBOOKS)}", file=sys.stderr)
            return 2
    extra = {}
    for kv in args.param:
        if "=" not in kv:
            print(f"error: parameter {kv!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        k, v = kv.split("=", 1)
        v = _value(v)
        if k in PATH_PARAMS and isinstance(v, str):
            v = str(Path(v).resolve())  # relative to where run.py was called, not the kernel's notebooks/
        extra[k] = v
    for name in args.names:
        params = {**PRESETS.get(args.preset, {}).get(name, {}), **extra}
        res = execute(name, args.out, params)
        print(f"{name}: {res['seconds']} s ({res['cpu_seconds']} s CPU) -> {res['html']} (figures in {res['figures']})",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
