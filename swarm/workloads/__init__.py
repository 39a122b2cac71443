"""Workloads: request arrival times and prompt/output lengths, from bundled traces or a CSV file.

Built-in names: `azure-code`, `azure-conv` (Azure LLM inference 2023) and `mooncake-conv` (Mooncake
FAST'25). A CSV needs the columns `arrival_s,prompt_tokens,output_tokens` (or the Azure columns).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np

from swarm.errors import WorkloadError

BUILTIN = ("azure-code", "azure-conv", "mooncake-conv")
MAX_TOKENS = 1_000_000


@dataclass(frozen=True, eq=False)
class Workload:
    """A request trace: arrivals in seconds from 0 (sorted) with each request's token counts."""

    name: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if n == 0:
            raise WorkloadError(f"workload {self.name!r} has no requests")
        if not len(self.prompt_tokens) == len(self.output_tokens) == n:
            raise WorkloadError(f"workload {self.name!r}: columns have different lengths")

    @property
    def num_requests(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate over the trace."""
        return (self.num_requests - 1) / self.duration_s if self.duration_s > 0 else float(self.num_requests)

    @property
    def mean_prompt_tokens(self) -> float:
        return float(self.prompt_tokens.mean())

    @property
    def mean_output_tokens(self) -> float:
        return float(self.output_tokens.mean())

    def lengths_sample(self, num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`num` (prompt, output) pairs drawn with replacement, keeping each request's pair together."""
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, self.num_requests, size=num)
        return self.prompt_tokens[idx], self.output_tokens[idx]

    def at_rate(self, rate_rps: float, duration_s: float, seed: int = 0) -> Workload:
        """Poisson arrivals at `rate_rps` for `duration_s`, each with a (prompt, output) pair of this trace."""
        if not rate_rps > 0 or not duration_s > 0:
            raise WorkloadError(f"rate ({rate_rps}) and duration ({duration_s}) must be positive")
        rng = np.random.default_rng(seed)
        expected = int(rate_rps * duration_s * 1.2) + 16
        arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, size=expected))
        arrivals = arrivals[arrivals < duration_s]
        if len(arrivals) == 0:
            arrivals = np.array([0.0])
        idx = rng.integers(0, self.num_requests, size=len(arrivals))
        return Workload(f"{self.name}@{rate_rps:g}rps", arrivals, self.prompt_tokens[idx], self.output_tokens[idx])

    def scaled(self, rate_rps: float) -> Workload:
        """The same trace replayed faster or slower so that its mean rate is `rate_rps`."""
        if not rate_rps > 0:
            raise WorkloadError(f"rate must be positive, got {rate_rps}")
        factor = self.rate_rps / rate_rps
        return Workload(f"{self.name}@{rate_rps:g}rps", self.arrival_s * factor, self.prompt_tokens,
                        self.output_tokens)

    def window(self, start_s: float, end_s: float) -> Workload:
        """Requests arriving in [start_s, end_s), re-based to start at 0."""
        mask = (self.arrival_s >= start_s) & (self.arrival_s < end_s)
        return Workload(f"{self.name}[{start_s:g}:{end_s:g}]", self.arrival_s[mask] - start_s,
                        self.prompt_tokens[mask], self.output_tokens[mask])


def load_workload(name_or_csv: str | Path) -> Workload:
    """A built-in workload by name, or one read from a CSV file."""
    if str(name_or_csv) in BUILTIN:
        return _builtin(str(name_or_csv))
    path = Path(name_or_csv)
    if not path.is_file():
        raise WorkloadError(f"no workload {str(name_or_csv)!r}: use one of {', '.join(BUILTIN)} or a CSV file "
                            "with columns arrival_s,prompt_tokens,output_tokens")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WorkloadError(f"cannot read workload file {str(path)!r}: {e}") from None
    return parse_workload_csv(text, name=path.stem, source=str(path))


@functools.cache
def _builtin(name: str) -> Workload:
    text = resources.files("swarm.workloads").joinpath(f"data/{name}.csv").read_text(encoding="utf-8")
    return parse_workload_csv(text, name=name, source=f"built-in workload {name!r}")


def parse_workload_csv(text: str, *, name: str, source: str) -> Workload:
    """Parse `arrival_s,prompt_tokens,output_tokens` or the Azure trace columns; errors name the line."""
    rows = csv.reader(text.splitlines())
    header = [h.strip() for h in next(rows, [])]
    if header[:3] == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
        parse_time = _azure_time
    elif header[:3] == ["arrival_s", "prompt_tokens", "output_tokens"]:
        parse_time = float
    else:
        raise WorkloadError(f"{source}: header must be 'arrival_s,prompt_tokens,output_tokens' "
                            f"(or the Azure trace's TIMESTAMP,ContextTokens,GeneratedTokens), got {header[:3]}")
    arrivals, prompts, outputs = [], [], []
    for line_no, row in enumerate(rows, start=2):
        if not row:
            continue
        try:
            t, p, o = parse_time(row[0]), int(row[1]), int(row[2])
        except (ValueError, IndexError):
            raise WorkloadError(f"{source}, line {line_no}: expected a time and two token counts, got {row}") from None
        if not (0 < p <= MAX_TOKENS and 0 < o <= MAX_TOKENS) or not np.isfinite(t):
            raise WorkloadError(f"{source}, line {line_no}: token counts must be 1..{MAX_TOKENS} and the time "
                                f"finite, got {row}")
        arrivals.append(t)
        prompts.append(p)
        outputs.append(o)
    if not arrivals:
        raise WorkloadError(f"{source}: no requests after the header")
    arrival = np.asarray(arrivals, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order][0]
    return Workload(name, arrival, np.asarray(prompts, dtype=np.int64)[order],
                    np.asarray(outputs, dtype=np.int64)[order])


def _azure_time(text: str) -> float:
    # 7 fractional digits; datetime takes at most 6.
    return datetime.fromisoformat(text.strip()[:26]).timestamp()
