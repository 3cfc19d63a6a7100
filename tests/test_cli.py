"""The ``jdl`` command: help lists every subcommand; the module runs as a console script."""

import subprocess
import sys

from jdl import cli


def test_help_lists_subcommands(capsys):
    parser = cli.build_parser()
    parser.print_help()
    out = capsys.readouterr().out
    for name in ("attribute", "claims", "hessian", "train"):
        assert name in out


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "jdl.cli", "--help"], capture_output=True,
                            text=True, check=True)
    assert "COMMAND" in result.stdout
