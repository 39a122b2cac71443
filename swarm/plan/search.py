"""The upper level of the scheduler: tabu search over GPU groupings and each group's phase.

How it works (ThunderServe, MLSys 2025, section 4.1). The start comes from the bandwidth clustering
of grouping.py: a few levels of its dendrogram, from the finest (every group just holds the model) to
coarse ones (few large pipelines), each with roles by prefill affinity (compute per memory bandwidth:
the k most compute-heavy groups prefill, the rest decode, k by ternary search); the best one is the
start. Each iteration scans the moves (flip, split, merge, move, swap; see grouping.py) in random
order and scores the resulting groupings with `evaluate` (lower level + routing LP + SLO estimate):
the first one better than the current grouping is taken at once (first improvement: evaluations are
the scarce resource); if none is found among `max_neighbours` new groupings (INTENSIFY times more
around the best grouping seen), the best of them is taken even if it is worse (that is what escapes
local optima). A move is tabu for `tenure` iterations if it would recreate a group (GPU set and role)
that an earlier move removed, unless it beats the best grouping seen (aspiration). After
RESTART_AFTER x tenure iterations without a new best the search restarts from the best grouping
after KICK_MOVES random moves (iterated local search), so it does not retrace the same walk.
The best grouping seen is returned.

Large clusters: an evaluation costs about n^1.8 (the LP and the estimate cover every group pair), so
above DECOMPOSE_GPUS GPUs the cluster is first cut into bandwidth zones of at most ZONE_GPUS GPUs
(grouping.zones), each zone is planned alone, and the union of their plans starts the search on the
whole cluster (whose LP may then route across zones). The zone plans side by side are also a plan of
their own (`_side_by_side`: each zone routes within itself, the entry splits requests between zones by
their goodput), kept if it scores higher than anything the whole-cluster search found — which is the
case when the whole cluster is too big for one routing LP (at 1,024 GPUs, about 17,000 group pairs,
HiGHS stops at its time limit and every whole-cluster evaluation is infeasible).

Determinism: the random draws come from `random.Random(seed)` and the search stops after a fixed
number of evaluations (`max_evaluations`, by default derived from `budget_s` and the cluster size),
so the same seed gives the same plan; `budget_s` is only a wall-clock cap on slow or busy machines.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace

from swarm.plan.errors import InfeasibleError, PlanError
from swarm.plan.evaluate import (
    ATTAINMENT_WEIGHT,
    CAPACITY_WEIGHT,
    MAX_REPORTED_S,
    Evaluation,
    evaluate,
)
from swarm.plan.grouping import (
    Grouping,
    Topology,
    apply_move,
    canonical,
    cluster_levels,
    neighbours,
    prefill_affinity,
    topology,
    zones,
)
from swarm.plan.problem import Problem
from swarm.plan.validate import check_problem
from swarm.wire.plan import ROLES, Plan, Predicted, Routing

DEFAULT_TENURE = 7
INTENSIFY = 16  # x max_neighbours new groupings scanned around the best grouping before leaving it
RESTART_AFTER = 2  # x tenure iterations without a new best: back to the best grouping, kicked
KICK_MOVES = 2  # random moves applied to the best grouping on a restart
START_LEVELS = 8  # dendrogram levels tried as starting groupings
IMPROVEMENT = 1e-9
MAX_STALE_ITERATIONS = 25  # iterations that meet only groupings seen before: the search has converged
DECOMPOSE_GPUS = 64  # larger clusters are planned zone by zone first (see _plan_zones)
ZONE_GPUS = 32
ZONE_SHARE = 0.7  # of the budget spent planning the zones; the rest refines their union
# Calibration of the default evaluation count, measured on the 2-core reference machine (CPU time,
# which an idle box gives as wall time): one evaluation (lower level for new groups, LP, batched
# goodput search) takes about 3.6 / 4.7 / 5.2 ms at 16 / 24 / 32 GPUs and grows about as n^1.8.
EVALUATION_BASE_S = 0.0025
EVALUATION_32_GPUS_S = 0.0027
EVALUATION_EXPONENT = 1.8


@dataclass(frozen=True)
class SearchResult:
    """The best plan found, how many groupings were evaluated, and when the best score improved."""

    best: Evaluation
    num_evaluations: int
    elapsed_s: float
    history: tuple[tuple[int, float, float], ...]  # (evaluations, elapsed_s, best score) per improvement
    start: Evaluation | None = None  # the grouping the tabu phase started from

    @property
    def time_to_best_s(self) -> float:
        return self.history[-1][1] if self.history else 0.0


def default_evaluations(budget_s: float, num_gpus: int) -> int:
    """The evaluation count that fits `budget_s` on the reference 2-core machine (at least 10)."""
    per_evaluation_s = EVALUATION_BASE_S + EVALUATION_32_GPUS_S * (num_gpus / 32) ** EVALUATION_EXPONENT
    return max(10, int(budget_s / per_evaluation_s))


def default_neighbours(num_gpus: int) -> int:
    """Moves drawn per iteration: more on large clusters, where the neighbourhood is larger."""
    return int(min(32, max(8, 2 * math.sqrt(num_gpus))))


def plan(problem: Problem, *, budget_s: float = 2.0, seed: int = 0,
         allowed_roles: tuple[str, ...] = ("prefill", "decode"), initial: Plan | None = None,
         max_evaluations: int | None = None, max_neighbours: int | None = None,
         tenure: int = DEFAULT_TENURE) -> SearchResult:
    """Tabu search for the best grouping and roles; `allowed_roles=("both",)` plans colocated replicas.

    Clusters of more than DECOMPOSE_GPUS GPUs (without `initial`) are first planned zone by zone
    (ZONE_SHARE of the budget); `max_evaluations` then counts the evaluations of the whole cluster.

    Raises:
        InfeasibleError: no grouping of the cluster can serve the model (it fits nowhere, or no
            prefill/decode pair can be formed).
    """
    allowed_roles = tuple(allowed_roles)
    _check_roles(allowed_roles)
    if not budget_s > 0:
        raise PlanError(f"the planning budget must be a positive number of seconds, got {budget_s!r}")
    num_gpus = problem.cluster.num_gpus
    check_problem(problem)
    started, left_s = time.perf_counter(), budget_s
    zone_plans: list[Evaluation] = []
    if initial is None and num_gpus > DECOMPOSE_GPUS:
        initial, zone_plans = _plan_zones(problem, ZONE_SHARE * budget_s, seed, allowed_roles)
        left_s = (1 - ZONE_SHARE) * budget_s
    search = _Search(problem, budget_s, max_evaluations or default_evaluations(left_s, num_gpus),
                     random.Random(seed))
    search.started = started
    search.colocated = allowed_roles == ("both",)
    start = search.start(allowed_roles, initial)
    search.tabu(start, allowed_roles, max_neighbours or default_neighbours(num_gpus), tenure)
    if zone_plans:
        side_by_side = _side_by_side(problem, zone_plans)
        if side_by_side.score > search.best[1].score + IMPROVEMENT:
            search.best = (start, side_by_side)
            search.history.append((search.num_evaluations, time.perf_counter() - started, side_by_side.score))
    return replace(search.result(), start=search.cache.get(start, _NOTHING))


def _plan_zones(problem: Problem, budget_s: float, seed: int, allowed_roles: tuple[str, ...]
                ) -> tuple[list[tuple[tuple[str, ...], str]], list[Evaluation]]:
    """(the union of the best groupings of each bandwidth zone, the zones' best plans), each zone
    planned on its own (the zones' share of the budget is split by GPU count; their rates are the
    problem's, shared the same way)."""
    cluster, num_gpus = problem.cluster, problem.cluster.num_gpus
    groups: list = []
    plans: list[Evaluation] = []
    for i, zone in enumerate(zones(topology(problem), ZONE_GPUS)):
        share = len(zone) / num_gpus
        keep = set(zone)
        sub = replace(problem, cluster=cluster.without([g for g in cluster.gpu_ids if g not in keep]),
                      rate_rps=problem.rate_rps * share)
        try:
            best = plan(sub, budget_s=budget_s * share, seed=seed + i, allowed_roles=allowed_roles).best
        except InfeasibleError:  # a zone that cannot serve alone still lends its GPUs to the whole search
            groups += [(tuple(zone), allowed_roles[-1])]
            continue
        groups += [(tuple(g.gpu_ids), g.role) for g in best.plan.groups]
        plans.append(best)
    return groups, plans


def _side_by_side(problem: Problem, zone_plans: list[Evaluation]) -> Evaluation:
    """The zones' plans as one plan: group ids renumbered, each zone routing within itself, and the
    requests split between zones in proportion to their predicted goodput (capacity if none has any).

    At a total rate equal to the sum of the zones' goodputs every zone then runs at its own goodput,
    so the sum is the predicted goodput. The attainment and P90 latencies at the problem's rate are
    the zones' own estimates (each at its GPU share of the rate), weighted by their share of requests
    (the P90s: the worst zone's) — an approximation, as the zones' rates differ a little."""
    weights = [e.goodput_rps for e in zone_plans]
    if sum(weights) <= 0:
        weights = [min(e.capacity_rps, 1e3) for e in zone_plans]
    if sum(weights) <= 0:
        return _NOTHING
    shares = [w / sum(weights) for w in weights]
    groups, prefill, kv, deployments = [], {}, [], []
    for evaluation, share in zip(zone_plans, shares, strict=True):
        zone_plan, offset = evaluation.plan, len(groups)
        groups += [replace(g, id=g.id + offset) for g in zone_plan.groups]
        prefill.update({gid + offset: s * share for gid, s in zone_plan.routing.prefill.items()})
        kv += [(p + offset, d + offset, s * share) for p, d, s in zone_plan.routing.kv]
        deployments += evaluation.deployments
    goodput = sum(e.goodput_rps for e in zone_plans)
    attainment = sum(s * e.slo_attainment for e, s in zip(zone_plans, shares, strict=True))
    capacity = sum(e.capacity_rps for e in zone_plans)
    ttft_s, tpot_s = max(e.ttft_p90_s for e in zone_plans), max(e.tpot_p90_s for e in zone_plans)
    first = zone_plans[0].plan
    combined = replace(first, groups=tuple(groups),
                       routing=Routing(prefill=dict(sorted(prefill.items())), kv=tuple(sorted(kv))),
                       predicted=Predicted(goodput_rps=goodput, slo_attainment=attainment,
                                           ttft_p90_s=min(ttft_s, MAX_REPORTED_S),
                                           tpot_p90_s=min(tpot_s, MAX_REPORTED_S)))
    score = goodput + ATTAINMENT_WEIGHT * attainment + CAPACITY_WEIGHT * min(capacity, 1e3)
    return Evaluation(score, goodput, attainment, combined, tuple(deployments), capacity, ttft_s, tpot_s)


class _Search:
    """The state of one search: the evaluation cache and counter, the clock and the best grouping."""

    def __init__(self, problem: Problem, budget_s: float, max_evaluations: int, rng: random.Random) -> None:
        self.problem, self.budget_s, self.max_evaluations, self.rng = problem, budget_s, max_evaluations, rng
        self.topo: Topology = topology(problem)
        self.cache: dict[Grouping, Evaluation] = {}
        self.started = time.perf_counter()
        self.best: tuple[Grouping, Evaluation] | None = None
        self.history: list[tuple[int, float, float]] = []
        self.num_evaluations = 0
        self.slowest_s = 0.0  # the slowest evaluation so far: the wall-clock cap keeps room for one more
        self.colocated = False

    def exhausted(self) -> bool:
        """The evaluation count is spent, or the next evaluation (as long as the slowest so far)
        would end past the wall-clock budget."""
        return (self.num_evaluations >= self.max_evaluations
                or time.perf_counter() - self.started + self.slowest_s >= self.budget_s)

    def score(self, grouping: Grouping, *, force: bool = False) -> Evaluation:
        """The evaluation of `grouping` (cached); one with no (prefill, decode) pair scores 0 for free."""
        if grouping not in self.cache:
            if not _servable(grouping):
                self.cache[grouping] = _NOTHING
                self.best = self.best or (grouping, _NOTHING)
                return _NOTHING
            if self.exhausted() and not force:  # the budget is hard, also for the start candidates
                return _NOTHING
            self.num_evaluations += 1
            began = time.perf_counter()
            evaluation = evaluate(self.problem, grouping)
            self.slowest_s = max(self.slowest_s, time.perf_counter() - began)
            self.cache[grouping] = evaluation
            if self.best is None or evaluation.score > self.best[1].score + IMPROVEMENT:
                self.best = (grouping, evaluation)
                self.history.append((self.num_evaluations, time.perf_counter() - self.started, evaluation.score))
        return self.cache[grouping]

    def start(self, allowed_roles: tuple[str, ...], initial: Plan | list | None) -> Grouping:
        """The starting grouping: `initial`'s groups, or the best of a few dendrogram levels and role splits."""
        if initial is not None:
            return self._from_plan(initial, allowed_roles)
        levels = cluster_levels(self.topo)
        starts = [self._roles_for(levels[i], allowed_roles) for i in _level_indices(len(levels), allowed_roles)]
        return max(starts, key=lambda g: self.cache.get(g, _NOTHING).score)

    def _roles_for(self, clusters: list[tuple[str, ...]], allowed_roles: tuple[str, ...]) -> Grouping:
        """The clusters with the best "k most compute-heavy groups prefill" roles (ternary search on k)."""
        if allowed_roles == ("both",) or len(clusters) < 2:
            grouping = canonical(self.topo, [(c, allowed_roles[0]) for c in clusters])
            self.score(grouping)
            return grouping
        ranked = sorted(clusters, key=lambda c: (-prefill_affinity(self.topo, c), self.topo.order[c[0]]))

        def split(k: int) -> Grouping:
            return canonical(self.topo, [(c, "prefill" if i < k else "decode") for i, c in enumerate(ranked)])

        k = ternary_max(lambda k: self.score(split(k)).score, 1, len(ranked) - 1)
        return split(k)

    def _from_plan(self, initial: Plan | list, allowed_roles: tuple[str, ...]) -> Grouping:
        """`initial`'s groups (a Plan, or (GPU ids, role) pairs) on the GPUs still in the cluster;
        GPUs it leaves out form one group per host."""
        known = set(self.topo.order)
        pairs = [(g.gpu_ids, g.role) for g in initial.groups] if isinstance(initial, Plan) else initial
        groups = [(tuple(g for g in ids if g in known), role if role in allowed_roles else allowed_roles[0])
                  for ids, role in pairs]
        used = {g for ids, _ in groups for g in ids}
        for ids in self.topo.host_parts([g for g in self.topo.order if g not in used]).values():
            groups.append((tuple(ids), allowed_roles[-1]))
        grouping = canonical(self.topo, groups)
        self.score(grouping, force=True)
        return grouping

    def tabu(self, current: Grouping, allowed_roles: tuple[str, ...], max_neighbours: int, tenure: int) -> None:
        """Move to the best non-tabu neighbour each iteration until the evaluation budget is spent;
        after `RESTART_AFTER * tenure` iterations without a new best, go back to the best grouping."""
        tabu_until: dict = {}
        iteration = stale = since_best = 0
        best_score = self.best[1].score
        if current not in self.cache:
            return
        while not self.exhausted() and stale < MAX_STALE_ITERATIONS:
            evaluated_before = self.num_evaluations
            chosen = self._best_neighbour(current, allowed_roles, max_neighbours, tabu_until, iteration)
            stale = stale + 1 if self.num_evaluations == evaluated_before else 0
            iteration += 1
            if self.best[1].score > best_score:
                best_score, since_best = self.best[1].score, 0
            else:
                since_best += 1
            if since_best >= RESTART_AFTER * tenure:
                current, since_best = self._kicked(self.best[0], allowed_roles), 0
            elif chosen is not None:
                for group in chosen[0].removed:
                    tabu_until[group] = iteration + tenure
                current = chosen[1]

    def _kicked(self, grouping: Grouping, allowed_roles: tuple[str, ...]) -> Grouping:
        """The best grouping after KICK_MOVES random moves (a restart that does not retrace its steps)."""
        for _ in range(KICK_MOVES):
            moves = [m for m in neighbours(self.topo, grouping, self.rng, allowed_roles)
                     if _servable(apply_move(self.topo, grouping, m))]
            if moves:
                grouping = apply_move(self.topo, grouping, self.rng.choice(moves))
        self.score(grouping)
        return grouping if grouping in self.cache else self.best[0]

    def _best_neighbour(self, current: Grouping, allowed_roles: tuple[str, ...], max_neighbours: int,
                        tabu_until: dict, iteration: int):
        """(move, grouping, evaluation): the first admissible neighbour better than `current`, else the
        best admissible one among the first `max_neighbours` not evaluated before; None if none."""
        chosen, fresh = None, 0
        current_score = self.cache[current].score
        if current == self.best[0]:  # at the incumbent: look harder before stepping to a worse grouping
            max_neighbours *= INTENSIFY
        for move in neighbours(self.topo, current, self.rng, allowed_roles):
            if self.exhausted() or fresh >= max_neighbours:
                break
            grouping = apply_move(self.topo, current, move)
            if not _servable(grouping):
                continue
            fresh += grouping not in self.cache
            best_score = self.best[1].score  # before scoring: a new best is admissible even if tabu
            evaluation = self.score(grouping)
            is_tabu = any(tabu_until.get(g, -1) >= iteration for g in move.added)
            if is_tabu and evaluation.score <= best_score:
                continue
            if chosen is None or evaluation.score > chosen[2].score:
                chosen = (move, grouping, evaluation)
            if evaluation.score > current_score + IMPROVEMENT:
                break
        return chosen

    def result(self) -> SearchResult:
        assert self.best is not None
        grouping, best = self.best
        if not best.is_feasible:
            raise InfeasibleError(_infeasible_message(self.problem, self.colocated))
        return SearchResult(best, self.num_evaluations, time.perf_counter() - self.started, tuple(self.history))


_NOTHING = Evaluation(0.0, 0.0, 0.0, None, ())


def _servable(grouping: Grouping) -> bool:
    """Colocated groups, or at least one prefill and one decode group: otherwise nothing can be routed."""
    roles = {role for _, role in grouping}
    return "both" in roles or roles == {"prefill", "decode"}


def ternary_max(f, lo: int, hi: int) -> int:
    """An integer in [lo, hi] maximising `f`, by ternary search (exact when f is unimodal); lowest wins ties."""
    while hi - lo > 2:
        a, b = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if f(a) < f(b):
            lo = a + 1
        else:
            hi = b - 1
    return max(range(lo, hi + 1), key=lambda k: (f(k), -k))


def _level_indices(num_levels: int, allowed_roles: tuple[str, ...]) -> list[int]:
    """Up to START_LEVELS dendrogram levels, evenly spread from the finest to the coarsest usable one."""
    last = num_levels - 1 if allowed_roles == ("both",) else max(0, num_levels - 2)  # disaggregated: >= 2 groups
    if last + 1 <= START_LEVELS:
        return list(range(last + 1))
    return sorted({round(i * last / (START_LEVELS - 1)) for i in range(START_LEVELS)})


def _check_roles(allowed_roles: tuple[str, ...]) -> None:
    roles = set(allowed_roles)
    if not roles or not roles <= set(ROLES) or ("both" in roles and len(roles) > 1):
        raise PlanError(f"allowed_roles must be ('prefill', 'decode') or ('both',), got {allowed_roles!r}")
    if roles in ({"prefill"}, {"decode"}):
        raise PlanError(f"allowed_roles {allowed_roles!r} cannot serve requests: a disaggregated plan needs "
                              "both 'prefill' and 'decode'")


def _infeasible_message(problem: Problem, colocated: bool) -> str:
    cluster, model = problem.cluster, problem.model
    total_gb = sum(h.gpu.memory_gb * h.num_gpus for h in cluster.hosts)
    need = ("at least one group of GPUs that holds the model" if colocated else
            "at least two groups of GPUs that each hold the model (one prefill, one decode)")
    return (f"no plan can serve {model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) on cluster "
            f"{cluster.name!r} ({cluster.num_gpus} GPUs, {total_gb:.0f} GB in all): it needs {need}. "
            "Use a smaller model, or more or larger GPUs")
