"""``python -m benchmarks [NAME...] [--quick] [--json FILE]``: run, print a table, optionally save JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable

import msgspec
from rich.console import Console
from rich.table import Table

from benchmarks import harness

# Each benchmark is a module of this package with ``run(ctx) -> list[Figure]``, imported only when it
# runs: the processes the benchmarks spawn import this module again, and need none of the others.
BENCHMARKS = ("ingest_fold", "adapter_ingest", "indicators", "indicator_processor", "e2e_latency", "memory", "replay")


def _runner(name: str) -> Callable[[harness.Context], list[harness.Figure]]:
    run: Callable[[harness.Context], list[harness.Figure]] = importlib.import_module(f"benchmarks.{name}").run
    return run


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
    figures: list[harness.Figure] = []
    with harness.private_redis() as redis:
        ceilings = harness.Ceilings(redis.url, redis.port, quick=args.quick, repeats=repeats)
        ctx = harness.Context(redis.url, redis.port, args.quick, repeats, ceilings)
        for name in args.names or BENCHMARKS:
            began = time.perf_counter()
            figures.extend(_runner(name)(ctx))
            report.seconds[name] = round(time.perf_counter() - began, 1)  # its ceilings' first use included
    report.figures = ceilings.figures + figures  # the ceilings first: every ratio below refers to them
    keys = [f.key for f in report.figures]
    if "" in keys or len(set(keys)) != len(keys):
        raise RuntimeError(f"every figure needs its own key: {keys}")
    console = Console(width=200)
    console.print("machine: " + "; ".join(f"{k} {v}" for k, v in report.machine.items()))
    table = Table()
    for col in ("figure", "median", "min", "max", "unit", "vs ceiling", "ratio", "target"):
        table.add_column(col, justify="left" if col in ("figure", "unit", "vs ceiling", "target") else "right")
    for f in report.figures:
        ratios = f.ratios()
        names = "\n".join(name for name, _ in ratios) or "–"
        values = "\n".join(f"{r:.2f}" for _, r in ratios) or "–"
        target = f"{f.target}: {f.judge()}" if f.target else "–"
        table.add_row(f.name, harness.fmt(f.median), harness.fmt(min(f.runs)), harness.fmt(max(f.runs)), f.unit,
                      names, values, target)  # fmt: skip
    console.print(table)
    notes = [f for f in report.figures if f.note]
    for i, f in enumerate(notes, 1):
        console.print(f"[{i}] {f.name}: {f.note}", highlight=False)
    console.print("seconds: " + ", ".join(f"{name} {secs:g}" for name, secs in report.seconds.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(msgspec.to_builtins(report), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
