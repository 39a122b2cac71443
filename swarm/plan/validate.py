"""Checks with the cluster and model in hand: is a plan deployable, is a problem solvable at all.

`validate_plan` adds to the wire record's structural checks (`swarm.wire.plan.check_plan`) what needs
the cluster and the model: GPUs exist and are used once, TP stays inside one host (hence one GPU type),
layers cover the model exactly, weights plus a minimal KV cache fit each GPU, shares sum to 1.
`check_problem` rejects problems no plan can serve, with the value at fault and the fix.
"""

from __future__ import annotations

from swarm.errors import SwarmError
from swarm.hardware import Cluster
from swarm.models import ModelSpec
from swarm.plan.cost import MEMORY_UTILISATION, MIN_KV_TOKENS, activation_reserve_bytes, efficiency_of
from swarm.plan.errors import InfeasibleError, InvalidPlanError
from swarm.plan.parallel import configure
from swarm.plan.problem import Problem
from swarm.wire.plan import Group, Plan, check_plan


def validate_plan(plan: Plan, cluster: Cluster, model: ModelSpec) -> None:
    """Raise InvalidPlanError listing every way `plan` does not fit `cluster` and `model`."""
    issues = plan_issues(plan, cluster, model)
    if issues:
        raise InvalidPlanError(f"plan (epoch {plan.epoch}) does not fit cluster {cluster.name!r} and model "
                               f"{model.name!r}:\n  - " + "\n  - ".join(issues))


def plan_issues(plan: Plan, cluster: Cluster, model: ModelSpec) -> list[str]:
    """Every problem found, as messages naming the group, the value and what would fix it."""
    issues = []
    if plan.model.lower() != model.name.lower():
        issues.append(f"the plan is for model {plan.model!r}, not {model.name!r}: re-plan for this model")
    try:
        check_plan(plan)
    except SwarmError as e:
        issues.append(str(e))
    seen: dict[str, int] = {}
    for group in plan.groups:
        issues += _group_issues(group, cluster, model, seen)
    return issues


def _group_issues(group: Group, cluster: Cluster, model: ModelSpec, seen: dict[str, int]) -> list[str]:
    where = f"group {group.id}"
    issues = []
    for gpu in group.gpu_ids:
        if gpu in seen and seen[gpu] != group.id:
            issues.append(f"{where}: GPU {gpu!r} is also in group {seen[gpu]}; a GPU serves one group")
        seen[gpu] = group.id
        try:
            cluster.host_of(gpu)
        except SwarmError:
            issues.append(f"{where}: GPU {gpu!r} is not in cluster {cluster.name!r}; use one of its GPU ids "
                          f"(host/index), e.g. {cluster.gpu_ids[0]!r}")
    if issues:
        return issues
    if model.num_heads % group.tp or model.num_kv_heads % group.tp:
        issues.append(f"{where}: tp={group.tp} does not divide {model.name}'s {model.num_heads} heads / "
                      f"{model.num_kv_heads} KV heads: use a tp that divides both")
    for i, stage in enumerate(group.stages):
        hosts = sorted({cluster.host_of(g).name for g in stage.gpus})
        if len(hosts) > 1:
            issues.append(f"{where} stage {i}: tensor parallelism spans hosts {hosts}; keep a stage's GPUs "
                          "on one host (use pipeline stages across hosts)")
    end = group.stages[-1].layers[1] if group.stages else 0
    if end != model.num_layers:
        issues.append(f"{where}: stages cover layers [0, {end}) but {model.name} has {model.num_layers} layers")
    if not issues:
        issues += _memory_issues(group, cluster, model)
    return issues


def _memory_issues(group: Group, cluster: Cluster, model: ModelSpec) -> list[str]:
    issues = []
    for i, stage in enumerate(group.stages):
        gpu = cluster.gpu(stage.gpus[0])
        a, b = stage.layers
        need = (model.stage_weight_bytes(a, b) + MIN_KV_TOKENS * model.kv_bytes_per_token_layer * (b - a)) / group.tp
        need += activation_reserve_bytes(model, group.tp)
        have = gpu.memory_bytes * MEMORY_UTILISATION
        if need > have:
            issues.append(f"group {group.id} stage {i}: layers [{a}, {b}) need {need / 1e9:.1f} GB per GPU "
                          f"(weights, a {MIN_KV_TOKENS}-token KV cache, activations) but a {gpu.name} offers "
                          f"{have / 1e9:.1f} GB: give the stage fewer layers or more GPUs")
    return issues


def check_problem(problem: Problem) -> None:
    """Raise InfeasibleError when no plan can serve `problem`: the model fits nowhere or an SLO is unreachable."""
    cluster, model = problem.cluster, problem.model
    usable = sum(cluster.gpu(g).memory_bytes * MEMORY_UTILISATION - activation_reserve_bytes(model, 1)
                 for g in cluster.gpu_ids)
    if model.weight_bytes >= usable:
        raise InfeasibleError(
            f"{model.name} needs {model.weight_bytes / 1e9:.0f} GB of weights; the whole cluster {cluster.name!r} "
            f"offers {usable / 1e9:.0f} GB after activations: add GPUs or use a smaller model")
    if not any(configure(problem, ids, "decode", tp=tp) is not None for tp, ids in largest_groups(problem)):
        raise InfeasibleError(
            f"{model.name} ({model.weight_bytes / 1e9:.0f} GB) does not fit any group of GPUs of {cluster.name!r} "
            f"({cluster.num_gpus} GPUs) with room for a {MIN_KV_TOKENS}-token KV cache, even the one with the "
            f"most memory that a {model.num_layers}-layer pipeline can use: add larger GPUs or use a smaller model")
    floor_tpot_s, floor_ttft_s = _latency_floors(problem)
    if problem.slo.tpot_s < floor_tpot_s:
        raise InfeasibleError(
            f"TPOT target {problem.slo.tpot_s * 1e3:.1f} ms is below the fastest possible decode step of "
            f"{model.name} on {cluster.name!r} ({floor_tpot_s * 1e3:.1f} ms: all weights read once at the whole "
            "cluster's memory bandwidth): raise the TPOT target (SLO scale) or add faster GPUs")
    if problem.slo.ttft_s < floor_ttft_s:
        raise InfeasibleError(
            f"TTFT target {problem.slo.ttft_s:.3f} s is below the fastest possible prefill of the workload's "
            f"shortest prompt on {cluster.name!r} ({floor_ttft_s:.3f} s at the whole cluster's FLOP/s): raise "
            "the TTFT target (SLO scale) or add GPUs")


def largest_groups(problem: Problem) -> list[tuple[int, list[str]]]:
    """Per TP degree, the group of GPUs with the most memory that one replica can use: hosts by GPU
    memory (largest first, leaving out GPUs whose stage cannot hold one layer), `tp` GPUs a stage, at
    most one stage per layer. If none of these holds the model, no group does (a stage's layer capacity
    grows with its GPUs' memory)."""
    cluster, model = problem.cluster, problem.model
    hosts = sorted(cluster.hosts, key=lambda h: -h.gpu.memory_bytes)  # stable: cluster order among equals
    per_layer = model.layer_bytes + MIN_KV_TOKENS * model.kv_bytes_per_token_layer
    found, tp = [], 1
    while tp <= max(h.num_gpus for h in hosts):
        if model.num_heads % tp == 0 and model.num_kv_heads % tp == 0:
            ids: list[str] = []
            for h in hosts:
                if tp * (h.gpu.memory_bytes * MEMORY_UTILISATION - activation_reserve_bytes(model, tp)) < per_layer:
                    continue
                take = min(h.num_gpus // tp * tp, model.num_layers * tp - len(ids))
                ids += h.gpu_ids[:take]
            if ids:
                found.append((tp, ids))
        tp *= 2
    return found


def _latency_floors(problem: Problem) -> tuple[float, float]:
    """Lower bounds on any decode step and any prefill, using every GPU of the cluster at once."""
    cluster, model = problem.cluster, problem.model
    bytes_per_s = flops_per_s = 0.0
    for gpu_id in cluster.gpu_ids:
        gpu = cluster.gpu(gpu_id)
        eff = efficiency_of(problem.efficiency, gpu.name)
        bytes_per_s += gpu.memory_bandwidth_gbs * 1e9 * eff.memory
        flops_per_s += gpu.tflops * 1e12 * eff.compute
    shortest = float(problem.lengths[0].min())
    prefill_flops = shortest * model.flops_per_token + model.attention_flops(shortest, shortest) / 2
    return model.weight_bytes / bytes_per_s, prefill_flops / flops_per_s

