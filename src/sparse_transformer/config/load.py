"""The command line and the YAML files, merged over the schema in this order:

    schema defaults -> conf/config.yaml -> conf/exp/<exp>.yaml -> command line

The command line takes ``key=value`` (what W&B agents pass through ``${args_no_hyphens}``) and
``--key=value``; ``exp=<name>`` picks the experiment (a file in conf/exp/, nowhere else); ``--cfg``
prints the resolved YAML and exits 0; ``--help`` lists every key with its docstring. Everything
here runs before torch or Lightning is imported, so a bad command line fails in about a second,
with one line naming the key and what would be valid, exit code 2 and nothing written.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from .checks import check
from .schema import Config, ConfigError, field_docs, leaves

ROOT = Path(__file__).resolve().parents[3]  # the repository: src/sparse_transformer/config/load.py
CONF_DIR = Path(os.environ.get("SPARSE_TRANSFORMER_CONF", ROOT / "conf"))
EXP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "exp").glob("*.yaml"))


def experiment_path(name: str) -> Path:
    """``conf/exp/<name>.yaml``. ConfigError unless ``name`` is a plain file name there (letters,
    digits, ``_ . -``; no separators, no ``..``) whose file exists and resolves inside conf/exp/:
    an experiment name never reads a YAML from elsewhere, nor names a run folder outside runs/<exp>."""
    folder = CONF_DIR / "exp"
    valid = ", ".join(experiments())
    if not EXP_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"exp={name} is not an experiment name (the name of a file in conf/exp/, without .yaml: "
                          f"letters, digits, _ . -); valid: {valid}")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment exp={name} does not exist: valid: {valid}")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"exp={name}: {path} resolves outside conf/exp/ ({path.resolve()}); valid: {valid}")
    return path


# ------------------------------------------------------------------------------------------------
# Command line -> merged config
# ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[str, list[str], set[str]]:
    """Split argv into (experiment, dotted overrides, flags)."""
    exp, overrides, flags = None, [], set()
    for a in argv:
        if a in ("--cfg", "--help", "-h"):
            flags.add(a.lstrip("-"))
            continue
        s = a[2:] if a.startswith("--") else a
        if "=" not in s:
            raise ConfigError(f"argument {a!r} is not key=value (e.g. model.n_layer=4) or --cfg / --help")
        key, value = s.split("=", 1)
        if value == "None":  # how a W&B agent writes a null sweep value (f"{key}={None}")
            value = "null"
        if key == "exp":
            exp = value
        else:
            overrides.append(f"{key}={value}")
    return exp or "default", overrides, flags


def _check_keys(cfg_keys: list[str], where: str) -> None:
    known = field_docs()
    for key in cfg_keys:
        if key in known:
            continue
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"see --help for the {len(known)} valid keys"
        raise ConfigError(f"unknown key {key} in {where}: {hint}")


def _leaf_keys(d: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict (a list-valued key is one key, whatever its value)."""
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and not (key in leaves() and leaves()[key].is_list):
                out.extend(_leaf_keys(v, key + "."))
            else:
                out.append(key)
    return out


def _load_yaml(path: Path, what: str) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except OmegaConfBaseException as e:  # e.g. an interpolation that does not parse: ${optim.lr
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{what} {path}: {key + ': ' if key else ''}{str(e).splitlines()[0]} "
                          f"(an interpolation is ${{<an existing key>}}, e.g. ${{optim.lr}})") from None
    except Exception as e:  # yaml syntax errors and the like
        raise ConfigError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if cfg is None:
        return OmegaConf.create({})
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{what} {path} must be a mapping of keys, got a {type(cfg).__name__}")
    _check_keys(_leaf_keys(OmegaConf.to_container(cfg)), str(path))
    return cfg


TYPE_NAMES = {"Integer": "int", "Float": "float", "Boolean": "bool (true or false)", "String": "str"}


def _omegaconf_error(e: OmegaConfBaseException) -> ConfigError:
    """OmegaConf's multi-line message as one line naming the key and what is valid."""
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    if "Value '" in msg and "could not be converted" in msg:
        value = msg.split("Value '")[1].split("'")[0]
        typ = msg.rsplit("to ", 1)[-1].strip()
        return ConfigError(f"{key}={value!s} is not a valid {TYPE_NAMES.get(typ, typ)}")
    if msg.startswith("Invalid value '") and ", expected one of [" in msg:  # a Literal field
        value, choices = msg[len("Invalid value '"):].split("', expected one of ", 1)
        return ConfigError(f"{key}={value} is unknown; valid: {', '.join(map(str, ast.literal_eval(choices)))}")
    return ConfigError(f"{key}: {msg}")


def load_config(argv: list[str] | None = None, *, validate: bool = True) -> tuple[DictConfig, set[str]]:
    """Merge schema -> conf/config.yaml -> conf/exp/<exp>.yaml -> argv; validate; return (cfg, flags)."""
    argv = sys.argv[1:] if argv is None else argv
    exp, overrides, flags = parse_args(argv)
    if "help" in flags:
        return OmegaConf.structured(Config), flags
    layers = [OmegaConf.structured(Config)]
    base = CONF_DIR / "config.yaml"
    if base.exists():
        layers.append(_load_yaml(base, "config file"))
    layers.append(_load_yaml(experiment_path(exp), "experiment"))  # inside conf/exp/ only
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except Exception as e:
        raise ConfigError(f"could not parse the command line: {str(e).splitlines()[0]}") from None
    _check_keys(_leaf_keys(OmegaConf.to_container(cli)), "the command line")
    layers.append(cli)
    try:
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e) from None
    cfg = resolved(cfg, {"on the command line": cli, f"in {experiment_path(exp)}": layers[-2],
                         **({f"in {base}": layers[1]} if base.exists() else {})})
    cfg.exp = exp
    if validate:
        check(cfg)
    return cfg, flags


def resolved(cfg: DictConfig, where: dict[str, DictConfig]) -> DictConfig:
    """``cfg`` with every interpolation (``${optim.lr}``, ``${oc.env:X}``) replaced by its value, and
    the values checked against the schema's types again. An interpolation that names no key, an
    unset variable or an unknown resolver, or one whose value has the wrong type, is a ConfigError
    naming the key, what it says and where it was set (``where``: the layers, by where they are,
    e.g. "on the command line", the one that wins first)."""
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        name, raw = next(((n, r) for n, r in ((n, _raw(layer, key)) for n, layer in where.items()) if r is not None),
                         (None, None))
        if raw is None or "${" not in str(raw):
            raise _omegaconf_error(e) from None
        if isinstance(e, ValidationError):  # it resolved, to a value of the wrong type
            raise ConfigError(f"{_omegaconf_error(e)} (from {key}: {raw} {name})") from None
        raise ConfigError(f"{key}={raw} {name}: {str(e).splitlines()[0]}; an interpolation names an existing key "
                          f"(e.g. ${{optim.lr}}), a set environment variable (${{oc.env:NAME}}) or a known resolver") from None


def _raw(layer: DictConfig, key: str):
    """The value ``layer`` sets for dotted ``key`` as written (an interpolation unresolved), or None."""
    node = OmegaConf.to_container(layer, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def help_text() -> str:
    lines = ["usage: python -m sparse_transformer.train [exp=<name>] [key=value ...] [--key=value ...] [--cfg]", "",
             f"experiments: {', '.join(experiments())}", "", "keys:"]
    for k, doc in field_docs().items():
        lines.append(f"  {k:32s} {doc}")
    return "\n".join(lines)


def main_config(argv: list[str] | None = None) -> DictConfig:
    """For entry points: parse, validate, handle --help/--cfg; on a bad command line print one line, exit 2."""
    try:
        cfg, flags = load_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if "help" in flags:
        print(help_text())
        raise SystemExit(0)
    if "cfg" in flags:
        print(to_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg
