"""Lazy package exports: a name is imported from its module on first use, so importing a package
stays cheap (no torch or omegaconf until a name that needs them is asked for)."""

import warnings
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` giving each name of ``exports`` from its module (relative to ``package``)."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def moved_exports(module: str, moved: dict[str, str]):
    """A module ``__getattr__`` for names that moved: each of ``moved`` (name -> its new module,
    absolute or relative to the package) is imported from there with a DeprecationWarning."""
    package = module.rsplit(".", 1)[0]

    def __getattr__(name: str):
        if name in moved:
            target = import_module(moved[name], package)
            warnings.warn(f"{module}.{name} moved to {target.__name__}.{name}; the old name goes in the next release",
                          DeprecationWarning, stacklevel=2)
            return getattr(target, name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
