"""The SLO estimator: TTFT/TPOT attainment of deployments under a routing, in well under a millisecond.

How it works (DistServe, OSDI 2024, section 4: per-phase queueing models):
  * Prompts are represented by NUM_QUANTILES quantiles of the problem's length sample; prefill latency
    and KV transfer time both grow with the prompt, so a request's unqueued TTFT is a per-quantile array.
  * Prefill group p receives Poisson arrivals at rate * x_p; it is an M/G/1 queue whose service time is
    the pipeline's prefill interval (P-K mean wait Wq = lam E[S^2] / 2(1-rho)), with the wait taken as
    P(W <= t) = 1 - rho exp(-t rho / Wq). A request meets TTFT when wait + prefill latency + KV transfer
    (plus that link's M/D/1 wait) <= the target. The KV transfer counts in TTFT because the first token
    reaches the client from the decode replica.
  * Decode group d holds N sequences on average, by Little's law the fixed point
    N = rate_d * E[output] * step(N) (step from the cost model at N * the time-weighted mean context).
    The number decoding is about Poisson, so P(TPOT met) = Phi((N_lim - N) / sqrt(N)), with N_lim the
    largest batch within TPOT and KV memory. No fixed point within memory = overloaded = 0.
  * A colocated ('both') group time-shares: its decode steps stretch by 1 / (1 - rho_prefill) and a
    prefill also waits half a decode step on average.
  * Attainment = sum over pairs of y_pd * P(TTFT met | p, d) * P(TPOT met | d).
Everything for one rate is a handful of numpy operations over (pairs, quantiles) and (groups, grid).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from swarm.plan.cost import group_cost, kv_link, kv_wire_bytes
from swarm.plan.parallel import Deployment
from swarm.plan.problem import Problem

NUM_QUANTILES = 100
GRID_POINTS = 64
_Z90 = 1.2816  # standard normal 90th percentile


@dataclass(frozen=True, eq=False)
class GroupProfile:
    """Rate-independent figures of one deployment over the problem's length sample."""

    prefill_s: np.ndarray  # (NUM_QUANTILES,) latency of each prompt quantile
    mean_service_s: float  # E[prefill interval] over the sample
    service_moment2_s2: float  # E[prefill interval^2]
    batch_grid: np.ndarray  # (GRID_POINTS,) mean number of decoding sequences
    step_grid_s: np.ndarray  # (GRID_POINTS,) decode step at that batch (time-weighted mean context)
    max_batch: float  # KV memory limit on the batch
    prefill_rps: float  # prefill capacity
    decode_rps: float  # decode capacity within the TPOT target


@dataclass(frozen=True, eq=False)
class PairProfile:
    kv_s: np.ndarray  # (NUM_QUANTILES,) KV transfer time of each prompt quantile
    link_rps: float  # requests/s the link carries at utilisation 1
    mean_kv_s: float


@dataclass(frozen=True)
class Estimate:
    slo_attainment: float
    ttft_p90_s: float
    tpot_p90_s: float


_PROFILES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prompt_quantiles(problem: Problem) -> np.ndarray:
    """NUM_QUANTILES prompt lengths standing for the workload (midpoint quantiles of its sample)."""
    cache = _PROFILES.setdefault(problem, {})
    if "quantiles" not in cache:
        levels = (np.arange(NUM_QUANTILES) + 0.5) / NUM_QUANTILES
        cache["quantiles"] = np.quantile(problem.lengths[0], levels)
    return cache["quantiles"]


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
    service = np.asarray(cost.prefill_interval_s(prompts))
    max_batch = cost.max_kv_tokens / context
    grid = np.concatenate(([0.0], np.geomspace(0.05, max(max_batch, 0.1) * 1.05, GRID_POINTS - 1)))
    mean_service = float(service.mean())
    return GroupProfile(
        prefill_s=np.asarray(cost.prefill_s(prompt_quantiles(problem))), mean_service_s=mean_service,
        service_moment2_s2=float((service * service).mean()), batch_grid=grid,
        step_grid_s=np.asarray(cost.decode_step_s(grid, grid * context)), max_batch=max_batch,
        prefill_rps=1.0 / mean_service,
        decode_rps=cost.decode_tokens_per_s(problem.slo.tpot_s, context) / float(outputs.mean()))


def pair_profile(problem: Problem, prefill: Deployment, decode: Deployment) -> PairProfile:
    """KV transfer figures from `prefill` to `decode` (cached per problem); zero within one group."""
    cache = _PROFILES.setdefault(problem, {})
    key = ("pair", prefill.stages, decode.stages)
    if key not in cache:
        quantiles = prompt_quantiles(problem)
        if prefill.stages == decode.stages:
            cache[key] = PairProfile(kv_s=np.zeros_like(quantiles), link_rps=math.inf, mean_kv_s=0.0)
        else:
            gbps, latency_s = kv_link(problem, prefill, decode)
            mean_bytes = float(kv_wire_bytes(problem.model, problem.mean_prompt_tokens, problem.kv_bits))
            kv_s = kv_wire_bytes(problem.model, quantiles, problem.kv_bits) * 8 / (gbps * 1e9) + latency_s
            cache[key] = PairProfile(kv_s=kv_s, link_rps=gbps * 1e9 / 8 / mean_bytes,
                                     mean_kv_s=mean_bytes * 8 / (gbps * 1e9) + latency_s)
    return cache[key]


class Scenario:
    """Deployments (by id) and the (prefill, decode) pairs KV may take, as arrays for fast estimates."""

    def __init__(self, problem: Problem, deployments: Mapping[int, Deployment],
                 pairs: list[tuple[int, int]]) -> None:
        self.problem, self.pairs = problem, pairs
        self.ids = sorted(deployments)
        index = {g: i for i, g in enumerate(self.ids)}
        profiles = [group_profile(problem, deployments[g]) for g in self.ids]
        pair_profiles = [pair_profile(problem, deployments[p], deployments[d]) for p, d in pairs]
        self.is_both = np.array([deployments[g].role == "both" for g in self.ids])
        self.pair_p = np.array([index[p] for p, _ in pairs], dtype=np.int64)
        self.pair_d = np.array([index[d] for _, d in pairs], dtype=np.int64)
        self.mean_service_s = np.array([pr.mean_service_s for pr in profiles])
        self.moment2_s2 = np.array([pr.service_moment2_s2 for pr in profiles])
        self.batch_grid = np.stack([pr.batch_grid for pr in profiles])
        self.step_grid_s = np.stack([pr.step_grid_s for pr in profiles])
        self.max_batch = np.array([pr.max_batch for pr in profiles])
        self.unqueued_ttft_s = np.stack([profiles[index[p]].prefill_s + pp.kv_s
                                         for (p, _), pp in zip(pairs, pair_profiles, strict=True)])
        self.link_rps = np.array([pp.link_rps for pp in pair_profiles])
        self.mean_kv_s = np.array([pp.mean_kv_s for pp in pair_profiles])
        self.prefill_rps = np.array([pr.prefill_rps for pr in profiles])
        self.decode_rps = np.array([pr.decode_rps for pr in profiles])
        self.mean_output_tokens = float(problem.lengths[1].mean())

    def zero_load_attainment(self) -> np.ndarray:
        """(pairs,) share of requests each pair would serve within both SLOs with no queueing."""
        slo = self.problem.slo
        ttft_ok = (self.unqueued_ttft_s <= slo.ttft_s).mean(axis=1)
        tpot_ok = self.step_grid_s[:, 1] <= slo.tpot_s
        return ttft_ok * tpot_ok[self.pair_d]

    def estimate(self, rate_rps: float, kv_shares: np.ndarray, *, with_p90: bool = True) -> Estimate:
        """Attainment (and p90 TTFT/TPOT) at `rate_rps` when pair k carries kv_shares[k] of requests."""
        slo = self.problem.slo
        n = len(self.ids)
        prefill_rate = rate_rps * np.bincount(self.pair_p, weights=kv_shares, minlength=n)
        decode_rate = rate_rps * np.bincount(self.pair_d, weights=kv_shares, minlength=n)
        rho = prefill_rate * self.mean_service_s
        with np.errstate(divide="ignore", invalid="ignore"):
            wait_s = np.where(rho < 1, prefill_rate * self.moment2_s2 / (2 * (1 - rho)), np.inf)
            stretch = np.where(self.is_both, 1.0 / np.maximum(1.0 - rho, 1e-12), 1.0)
        tpot_ok, tpot_p90_s, mean_step_s = self._decode(decode_rate, stretch, slo.tpot_s)
        tpot_ok = np.where(self.is_both & (rho >= 1), 0.0, tpot_ok)
        link_rho = rate_rps * kv_shares / self.link_rps
        with np.errstate(divide="ignore", invalid="ignore"):
            link_wait_s = np.where(link_rho < 1, link_rho * self.mean_kv_s / (2 * (1 - link_rho)), np.inf)
            colocated_wait_s = np.where(self.is_both, np.nan_to_num(mean_step_s / 2, posinf=np.inf), 0.0)
        fixed_s = self.unqueued_ttft_s + (link_wait_s + colocated_wait_s[self.pair_p])[:, None]
        ttft_ok = _wait_cdf(rho[self.pair_p], wait_s[self.pair_p], slo.ttft_s - fixed_s).mean(axis=1)
        attained = float(np.sum(kv_shares * ttft_ok * tpot_ok[self.pair_d]))
        if not with_p90:
            return Estimate(min(attained, 1.0), math.nan, math.nan)
        ttft_values = fixed_s + _wait_p90_s(rho, wait_s)[self.pair_p][:, None]
        ttft_p90 = _weighted_p90(ttft_values.ravel(), np.repeat(kv_shares, ttft_values.shape[1]))
        tpot_p90 = _weighted_p90(tpot_p90_s, np.bincount(self.pair_d, weights=kv_shares, minlength=n))
        return Estimate(min(attained, 1.0), ttft_p90, tpot_p90)

    def _decode(self, rate_rps: np.ndarray, stretch: np.ndarray, tpot_s: float):
        """Per group: P(TPOT met), p90 step and mean step at the Little's-law batch (arrays over groups)."""
        grid, steps = self.batch_grid, self.step_grid_s * stretch[:, None]
        demand = (rate_rps * self.mean_output_tokens)[:, None] * steps - grid  # > 0 below the fixed point
        settled = demand <= 0
        k = np.argmax(settled, axis=1)
        stable = settled.any(axis=1) & (k > 0)
        k = np.maximum(k, 1)
        rows = np.arange(len(k))
        d_lo, d_hi = demand[rows, k - 1], demand[rows, k]
        batch = grid[rows, k - 1] + (grid[rows, k] - grid[rows, k - 1]) * d_lo / np.where(stable, d_lo - d_hi, 1)
        batch = np.where(rate_rps > 0, batch, 0.0)
        stable = (stable | (rate_rps <= 0)) & (batch <= self.max_batch)
        within = steps <= tpot_s
        j = np.maximum(np.argmin(within, axis=1) - 1, 0)  # last grid point within TPOT
        all_within = within.all(axis=1)
        j = np.where(all_within, grid.shape[1] - 2, j)
        s_lo, s_hi = steps[rows, j], steps[rows, j + 1]
        frac = np.clip((tpot_s - s_lo) / np.maximum(s_hi - s_lo, 1e-15), 0.0, 1.0)
        limit = np.where(within[:, 0], grid[rows, j] + frac * (grid[rows, j + 1] - grid[rows, j]), -1.0)
        limit = np.minimum(limit, self.max_batch)
        z = (limit - batch) / np.sqrt(np.maximum(batch, 1e-9))
        ok = np.where(stable & (limit > 0), _phi(z), 0.0)
        p90 = _interp_rows(batch + _Z90 * np.sqrt(batch), grid, steps)
        mean = _interp_rows(batch, grid, steps)
        return ok, np.where(stable, p90, np.inf), np.where(stable, mean, np.inf)


def estimate(problem: Problem, deployments: Mapping[int, Deployment], kv_shares: Mapping[tuple[int, int], float],
             rate_rps: float) -> Estimate:
    """Attainment and p90 TTFT/TPOT of `deployments` (by id) at `rate_rps` under the given KV shares."""
    pairs = sorted(kv_shares)
    scenario = Scenario(problem, deployments, pairs)
    return scenario.estimate(rate_rps, np.array([kv_shares[p] for p in pairs], dtype=np.float64))


def _wait_cdf(rho: np.ndarray, wait_s: np.ndarray, slack_s: np.ndarray) -> np.ndarray:
    """P(M/G/1 wait <= slack), rows broadcast per pair: 1 - rho exp(-t rho / Wq) for t >= 0."""
    rho, wait_s = rho[:, None], wait_s[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        decay = np.exp(-np.maximum(slack_s, 0.0) * rho / np.where(wait_s > 0, wait_s, 1.0))
        ok = np.where(wait_s > 0, 1.0 - rho * decay, 1.0)
    return np.where((slack_s >= 0) & (rho < 1), ok, 0.0)


def _wait_p90_s(rho: np.ndarray, wait_s: np.ndarray) -> np.ndarray:
    """90th percentile of the wait under the same approximation (0 when rho <= 0.1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p90 = wait_s / rho * np.log(np.maximum(10 * rho, 1.0))
    return np.where(rho >= 1, np.inf, np.where(rho <= 0.1, 0.0, p90))


def _phi(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF (Abramowitz and Stegun 7.1.26 erf, error below 1.5e-7), vectorised."""
    x = np.abs(np.asarray(z, dtype=np.float64)) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


def _interp_rows(x: np.ndarray, grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row-wise linear interpolation of values(grid) at x, clamped to each row's grid (increasing)."""
    rows = np.arange(len(x))
    k = np.clip((grid < x[:, None]).sum(axis=1), 1, grid.shape[1] - 1)
    g_lo, g_hi = grid[rows, k - 1], grid[rows, k]
    frac = np.clip((x - g_lo) / np.maximum(g_hi - g_lo, 1e-15), 0.0, 1.0)
    return values[rows, k - 1] + frac * (values[rows, k] - values[rows, k - 1])


def _weighted_p90(values: np.ndarray, weights: np.ndarray) -> float:
    """90th percentile of values drawn with the given weights (inf when no weight)."""
    keep = weights > 0
    if not keep.any():
        return math.inf
    values, weights = values[keep], weights[keep]
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    i = int(np.searchsorted(cumulative, 0.9 * cumulative[-1]))
    return float(values[order][min(i, len(values) - 1)])
