"""Running a plan on a request stream, and the sweeps built on it (goodput by rate, attainment by SLO scale).

Goodput follows DistServe: the highest request rate at which at least the SLO's attainment target
(90%) of requests meet both TTFT and TPOT; here found on a grid of simulated rates, interpolated
linearly between the last passing and the first failing rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sims.cluster_sim import ClusterSim
from sims.ledger import Ledger, Metrics, meets_slo, metrics
from sims.workloads import resample
from swarm.plan.problem import Problem, Slo
from swarm.wire.plan import Plan

DRAIN_S = 600.0  # simulated time after the last arrival before unfinished requests count as misses


@dataclass(frozen=True)
class RunResult:
    metrics: Metrics
    ledger: Ledger
    num_events: int
    sim_s: float


def simulate(
    problem: Problem,
    plan: Plan,
    ledger: Ledger,
    *,
    seed: int = 0,
    slo: Slo | None = None,
    recovery: str = "stateful",
) -> RunResult:
    """Run `plan` on the requests of `ledger` until they finish (or DRAIN_S after the last arrival)."""
    slo = slo or problem.slo
    sim = ClusterSim(problem, plan, ledger, seed=seed, recovery=recovery)
    horizon_s = float(ledger.arrival_s[-1]) + DRAIN_S
    sim.run(horizon_s)
    return RunResult(metrics(ledger, slo.ttft_s, slo.tpot_s), ledger, sim.sim.num_events, sim.sim.now_s)


def rate_sweep(problem: Problem, plan: Plan, rates_rps, duration_s: float, seed: int = 0) -> list[Metrics]:
    """Metrics at each rate (Poisson arrivals, lengths from the problem's workload)."""
    return [
        simulate(problem, plan, resample(problem.workload, r, duration_s, seed), seed=seed).metrics
        for r in rates_rps
    ]


def slo_sweep(
    problem: Problem, plan: Plan, rate_rps: float, scales, duration_s: float, seed: int = 0
) -> list[float]:
    """SLO attainment at each SLO scale, from one run at `rate_rps`."""
    ledger = simulate(problem, plan, resample(problem.workload, rate_rps, duration_s, seed), seed=seed).ledger
    return [float(meets_slo(ledger, problem.slo.ttft_s * s, problem.slo.tpot_s * s).mean()) for s in scales]


def crossing(xs, attainments, target: float, *, increasing: bool = False) -> float:
    """Where attainment crosses `target` along xs (linear interpolation); 0 or max(xs) at the ends.

    increasing=False: attainment falls with x (rates) — the last x still meeting the target.
    increasing=True: attainment rises with x (SLO scales) — the first x meeting it (inf if none).
    """
    xs, ys = np.asarray(xs, dtype=float), np.asarray(attainments, dtype=float)
    ok = ys >= target
    if increasing:
        if not ok.any():
            return float("inf")
        i = int(np.argmax(ok))
        if i == 0:
            return float(xs[0])
        return float(xs[i - 1] + (xs[i] - xs[i - 1]) * (target - ys[i - 1]) / (ys[i] - ys[i - 1]))
    if not ok.any():
        return 0.0
    i = int(np.flatnonzero(ok)[-1]) + 1  # the first miss after the last x meeting it (noisy curves dip early)
    if i == len(xs):
        return float(xs[-1])
    return float(xs[i - 1] + (xs[i] - xs[i - 1]) * (ys[i - 1] - target) / (ys[i - 1] - ys[i]))
