"""Orchestration: how requests are shared among prefill groups and KV among (prefill, decode) pairs.

How it works (ThunderServe, MLSys 2025, section 4.3: a two-stage transportation problem, as an LP).
x_p is the share of requests sent to prefill group p, y_pd the share whose KV goes from p to decode
group d. Each group and link has a capacity in requests/s (prefill: 1 / mean prefill interval, or
latency when colocated; decode: decode tokens/s within the TPOT target / mean output; link: bytes/s
of the pair's bottleneck host link / its share of the mean KV bytes; pairs on one link share it), so at one
request/s the utilisation of each tier is bounded by a variable v_P, v_D, v_N, v_B (B: colocated):

    sum_p x_p = 1,   x_p = sum_d y_pd                                       (flow conservation)
    x_p <= v_P cap_p,   sum_p y_pd <= v_D cap_d,   sum over pairs on a host link of y_pd / link_pd <= v_N
    x_g / cap_g^prefill + x_g / cap_g^decode <= v_B                          (a colocated group time-shares)
    v_P, v_D, v_N, v_B <= v

LP 1, capacity: minimise M v + sum of tier v + eps sum y_pd kv_s_pd. The busiest resource reaches
utilisation 1 at rate 1 / v*: the plan's capacity. The tier sums spread load inside the other tiers.
LP 2, routing at a rate r: the same rows, each tier's utilisation capped at U / r with
U = max(RHO_TARGET, 1.01 r v*) (queueing room, or what the rate needs), maximising
sum y_pd a_pd - beta sum v, where a_pd is the share of requests pair (p, d) serves within both SLOs
with no queueing (from the estimator): short prompts over slow links are fine, long ones are not.
LP 2 is re-solved warm for each rate (bounds only), once per bound: every rate with 1.01 r v* >= RHO_TARGET
has the same bound, and a bound at or above the busiest tier of LP 2 solved without caps does not bind,
so that uncapped optimum is optimal there too. Past capacity, LP 1's routing is used.
`problem.orchestrate = False` gives uniform routing instead (the ablation baseline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import highspy
import numpy as np

from swarm.plan.errors import InfeasibleError
from swarm.plan.estimate import Scenario
from swarm.plan.parallel import Deployment
from swarm.plan.problem import Problem
from swarm.plan.profiles import group_profile, pair_profile

BOTTLENECK_WEIGHT = 100.0  # M: the max utilisation first, then the tier sums
LINK_COST_WEIGHT = 1e-4  # eps
BALANCE_WEIGHT = 0.01  # beta, relative to the capacity LP's optimum
RHO_TARGET = 0.8
UTILISATION_SLACK = 0.01  # above the least feasible utilisation, to trade for attainment
LP_TIME_LIMIT_S = 1.0
_NO_PAIR = ("no (prefill, decode) pair to route through: a plan needs at least one prefill and one "
            "decode group, or one colocated ('both') group")


@dataclass(frozen=True)
class FlowNetwork:
    """Capacities in requests/s: prefill and decode groups, links (p, d); `both` = colocated group ids."""

    prefill_rps: dict[int, float]
    decode_rps: dict[int, float]
    link_rps: dict[tuple[int, int], float] = field(default_factory=dict)  # missing pair = unlimited
    link_cost_s: dict[tuple[int, int], float] = field(default_factory=dict)
    both: frozenset[int] = frozenset()
    shared_links: tuple[tuple[tuple[int, int], ...], ...] = ()  # pairs that load one physical link

    def link_groups(self) -> list[tuple[tuple[int, int], ...]]:
        """Pairs grouped by the physical link they load (a pair alone when not in `shared_links`)."""
        shared = {pair for group in self.shared_links for pair in group}
        return list(self.shared_links) + [(pair,) for pair in self.link_rps if pair not in shared]

    def pairs(self) -> list[tuple[int, int]]:
        """Every (prefill, decode) pair KV may take: prefill-only to decode-only, colocated to itself."""
        pairs = [(p, d) for p in sorted(self.prefill_rps) if p not in self.both
                 for d in sorted(self.decode_rps) if d not in self.both]
        return pairs + [(g, g) for g in sorted(self.both)]


@dataclass(frozen=True)
class RoutingShares:
    """Shares of all requests per prefill group and per (prefill, decode) pair, and the plan's capacity."""

    prefill: dict[int, float]
    kv: dict[tuple[int, int], float]
    capacity_rps: float


def flow_network(problem: Problem, deployments: Mapping[int, Deployment]) -> FlowNetwork:
    """Capacities of the groups (by id) and of the KV links between them, from the cost model."""
    profiles = {g: group_profile(problem, d) for g, d in deployments.items()}
    roles = {g: d.role for g, d in deployments.items()}
    network = FlowNetwork(
        prefill_rps={g: 1.0 / p.service(roles[g])[0] for g, p in profiles.items() if roles[g] in ("prefill", "both")},
        decode_rps={g: p.decode_rps for g, p in profiles.items() if roles[g] in ("decode", "both")},
        both=frozenset(g for g, r in roles.items() if r == "both"))
    by_link: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for p, d in network.pairs():
        if p != d:
            pair = pair_profile(problem, deployments[p], deployments[d])
            network.link_rps[(p, d)] = pair.link_rps
            network.link_cost_s[(p, d)] = pair.mean_kv_s
            by_link.setdefault(pair.link, []).append((p, d))
    return replace(network, shared_links=tuple(tuple(pairs) for pairs in by_link.values()))


def orchestrate(problem: Problem, deployments: Mapping[int, Deployment]) -> RoutingShares:
    """Routing for `deployments` at problem.rate_rps: LP 2, or uniform when `problem.orchestrate` is False."""
    network = flow_network(problem, deployments)
    if not problem.orchestrate:
        return uniform_routing(network)
    attainment = Scenario.build(problem, deployments, network.pairs()).zero_load_attainment()
    return Router.build(network, dict(zip(network.pairs(), attainment, strict=True))).shares_at(problem.rate_rps)


def solve_routing(network: FlowNetwork) -> RoutingShares:
    """LP 1 alone: the routing that maximises the rate the plan carries (min-max utilisation)."""
    return Router.build(network).capacity_shares


def uniform_routing(network: FlowNetwork) -> RoutingShares:
    """Equal shares to every prefill group that has a decode partner, then equally over its partners."""
    pairs = network.pairs()
    senders = sorted({p for p, _ in pairs})
    if not senders:
        raise InfeasibleError(_NO_PAIR)
    prefill = {p: (1.0 / len(senders) if p in senders else 0.0) for p in sorted(network.prefill_rps)}
    kv = {}
    for p in senders:
        partners = [d for q, d in pairs if q == p]
        for d in partners:
            kv[(p, d)] = prefill[p] / len(partners)
    return _normalised(prefill, kv, carried_rps(network, kv))


def carried_rps(network: FlowNetwork, kv: Mapping[tuple[int, int], float]) -> float:
    """The rate at which the busiest group or link of a routing reaches utilisation 1."""
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    for (p, d), s in kv.items():
        sent[p] = sent.get(p, 0.0) + s
        received[d] = received.get(d, 0.0) + s
    loads = [s / network.prefill_rps[p] for p, s in sent.items() if p not in network.both]
    loads += [s * _inverse(network.decode_rps[d]) for d, s in received.items() if d not in network.both]
    loads += [s * (_inverse(network.prefill_rps[g]) + _inverse(network.decode_rps[g]))
              for g, s in sent.items() if g in network.both]
    loads += [sum(kv.get(pair, 0.0) / network.link_rps[pair] for pair in group) for group in network.link_groups()]
    busiest = max(loads, default=0.0)
    return 1.0 / busiest if busiest > 0 else math.inf


@dataclass(eq=False)
class Router:
    """LP 1 solved once, LP 2 kept in one HiGHS instance and re-solved for each rate."""

    network: FlowNetwork
    layout: _Layout
    highs: highspy.Highs
    capacity_shares: RoutingShares
    unit_utilisation: float  # v* of LP 1
    solved: dict[float, RoutingShares] = field(default_factory=dict)  # LP 2's routing by utilisation bound
    free_utilisation: float = math.inf  # largest tier utilisation of LP 2 without the cap

    @classmethod
    def build(cls, network: FlowNetwork, pair_attainment: Mapping[tuple[int, int], float] | None = None) -> Router:
        """Solve LP 1, then set LP 2's objective up (attainment per pair; 1 for every pair when None)."""
        layout = _Layout(sorted(network.prefill_rps), network.pairs())
        if not layout.pairs:
            raise InfeasibleError(_NO_PAIR)
        highs = _new_highs(layout.num_cols, layout.rows(network))
        values = _solve(highs, layout.capacity_cost(network))
        unit = float(values[layout.v(4)])
        capacity = _normalised(*layout.unpack(values), 1.0 / unit if unit > 0 else math.inf)
        attainment = [1.0 if pair_attainment is None else pair_attainment.get(pair, 0.0) for pair in layout.pairs]
        cost = np.zeros(layout.num_cols)
        cost[layout.num_x:layout.num_x + len(layout.pairs)] = -np.asarray(attainment)
        cost[layout.v(0):layout.v(4)] = BALANCE_WEIGHT / max(unit, 1e-12)
        highs.changeColsCost(layout.num_cols, np.arange(layout.num_cols, dtype=np.int32), cost)
        return cls(network, layout, highs, capacity, unit)

    @property
    def capacity_rps(self) -> float:
        return self.capacity_shares.capacity_rps

    def shares_at(self, rate_rps: float) -> RoutingShares:
        """LP 2 at `rate_rps`: utilisation capped at RHO_TARGET, or just above the least possible
        when the rate needs more; past capacity, the capacity routing itself."""
        load = rate_rps * self.unit_utilisation
        if not rate_rps > 0 or load >= 1:
            return self.capacity_shares
        if load * (1 + UTILISATION_SLACK) >= RHO_TARGET:  # every such rate has the same bound: one solve
            bound = self.unit_utilisation * (1 + UTILISATION_SLACK)
        else:
            bound = RHO_TARGET / rate_rps
        if math.inf not in self.solved:
            self.solved[math.inf], self.free_utilisation = self._solve_at(math.inf)
        if bound >= self.free_utilisation:  # the cap does not bind: the uncapped optimum stays optimal
            return self.solved[math.inf]
        if bound not in self.solved:
            self.solved[bound] = self._solve_at(bound)[0]
        return self.solved[bound]

    def _solve_at(self, bound: float) -> tuple[RoutingShares, float]:
        """LP 2 with every tier's utilisation capped at `bound`: the routing and its busiest tier."""
        tiers = np.arange(self.layout.v(0), self.layout.v(4), dtype=np.int32)
        self.highs.changeColsBounds(len(tiers), tiers, np.zeros(len(tiers)), np.full(len(tiers), bound))
        try:
            values = _solve(self.highs, None)
        except InfeasibleError:
            return self.capacity_shares, math.inf
        busiest = float(values[self.layout.v(0):self.layout.v(4)].max())
        return _normalised(*self.layout.unpack(values), self.capacity_rps), busiest


@dataclass(frozen=True)
class _Layout:
    """Columns: x_p for each prefill-capable group, y_k for each pair, v_P, v_D, v_N, v_B, v."""

    prefill_ids: list[int]
    pairs: list[tuple[int, int]]

    @property
    def num_x(self) -> int:
        return len(self.prefill_ids)

    @property
    def num_cols(self) -> int:
        return self.num_x + len(self.pairs) + 5

    def v(self, tier: int) -> int:
        """0..3 = v_P, v_D, v_N, v_B; 4 = v."""
        return self.num_x + len(self.pairs) + tier

    def rows(self, network: FlowNetwork) -> list[tuple[list[int], list[float], float, float]]:
        x = {p: i for i, p in enumerate(self.prefill_ids)}
        y = {pair: self.num_x + k for k, pair in enumerate(self.pairs)}
        inf = highspy.kHighsInf
        rows = [(list(x.values()), [1.0] * self.num_x, 1.0, 1.0)]
        for p in self.prefill_ids:
            out = [y[pair] for pair in self.pairs if pair[0] == p]
            rows.append(([x[p]] + out, [1.0] + [-1.0] * len(out), 0.0, 0.0))
            if p not in network.both:
                rows.append(([x[p], self.v(0)], [1.0, -network.prefill_rps[p]], -inf, 0.0))
        for d, cap in sorted(network.decode_rps.items()):
            into = [y[pair] for pair in self.pairs if pair[1] == d and d not in network.both]
            if into:
                rows.append((into + [self.v(1)], [1.0] * len(into) + [-cap], -inf, 0.0))
        for group in network.link_groups():  # link time per request, summed over the pairs sharing it
            rows.append(([y[pair] for pair in group] + [self.v(2)],
                         [1.0 / network.link_rps[pair] for pair in group] + [-1.0], -inf, 0.0))
        for g in sorted(network.both):
            busy = _inverse(network.prefill_rps[g]) + _inverse(network.decode_rps[g])
            rows.append(([x[g], self.v(3)], [busy, -1.0], -inf, 0.0))
        rows += [([self.v(t), self.v(4)], [1.0, -1.0], -inf, 0.0) for t in range(4)]
        return rows

    def capacity_cost(self, network: FlowNetwork) -> np.ndarray:
        cost = np.zeros(self.num_cols)
        for k, pair in enumerate(self.pairs):
            cost[self.num_x + k] = LINK_COST_WEIGHT * network.link_cost_s.get(pair, 0.0)
        cost[self.v(0):self.v(4)] = 1.0
        cost[self.v(4)] = BOTTLENECK_WEIGHT
        return cost

    def unpack(self, values: np.ndarray) -> tuple[dict[int, float], dict[tuple[int, int], float]]:
        prefill = {p: max(0.0, float(values[i])) for i, p in enumerate(self.prefill_ids)}
        kv = {pair: float(values[self.num_x + k]) for k, pair in enumerate(self.pairs)
              if values[self.num_x + k] > 1e-12}
        return prefill, kv


def _new_highs(num_cols: int, rows: list[tuple[list[int], list[float], float, float]]) -> highspy.Highs:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", LP_TIME_LIMIT_S)
    h.setOptionValue("presolve", "off")  # the LPs are tiny: presolve costs more than it saves
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = num_cols, len(rows)
    lp.col_cost_ = np.zeros(num_cols)
    lp.col_lower_ = np.zeros(num_cols)
    lp.col_upper_ = np.full(num_cols, highspy.kHighsInf)
    lp.row_lower_ = np.array([r[2] for r in rows])
    lp.row_upper_ = np.array([r[3] for r in rows])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.cumsum([0] + [len(r[0]) for r in rows])
    lp.a_matrix_.index_ = np.array([i for r in rows for i in r[0]], dtype=np.int32)
    lp.a_matrix_.value_ = np.array([v for r in rows for v in r[1]], dtype=np.float64)
    h.passModel(lp)
    return h


def _solve(h: highspy.Highs, cost: np.ndarray | None) -> np.ndarray:
    """Solve (with a new objective if given); InfeasibleError unless HiGHS reports an optimum."""
    if cost is not None:
        h.changeColsCost(len(cost), np.arange(len(cost), dtype=np.int32), cost)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kTimeLimit:
        raise InfeasibleError(f"the routing LP ({h.getNumCol()} columns, {h.getNumRow()} rows) was not solved "
                              f"within its {LP_TIME_LIMIT_S:g} s time limit: too many (prefill, decode) pairs "
                              "for one LP (the search plans large clusters zone by zone, and keeps the zone "
                              "plans side by side when the whole-cluster LP cannot be solved)")
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
