"""``jdl claims``: test every claim of the notes on embedded data and write a report."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import jax


def register(subparsers) -> None:
    """Add the ``claims`` subcommand."""
    p = subparsers.add_parser(
        "claims", help="test the notes' claims on real data; write report.md/.json and figures",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small models, one seed: under 10 minutes on 2 CPU cores (default)")
    size.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="bigger models and more seeds")
    size.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="smallest configuration, as in the test suite (a smoke run)")
    p.set_defaults(mode="quick")
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these claim ids")
    p.add_argument("--out", type=Path, default=Path("runs/claims"), help="report folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the claim ids and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"jdl claims: cannot write to the output folder {out}: {e}") from e


def run(args) -> int:
    """Run the selected studies, saving the report after each; print a summary."""
    # Identities are checked to float64 precision; studies ask for float32 where speed matters.
    jax.config.update("jax_enable_x64", True)
    from jdl import studies
    from jdl.studies import report, runner

    registry = studies.load_all()
    if args.list:
        for s in registry.values():
            print(f"{s.id:32s} {s.section:16s} {s.claim[:70]}")
        return 0
    try:
        selected = runner.select(args.only)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    _check_writable(args.out)
    ctx = studies.Context(mode=args.mode, seed=args.seed, out_dir=args.out)
    meta = {"mode": args.mode, "seed": args.seed, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "python": platform.python_version(), "studies selected": len(selected)}
    records: list = []

    def save(record):
        records.append(record)
        report.write(records, args.out, meta)

    start = time.perf_counter()
    try:
        runner.run_studies(selected, ctx, on_record=save, progress=not args.no_progress)
    except KeyboardInterrupt:
        meta["interrupted"] = f"after {len(records)} of {len(selected)} studies"
        report.write(records, args.out, meta)
        print(f"\ninterrupted: {len(records)} finished studies kept in {args.out}/report.md",
              file=sys.stderr)
        return 130
    meta["seconds"] = round(time.perf_counter() - start, 1)
    report.write(records, args.out, meta)
    print(report.summary(records))
    print(f"report: {args.out / 'report.md'} ({meta['seconds']} s)")
    return 1 if any(r.verdict == studies.ERROR for r in records) else 0
