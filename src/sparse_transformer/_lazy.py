"""Lazy package exports: a name is imported from its module on first use, so importing a package
stays cheap (no torch or omegaconf until a name that needs them is asked for)."""

from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` giving each name of ``exports`` from its module (relative to ``package``)."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
