"""`python -m bench [--quick] [--json]`: run every `bench/bench_*.py` module's `main(argv)` in turn.

Each module prints one JSON object of its figures on its last line; with --json this runner prints
only those lines, one per benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path


def bench_modules() -> list[str]:
    """Names of the bench_* modules next to this file, sorted."""
    here = Path(__file__).parent
    return sorted(f"bench.{m.name}" for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short version of every benchmark")
    parser.add_argument("--json", action="store_true", help="print only each benchmark's JSON line")
    parser.add_argument("--only", default=None, help="run only bench modules whose name contains this")
    args = parser.parse_args(argv)
    forwarded = [flag for flag, on in (("--quick", args.quick), ("--json", args.json)) if on]
    failures = []
    for name in bench_modules():
        if args.only and args.only not in name:
            continue
        if not args.json:
            print(f"== {name}", file=sys.stderr, flush=True)
        status = importlib.import_module(name).main(forwarded)
        if status:
            failures.append(name)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
