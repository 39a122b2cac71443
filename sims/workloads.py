"""Request streams for a run: a trace replayed or resampled at a rate, and workload shifts.

`replay` keeps the trace's own arrival pattern (burstiness included), time-scaled to a mean rate;
`resample` draws Poisson arrivals and (prompt, output) pairs from the trace (DistServe/ThunderServe's
method); `shifted` switches the length distribution from one trace to another at a given time.
"""

from __future__ import annotations

import numpy as np

from sims.errors import SimError
from sims.ledger import Ledger
from swarm.workloads import Workload


def resample(workload: Workload, rate_rps: float, duration_s: float, seed: int = 0) -> Ledger:
    """Poisson arrivals at `rate_rps` for `duration_s`, lengths drawn from `workload`."""
    w = workload.at_rate(rate_rps, duration_s, seed=seed)
    return Ledger(w.arrival_s, w.prompt_tokens, w.output_tokens)


def replay(workload: Workload, rate_rps: float | None = None, duration_s: float | None = None) -> Ledger:
    """The trace as recorded (optionally time-scaled to `rate_rps`), cut at `duration_s`."""
    w = workload.scaled(rate_rps) if rate_rps else workload
    keep = np.ones(w.num_requests, dtype=bool) if duration_s is None else w.arrival_s < duration_s
    if not keep.any():
        raise SimError(f"no request of {workload.name!r} arrives within {duration_s} s")
    return Ledger(w.arrival_s[keep], w.prompt_tokens[keep], w.output_tokens[keep])


def shifted(
    first: Workload, second: Workload, shift_s: float, rate_rps: float, duration_s: float, seed: int = 0
) -> Ledger:
    """Poisson arrivals; lengths from `first` before `shift_s` and from `second` after (e.g. code -> conv)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, size=int(rate_rps * duration_s * 1.2) + 16))
    arrivals = arrivals[arrivals < duration_s]
    before = arrivals < shift_s
    prompts = np.empty(len(arrivals), dtype=np.int64)
    outputs = np.empty(len(arrivals), dtype=np.int64)
    for mask, source in ((before, first), (~before, second)):
        idx = rng.integers(0, source.num_requests, size=int(mask.sum()))
        prompts[mask], outputs[mask] = source.prompt_tokens[idx], source.output_tokens[idx]
    return Ledger(arrivals, prompts, outputs)


def as_workload(ledger: Ledger, name: str, start_s: float = 0.0, end_s: float = np.inf) -> Workload:
    """The requests of a ledger arriving in [start_s, end_s) as a Workload (what a profiler would see)."""
    mask = (ledger.arrival_s >= start_s) & (ledger.arrival_s < end_s)
    if not mask.any():
        raise SimError(f"no requests between {start_s} s and {end_s} s")
    return Workload(
        name, ledger.arrival_s[mask] - start_s, ledger.prompt_tokens[mask], ledger.output_tokens[mask]
    )
