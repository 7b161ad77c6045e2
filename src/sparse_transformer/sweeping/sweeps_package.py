"""W&B's search engine, the optional ``sweeps`` package (grid, random and bayes search, and W&B's
JSON schema of a sweep), imported so that nothing else can pass for it.

``python -m`` puts the working folder first on ``sys.path``, and the local runner writes its state
to ``./sweeps/``: a plain ``import sweeps`` without the package installed took that folder for a
namespace package (and the runner crashed on its second start). Here the package is imported only
where a real one (a file, not a bare folder) is on the path; a regular package found anywhere on the
path wins over a namespace folder, so the import then gets the real one.

The import itself stays inside ``import_sweeps``: the package is optional and slow to import.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings


def installed() -> bool:
    """A real ``sweeps`` package (or module) is on the path, not just a folder of that name."""
    spec = importlib.machinery.PathFinder.find_spec("sweeps", sys.path)
    return spec is not None and spec.has_location


def import_sweeps():
    """The ``sweeps`` module, or None where it is not installed. It pins numpy<2 in its metadata but
    works with numpy 2 (installed with --no-deps); its pydantic-v1 config style warns on import."""
    mod = sys.modules.get("sweeps")
    if mod is not None and getattr(mod, "__file__", None):
        return mod
    if not installed():
        return None
    sys.modules.pop("sweeps", None)  # a namespace package someone imported from a folder named sweeps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module("sweeps")
        except ImportError:
            return None
