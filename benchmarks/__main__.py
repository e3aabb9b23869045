"""``python -m benchmarks [NAME...] [--quick] [--json FILE]``: run, print a table, optionally save JSON."""

from __future__ import annotations

import argparse
import json
import sys

import msgspec
from rich.console import Console
from rich.table import Table

from benchmarks import adapter_ingest, harness, indicator_processor, indicators, ingest_fold

BENCHMARKS = {
    "ingest_fold": ingest_fold.run,
    "adapter_ingest": adapter_ingest.run,
    "indicators": indicators.run,
    "indicator_processor": indicator_processor.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"which (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small inputs, one run: a smoke test (< 1 min)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 3, 1 with --quick)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    repeats = args.repeats or (1 if args.quick else 3)
    report = harness.Report(harness.machine())
    with harness.private_redis() as redis:
        for name in args.names or list(BENCHMARKS):
            report.figures.extend(BENCHMARKS[name](redis.url, redis.port, quick=args.quick, repeats=repeats))
    console = Console(width=160)
    console.print("machine: " + "; ".join(f"{k} {v}" for k, v in report.machine.items()))
    table = Table()
    for col in ("figure", "median", "min", "max", "unit", "vs ceiling", "ratio"):
        table.add_column(col, justify="left" if col in ("figure", "unit", "vs ceiling") else "right")
    for f in report.figures:
        ratios = f.ratios()
        names = "\n".join(name for name, _ in ratios) or "–"
        values = "\n".join(f"{r:.2f}" for _, r in ratios) or "–"
        table.add_row(f.name, harness.fmt(f.median), harness.fmt(min(f.runs)), harness.fmt(max(f.runs)), f.unit,
                      names, values)  # fmt: skip
    console.print(table)
    notes = [f for f in report.figures if f.note]
    for i, f in enumerate(notes, 1):
        console.print(f"[{i}] {f.name}: {f.note}", highlight=False)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(msgspec.to_builtins(report), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
