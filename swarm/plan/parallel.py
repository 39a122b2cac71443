"""The lower level of the scheduler: TP x PP, stage order and layer split of one group of GPUs.

How it works (ThunderServe, MLSys 2025, section 4.2 "lower level"):
  1. TP candidates are the powers of two that divide every host's share of the group and the model's
     head counts: TP never crosses a host (a host has one GPU type), so each stage is `tp` GPUs of one host.
  2. Hosts are chained greedily so that the weakest pipeline link is as fast as possible: start from
     the fastest host pair, then repeatedly attach the unplaced host with the fastest link to either end.
  3. Layers are split non-uniformly, in proportion to each stage's capability (FLOP/s for prefill,
     memory bandwidth for decode, both for colocated groups) or to its free memory, water-filling
     against the layers each stage can hold (weights plus a MIN_KV_TOKENS sequence). No MIP.
  4. Every (tp, split) candidate is priced with the cost model: prefill groups keep the one with the
     lowest mean-prompt latency, decode groups the highest decode throughput within the TPOT target,
     `both` groups the lowest per-request busy time (prefill latency plus decode share).
Results are cached per problem, keyed by the set of GPU ids, role, tp and pp.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace

from swarm.hardware import Cluster
from swarm.plan.cost import (
    MEMORY_UTILISATION,
    MIN_KV_TOKENS,
    GroupCost,
    activation_reserve_bytes,
    group_cost,
    host_index,
)
from swarm.plan.errors import PlanError
from swarm.plan.problem import Problem
from swarm.wire.plan import ROLES, Group, Stage


@dataclass(frozen=True)
class Deployment:
    """One replica: its GPUs (stage order), role, TP degree, PP degree and stages with layer ranges."""

    gpu_ids: tuple[str, ...]
    role: str
    tp: int
    pp: int
    stages: tuple[Stage, ...]

    def group(self, group_id: int) -> Group:
        """The wire record of this replica under `group_id`."""
        return Group(id=group_id, role=self.role, tp=self.tp, pp=self.pp, stages=self.stages)

    @classmethod
    def from_group(cls, group: Group) -> Deployment:
        return cls(gpu_ids=tuple(group.gpu_ids), role=group.role, tp=group.tp, pp=group.pp,
                   stages=group.stages)


def with_role(deployment: Deployment, role: str) -> Deployment:
    """The same GPUs, TP, PP and layers (no weight moves) serving another phase."""
    _check_role(role)
    return replace(deployment, role=role)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def configure(problem: Problem, gpu_ids, role: str, *, tp: int | None = None,
              pp: int | None = None) -> Deployment | None:
    """The best deployment of `gpu_ids` for `role`, or None if the model cannot fit on them."""
    _check_role(role)
    key = (frozenset(gpu_ids), role, tp, pp)
    cache = _CACHE.setdefault(problem, {})
    if key not in cache:
        cache[key] = _configure(problem, _ordered(problem, gpu_ids), role, tp, pp)
    return cache[key]


def _configure(problem: Problem, gpu_ids: list[str], role: str, tp: int | None,
               pp: int | None) -> Deployment | None:
    best, best_key = None, None
    for deployment in candidates(problem, gpu_ids, role, tp=tp, pp=pp):
        cost = group_cost(problem, deployment)
        if not cost.fits:
            continue
        key = objective(problem, cost, role)
        if best_key is None or key < best_key:
            best, best_key = deployment, key
    return best


def candidates(problem: Problem, gpu_ids: list[str], role: str, *, tp: int | None = None,
               pp: int | None = None) -> list[Deployment]:
    """Every (tp, layer split) deployment of the group worth pricing, in a deterministic order."""
    cluster, model = problem.cluster, problem.model
    by_host = _by_host(cluster, gpu_ids)
    chain = host_chain(cluster, list(by_host))
    found = []
    for degree in tp_degrees(problem, [len(v) for v in by_host.values()]):
        num_stages = len(gpu_ids) // degree
        if (tp is not None and degree != tp) or (pp is not None and num_stages != pp):
            continue
        if num_stages > model.num_layers:
            continue
        stage_gpus = [tuple(ids[i:i + degree]) for h in chain for ids in [by_host[h]]
                      for i in range(0, len(ids), degree)]
        caps = _layer_caps(problem, stage_gpus)
        splits = []
        for weights in (_speed_weights(problem, stage_gpus, role), _memory_weights(problem, stage_gpus)):
            layers = split_layers(model.num_layers, weights, caps)
            if layers is not None and layers not in splits:
                splits.append(layers)
        for layers in splits:
            found.append(_deployment(stage_gpus, layers, role, degree))
    return found


def objective(problem: Problem, cost: GroupCost, role: str) -> tuple[float, ...]:
    """Lower is better: prefill latency, minus decode throughput within TPOT, or colocated busy time."""
    prompt, context = problem.mean_prompt_tokens, problem.decode_context_tokens
    step1_s = float(cost.decode_step_s(1, context))
    if role == "prefill":
        return (cost.prefill_s(prompt), step1_s)
    tokens_per_s = cost.decode_tokens_per_s(problem.slo.tpot_s, context)
    if role == "decode":
        return (-tokens_per_s, step1_s)
    if tokens_per_s <= 0:
        return (math.inf, step1_s)
    mean_output = float(problem.lengths[1].mean())
    return (cost.prefill_s(prompt) + mean_output / tokens_per_s, step1_s)  # a colocated prefill stalls it all


def tp_degrees(problem: Problem, host_counts: list[int]) -> list[int]:
    """Powers of two dividing every host's GPU count in the group and the model's head counts."""
    model = problem.model
    degrees, degree = [], 1
    while degree <= min(host_counts):
        if (all(c % degree == 0 for c in host_counts) and model.num_heads % degree == 0
                and model.num_kv_heads % degree == 0):
            degrees.append(degree)
        degree *= 2
    return degrees


def host_chain(cluster: Cluster, hosts: list[str]) -> list[str]:
    """Hosts in pipeline order, greedily maximising the weakest link of the chain."""
    if len(hosts) <= 2:
        return list(hosts)
    gbps = host_index(cluster).host_gbps
    pairs = [(a, b) for i, a in enumerate(hosts) for b in hosts[i + 1:]]
    first = max(pairs, key=lambda p: gbps(*p))  # max keeps the first of equals
    chain, left = list(first), [h for h in hosts if h not in first]
    while left:
        options = [(gbps(end, h), -left.index(h), at, h)
                   for at, end in ((len(chain), chain[-1]), (0, chain[0])) for h in left]
        _, _, at, host = max(options)
        chain.insert(at, host)
        left.remove(host)
    return chain


def split_layers(num_layers: int, weights: list[float], caps: list[int]) -> list[int] | None:
    """Integer layers per stage, proportional to `weights`, each in [1, cap]; None if they cannot fit."""
    n = len(weights)
    if n > num_layers or sum(caps) < num_layers or min(caps) < 1:
        return None
    shares = _water_fill(float(num_layers), weights, caps)
    layers = [min(caps[i], max(1, int(math.floor(shares[i])))) for i in range(n)]
    while sum(layers) < num_layers:  # give a layer to the stage furthest below its share
        i = max((j for j in range(n) if layers[j] < caps[j]), key=lambda j: (shares[j] - layers[j], -j))
        layers[i] += 1
    while sum(layers) > num_layers:  # only after max(1, ...) lifted a tiny share
        i = max((j for j in range(n) if layers[j] > 1), key=lambda j: (layers[j] - shares[j], -j))
        layers[i] -= 1
    return layers


def _water_fill(total: float, weights: list[float], caps: list[int]) -> list[float]:
    """Shares of `total` proportional to weights, with stages at their cap taken out and the rest refilled."""
    shares = [0.0] * len(weights)
    free = set(range(len(weights)))
    remaining = total
    while free:
        weight_sum = sum(weights[i] for i in free)
        capped = {i for i in free if remaining * weights[i] / weight_sum > caps[i]}
        if not capped:
            for i in free:
                shares[i] = remaining * weights[i] / weight_sum
            break
        for i in capped:
            shares[i] = caps[i]
            remaining -= caps[i]
        free -= capped
    return shares


def _layer_caps(problem: Problem, stage_gpus: list[tuple[str, ...]]) -> list[int]:
    """Layers each stage can hold with room for one MIN_KV_TOKENS sequence (embedding/head included)."""
    model, index = problem.model, host_index(problem.cluster)
    per_layer = model.layer_bytes + MIN_KV_TOKENS * model.kv_bytes_per_token_layer
    caps = []
    for i, gpus in enumerate(stage_gpus):
        tp = len(gpus)
        usable = tp * (index.gpu(gpus[0]).memory_bytes * MEMORY_UTILISATION - activation_reserve_bytes(model, tp))
        extra = model.embedding_params * model.dtype_bytes if i == 0 else 0
        extra += model.head_params * model.dtype_bytes if i == len(stage_gpus) - 1 else 0
        caps.append(max(0, int((usable - extra) // per_layer)))
    return caps


def _speed_weights(problem: Problem, stage_gpus: list[tuple[str, ...]], role: str) -> list[float]:
    specs = [host_index(problem.cluster).gpu(g[0]) for g in stage_gpus]
    flops = [len(g) * s.tflops for g, s in zip(stage_gpus, specs, strict=True)]
    bandwidth = [len(g) * s.memory_bandwidth_gbs for g, s in zip(stage_gpus, specs, strict=True)]
    if role == "prefill":
        return flops
    if role == "decode":
        return bandwidth
    return [math.sqrt(f * b) for f, b in zip(flops, bandwidth, strict=True)]


def _memory_weights(problem: Problem, stage_gpus: list[tuple[str, ...]]) -> list[float]:
    index = host_index(problem.cluster)
    return [len(g) * index.gpu(g[0]).memory_gb for g in stage_gpus]


def _deployment(stage_gpus: list[tuple[str, ...]], layers: list[int], role: str, tp: int) -> Deployment:
    stages, start = [], 0
    for gpus, count in zip(stage_gpus, layers, strict=True):
        stages.append(Stage(gpus=gpus, layers=(start, start + count)))
        start += count
    return Deployment(gpu_ids=tuple(g for s in stage_gpus for g in s), role=role, tp=tp,
                      pp=len(stages), stages=tuple(stages))


def _by_host(cluster: Cluster, gpu_ids: list[str]) -> dict[str, list[str]]:
    host_of = host_index(cluster).host_of
    by_host: dict[str, list[str]] = {}
    for gpu_id in gpu_ids:
        by_host.setdefault(host_of[gpu_id].name, []).append(gpu_id)
    return by_host


def _ordered(problem: Problem, gpu_ids) -> list[str]:
    order = problem.gpu_order
    ids = list(dict.fromkeys(gpu_ids))
    unknown = [g for g in ids if g not in order]
    if unknown:
        raise PlanError(f"GPU(s) {unknown} are not in cluster {problem.cluster.name!r}; "
                        f"its GPUs are {', '.join(problem.cluster.gpu_ids[:8])}...")
    if not ids:
        raise PlanError("a group needs at least one GPU")
    return sorted(ids, key=order.__getitem__)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise PlanError(f"role must be one of {ROLES}, got {role!r}")
