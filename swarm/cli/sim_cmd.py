"""`swarm sim`: run a simulator experiment at paper scale (see docs/simulator.md and docs/results.md).

    swarm sim <goodput|network|replan|spot|scale|budget> [--quick] [--json] [--out DIR] [--seed N]

Each experiment writes CSV tables, PNG plots and summary.md to results/<name>/ (or --out);
`--json` prints the summary figures as one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXPERIMENTS = ("goodput", "network", "replan", "spot", "scale", "budget")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=EXPERIMENTS, help="the experiment to run")
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (under a minute)")
    parser.add_argument(
        "--json", action="store_true", help="print the summary figures as JSON on the last line"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default results/<name>)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the workload, the planner and the simulator"
    )


def run(args: argparse.Namespace) -> int:
    from sims.experiments import run_experiment
    from sims.report import clean

    out_dir = args.out or Path("results") / args.name
    start = time.perf_counter()
    figures = run_experiment(args.name, quick=args.quick, seed=args.seed, out_dir=out_dir)
    elapsed_s = time.perf_counter() - start
    print(
        f"swarm sim {args.name}: wrote {out_dir}/ (summary.md, CSV, PNG) in {elapsed_s:.1f} s",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(clean(figures)))
    else:
        print((out_dir / "summary.md").read_text())
    return 0
