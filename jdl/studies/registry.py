"""The study registry: one study per claim of the notes, each returning a :class:`Finding`.

A study is a function ``fn(ctx: Context) -> Finding`` registered with
:func:`study`. It measures the claim on embedded data, then computes its
verdict from the numbers with a threshold that it states in the finding;
no verdict is written in by hand. Keyword arguments with defaults let a test
feed the same study a case where the claim must fail.

Example:
    >>> from jdl.studies.registry import study, Finding, HOLDS, FAILS
    >>> @study("demo.square", "Demo", "squares are non-negative")
    ... def square(ctx, values=(-2.0, 3.0)):
    ...     smallest = min(v * v for v in values)
    ...     return Finding(
    ...         verdict=HOLDS if smallest >= 0 else FAILS,
    ...         summary=f"smallest square {smallest}",
    ...         method="square a few numbers", numbers={"smallest": smallest},
    ...         threshold="holds if every square is >= 0")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax

HOLDS = "holds"
CAVEAT = "holds with a caveat"
FAILS = "does not hold"
UNTESTABLE = "not testable as stated"
ERROR = "error"
VERDICTS = (HOLDS, CAVEAT, FAILS, UNTESTABLE)

MODES = ("tiny", "quick", "full")


@dataclasses.dataclass
class Finding:
    """What a study measured and concluded.

    Attributes:
      verdict: one of :data:`VERDICTS`, computed from ``numbers``.
      summary: one line with the key number, shown in the report's table.
      method: data, model and measurement, in a sentence or two.
      numbers: JSON-serialisable measurements (floats, ints, lists, dicts).
      threshold: the rule that turns the numbers into the verdict.
      caveat: for anything but ``holds``: which caveat, or what is right instead.
      figures: figure paths relative to the report folder.
    """

    verdict: str
    summary: str
    method: str
    numbers: dict[str, Any]
    threshold: str
    caveat: str = ""
    figures: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"Finding: expected verdict in {VERDICTS}, got {self.verdict!r}")
        if self.verdict != HOLDS and not self.caveat:
            raise ValueError(
                f"Finding: a {self.verdict!r} verdict needs a caveat saying what is right")


@dataclasses.dataclass
class Context:
    """Settings shared by every study of a run.

    Attributes:
      mode: ``"tiny"`` (test suite), ``"quick"`` (``make run``) or ``"full"``.
      seed: base seed; each study derives its key from it and its id.
      out_dir: the report folder; figures go to ``out_dir / "figures"``.
    """

    mode: str = "quick"
    seed: int = 0
    out_dir: Path = Path("runs/claims")

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Context: expected mode in {MODES}, got {self.mode!r}")
        self.out_dir = Path(self.out_dir)

    def pick(self, tiny, quick, full):
        """The value for this run's mode, e.g. ``ctx.pick(2, 20, 200)`` epochs."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.mode]

    def key(self, study_id: str) -> jax.Array:
        """A PRNG key from the seed and the study id (stable across runs and orders)."""
        salt = sum((i + 1) * ord(c) for i, c in enumerate(study_id)) % (2**31)
        return jax.random.fold_in(jax.random.key(self.seed), salt)

    def save_figure(self, fig, name: str) -> str:
        """Write a matplotlib figure to ``figures/<name>.png``; returns the relative path."""
        import matplotlib.pyplot as plt

        path = self.out_dir / "figures" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return str(path.relative_to(self.out_dir))


@dataclasses.dataclass(frozen=True)
class Study:
    """A registered study: the claim it tests and the function that tests it."""

    id: str
    section: str
    claim: str
    fn: Callable[..., Finding]


REGISTRY: dict[str, Study] = {}


def study(study_id: str, section: str, claim: str) -> Callable:
    """Register ``fn(ctx, **case) -> Finding`` as the study of ``claim``.

    Args:
      study_id: the id from ``CLAIMS.md``, e.g. ``"opt.center-data"``.
      section: the notes' section, e.g. ``"Optimization"``.
      claim: the claim, quoted from ``NOTES.md``.
    """

    def register(fn: Callable[..., Finding]) -> Callable[..., Finding]:
        if study_id in REGISTRY:
            raise ValueError(f"study: the id {study_id!r} is registered twice")
        REGISTRY[study_id] = Study(study_id, section, claim, fn)
        return fn

    return register
