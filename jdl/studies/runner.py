"""Run studies one after another, keeping every result: failures become ``error`` records."""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Callable, Iterable

from jdl.studies.registry import ERROR, REGISTRY, Context, Study


@dataclasses.dataclass
class Record:
    """One study's outcome in a run: its finding, or the traceback of its failure."""

    id: str
    section: str
    claim: str
    verdict: str
    summary: str
    seconds: float
    method: str = ""
    numbers: dict = dataclasses.field(default_factory=dict)
    threshold: str = ""
    caveat: str = ""
    figures: list = dataclasses.field(default_factory=list)
    traceback: str = ""


def select(ids: Iterable[str] | None = None) -> list[Study]:
    """The registered studies named by ``ids`` (all, in registry order, if None).

    Raises:
      ValueError: for an unknown id, listing the valid ones.
    """
    if not ids:
        return list(REGISTRY.values())
    unknown = [i for i in ids if i not in REGISTRY]
    if unknown:
        raise ValueError(
            f"claims: unknown claim id(s) {unknown}; valid ids are: {', '.join(REGISTRY)}")
    return [REGISTRY[i] for i in ids]


def run_study(study: Study, ctx: Context) -> Record:
    """Run one study; an exception is recorded with its traceback, never raised."""
    start = time.perf_counter()
    try:
        f = study.fn(ctx)
    except Exception as e:  # noqa: BLE001 - a failing study must not stop the others
        return Record(study.id, study.section, study.claim, ERROR,
                      f"{type(e).__name__}: {e}", time.perf_counter() - start,
                      traceback=traceback.format_exc())
    return Record(study.id, study.section, study.claim, f.verdict, f.summary,
                  time.perf_counter() - start, f.method, f.numbers, f.threshold, f.caveat,
                  list(f.figures))


def run_studies(studies: list[Study], ctx: Context,
                on_record: Callable[[Record], None] | None = None,
                progress: bool = True) -> list[Record]:
    """Run ``studies`` in order, calling ``on_record`` after each (to save partial reports)."""
    from tqdm.auto import tqdm

    records = []
    bar = tqdm(studies, desc="claims", unit="study", disable=not progress)
    for study in bar:
        bar.set_postfix_str(study.id)
        records.append(run_study(study, ctx))
        if on_record is not None:
            on_record(records[-1])
    return records
