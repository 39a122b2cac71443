"""Evaluating a candidate plan: configure each group, route with the LP, estimate goodput and SLOs.

This is the function the upper-level search calls thousands of times, so everything is memoised per
problem: `configure` per (GPU set, role), profiles per deployment, and whole evaluations per grouping.

Infeasible groups (the model does not fit their GPUs) are dropped and the plan is built from the rest,
which keeps the search landscape smooth; only when no (prefill, decode) route is left is the score 0.
Score = goodput_rps + 1e-3 * attainment at problem.rate_rps + 1e-6 * min(LP capacity, 1e3), so plans
with equal goodput (often 0 early in a search) still rank by how close they come. The plan carries the
LP routing at the goodput rate (or the planned rate, if higher): one routing serves every rate.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from swarm.plan.errors import InfeasibleError
from swarm.plan.estimate import Scenario
from swarm.plan.orchestrate import Router, RoutingShares, flow_network, uniform_routing
from swarm.plan.parallel import Deployment, configure
from swarm.plan.problem import Problem
from swarm.wire.plan import PLAN_FORMAT, Plan, Predicted, Routing

ATTAINMENT_WEIGHT = 1e-3
CAPACITY_WEIGHT = 1e-6
GOODPUT_FLOOR = 1e-4
GOODPUT_TOLERANCE = 0.01  # width of the final bracket in log(rate): 1%
GOODPUT_GRID = 8  # rates probed by the batched goodput search's first pass (then just enough to finish)
MAX_GOODPUT_GRID = 16
MAX_REPORTED_S = 1e6  # an unbounded latency (overloaded group) is reported as this in the plan


@dataclass(frozen=True)
class Evaluation:
    """A scored candidate: higher score is better; `plan` is None when nothing can be served."""

    score: float
    goodput_rps: float
    slo_attainment: float
    plan: Plan | None
    deployments: tuple[Deployment, ...]
    capacity_rps: float = 0.0  # rate at which the busiest group or link reaches utilisation 1
    ttft_p90_s: float = math.inf
    tpot_p90_s: float = math.inf

    @property
    def is_feasible(self) -> bool:
        return self.plan is not None


_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def evaluate(problem: Problem, groups: Sequence[tuple[Sequence[str], str]]) -> Evaluation:
    """Configure each (GPU ids, role) group, route and estimate; memoised on the grouping."""
    memo = _MEMO.setdefault(problem, {})
    key = ("groups", frozenset((frozenset(ids), role) for ids, role in groups))
    if key not in memo:
        found = [configure(problem, ids, role) for ids, role in groups]
        memo[key] = evaluate_deployments(problem, [d for d in found if d is not None])
    return memo[key]


def evaluate_deployments(problem: Problem, deployments: Sequence[Deployment]) -> Evaluation:
    """Route and estimate fixed deployments (no reconfiguration): the lightweight re-plan's evaluator."""
    ordered = tuple(sorted(deployments, key=lambda d: min(problem.gpu_order[g] for g in d.gpu_ids)))
    memo = _MEMO.setdefault(problem, {})
    key = ("deployments", ordered)
    if key not in memo:
        memo[key] = _evaluate(problem, ordered)
    return memo[key]


def _evaluate(problem: Problem, deployments: tuple[Deployment, ...]) -> Evaluation:
    by_id = dict(enumerate(deployments))
    network = flow_network(problem, by_id)
    pairs = network.pairs()
    if not pairs:
        return Evaluation(0.0, 0.0, 0.0, None, deployments)
    scenario = Scenario.build(problem, by_id, pairs)
    try:
        if problem.orchestrate:
            attainment = dict(zip(pairs, scenario.zero_load_attainment(), strict=True))
            routing_at = Router.build(network, attainment).shares_at
        else:
            uniform = uniform_routing(network)
            routing_at = lambda rate_rps: uniform  # noqa: E731
        routing = routing_at(problem.rate_rps)
    except InfeasibleError:
        return Evaluation(0.0, 0.0, 0.0, None, deployments)
    arrays: dict[int, np.ndarray] = {}  # per routing object (the router keeps one per utilisation bound)

    def kv_at(rate_rps: float) -> np.ndarray:
        shares = routing_at(rate_rps)
        if id(shares) not in arrays:
            arrays[id(shares)] = np.array([shares.kv.get(pair, 0.0) for pair in pairs])
        return arrays[id(shares)]

    def attainments_at(rates_rps: np.ndarray) -> np.ndarray:
        shares = np.array([kv_at(r) for r in rates_rps])
        return scenario.attainments(rates_rps, shares)

    goodput = goodput_grid_rps(problem, attainments_at, routing.capacity_rps)
    # The plan carries one routing, used at every rate (the entry peer and the simulator weight their
    # load-aware dispatch by it): the LP's routing at the goodput rate (at the planned rate if that is
    # higher), so the deployed plan reaches the goodput it is scored by. The LP's routing at a low
    # planned rate leaves groups idle that the goodput rate needs.
    routed_rps = max(goodput, problem.rate_rps)
    routing = routing_at(routed_rps)
    at_rate = scenario.estimate(problem.rate_rps, kv_at(routed_rps))
    capacity = routing.capacity_rps
    score = (goodput + ATTAINMENT_WEIGHT * at_rate.slo_attainment
             + CAPACITY_WEIGHT * min(capacity, 1e3))
    predicted = Predicted(goodput_rps=goodput, slo_attainment=at_rate.slo_attainment,
                          ttft_p90_s=min(at_rate.ttft_p90_s, MAX_REPORTED_S),
                          tpot_p90_s=min(at_rate.tpot_p90_s, MAX_REPORTED_S))
    plan = Plan(format=PLAN_FORMAT, epoch=0, model=problem.model.name,
                groups=tuple(d.group(i) for i, d in by_id.items()),
                routing=wire_routing(routing), predicted=predicted)
    return Evaluation(score, goodput, at_rate.slo_attainment, plan, deployments, capacity,
                      at_rate.ttft_p90_s, at_rate.tpot_p90_s)


def goodput_rps(problem: Problem, attainment_at: Callable[[float], float], capacity_rps: float) -> float:
    """DistServe's goodput: the highest rate whose attainment reaches slo.attainment.

    Attainment falls as the rate grows, usually from a plateau to a cliff just below the capacity the
    LP found. So the crossing is bracketed around capacity first ([0.6, 1.2] x capacity, widened
    by 2x up or 4x down as needed, 0 below GOODPUT_FLOOR x capacity) and then bisected on log(rate) to
    GOODPUT_TOLERANCE. Returns the feasible end of the final bracket.
    """
    target = problem.slo.attainment
    if not math.isfinite(capacity_rps):
        capacity_rps = 1e3
    lo, hi = 0.6 * capacity_rps, 1.2 * capacity_rps
    while attainment_at(hi) >= target:
        if hi > 8 * capacity_rps:
            return hi
        lo, hi = hi, 2 * hi
    if lo < hi / 2 or attainment_at(lo) < target:  # (lo < hi / 2 only after widening upwards)
        if attainment_at(GOODPUT_FLOOR * capacity_rps) < target:
            return 0.0
        while True:
            hi, lo = lo, lo / 4
            if attainment_at(lo) >= target:
                break
    while math.log(hi / lo) > GOODPUT_TOLERANCE:
        mid = math.sqrt(lo * hi)
        if attainment_at(mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def goodput_grid_rps(problem: Problem, attainments_at: Callable[[np.ndarray], np.ndarray],
                     capacity_rps: float) -> float:
    """`goodput_rps` with a batched `attainments_at` (rates -> attainments), probing GOODPUT_GRID rates
    per call: [0.6, 1.2] x capacity first (then [1.2, 9.6] x or [GOODPUT_FLOOR, 0.6] x capacity if the
    crossing lies outside), then the grid step that holds the first miss, until it is narrower than
    GOODPUT_TOLERANCE: two or three calls against about nine sequential probes. Returns the feasible
    end of the final bracket (0 if even GOODPUT_FLOOR x capacity misses the target)."""
    target = problem.slo.attainment
    if not math.isfinite(capacity_rps):
        capacity_rps = 1e3
    rates = _geomspace(0.6 * capacity_rps, 1.2 * capacity_rps, GOODPUT_GRID)
    met = attainments_at(rates) >= target
    if met.all():
        rates = _geomspace(1.2 * capacity_rps, 9.6 * capacity_rps, GOODPUT_GRID)
        met = attainments_at(rates) >= target
        if met.all():
            return float(rates[-1])
    elif not met[0]:
        rates = _geomspace(GOODPUT_FLOOR * capacity_rps, 0.6 * capacity_rps, GOODPUT_GRID)
        met = attainments_at(rates) >= target
        if not met[0]:
            return 0.0
    while True:
        first_miss = int(np.argmin(met))
        lo, hi = rates[first_miss - 1], rates[first_miss]
        width = math.log(hi / lo)
        if width <= GOODPUT_TOLERANCE:
            return float(lo)
        # just enough inner rates for the next bracket to meet the tolerance (at most MAX_GOODPUT_GRID)
        num_inner = max(1, min(MAX_GOODPUT_GRID, math.ceil(width / GOODPUT_TOLERANCE * (1 - 1e-9)) - 1))
        inner = _geomspace(lo, hi, num_inner + 2)[1:-1]
        rates = np.concatenate(([lo], inner, [hi]))
        met = np.concatenate(([True], attainments_at(inner) >= target, [False]))


def _geomspace(start: float, stop: float, num: int) -> np.ndarray:
    """np.geomspace without its argument handling (it runs a few times per evaluation)."""
    return np.exp(np.linspace(math.log(start), math.log(stop), num))


def wire_routing(shares: RoutingShares) -> Routing:
    """The plan's routing record: prefill shares by group id and sorted [prefill, decode, share] triples."""
    return Routing(prefill=dict(sorted(shares.prefill.items())),
                   kv=tuple((p, d, s) for (p, d), s in sorted(shares.kv.items())))
