"""Subcommands of the ``jdl`` command, one module each (see :mod:`jdl.cli`)."""
