"""The systems compared in the experiments, each a planner producing a `Plan` for the same simulator.

* swarm           — P2's tabu search (`swarm.plan.search.plan`), phase-split, 4-bit KV, LP routing;
* swarm-kv16      — the same search with uncompressed KV on the wire (kv_bits=16);
* swarm-uniform   — the same search with uniform routing instead of the LP (orchestrate=False);
* hexgen-like     — heterogeneous and searched, but colocated (`allowed_roles=("both",)`);
* vllm-like       — homogeneous colocated replicas of a fixed TP degree, requests split evenly;
* distserve-like  — homogeneous, phase-split; DistServe's placement search (OSDI'24 section 4.1)
                    reduced to what it decides on one node: the TP degree and the prefill:decode
                    replica counts, every combination evaluated with the same estimator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from sims.errors import SimError
from swarm.plan.evaluate import Evaluation, evaluate
from swarm.plan.problem import Problem
from swarm.plan.search import default_evaluations
from swarm.plan.search import plan as _search
from swarm.wire.plan import Plan

SYSTEMS = ("swarm", "swarm-kv16", "swarm-uniform", "hexgen-like", "vllm-like", "distserve-like")


@dataclass(frozen=True)
class Planned:
    """A system's plan for a problem, with the planner's own evaluation and its wall time."""

    system: str
    problem: Problem
    evaluation: Evaluation
    planner_s: float

    @property
    def plan(self) -> Plan:
        return self.evaluation.plan


def plan_system(
    system: str, problem: Problem, *, budget_s: float = 2.0, seed: int = 0, tp: int = 2
) -> Planned:
    """Plan `problem` the way `system` would (see the module docstring).

    Searches run a fixed number of evaluations (what `budget_s` buys on the reference machine), with
    a generous wall-clock cap, so that a busy machine does not change the plan.
    """
    start = time.perf_counter()
    search_plan = _fixed_effort(budget_s)
    if system == "swarm":
        evaluation = search_plan(problem, budget_s=budget_s, seed=seed).best
    elif system == "swarm-kv16":
        problem = replace(problem, kv_bits=16)
        evaluation = search_plan(problem, budget_s=budget_s, seed=seed).best
    elif system == "swarm-uniform":
        problem = replace(problem, orchestrate=False)
        evaluation = search_plan(problem, budget_s=budget_s, seed=seed).best
    elif system == "hexgen-like":
        evaluation = search_plan(problem, budget_s=budget_s, seed=seed, allowed_roles=("both",)).best
    elif system == "vllm-like":
        evaluation = vllm_like(problem, tp)
    elif system == "distserve-like":
        evaluation = distserve_like(problem)
    else:
        raise SimError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
    if evaluation.plan is None:
        raise SimError(f"{system} found no feasible plan for {problem.model.name} on {problem.cluster.name}")
    return Planned(system, problem, evaluation, time.perf_counter() - start)


def _fixed_effort(budget_s: float):
    def run(problem: Problem, *, budget_s: float, seed: int, allowed_roles=("prefill", "decode")):
        evaluations = default_evaluations(budget_s, problem.cluster.num_gpus)
        return _search(
            problem,
            budget_s=20 * budget_s,
            seed=seed,
            allowed_roles=allowed_roles,
            max_evaluations=evaluations,
        )

    return run


def vllm_like(problem: Problem, tp: int) -> Evaluation:
    """Colocated replicas of `tp` GPUs each (within a host), routed evenly."""
    groups = [
        (ids[i : i + tp], "both") for ids in _host_gpus(problem) for i in range(0, len(ids) - tp + 1, tp)
    ]
    if not groups:
        raise SimError(f"no host of {problem.cluster.name} has {tp} GPUs for a TP={tp} replica")
    return evaluate(replace(problem, orchestrate=False), groups)


def distserve_like(problem: Problem) -> Evaluation:
    """Best (TP degree, number of prefill replicas) on a homogeneous cluster, by the shared estimator."""
    best = None
    ids = problem.cluster.gpu_ids
    for tp in (1, 2, 4, 8):
        if len(ids) % tp:
            continue
        chunks = [ids[i : i + tp] for i in range(0, len(ids), tp)]
        for num_prefill in range(1, len(chunks)):
            groups = [(c, "prefill" if i < num_prefill else "decode") for i, c in enumerate(chunks)]
            evaluation = evaluate(problem, groups)
            if evaluation.plan is not None and (best is None or evaluation.score > best.score):
                best = evaluation
    if best is None:
        raise SimError(
            f"distserve-like: no (TP, prefill count) serves {problem.model.name} on {problem.cluster.name}"
        )
    return best


def _host_gpus(problem: Problem) -> list[list[str]]:
    return [h.gpu_ids for h in problem.cluster.hosts]


def deployment_table(planned: Planned) -> list[dict]:
    """One row per group (the paper's Table 3): role, GPUs by type, TP x PP, layers per stage."""
    cluster = planned.problem.cluster
    rows = []
    for g in planned.plan.groups:
        types: dict[str, int] = {}
        for gpu in g.gpu_ids:
            types[cluster.gpu(gpu).name] = types.get(cluster.gpu(gpu).name, 0) + 1
        rows.append(
            {
                "system": planned.system,
                "group": g.id,
                "role": g.role,
                "gpus": " + ".join(f"{n}x{t}" for t, n in types.items()),
                "tp": g.tp,
                "pp": g.pp,
                "layers": "/".join(str(s.layers[1] - s.layers[0]) for s in g.stages),
                "share": round(planned.plan.routing.prefill.get(g.id, 0.0), 3),
            }
        )
    return rows
