"""python -m bench [--quick] [--processes N] [--only SECTION,...]: run the benchmark
suite, print the table, write bench/results.json and bench/results.png. With --only, the
named sections are measured and merged into the existing results file."""

from __future__ import annotations

import argparse
import json

from bench.run import OUT, SECTIONS, main, plot, sizes, table, targets


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument(
        "--processes", type=int, default=2, help="worker processes for every system (default 2)"
    )
    parser.add_argument(
        "--only", default=None, help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}"
    )
    args = parser.parse_args()
    only = None
    if args.only:
        only = frozenset(s.strip() for s in args.only.split(","))
        unknown = sorted(only - set(SECTIONS))
        if unknown:
            parser.error(
                f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}"
            )
    results = main(quick=args.quick, processes=args.processes, only=only)
    suffix = "-quick" if args.quick else ""
    path = OUT / f"results{suffix}.json"
    if only is not None and path.exists():  # measured sections replace their old values
        merged = json.loads(path.read_text())
        for name, systems in results.pop("workloads").items():  # each system's own figure
            merged["workloads"].setdefault(name, {}).update(systems)
        merged.update({k: v for k, v in results.items() if k not in ("quick", "repeats")})
        results = merged
        if "targets" in results:  # the goals, from the figures as they are now
            results["targets"] = targets(results, *sizes(args.quick))
    path.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, OUT / f"results{suffix}.png")
    print(table(results))


if __name__ == "__main__":
    cli()
