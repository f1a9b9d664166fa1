"""The ``lab`` command line: subcommands are discovered from ``lab/commands/``.

Each module there defines ``register(subparsers)`` and adds its own subcommand(s),
so a new capability adds a file instead of editing a central list. Grouped commands
(``lab train capsules``, ``lab train rbm``) share a parent through ``group()``.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

_GROUPS: dict[tuple[int, str], argparse._SubParsersAction] = {}


def group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The nested subparsers of command group ``name`` (``train``, ``eval``...), created once."""
    key = (id(subparsers), name)
    if key not in _GROUPS:
        parser = subparsers.add_parser(name, help=help, description=help)
        nested = parser.add_subparsers(dest=f"{name}_what", metavar="WHAT", required=True)
        _GROUPS[key] = nested
    return _GROUPS[key]


def build_parser() -> argparse.ArgumentParser:
    from lab import __version__, commands  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="lab",
        description="Capsule autoencoders and undirected models from Tieleman (2014).")
    parser.add_argument("--version", action="version", version=f"lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _GROUPS.clear()
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lab.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
