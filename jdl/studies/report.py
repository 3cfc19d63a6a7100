"""Write a run's records as ``report.md`` and ``report.json``, and a one-screen summary."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from jdl.studies.registry import ERROR, FAILS, VERDICTS
from jdl.studies.runner import Record


def _jsonable(value):
    """Numbers and arrays as plain JSON values; non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)) and len(value) > 12:
        return "[" + ", ".join(_fmt(v) for v in value[:12]) + f", ... ({len(value)} values)]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def counts(records: list[Record]) -> dict[str, int]:
    """How many records have each verdict (every verdict listed, errors too)."""
    c = Counter(r.verdict for r in records)
    return {v: c.get(v, 0) for v in (*VERDICTS, ERROR)}


def write(records: list[Record], out_dir: Path, meta: dict) -> None:
    """Write ``out_dir/report.json`` and ``out_dir/report.md`` (atomically, via a temp file)."""
    out_dir = Path(out_dir)
    payload = {"meta": _jsonable(meta), "counts": counts(records),
               "claims": [_jsonable(dataclasses.asdict(r)) for r in records]}
    _atomic_write(out_dir / "report.json", json.dumps(payload, indent=1))
    _atomic_write(out_dir / "report.md", markdown(records, meta))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def markdown(records: list[Record], meta: dict) -> str:
    """The report: a table of every claim with its verdict and key number, then one section each."""
    lines = ["# jdl claims report", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| verdict | count |", "|---|---|"]
    lines += [f"| {v} | {n} |" for v, n in counts(records).items()]
    lines += ["", "| id | section | verdict | key number |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| [{r.id}](#{_anchor(r.id)}) | {r.section} | **{r.verdict}** | "
                     f"{r.summary.replace('|', '/')} |")
    for r in records:
        lines += ["", f"## {r.id}", "", f"> {r.claim}", "",
                  f"**Verdict: {r.verdict}** ({r.seconds:.1f} s)", ""]
        if r.verdict == ERROR:
            lines += ["The study failed to run:", "", "```", r.traceback.rstrip(), "```"]
            continue
        lines += [f"**Method.** {r.method}", "", f"**Result.** {r.summary}", "",
                  f"**Threshold.** {r.threshold}", ""]
        if r.caveat:
            lines += [f"**Caveat / what is right.** {r.caveat}", ""]
        if r.numbers:
            lines += ["| quantity | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in r.numbers.items()]
        lines += [f"![{r.id}]({path})" for path in r.figures]
    return "\n".join(lines) + "\n"


def _anchor(study_id: str) -> str:
    return "".join(c for c in study_id.lower() if c.isalnum() or c == "-")


def summary(records: list[Record]) -> str:
    """A one-screen summary: counts per verdict, the claims that do not hold, and errors."""
    lines = ["", "verdicts: " + ", ".join(f"{v}: {n}" for v, n in counts(records).items())]
    failing = [r for r in records if r.verdict == FAILS]
    if failing:
        lines.append("does not hold:")
        lines += [f"  {r.id}: {r.summary}" for r in failing]
    errors = [r for r in records if r.verdict == ERROR]
    if errors:
        lines.append("errors (see the report for tracebacks):")
        lines += [f"  {r.id}: {r.summary}" for r in errors]
    return "\n".join(lines)
