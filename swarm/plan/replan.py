"""Lightweight re-planning: keep every surviving group exactly as deployed, re-decide roles and routing.

How it works (ThunderServe, MLSys 2025, section 4.4 "lightweight rescheduling"). When GPUs fail or leave,
or the workload shifts, the groups that lost a GPU are dropped and every other group keeps its GPUs,
TP, PP and layer split, so no weights move. Only phases are re-decided and the routing LP re-solved:
  1. the current roles are scored, then the "k most compute-heavy groups prefill" family (groups
     ranked by prefill affinity), with an integer ternary search over k (the score is close to
     unimodal in k: too few prefill groups and TTFT fails, too many and decode capacity does);
  2. from the best of those, single flips are tried, nearest to the prefill/decode boundary first,
     taking any improvement, until `max_evaluations` scorings are spent.
Each scoring is `evaluate_deployments` (routing LP and SLO estimate only).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from swarm.plan.errors import InfeasibleError, PlanError
from swarm.plan.evaluate import Evaluation, evaluate_deployments
from swarm.plan.grouping import prefill_affinity, topology
from swarm.plan.parallel import Deployment, with_role
from swarm.plan.problem import Problem
from swarm.wire.plan import Plan

MAX_REPLAN_EVALUATIONS = 8  # about 100 ms on 32 GPUs: each scoring is one routing LP + SLO estimate


def surviving_groups(problem: Problem, current: Plan) -> list[Deployment]:
    """The current plan's groups whose GPUs are all still in the problem's cluster, as deployed."""
    known = set(problem.cluster.gpu_ids)
    return [Deployment.from_group(g) for g in current.groups if all(x in known for x in g.gpu_ids)]


def replan(problem: Problem, current: Plan, *, max_evaluations: int = MAX_REPLAN_EVALUATIONS,
           budget_s: float | None = None) -> Evaluation:
    """The best roles and routing for the surviving groups of `current` (no group changes, no weight moves).

    Returns the evaluation of the new plan, whose epoch is `current.epoch + 1`. `budget_s` optionally
    caps the wall time as well (the current roles are always scored).

    Raises:
        PlanError: `current` is a plan for another model.
        InfeasibleError: no surviving groups can serve requests (a full re-plan is needed).
    """
    if current.model != problem.model.name:
        raise PlanError(f"the current plan is for model {current.model!r}, the problem for {problem.model.name!r}")
    deployments = surviving_groups(problem, current)
    if not deployments:
        raise InfeasibleError(f"every group of the epoch-{current.epoch} plan lost a GPU: nothing is left to "
                              "re-route; run a full re-plan (swarm.plan.plan)")
    search = _RoleSearch(problem, deployments, max_evaluations, budget_s)
    best = search.run()
    if best is None or not best.is_feasible:
        raise InfeasibleError(f"the {len(deployments)} surviving group(s) of the epoch-{current.epoch} plan cannot "
                              "serve requests in any phase assignment; run a full re-plan (swarm.plan.plan)")
    return replace(best, plan=best.plan.with_epoch(current.epoch + 1))


class _RoleSearch:
    """Role assignments of fixed deployments, scored with a budget of evaluations."""

    def __init__(self, problem: Problem, deployments: list[Deployment], max_evaluations: int,
                 budget_s: float | None) -> None:
        self.problem, self.deployments, self.max_evaluations = problem, deployments, max_evaluations
        self.deadline = math.inf if budget_s is None else time.perf_counter() + budget_s
        self.scored: dict[tuple[str, ...], Evaluation] = {}
        topo = topology(problem)
        self.ranked = sorted(range(len(deployments)),
                             key=lambda i: (-prefill_affinity(topo, deployments[i].gpu_ids), i))

    def score(self, roles: tuple[str, ...]) -> float:
        if roles not in self.scored:
            if not _servable(roles):
                return 0.0
            if self.scored and (len(self.scored) >= self.max_evaluations or time.perf_counter() > self.deadline):
                return -1.0
            found = [with_role(d, r) for d, r in zip(self.deployments, roles, strict=True)]
            self.scored[roles] = evaluate_deployments(self.problem, found)
        return self.scored[roles].score

    def best(self) -> tuple[str, ...]:
        return max(self.scored, key=lambda r: self.scored[r].score)

    def threshold(self, k: int) -> tuple[str, ...]:
        prefill = set(self.ranked[:k])
        return tuple("prefill" if i in prefill else "decode" for i in range(len(self.deployments)))

    def run(self) -> Evaluation | None:
        """The best assignment scored, or None if no servable assignment was found."""
        current = tuple(d.role for d in self.deployments)
        self.score(current)
        if len(current) == 1:
            self.score(("both",))  # a lone survivor can still serve both phases, with its weights in place
        elif "both" not in current:
            self._ternary(1, len(current) - 1)
            self._flips()
        return self.scored[self.best()] if self.scored else None

    def _ternary(self, lo: int, hi: int) -> None:
        """Integer ternary search for the best number of prefill groups in [lo, hi]."""
        while hi - lo > 2:
            a, b = lo + (hi - lo) // 3, hi - (hi - lo) // 3
            if self.score(self.threshold(a)) < self.score(self.threshold(b)):
                lo = a + 1
            else:
                hi = b - 1
        for k in range(lo, hi + 1):
            self.score(self.threshold(k))

    def _flips(self) -> None:
        """First-improvement single flips from the best assignment, boundary groups first."""
        improved = True
        while improved and len(self.scored) < self.max_evaluations and time.perf_counter() <= self.deadline:
            improved = False
            roles = self.best()
            base = self.scored[roles].score
            for i in self._flip_order(roles):
                flipped = roles[:i] + ("decode" if roles[i] == "prefill" else "prefill",) + roles[i + 1:]
                if self.score(flipped) > base:
                    improved = True
                    break

    def _flip_order(self, roles: tuple[str, ...]) -> list[int]:
        """Least prefill-like prefill groups and most prefill-like decode groups first."""
        position = {i: r for r, i in enumerate(self.ranked)}
        boundary = sum(1 for r in roles if r == "prefill")
        return sorted(range(len(roles)), key=lambda i: (abs(position[i] - boundary + 0.5), i))


def _servable(roles: tuple[str, ...]) -> bool:
    return "both" in roles or {"prefill", "decode"} <= set(roles)
