"""Orchestration: how requests are shared among prefill groups and KV among (prefill, decode) pairs.

How it works (ThunderServe, MLSys 2025, section 4.3: a two-stage transportation problem, as an LP).
For one request per second in all, x_p is the share of requests sent to prefill group p and y_pd the
share whose KV goes from p to decode group d. Each group and link has a capacity in requests/s
(prefill: 1 / mean prefill interval; decode: decode tokens/s within the TPOT target / mean output;
link: bytes/s / mean KV bytes on the wire). The LP, solved with HiGHS:

    minimise   M * u + u_P + u_D + u_N + u_B + eps * sum_pd y_pd * kv_s_pd
    subject to sum_p x_p = 1,   x_p = sum_d y_pd                          (flow conservation)
               x_p <= u_P * cap_p,   sum_p y_pd <= u_D * cap_d,   y_pd <= u_N * link_pd
               x_g / cap_g^prefill + x_g / cap_g^decode <= u_B      (a colocated group time-shares)
               u_P, u_D, u_N, u_B <= u

u is the utilisation of the busiest resource, so the rate the routing can carry is 1 / u; the sum of
tier utilisations spreads load inside the tiers that are not the bottleneck; the eps term prefers fast
KV links among equals. Everything scales with the rate, so the shares are the same at any rate.
`problem.orchestrate = False` gives uniform routing instead (the ablation baseline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import highspy
import numpy as np

from swarm.plan.errors import InfeasibleError
from swarm.plan.estimate import group_profile, pair_profile
from swarm.plan.parallel import Deployment
from swarm.plan.problem import Problem

BOTTLENECK_WEIGHT = 100.0  # M: the max utilisation first, then the tier sums
LINK_COST_WEIGHT = 1e-4  # eps
LP_TIME_LIMIT_S = 1.0


@dataclass(frozen=True)
class FlowNetwork:
    """Capacities in requests/s: prefill and decode groups, links (p, d); `both` = colocated group ids."""

    prefill_rps: dict[int, float]
    decode_rps: dict[int, float]
    link_rps: dict[tuple[int, int], float] = field(default_factory=dict)  # missing pair = unlimited
    link_cost_s: dict[tuple[int, int], float] = field(default_factory=dict)
    both: frozenset[int] = frozenset()

    def pairs(self) -> list[tuple[int, int]]:
        """Every (prefill, decode) pair KV may take: prefill-only to decode-only, colocated to itself."""
        pairs = [(p, d) for p in self.prefill_rps if p not in self.both
                 for d in self.decode_rps if d not in self.both]
        return pairs + [(g, g) for g in sorted(self.both)]


@dataclass(frozen=True)
class RoutingShares:
    """Shares of all requests: per prefill group, per (prefill, decode) pair; and the rate they carry."""

    prefill: dict[int, float]
    kv: dict[tuple[int, int], float]
    capacity_rps: float


def flow_network(problem: Problem, deployments: Mapping[int, Deployment]) -> FlowNetwork:
    """Capacities of the groups (by id) and of the KV links between them, from the cost model."""
    profiles = {g: group_profile(problem, d) for g, d in deployments.items()}
    roles = {g: d.role for g, d in deployments.items()}
    network = FlowNetwork(
        prefill_rps={g: p.prefill_rps for g, p in profiles.items() if roles[g] in ("prefill", "both")},
        decode_rps={g: p.decode_rps for g, p in profiles.items() if roles[g] in ("decode", "both")},
        both=frozenset(g for g, r in roles.items() if r == "both"))
    for p, d in network.pairs():
        if p != d:
            pair = pair_profile(problem, deployments[p], deployments[d])
            network.link_rps[(p, d)] = pair.link_rps
            network.link_cost_s[(p, d)] = pair.mean_kv_s
    return network


def orchestrate(problem: Problem, deployments: Mapping[int, Deployment]) -> RoutingShares:
    """Routing shares for `deployments`: the LP, or uniform when `problem.orchestrate` is False."""
    network = flow_network(problem, deployments)
    return solve_routing(network) if problem.orchestrate else uniform_routing(network)


def solve_routing(network: FlowNetwork) -> RoutingShares:
    """The LP of the module docstring; InfeasibleError when no request can be served."""
    pairs = network.pairs()
    prefill_ids = sorted(network.prefill_rps)
    if not pairs:
        raise InfeasibleError("no (prefill, decode) pair to route through: a plan needs at least one prefill "
                              "and one decode group, or one colocated ('both') group")
    builder = _LpBuilder(prefill_ids, pairs)
    builder.constraints(network)
    values = builder.solve(network)
    x, y, u = builder.unpack(values)
    prefill = {p: x[i] for i, p in enumerate(prefill_ids)}
    kv = {pair: y[k] for k, pair in enumerate(pairs) if y[k] > 1e-12}
    return _normalised(prefill, kv, 1.0 / u if u > 0 else math.inf)


def uniform_routing(network: FlowNetwork) -> RoutingShares:
    """Equal shares to every prefill group that has a decode partner, then equally over its partners."""
    pairs = network.pairs()
    senders = sorted({p for p, _ in pairs})
    if not senders:
        raise InfeasibleError("no (prefill, decode) pair to route through: a plan needs at least one prefill "
                              "and one decode group, or one colocated ('both') group")
    prefill = {p: (1.0 / len(senders) if p in senders else 0.0) for p in sorted(network.prefill_rps)}
    kv = {}
    for p in senders:
        partners = [d for q, d in pairs if q == p]
        for d in partners:
            kv[(p, d)] = prefill[p] / len(partners)
    return _normalised(prefill, kv, carried_rps(network, prefill, kv))


def carried_rps(network: FlowNetwork, prefill: dict[int, float], kv: dict[tuple[int, int], float]) -> float:
    """The rate at which the busiest group or link of a routing reaches utilisation 1."""
    loads = [prefill[p] / network.prefill_rps[p] for p in prefill if p not in network.both and prefill[p] > 0]
    for d, cap in network.decode_rps.items():
        if d not in network.both:
            loads.append(sum(s for (_, q), s in kv.items() if q == d) / cap if cap > 0 else math.inf)
    for g in network.both:
        share = prefill.get(g, 0.0)
        loads.append(share / network.prefill_rps[g] + share / network.decode_rps[g]
                     if network.decode_rps[g] > 0 else math.inf)
    loads += [s / network.link_rps[pair] for pair, s in kv.items() if pair in network.link_rps]
    busiest = max(loads, default=0.0)
    return 1.0 / busiest if busiest > 0 else math.inf


class _LpBuilder:
    """Columns: x_p..., y_pd..., u_P, u_D, u_N, u_B, u. Rows added as sparse (index, value) lists."""

    def __init__(self, prefill_ids: list[int], pairs: list[tuple[int, int]]) -> None:
        self.prefill_ids, self.pairs = prefill_ids, pairs
        self.num_x, self.num_y = len(prefill_ids), len(pairs)
        self.rows: list[tuple[list[int], list[float], float, float]] = []

    def x(self, p: int) -> int:
        return self.prefill_ids.index(p)

    def y(self, k: int) -> int:
        return self.num_x + k

    def u(self, tier: int) -> int:
        """0..3 = u_P, u_D, u_N, u_B; 4 = u."""
        return self.num_x + self.num_y + tier

    def row(self, index: list[int], value: list[float], lower: float = -highspy.kHighsInf,
            upper: float = 0.0) -> None:
        self.rows.append((index, value, lower, upper))

    def constraints(self, network: FlowNetwork) -> None:
        self.row([self.x(p) for p in self.prefill_ids], [1.0] * self.num_x, 1.0, 1.0)
        for p in self.prefill_ids:
            out = [self.y(k) for k, (q, _) in enumerate(self.pairs) if q == p]
            self.row([self.x(p)] + out, [1.0] + [-1.0] * len(out), 0.0, 0.0)
            if p not in network.both:
                self.row([self.x(p), self.u(0)], [1.0, -network.prefill_rps[p]])
        for d, cap in network.decode_rps.items():
            if d not in network.both:
                into = [self.y(k) for k, (_, e) in enumerate(self.pairs) if e == d]
                self.row(into + [self.u(1)], [1.0] * len(into) + [-cap])
        for k, pair in enumerate(self.pairs):
            if pair in network.link_rps:
                self.row([self.y(k), self.u(2)], [1.0, -network.link_rps[pair]])
        for g in network.both:
            busy = _inverse(network.prefill_rps[g]) + _inverse(network.decode_rps[g])
            self.row([self.x(g), self.u(3)], [busy, -1.0])
        for tier in range(4):
            self.row([self.u(tier), self.u(4)], [1.0, -1.0])

    def solve(self, network: FlowNetwork) -> np.ndarray:
        num_cols = self.num_x + self.num_y + 5
        cost = np.zeros(num_cols)
        cost[self.u(0):self.u(4)] = 1.0
        cost[self.u(4)] = BOTTLENECK_WEIGHT
        for k, pair in enumerate(self.pairs):
            cost[self.y(k)] = LINK_COST_WEIGHT * network.link_cost_s.get(pair, 0.0)
        return _solve_lp(cost, self.rows)

    def unpack(self, values: np.ndarray) -> tuple[list[float], list[float], float]:
        x = [max(0.0, float(v)) for v in values[:self.num_x]]
        y = [max(0.0, float(v)) for v in values[self.num_x:self.num_x + self.num_y]]
        return x, y, float(values[self.u(4)])


def _solve_lp(cost: np.ndarray, rows: list[tuple[list[int], list[float], float, float]]) -> np.ndarray:
    """Minimise cost @ v over v >= 0 subject to the rows; InfeasibleError unless HiGHS says optimal."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", LP_TIME_LIMIT_S)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), len(rows)
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(len(cost))
    lp.col_upper_ = np.full(len(cost), highspy.kHighsInf)
    lp.row_lower_ = np.array([r[2] for r in rows])
    lp.row_upper_ = np.array([r[3] for r in rows])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.cumsum([0] + [len(r[0]) for r in rows])
    lp.a_matrix_.index_ = np.array([i for r in rows for i in r[0]], dtype=np.int32)
    lp.a_matrix_.value_ = np.array([v for r in rows for v in r[1]], dtype=np.float64)
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise InfeasibleError(f"the routing LP has no optimal solution (HiGHS: {h.modelStatusToString(status)}): "
                              "no group has capacity within the SLO; add decode capacity or relax the TPOT target")
    return np.asarray(h.getSolution().col_value)


def _inverse(rps: float) -> float:
    return 1.0 / rps if rps > 0 else 1e12


def _normalised(prefill: dict[int, float], kv: dict[tuple[int, int], float], capacity_rps: float) -> RoutingShares:
    """Shares summing to exactly 1, with each prefill share equal to the KV it sends."""
    total = sum(kv.values())
    if not total > 0:
        raise InfeasibleError("the routing sends no request anywhere: no group has capacity")
    kv = {pair: s / total for pair, s in kv.items()}
    prefill = {p: sum(s for (q, _), s in kv.items() if q == p) for p in prefill}
    return RoutingShares(prefill=prefill, kv=kv, capacity_rps=capacity_rps)
