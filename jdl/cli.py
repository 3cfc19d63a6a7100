"""The ``jdl`` command. Each subcommand is a module of ``jdl.commands``.

A subcommand module defines ``register(subparsers)``, which adds its parser
and sets ``func`` to a function of the parsed arguments that returns the
exit status; modules are found by name, so adding one needs no change here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import jdl.commands


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of ``jdl.commands``."""
    parser = argparse.ArgumentParser(
        prog="jdl", description="jdl: a JAX functional research toolkit for deep learning.")
    parser.add_argument("--version", action="version", version=f"jdl {jdl.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(jdl.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"jdl.commands.{info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``jdl`` with ``argv`` (``sys.argv[1:]`` if None); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
