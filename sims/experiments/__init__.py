"""The experiments of `swarm sim <name>`: each writes CSV, PNG plots and summary.md to results/<name>/.

Every module has `run(ctx: Context) -> dict` returning its summary figures (printed by `--json`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from sims.errors import SimError

NAMES = ("goodput", "network", "replan", "spot", "scale", "budget")


@dataclass(frozen=True)
class Context:
    """How to run: quick (CI-sized, under a minute) or full, the seed, and where to write."""

    name: str
    quick: bool
    seed: int
    out_dir: Path

    @property
    def command(self) -> str:
        return f"swarm sim {self.name}{' --quick' if self.quick else ''} --seed {self.seed}"

    def path(self, filename: str) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir / filename


def run_experiment(name: str, *, quick: bool = False, seed: int = 0, out_dir: Path | None = None) -> dict:
    """Run experiment `name`; returns its summary figures."""
    if name not in NAMES:
        raise SimError(f"unknown experiment {name!r}; choose one of: {', '.join(NAMES)}")
    module = importlib.import_module(f"sims.experiments.{name}")
    ctx = Context(name, quick, seed, Path(out_dir) if out_dir else Path("results") / name)
    return module.run(ctx)
