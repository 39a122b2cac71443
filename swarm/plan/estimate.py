"""The SLO estimator: TTFT/TPOT attainment and goodput of deployments under a routing, in milliseconds.

How it works (DistServe, OSDI 2024, section 4: per-phase queueing models; goodput by binary search):
  * The workload is a fixed sample of (prompt, output) pairs (`Problem.lengths`).
  * Prefill group p receives Poisson arrivals at rate * x_p; it is an M/G/1 queue whose service time is
    the pipeline's prefill interval for each sampled prompt (P-K mean wait Wq = lam E[S^2] / 2(1-rho)),
    with the wait approximated as P(W <= t) = 1 - rho exp(-t rho / Wq). A request meets TTFT when
    wait + prefill latency + KV transfer (with its link's M/D/1 wait) <= the target: the KV transfer
    counts in TTFT because the first token reaches the client from the decode replica.
  * Decode group d holds N sequences on average, by Little's law the fixed point
    N = rate_d * E[output] * step(N) (step from the cost model, at N * the time-weighted mean context).
    The number decoding is about Poisson, so P(TPOT met) = Phi((N_lim - N) / sqrt(N)), N_lim the
    largest batch within TPOT and KV memory. No fixed point within memory = overloaded = 0.
  * A colocated ('both') group time-shares: its decode steps stretch by 1 / (1 - rho_prefill) and a
    prefill also waits half a decode step on average.
  * Attainment = sum over pairs of y_pd * P(TTFT met | p, d) * P(TPOT met | d). Goodput = the highest
    rate whose attainment reaches slo.attainment (bisection; attainment falls with the rate).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from swarm.plan.cost import group_cost, kv_link, kv_wire_bytes
from swarm.plan.parallel import Deployment
from swarm.plan.problem import Problem

GOODPUT_BISECTION_STEPS = 16
_Z90 = 1.2816  # standard normal 90th percentile
_GRID_POINTS = 64


@dataclass(frozen=True, eq=False)
class GroupProfile:
    """Rate-independent figures of one deployment over the problem's length sample."""

    prefill_s: np.ndarray  # (num_samples,) latency of each sampled prompt
    mean_service_s: float  # E[prefill interval]
    service_moment2_s2: float  # E[prefill interval^2]
    batch_grid: np.ndarray  # (K,) mean number of decoding sequences
    step_grid_s: np.ndarray  # (K,) decode step at that batch (time-weighted mean context)
    max_batch: float  # KV memory limit on the batch
    prefill_rps: float  # prefill capacity
    decode_rps: float  # decode capacity within the TPOT target


@dataclass(frozen=True, eq=False)
class PairProfile:
    kv_s: np.ndarray  # (num_samples,) KV transfer time of each sampled prompt
    link_rps: float  # requests/s the link carries at utilisation 1
    mean_kv_s: float


@dataclass(frozen=True)
class Estimate:
    slo_attainment: float
    ttft_p90_s: float
    tpot_p90_s: float


_PROFILES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def group_profile(problem: Problem, deployment: Deployment) -> GroupProfile:
    """The profile of `deployment` (cached per problem)."""
    cache = _PROFILES.setdefault(problem, {})
    key = ("group", deployment.stages)
    if key not in cache:
        cache[key] = _group_profile(problem, deployment)
    return cache[key]


def _group_profile(problem: Problem, deployment: Deployment) -> GroupProfile:
    cost = group_cost(problem, deployment)
    prompts, outputs = problem.lengths
    context = problem.decode_context_tokens
    service = np.asarray(cost.prefill_interval_s(prompts))
    max_batch = cost.max_kv_tokens / context
    grid = np.concatenate(([0.0], np.geomspace(0.05, max(max_batch, 0.1) * 1.05, _GRID_POINTS - 1)))
    steps = np.asarray(cost.decode_step_s(grid, grid * context))
    mean_service = float(service.mean())
    return GroupProfile(
        prefill_s=np.asarray(cost.prefill_s(prompts)), mean_service_s=mean_service,
        service_moment2_s2=float((service * service).mean()), batch_grid=grid, step_grid_s=steps,
        max_batch=max_batch, prefill_rps=1.0 / mean_service,
        decode_rps=cost.decode_tokens_per_s(problem.slo.tpot_s, context) / float(outputs.mean()))


def pair_profile(problem: Problem, prefill: Deployment, decode: Deployment) -> PairProfile:
    """KV transfer figures from `prefill` to `decode` (cached per problem); zero within one group."""
    cache = _PROFILES.setdefault(problem, {})
    key = ("pair", prefill.stages, decode.stages)
    if key not in cache:
        prompts = problem.lengths[0]
        if prefill.stages == decode.stages:
            cache[key] = PairProfile(kv_s=np.zeros_like(prompts), link_rps=math.inf, mean_kv_s=0.0)
        else:
            gbps, latency_s = kv_link(problem, prefill, decode)
            wire_bytes = kv_wire_bytes(problem.model, prompts, problem.kv_bits)
            kv_s = wire_bytes * 8 / (gbps * 1e9) + latency_s
            cache[key] = PairProfile(kv_s=kv_s, link_rps=gbps * 1e9 / 8 / float(wire_bytes.mean()),
                                     mean_kv_s=float(kv_s.mean()))
    return cache[key]


@dataclass(frozen=True)
class _DecodeState:
    ok: float  # P(TPOT met)
    tpot_p90_s: float
    mean_step_s: float


def _decode_state(profile: GroupProfile, rate_rps: float, mean_output: float, tpot_s: float,
                  stretch: float) -> _DecodeState:
    """Little's-law fixed point of the decode batch, then the chance its step stays within TPOT."""
    grid, steps = profile.batch_grid, profile.step_grid_s * stretch
    demand = rate_rps * mean_output * steps - grid  # > 0 while the batch is below its fixed point
    below = np.nonzero(demand <= 0)[0]
    if rate_rps <= 0:
        return _DecodeState(float(steps[0] <= tpot_s), float(steps[0]), float(steps[0]))
    if len(below) == 0 or below[0] == 0:
        return _DecodeState(0.0, math.inf, math.inf)
    k = below[0]
    batch = grid[k - 1] + (grid[k] - grid[k - 1]) * demand[k - 1] / (demand[k - 1] - demand[k])
    if batch > profile.max_batch:
        return _DecodeState(0.0, math.inf, math.inf)
    within = np.nonzero(steps <= tpot_s)[0]
    limit = min(float(np.interp(tpot_s, steps[within], grid[within])) if len(within) else -1.0,
                profile.max_batch)
    ok = 0.0 if limit <= 0 else _phi((limit - batch) / math.sqrt(max(batch, 1e-9)))
    p90_batch = batch + _Z90 * math.sqrt(batch)
    return _DecodeState(ok, float(np.interp(p90_batch, grid, steps)), float(np.interp(batch, grid, steps)))


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def estimate(problem: Problem, deployments: Mapping[int, Deployment], prefill_shares: Mapping[int, float],
             kv_shares: Mapping[tuple[int, int], float], rate_rps: float) -> Estimate:
    """Attainment and p90 TTFT/TPOT at `rate_rps` (see the module docstring)."""
    return _estimate(problem, deployments, prefill_shares, kv_shares, rate_rps, with_p90=True)


def _estimate(problem, deployments, prefill_shares, kv_shares, rate_rps: float, *, with_p90: bool) -> Estimate:
    slo, mean_output = problem.slo, float(problem.lengths[1].mean())
    profiles = {g: group_profile(problem, d) for g, d in deployments.items()}
    rho = {p: rate_rps * s * profiles[p].mean_service_s for p, s in prefill_shares.items()}
    decode_rate: dict[int, float] = {}
    for (_, d), s in kv_shares.items():
        decode_rate[d] = decode_rate.get(d, 0.0) + rate_rps * s
    decode = {}
    for d, rate in decode_rate.items():
        stretch = 1.0 / (1.0 - rho[d]) if deployments[d].role == "both" and rho.get(d, 0) < 1 else 1.0
        if deployments[d].role == "both" and rho.get(d, 0) >= 1:
            decode[d] = _DecodeState(0.0, math.inf, math.inf)
        else:
            decode[d] = _decode_state(profiles[d], rate, mean_output, slo.tpot_s, stretch)
    attained, ttft_parts = 0.0, []
    for (p, d), share in kv_shares.items():
        if share <= 0:
            continue
        pair = pair_profile(problem, deployments[p], deployments[d])
        fixed_s = profiles[p].prefill_s + pair.kv_s + _link_wait_s(pair, rate_rps * share)
        if deployments[p].role == "both" and math.isfinite(decode[d].mean_step_s):
            fixed_s = fixed_s + decode[d].mean_step_s / 2
        lam = rate_rps * prefill_shares[p]
        ttft_ok = _prefill_ok(profiles[p], lam, rho[p], slo.ttft_s - fixed_s)
        attained += share * ttft_ok * decode[d].ok
        if with_p90:
            ttft_parts.append((share, fixed_s + _wait_p90_s(profiles[p], lam, rho[p])))
    if not with_p90:
        return Estimate(attained, math.nan, math.nan)
    tpot = [(s, decode[d].tpot_p90_s) for d, s in _shares_by_decode(kv_shares).items()]
    return Estimate(min(1.0, attained), _weighted_p90(ttft_parts), _weighted_p90(
        [(s, np.array([v])) for s, v in tpot]))


def attainment(problem, deployments, prefill_shares, kv_shares, rate_rps: float) -> float:
    """Share of requests meeting both SLOs at `rate_rps` (no percentiles: the fast path)."""
    return _estimate(problem, deployments, prefill_shares, kv_shares, rate_rps, with_p90=False).slo_attainment


def goodput_rps(problem, deployments, prefill_shares, kv_shares, capacity_rps: float) -> float:
    """The highest rate whose attainment reaches slo.attainment (0 if not even a trickle does)."""
    target = problem.slo.attainment
    hi = 2.0 * capacity_rps if math.isfinite(capacity_rps) else 1e6
    if attainment(problem, deployments, prefill_shares, kv_shares, hi) >= target:
        return hi
    lo = hi * 1e-6
    if attainment(problem, deployments, prefill_shares, kv_shares, lo) < target:
        return 0.0
    for _ in range(GOODPUT_BISECTION_STEPS):
        mid = math.sqrt(lo * hi) if hi / lo > 4 else (lo + hi) / 2
        if attainment(problem, deployments, prefill_shares, kv_shares, mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def _prefill_ok(profile: GroupProfile, lam: float, rho: float, slack_s: np.ndarray) -> float:
    """Mean over the sample of P(queueing wait <= slack) in an M/G/1 prefill queue."""
    if rho >= 1:
        return 0.0
    if rho <= 0:
        return float((slack_s >= 0).mean())
    wait_s = lam * profile.service_moment2_s2 / (2 * (1 - rho))
    ok = 1.0 - rho * np.exp(-np.maximum(slack_s, 0.0) * rho / wait_s)
    return float(np.where(slack_s >= 0, ok, 0.0).mean())


def _wait_p90_s(profile: GroupProfile, lam: float, rho: float) -> float:
    if rho >= 1:
        return math.inf
    if rho <= 0.1:
        return 0.0
    wait_s = lam * profile.service_moment2_s2 / (2 * (1 - rho))
    return wait_s / rho * math.log(10 * rho)


def _link_wait_s(pair: PairProfile, rate_rps: float) -> float:
    """M/D/1 mean wait for the KV link (0 within one group)."""
    rho = rate_rps / pair.link_rps
    if rho >= 1:
        return math.inf
    return rho * pair.mean_kv_s / (2 * (1 - rho))


def _shares_by_decode(kv_shares: Mapping[tuple[int, int], float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for (_, d), s in kv_shares.items():
        out[d] = out.get(d, 0.0) + s
    return out


def _weighted_p90(parts: Sequence[tuple[float, np.ndarray]]) -> float:
    """90th percentile of a mixture: each part a share and an array of equally likely values."""
    parts = [(s, np.atleast_1d(v)) for s, v in parts if s > 0]
    if not parts:
        return math.inf
    values = np.concatenate([v for _, v in parts])
    weights = np.concatenate([np.full(len(v), s / len(v)) for s, v in parts])
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    i = int(np.searchsorted(cumulative, 0.9 * cumulative[-1]))
    return float(values[order][min(i, len(values) - 1)])
