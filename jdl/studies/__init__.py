"""Studies: each claim of the notes as an experiment with a computed verdict.

Every module of this package other than the framework (``common``,
``registry``, ``runner``, ``report``) holds the studies of one section of the notes and is
imported by :func:`load_all`, which fills :data:`registry.REGISTRY`.
"""

import importlib
import pkgutil

from jdl.studies.registry import (
    CAVEAT, ERROR, FAILS, HOLDS, REGISTRY, UNTESTABLE, VERDICTS, Context, Finding, Study, study)

_FRAMEWORK = {"common", "registry", "runner", "report"}
# The notes' order; a section module not named here is imported after these.
SECTION_ORDER = ("backprop", "optimization", "conditioning", "statistics", "adam",
                 "regularization", "losses", "cnn", "rnn", "autoencoders", "xai")


def load_all() -> dict[str, Study]:
    """Import every section module; returns the registry, in the notes' section order."""
    found = {info.name for info in pkgutil.iter_modules(__path__)} - _FRAMEWORK
    ordered = [n for n in SECTION_ORDER if n in found] + sorted(found - set(SECTION_ORDER))
    for name in ordered:
        importlib.import_module(f"{__name__}.{name}")
    return REGISTRY


__all__ = ["CAVEAT", "ERROR", "FAILS", "HOLDS", "REGISTRY", "UNTESTABLE", "VERDICTS", "Context",
           "Finding", "Study", "load_all", "study"]
