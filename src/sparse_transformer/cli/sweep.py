"""Sweeps: ``conf/sweep/<name>.yaml`` in W&B's format, run by W&B agents or offline.

    python -m sparse_transformer.sweep check  <name>                  validate, print the first trial's command
    python -m sparse_transformer.sweep create <name>                  create the W&B sweep, print its id   (make sweep)
    python -m sparse_transformer.sweep agent  <id> [--count N]        start a W&B agent                     (make agent)
    python -m sparse_transformer.sweep local  <name> --trials N [key=value ...]
        [--engine auto|sweeps|builtin] [--out sweeps/<name>] [--seed 0]
                                                                      run N trials here, offline            (make sweep-local)
    check, create and local take --allow-any-command: let the command run another program

``local``'s ``key=value`` words (``make sweep-local SWEEP=<name> N=<trials> ARGS="trainer.max_steps=50"``)
are added to every trial's command line: config keys that are not the sweep's parameters.
How sweeps are checked and run: ``sparse_transformer/sweeping/``. Bad input (a sweep, a count, an
option, a folder) is one line on stderr and exit 2, before anything runs or is written.
"""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from ..sweeping.command import agent_command
from ..sweeping.remote import agent, create
from ..sweeping.runner import ENGINES, run_local
from ..sweeping.spec import SweepError, first_values, load_sweep

PROG = "python -m sparse_transformer.sweep"
ANY_COMMAND = dict(action="store_true", help="let the sweep's command run another program than "
                   "${interpreter} -m sparse_transformer.train (it runs as you, with your files)")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a SweepError), not a usage block and exit."""

    def error(self, message: str):
        raise SweepError(f"{message} (see {PROG} --help)")


def parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{check,create,agent,local}")
    c = sub.add_parser("check", help="validate a sweep and print its first trial's command")
    c.add_argument("name")
    c.add_argument("--allow-any-command", **ANY_COMMAND)
    c = sub.add_parser("create", help="create the W&B sweep and print its id")
    c.add_argument("name", nargs="?", default="")
    c.add_argument("--allow-any-command", **ANY_COMMAND)
    c = sub.add_parser("agent", help="start a W&B agent")
    c.add_argument("sweep_id", nargs="?", default="")
    c.add_argument("--count", default=None)
    c = sub.add_parser("local", help="run trials here, offline, and print a leaderboard",
                       epilog="key=value words after the name: config overrides for every trial (not the sweep's parameters)")
    c.add_argument("name", nargs="?", default="")
    c.add_argument("--trials", default=None)
    c.add_argument("--engine", default="auto", choices=ENGINES)
    c.add_argument("--out", default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--allow-any-command", **ANY_COMMAND)
    return p


def count(value, name: str) -> int | None:
    if value in (None, ""):
        if name == "N":
            raise SweepError("N is missing: make sweep-local SWEEP=<name> N=<trials>")
        return None
    try:
        return int(value)
    except ValueError:
        raise SweepError(f"{name}={value} is not a whole number") from None


def _override(word: str) -> bool:
    """``key=value``, or ``--section.key=value`` (a config key, not a misspelt option such as ``--trails=2``)."""
    key, eq, _ = word.partition("=")
    return bool(eq) and (not key.startswith("-") or (key.startswith("--") and "." in key))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the options, ``local``'s key=value overrides); anything else unknown is a one-line SweepError."""
    a, extra = parser().parse_known_args(argv)
    overrides = [w for w in extra if _override(w)]
    unknown = [w for w in extra if w not in overrides]
    if unknown or (overrides and a.cmd != "local"):
        word = (unknown or overrides)[0]
        raise SweepError(f"unrecognized argument {word!r} for {a.cmd}; key=value overrides go after 'local <name>' "
                         f"(see {PROG} {a.cmd} --help)")
    return a, overrides


def check(name: str, allow_any_command: bool) -> None:
    sweep, path = load_sweep(name, allow_any_command)
    print(f"{path}: valid ({sweep['method']}, {sweep['metric'].get('goal', 'minimize')} {sweep['metric']['name']}, "
          f"{len(sweep['parameters'])} parameters); a trial runs:\n  {' '.join(agent_command(sweep, first_values(sweep)))}")


def main(argv: list[str] | None = None) -> int:
    try:
        a, overrides = parse(sys.argv[1:] if argv is None else list(argv))
        if a.cmd == "check":
            check(a.name, a.allow_any_command)
        elif a.cmd == "create":
            sweep_id = create(a.name, a.allow_any_command)
            print(f"sweep id: {sweep_id}\nstart agents with: make agent SWEEP_ID={sweep_id} COUNT=<n>")
        elif a.cmd == "agent":
            agent(a.sweep_id, count(a.count, "COUNT"))
        else:
            run_local(a.name, count(a.trials, "N"), engine=a.engine, out=a.out, seed=a.seed,
                      allow_any_command=a.allow_any_command, overrides=overrides)
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
