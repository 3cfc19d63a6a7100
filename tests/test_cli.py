"""The ``jdl`` command: help lists the subcommands; the demo trains on digits."""

import subprocess
import sys

from jdl import cli


def test_help_lists_subcommands(capsys):
    parser = cli.build_parser()
    parser.print_help()
    out = capsys.readouterr().out
    for name in ("demo",):
        assert name in out


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "jdl.cli", "--help"], capture_output=True,
                            text=True, check=True)
    assert "COMMAND" in result.stdout


def test_demo_trains_digits(capsys):
    assert cli.main(["demo", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.strip().splitlines()[-1].split()[2])
    assert accuracy > 0.8
