"""Rate-independent figures of deployments over the estimator's request sample, cached per problem.

How it works: the estimator (`estimate.py`) follows NUM_REQUESTS (prompt, output) pairs of the workload,
stratified by prompt length (`sample_index`). For each deployment, `group_profile` computes once, from
the cost model, everything that does not depend on the request rate: each followed request's prefill
latency, the moments of the prefill service time (a pipeline's interval, a colocated group's whole
latency), the decode step on a grid of batch sizes up to the KV admission limit, the capacities, and the
delay a prompt suffers behind a longer batch in a pipeline (`_blocked_s`, `_blocked_share`, at the
batch sizes BATCH_FACTORS). `pair_profile` gives each (prefill, decode) pair's KV transfer times over
its host link. Profiles are cached per problem (weakly) and per deployment's stages, so the search
re-uses them across the many groupings it evaluates.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from swarm.plan.cost import group_cost, kv_route, kv_wire_bytes
from swarm.plan.parallel import Deployment
from swarm.plan.problem import Problem

NUM_REQUESTS = 256  # requests of the length sample the estimator follows one by one
BATCH_FACTORS = (1.0, 1.25, 1.5, 1.75, 2.0)  # prompts per prefill batch (1 + rho) at which blocking is profiled
GRID_POINTS = 64
KV_ADMIT_SHARE = 0.95  # a decode replica admits a sequence while the batch's KV stays under this share of its
# memory (the engine model's watermark, `sims.replica.WATERMARK`: room for the admitted contexts to grow)


@dataclass(frozen=True, eq=False)
class GroupProfile:
    """Rate-independent figures of one deployment over the problem's length sample."""

    prefill_s: np.ndarray  # (NUM_REQUESTS,) prefill latency of each sampled request
    mean_service_s: float  # E[prefill interval] over the whole sample (a pipeline overlaps prefills)
    service_moment2_s2: float  # E[prefill interval^2]
    service_moment3_s3: float  # E[prefill interval^3] (the wait's tail)
    mean_latency_s: float  # E[prefill latency]: a colocated group's service time (decode waits meanwhile)
    latency_moment2_s2: float
    latency_moment3_s3: float
    batch_grid: np.ndarray  # (GRID_POINTS,) mean number of decoding sequences
    step_grid_s: np.ndarray  # (GRID_POINTS,) decode step at that batch (time-weighted mean context)
    context_slope_grid: np.ndarray  # (GRID_POINTS,) d step / d (KV tokens in the batch) there
    max_batch: float  # admission limit on the batch (KV_ADMIT_SHARE of the KV memory), in mean-context sequences
    prefill_rps: float  # prefill capacity (of a prefill group)
    decode_rps: float  # decode capacity within the TPOT target
    blocked_s: np.ndarray | None = None  # (len(BATCH_FACTORS), NUM_REQUESTS) delay behind the batch ahead
    blocked_share: np.ndarray | None = None  # (len(BATCH_FACTORS), NUM_REQUESTS) P(the batch ahead is longer)

    def service(self, role: str) -> tuple[float, float, float]:
        """(E[S], E[S^2], E[S^3]) of a prefill: the pipeline interval, or the whole latency when colocated."""
        if role == "both":
            return self.mean_latency_s, self.latency_moment2_s2, self.latency_moment3_s3
        return self.mean_service_s, self.service_moment2_s2, self.service_moment3_s3


@dataclass(frozen=True, eq=False)
class PairProfile:
    kv_s: np.ndarray  # (NUM_REQUESTS,) KV transfer time of each sampled request
    link_rps: float  # requests/s its link carries at utilisation 1 (if nothing else uses the link)
    mean_kv_s: float
    link: tuple[str, str] | None = None  # the (src, dst) host link it loads; None within one group


_PROFILES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def request_sample(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, output) token arrays of the NUM_REQUESTS requests the estimator follows."""
    prompts, outputs = problem.lengths
    index = sample_index(problem)
    return prompts[index], outputs[index]


def sample_index(problem: Problem) -> np.ndarray:
    """Positions in `problem.lengths` of the NUM_REQUESTS followed requests: stratified by prompt length.

    The pairs at the (i + 1/2) / NUM_REQUESTS quantiles of the prompt length, so the sample's prompt
    tail is the length sample's (a plain first-NUM_REQUESTS draw of azure-code had its p90 prompt 18%
    short, and TTFT misses are decided by that tail). Each pair keeps its own output length."""
    cache = _PROFILES.setdefault(problem, {})
    if "sample" not in cache:
        prompts = problem.lengths[0]
        order = np.argsort(prompts, kind="stable")
        picks = ((np.arange(NUM_REQUESTS) + 0.5) * len(prompts) / NUM_REQUESTS).astype(np.int64)
        cache["sample"] = order[np.minimum(picks, len(prompts) - 1)]
    return cache["sample"]


def group_profile(problem: Problem, deployment: Deployment) -> GroupProfile:
    """The profile of `deployment` (cached per problem; the role does not matter)."""
    cache = _PROFILES.setdefault(problem, {})
    key = ("group", deployment.stages)
    if key not in cache:
        cache[key] = _group_profile(problem, deployment)
    return cache[key]


def _group_profile(problem: Problem, deployment: Deployment) -> GroupProfile:
    cost = group_cost(problem, deployment)
    prompts, outputs = problem.lengths
    context = problem.decode_context_tokens
    latency, service = (np.asarray(a) for a in cost.prefill_latency_and_interval_s(prompts))
    followed = latency[sample_index(problem)]
    max_batch = cost.max_kv_tokens * KV_ADMIT_SHARE / context
    grid = np.concatenate(([0.0], np.geomspace(0.05, max(max_batch, 0.1) * 1.05, GRID_POINTS - 1)))
    mean_service = float(service.mean())
    steps = np.asarray(cost.decode_step_s(grid, grid * context))
    more = np.asarray(cost.decode_step_s(grid, grid * context * 1.25))
    return GroupProfile(
        prefill_s=followed, mean_service_s=mean_service,
        service_moment2_s2=float((service ** 2).mean()), service_moment3_s3=float((service ** 3).mean()),
        mean_latency_s=float(latency.mean()), latency_moment2_s2=float((latency ** 2).mean()),
        latency_moment3_s3=float((latency ** 3).mean()), batch_grid=grid,
        step_grid_s=steps, context_slope_grid=(more - steps) / np.maximum(grid * context * 0.25, 1.0),
        max_batch=max_batch,
        prefill_rps=1.0 / mean_service,
        decode_rps=cost.decode_tokens_per_s(problem.slo.tpot_s, context) / float(outputs.mean()),
        blocked_s=np.stack([_blocked_s(latency * k, followed, cost.pp) for k in BATCH_FACTORS]),
        blocked_share=np.stack([_blocked_share(latency * k, followed, cost.pp) for k in BATCH_FACTORS]))


def _blocked_s(latencies: np.ndarray, own: np.ndarray, pp: int) -> np.ndarray:
    """Per request of latency t: E[(T - t)+] (pp - 1) / pp over the sample's latencies T.

    A pipeline keeps prompts in order: a prompt that enters right behind a longer one (latency T)
    catches up with it and leaves each stage only after it, finishing (T - t)(pp - 1) / pp later
    than alone (balanced stages). One stage: no effect."""
    if pp <= 1:
        return np.zeros_like(own)
    ordered = np.sort(latencies)
    above_sum = np.concatenate((np.cumsum(ordered[::-1])[::-1], [0.0]))  # sum of ordered[i:]
    first_above = np.searchsorted(ordered, own, side="right")
    count_above = len(ordered) - first_above
    excess = (above_sum[first_above] - own * count_above) / len(ordered)
    return excess * (pp - 1) / pp


def _blocked_share(latencies: np.ndarray, own: np.ndarray, pp: int) -> np.ndarray:
    """Per request of latency t: P(T > t) over the sample's latencies T, the chance that the batch ahead
    holds it up at all (0 for one stage); `_blocked_s` / this is the delay when it does."""
    if pp <= 1:
        return np.zeros_like(own)
    return 1.0 - np.searchsorted(np.sort(latencies), own, side="right") / len(latencies)


def pair_profile(problem: Problem, prefill: Deployment, decode: Deployment) -> PairProfile:
    """KV transfer figures from `prefill` to `decode` (cached per problem); zero within one group."""
    cache = _PROFILES.setdefault(problem, {})
    key = ("pair", prefill.stages, decode.stages)
    if key not in cache:
        prompts = request_sample(problem)[0]
        if prefill.stages == decode.stages:
            cache[key] = PairProfile(kv_s=np.zeros_like(prompts), link_rps=math.inf, mean_kv_s=0.0)
        else:
            route = kv_route(problem, prefill, decode)
            mean_bytes = float(kv_wire_bytes(problem.model, problem.mean_prompt_tokens, problem.kv_bits))
            kv_s = kv_wire_bytes(problem.model, prompts, problem.kv_bits) * route.seconds_per_byte() + route.latency_s
            cache[key] = PairProfile(kv_s=kv_s, link_rps=1.0 / (mean_bytes * route.seconds_per_byte()),
                                     mean_kv_s=mean_bytes * route.seconds_per_byte() + route.latency_s,
                                     link=(route.src_host, route.dst_host))
    return cache[key]
