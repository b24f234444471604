"""python -m bench [--quick] [--processes N]: run the benchmark suite, print the table,
write bench/results.json and bench/results.png."""

from __future__ import annotations

import argparse
import json

from bench.run import OUT, main, plot, table


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--processes", type=int, default=2,
                        help="worker processes for every system (default 2)")
    args = parser.parse_args()
    results = main(quick=args.quick, processes=args.processes)
    suffix = "-quick" if args.quick else ""
    (OUT / f"results{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, OUT / f"results{suffix}.png")
    print(table(results))


if __name__ == "__main__":
    cli()
