"""The SLO estimator: TTFT/TPOT attainment of deployments under a routing, in well under a millisecond.

How it works (DistServe, OSDI 2024, section 4: per-phase queueing models, made to follow what the
simulator and the entry peer do; `python -m sims.validate_estimator` compares them group by group), over
NUM_REQUESTS (prompt, output) pairs of the workload stratified by prompt length; what does not depend on
the rate (each group's and pair's figures from the cost model) is computed once in `profiles.py`:
  * Prefill. Each prefill group's service time is its pipeline's prefill interval (a colocated group's:
    the whole latency). With orchestration (`problem.orchestrate`) the entry peer sends each prompt to
    the replica with the least outstanding prompt tokens per routing share x_g, in flight included, so
    a replica holding its prompts longer (a pipeline: latency T_g) gets less than x_g: `_dispatch`
    solves lam_g proportional to x_g / (W_g + T_g) (Little's law). The replicas then wait as servers of
    one pool: c = mu^2 / sum_g mu_g^2 effective servers (mu_g = 1 / E[S_g]; the count when alike), each
    at its own utilisation rho_g = lam_g E[S_g], solved as one server c times as fast: P(wait) =
    rho_g^(sqrt(2(c + 1)) - 1) (Sakasegawa's Erlang-C approximation), else a lognormal wait with that
    server's M/G/1 conditional moments (Pollaczek-Khinchine, Takacs); c = 1 is the M/G/1 queue exactly.
    Without orchestration (uniform routing, the ablation) each group is its own M/G/1 queue at
    rate * x_p. Prompts are prefilled in batches of everything queued, so a prompt that waited leaves
    with the prompts that queued behind it: the wait is stretched by 1 + rho_g (`_prefill_wait`).
    TTFT = wait + own prefill latency (+ blocking): the prefill replica computes the first token and
    sends it to the entry peer itself (as in DistServe, and as the simulator counts). Blocking: prompts
    cannot overtake each other in a pipeline, so one that enters behind a batch (latency T_b, about
    1 + rho_g prompts) is held (T_b - t)(pp - 1)/pp at the stages if T_b > t; with probability
    min(1, lam E[latency]) (Little's law) a batch is inside when it enters (`_blocking`): a two-point
    mixture (held up or not) of the TTFT distribution. Zero for one stage, at zero load, and when
    colocated.
  * Decode dispatch: among a prefill group's KV partners the entry peer picks the least KV load per
    pair share y_pd; N_d counts what every prefill group sends d, so each prefill group sends to its
    partners of least N_d / y_pd only and evens that out among them (a Wardrop equilibrium found by
    water-filling, `_decode_dispatch`): a decode group fed by many may get nothing from some.
  * Decode group d holds N sequences on average, by Little's law the fixed point
    N = rate_d * E[output] * step(N) (step from the cost model at N * the time-weighted mean context);
    the number decoding is about Poisson (sd sqrt N). A request's mean TPOT is step(N) plus its KV
    transfer spread over its o - 1 later tokens, slowed by 1 / (1 - rho_link) (transfers share a host
    link fairly: an M/G/1 processor-sharing queue, so a long prompt's KV is delayed in proportion to its
    size); linearising the step in the batch and its KV tokens
    (sd_step^2 = N (d_N step^2 + d_C step^2 var(context))):
        P(TPOT met) = Phi((TPOT - step(N) - kv / (o - 1)) / sd_step)
    and, with probability `blocked` the KV memory is full when it arrives and it first waits to be
    admitted (`_DecodeState`), the same with that wait spread over its o - 1 tokens.
    No fixed point within KV memory = overloaded = 0.
  * A colocated ('both') group time-shares (vLLM-like, prefill first): a prefill occupies the whole
    pipeline for its latency, steps stretch by 1 / (1 - rho_prefill) in the fixed point, a prefill
    waits half a decode step, and the stalls a request sees (the prefill backlog queued behind its own
    prompt, then compound-Poisson prefills over its decode lifetime) must fit in (o - 1)(TPOT - step).
  * Attainment = sum over pairs of y_pd * mean over requests of P(TTFT met) * P(TPOT met).
Everything for one rate is a few numpy operations over (active pairs, requests) and (groups, grid).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from swarm.plan.parallel import Deployment
from swarm.plan.problem import Problem
from swarm.plan.profiles import BATCH_FACTORS, group_profile, pair_profile, request_sample
from swarm.plan.queueing import phi, queue_wait, wait_cdf, wait_p90_s, weighted_p90

DISPATCH_ITERATIONS = 10  # damped fixed-point steps of the load-aware dispatch split (`Scenario._dispatch`)
MAX_WAIT_S = 1e4  # a saturated replica's wait, in the dispatch split
UNSTABLE_STEP_S = 1e3  # an overloaded decode group's step, in the decode dispatch split
_Z90 = 1.2816  # standard normal 90th percentile


@dataclass(frozen=True)
class Estimate:
    slo_attainment: float
    ttft_p90_s: float
    tpot_p90_s: float


@dataclass(frozen=True, eq=False)
class Scenario:
    """Deployments (by id) and the (prefill, decode) pairs KV may take, as arrays for fast estimates.

    Group arrays are indexed by position in `ids`; pair arrays by position in `pairs`.
    """

    problem: Problem
    pairs: list[tuple[int, int]]
    ids: list[int]
    is_both: np.ndarray  # (groups,)
    pair_p: np.ndarray  # (pairs,) group index of the prefill side
    pair_d: np.ndarray  # (pairs,) group index of the decode side
    mean_service_s: np.ndarray  # (groups,) E[S] of a prefill in this group's role
    moment2_s2: np.ndarray
    moment3_s3: np.ndarray
    batch_grid: np.ndarray  # (groups, GRID_POINTS)
    step_grid_s: np.ndarray  # (groups, GRID_POINTS)
    context_slope_grid: np.ndarray  # (groups, GRID_POINTS)
    max_batch: np.ndarray  # (groups,)
    prefill_s: np.ndarray  # (groups, requests)
    blocked_s: np.ndarray  # (groups, len(BATCH_FACTORS), requests) delay behind the batch ahead (0 colocated)
    blocked_share: np.ndarray  # (groups, len(BATCH_FACTORS), requests) P(the batch ahead holds it up)
    mean_latency_s: np.ndarray  # (groups,) E[prefill latency]: Little's law for prompts in the pipeline
    kv_s: np.ndarray  # (pairs, requests)
    link_rps: np.ndarray  # (pairs,)
    pair_link: np.ndarray  # (pairs,) index of the host link a pair loads (pairs on one link share it)

    @classmethod
    def build(cls, problem: Problem, deployments: Mapping[int, Deployment], pairs: list[tuple[int, int]]) -> Scenario:
        """Gather the (cached) profiles of the groups and pairs into arrays."""
        ids = sorted(deployments)
        index = {g: i for i, g in enumerate(ids)}
        profiles = [group_profile(problem, deployments[g]) for g in ids]
        pair_profiles = [pair_profile(problem, deployments[p], deployments[d]) for p, d in pairs]
        services = [pr.service(deployments[g].role) for g, pr in zip(ids, profiles, strict=True)]
        mean_service, moment2, moment3 = (np.array(m) for m in zip(*services, strict=True))
        return cls(
            problem=problem, pairs=pairs, ids=ids,
            is_both=np.array([deployments[g].role == "both" for g in ids]),
            pair_p=np.array([index[p] for p, _ in pairs], dtype=np.int64),
            pair_d=np.array([index[d] for _, d in pairs], dtype=np.int64),
            mean_service_s=mean_service, moment2_s2=moment2, moment3_s3=moment3,
            batch_grid=np.stack([pr.batch_grid for pr in profiles]),
            step_grid_s=np.stack([pr.step_grid_s for pr in profiles]),
            context_slope_grid=np.stack([pr.context_slope_grid for pr in profiles]),
            max_batch=np.array([pr.max_batch for pr in profiles]),
            prefill_s=np.stack([pr.prefill_s for pr in profiles]),
            blocked_s=np.stack([pr.blocked_s if deployments[g].role != "both" else np.zeros_like(pr.blocked_s)
                                for g, pr in zip(ids, profiles, strict=True)]),
            blocked_share=np.stack([pr.blocked_share if deployments[g].role != "both"
                                    else np.zeros_like(pr.blocked_share) for g, pr in zip(ids, profiles, strict=True)]),
            mean_latency_s=np.array([pr.mean_latency_s for pr in profiles]),
            kv_s=np.stack([pp.kv_s for pp in pair_profiles]),
            link_rps=np.array([pp.link_rps for pp in pair_profiles]),
            pair_link=_link_index([pp.link for pp in pair_profiles]))

    @cached_property
    def has_both(self) -> bool:
        return bool(self.is_both.any())

    @cached_property
    def group_rows(self) -> np.ndarray:
        return np.arange(len(self.ids))

    @cached_property
    def outputs(self) -> np.ndarray:
        return request_sample(self.problem)[1]

    @cached_property
    def per_token(self) -> np.ndarray:
        """1 / (o - 1) per request: spreads a delay of the second token over the later tokens."""
        return 1.0 / np.maximum(self.outputs - 1, 1)

    @cached_property
    def context_dispersion(self) -> float:
        """1 + var(context) / E[context]^2: the KV tokens of a Poisson(N) batch have variance N E[C^2], so the
        batch's KV fits its memory (max_batch E[C] tokens) with probability
        Phi((max_batch - N) / sqrt(N E[C^2] / E[C]^2)); long-tailed prompts (azure-code) overflow sooner."""
        problem = self.problem
        return 1.0 + problem.decode_context_variance / problem.decode_context_tokens ** 2

    @cached_property
    def mean_output_tokens(self) -> float:
        return float(self.problem.lengths[1].mean())

    def zero_load_attainment(self) -> np.ndarray:
        """(pairs,) share of requests each pair would serve within both SLOs with no queueing."""
        slo = self.problem.slo
        ttft_ok = self.prefill_s[self.pair_p] <= slo.ttft_s
        tpot_ok = self.step_grid_s[self.pair_d, :1] + self.kv_s * self.per_token <= slo.tpot_s
        return (ttft_ok & tpot_ok).mean(axis=1)

    def estimate(self, rate_rps: float, kv_shares: np.ndarray, *, with_p90: bool = True) -> Estimate:
        """Attainment (and p90 TTFT/TPOT) at `rate_rps` when pair k carries kv_shares[k] of requests."""
        slo, terms = self.problem.slo, self._terms(rate_rps, kv_shares)
        ttft_ok, tpot_ok = terms.ttft_cdf(slo.ttft_s), terms.tpot_cdf(slo.tpot_s)
        attained = min(float(np.dot(terms.shares, (ttft_ok * tpot_ok).mean(axis=1))), 1.0)
        if not with_p90:
            return Estimate(attained, math.nan, math.nan)
        weights = np.repeat(terms.shares / self.prefill_s.shape[1], self.prefill_s.shape[1])
        mean_blocked_s = terms.blocked_p * terms.blocked_delay_s + terms.prefill_admit_s[:, None]
        ttft_p90 = weighted_p90((terms.ttft_fixed_s + mean_blocked_s + wait_p90_s(
            terms.p_wait, terms.wait_mu, terms.wait_sigma)[:, None]).ravel(), weights)
        tpot_values = ((terms.step_s * terms.stretch + _Z90 * terms.spread_s)[:, None] + terms.delay_s
                       + np.where(terms.is_both_d, 0.0, terms.blocked)[:, None] * terms.admit_delay_s)
        tpot_p90 = weighted_p90(np.where(terms.decode_ok[:, None] > 0, tpot_values, np.inf).ravel(), weights)
        return Estimate(attained, ttft_p90, tpot_p90)

    def latency_terms(self, rate_rps: float, kv_shares: np.ndarray) -> LatencyTerms:
        """The per-(active pair, request) pieces of `estimate` at `rate_rps`, whose `ttft_cdf` and `tpot_cdf`
        give P(TTFT <= x) and P(TPOT <= x) at any threshold (what `sims.validate_estimator` compares)."""
        return self._terms(rate_rps, kv_shares)

    def _terms(self, rate_rps: float, kv_shares: np.ndarray) -> LatencyTerms:
        n = len(self.ids)
        active = np.flatnonzero(kv_shares > 0)
        shares, pair_p, pair_d = kv_shares[active], self.pair_p[active], self.pair_d[active]
        routed = rate_rps * np.bincount(pair_p, weights=shares, minlength=n)
        prefill_rate = self._dispatch(routed)
        with np.errstate(divide="ignore", invalid="ignore"):
            flow = rate_rps * shares * np.nan_to_num(prefill_rate / routed, nan=1.0)[pair_p]  # as dispatched
        flow = self._decode_dispatch(flow, shares, _one_hot(pair_p, n), _one_hot(pair_d, n), pair_p, pair_d)
        shares = flow / rate_rps
        decode_rate = rate_rps * np.bincount(pair_d, weights=shares, minlength=n)
        rho = prefill_rate * self.mean_service_s
        link_load = rate_rps * shares / self.link_rps[active]
        link_rho = np.bincount(self.pair_link[active], weights=link_load, minlength=len(self.pairs))[
            self.pair_link[active]]
        p_wait, wait_s, wait_mu, wait_sigma = self._prefill_wait(prefill_rate)
        with np.errstate(divide="ignore", invalid="ignore"):
            link_slowdown = np.where(link_rho < 1, 1.0 / (1.0 - link_rho), np.inf)
            stretch = np.where(self.is_both, 1.0 / np.maximum(1.0 - rho, 1e-12), 1.0)
        decode = self._decode(decode_rate, stretch)
        delay_s = self.kv_s[active] * link_slowdown[:, None] * self.per_token  # (active, requests)
        blocked_p, blocked_delay_s = (a[pair_p] for a in self._blocking(prefill_rate))
        ttft_fixed_s = self.prefill_s[pair_p]
        if self.has_both:
            ttft_fixed_s = ttft_fixed_s + np.where(self.is_both, decode.step_s * stretch / 2, 0.0)[pair_p, None]
        stalls = None
        if self.has_both:
            stalls = (self, prefill_rate, rho, wait_s, decode.step_s, stretch)
        return LatencyTerms(
            shares=shares, pair_p=pair_p, pair_d=pair_d, p_wait=p_wait[pair_p], wait_mu=wait_mu[pair_p],
            wait_sigma=wait_sigma[pair_p], ttft_fixed_s=ttft_fixed_s, blocked_p=blocked_p,
            blocked_delay_s=blocked_delay_s, step_s=decode.step_s[pair_d],
            stretch=stretch[pair_d], spread_s=decode.spread_s[pair_d], decode_ok=decode.ok[pair_d],
            blocked=decode.blocked[pair_d], admit_delay_s=decode.admit_wait_s[pair_d, None] * self.per_token,
            admit_wait_s=decode.admit_wait_s[pair_d], delay_s=delay_s, is_both_d=self.is_both[pair_d],
            stalls=stalls)

    @cached_property
    def pooled(self) -> bool:
        """Load-aware dispatch (the entry peer sends each prompt to the least-loaded prefill replica) when
        the plan is orchestrated; uniform routing (the ablation) is fixed shares and independent queues."""
        return bool(self.problem.orchestrate)

    def _decode_dispatch(self, flow: np.ndarray, plan_shares: np.ndarray, to_p: np.ndarray, to_d: np.ndarray,
                         pair_p: np.ndarray, pair_d: np.ndarray) -> np.ndarray:
        """(..., pairs) request rates per (prefill, decode) pair as load-aware dispatch splits `flow`.

        When a prompt is prefilled, the entry peer (and the simulator) sends it to the KV partner d of its
        prefill group p with the least live load (KV tokens, about N_d sequences) per pair share y_pd. N_d
        counts every request d holds, whoever prefilled it, so a decode group that other prefill groups
        also feed looks busier to p than its share with p says: dispatch is a Wardrop equilibrium in which
        p sends only to the partners of least N_d / y_pd, and evens N_d / y_pd out among those it uses
        (when d is fed by many prefill groups with small y_pd, p may send it nothing at all). With
        N_d = lam_d E[o] step_d (Little's law, step_d from `_decode` at the current split; an unstable
        group counts as very slow), p's best split against the others' flows B_d is water-filling,
        f_pd = max(0, m_p a_pd - B_d) with a_pd = y_pd / (E[o] step_d) and the level m_p that sends all
        of p's rate (`_water_fill`); damped Jacobi iteration over the prefill groups."""
        if not self.pooled or self.has_both:
            return flow
        per_prefill = (flow @ to_p)[..., pair_p]
        ones = np.ones(flow.shape[:-1] + (to_d.shape[1],))
        same_prefill = pair_p[:, None] == pair_p[None, :]
        for _ in range(DISPATCH_ITERATIONS // 2):
            into_d = flow @ to_d
            decode = self._decode(into_d, ones)
            step_s = np.where(decode.ok > 0, decode.step_s, UNSTABLE_STEP_S)
            pull = plan_shares / step_s[..., pair_d]  # a_pd up to the constant E[o]
            others = into_d[..., pair_d] - flow  # B_d: what the other pairs send to d
            flow = 0.5 * (flow + _water_fill(per_prefill, pull, others, same_prefill))
        return flow

    def _prefill_wait(self, prefill_rate: np.ndarray) -> tuple[np.ndarray, ...]:
        """(P(wait), mean wait, mu, sigma) per group until a prompt's batch is done, less its own latency.

        A replica prefills in batches (every queued prompt, up to the batch token limit, when its entry
        stage frees), so a prompt that waited W leaves with the prompts that arrived behind it meanwhile
        (about lam_g W of them, E[S_g] each): the FIFO wait (`_fifo_wait`) stretched by (1 + rho_g)."""
        p_wait, wait_s, mu, sigma = self._fifo_wait(prefill_rate)
        stretch = 1.0 + np.minimum(prefill_rate * self.mean_service_s, 1.0)
        return p_wait, wait_s * stretch, mu + np.log(stretch), sigma

    def _fifo_wait(self, prefill_rate: np.ndarray) -> tuple[np.ndarray, ...]:
        """(P(wait), mean wait, mu, sigma) per group of a FIFO prefill queue of single prompts, (..., groups).

        Independent queues (not pooled): each group is its own M/G/1 queue at its routed rate. Pooled
        (load-aware dispatch): each group waits as a server of an M/G/c pool (`queue_wait`) of
        c = `_servers` effective servers, all at the group's own utilisation rho_g = lam_g E[S_g]: one
        server c times as fast, T = S_g / c, E[T^k] = E[S_g^k] / c^k, at rate c lam_g."""
        if not self.pooled:
            return queue_wait(prefill_rate, self.mean_service_s, self.moment2_s2, self.moment3_s3)
        c = self._servers(prefill_rate)
        return queue_wait(prefill_rate * c, self.mean_service_s / c, self.moment2_s2 / c ** 2,
                          self.moment3_s3 / c ** 3, c)

    def _servers(self, prefill_rate: np.ndarray) -> np.ndarray:
        """(..., 1) effective number of servers of the pool of groups with a share: mu^2 / sum mu_g^2."""
        speed = np.where(prefill_rate > 0, 1.0 / self.mean_service_s, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            servers = speed.sum(axis=-1, keepdims=True) ** 2 / (speed ** 2).sum(axis=-1, keepdims=True)
        return np.nan_to_num(servers, nan=1.0)

    def _dispatch(self, prefill_rate: np.ndarray) -> np.ndarray:
        """(..., groups) prefill rates as load-aware dispatch splits the routed ones (`prefill_rate`).

        The entry peer (and the simulator) sends a prompt to the replica with the least outstanding
        prompt tokens per unit of routing share x_g, counting tokens queued and in flight. By Little's
        law a replica holds lam_g E[tokens] (W_g + T_g) of them (W_g its wait, T_g its mean prefill
        latency plus its mean delay behind the batch ahead, `_held_s`: a pipeline holds several prompts
        at once, and longer when they block each other), so dispatch evens out
        lam_g (W_g + T_g) / x_g: lam_g is proportional to x_g / (W_g + T_g), found by damped fixed-point
        iteration. Pipelines (long T_g) get less than their share, one-stage replicas more; a replica
        near saturation (W_g large) sheds load to the others. Uniform routing and plans with colocated
        groups keep the routed rates."""
        if not self.pooled or self.has_both:
            return prefill_rate
        total = prefill_rate.sum(axis=-1, keepdims=True)
        share = prefill_rate / np.where(total > 0, total, 1.0)
        used = share > 0
        # the mean FIFO wait of `_fifo_wait` (pooled branch), inlined: rho^e lam E[S^2] / (2 c rho (1 - rho))
        servers = self._servers(prefill_rate)
        exponent = np.sqrt(2.0 * (servers + 1.0)) - 1.0
        half_moment2 = self.moment2_s2 / (2.0 * servers)
        mean_s = np.where(used, self.mean_service_s, 0.0)
        rate = prefill_rate
        for _ in range(DISPATCH_ITERATIONS):
            rho = np.minimum(rate * mean_s, 1.0 - 1e-9)
            wait_s = np.minimum(rho ** (exponent - 1.0) * rate * half_moment2 / (1.0 - rho), MAX_WAIT_S)
            pull = np.where(used, share / (wait_s + self._held_s(rate)), 0.0)
            pull_sum = pull.sum(axis=-1, keepdims=True)
            rate = 0.5 * (rate + total * pull / np.where(pull_sum > 0, pull_sum, 1.0))
        return rate

    def _blocking(self, prefill_rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., groups, requests) (P(held up behind the batch ahead), the delay when it is) in a prefill pipeline.

        A batch is inside when a prompt enters with probability `_queued_ahead`; it holds the prompt up
        when it is longer (P(T_b > t), `_blocked_share`), by E[(T_b - t)+ | T_b > t] (pp - 1) / pp
        (`_blocked_s` / `_blocked_share`). Under load a batch carries the prompts that queued while it
        waited, about 1 + rho_g of them (as in `_prefill_wait`), so T_b = (1 + rho_g) T, interpolated on
        the profile's BATCH_FACTORS. The delay is all or nothing, not its mean for everyone: TTFT's tail
        is the prompts that entered behind a long batch."""
        position = np.minimum(prefill_rate * self.mean_service_s, 1.0) * (len(BATCH_FACTORS) - 1)
        lower = np.minimum(position.astype(np.int64), len(BATCH_FACTORS) - 2)
        frac = (position - lower)[..., None]
        rows = self.group_rows
        expected = self.blocked_s[rows, lower] * (1 - frac) + self.blocked_s[rows, lower + 1] * frac
        share = self.blocked_share[rows, lower] * (1 - frac) + self.blocked_share[rows, lower + 1] * frac
        with np.errstate(divide="ignore", invalid="ignore"):
            delay_s = np.where(share > 0, expected / np.where(share > 0, share, 1.0), 0.0)
        return self._queued_ahead(prefill_rate)[..., None] * share, delay_s

    @cached_property
    def mean_blocked_s(self) -> np.ndarray:
        """(groups, len(BATCH_FACTORS)) E over requests of the delay behind a batch ahead (if one is inside)."""
        return self.blocked_s.mean(axis=-1)

    def _held_s(self, prefill_rate: np.ndarray) -> np.ndarray:
        """(..., groups) how long a replica holds a prompt once it has entered: its mean prefill latency plus
        the mean delay behind the batch ahead (`_blocking`, 0 for one stage), at these prefill rates."""
        position = np.minimum(prefill_rate * self.mean_service_s, 1.0) * (len(BATCH_FACTORS) - 1)
        lower = np.minimum(position.astype(np.int64), len(BATCH_FACTORS) - 2)
        frac, rows = position - lower, self.group_rows
        blocked = self.mean_blocked_s[rows, lower] * (1 - frac) + self.mean_blocked_s[rows, lower + 1] * frac
        return self.mean_latency_s + self._queued_ahead(prefill_rate) * blocked

    def _queued_ahead(self, prefill_rate: np.ndarray) -> np.ndarray:
        """P(another prompt is inside the pipeline when one enters): Little's law, lam E[latency], capped at 1."""
        return np.minimum(prefill_rate * self.mean_latency_s, 1.0)

    def _decode(self, rate_rps: np.ndarray, stretch: np.ndarray) -> _DecodeState:
        """Per group: the Little's-law batch (steps stretched by colocated prefills), step and slope there.

        `rate_rps` and `stretch` are (groups,) or (rates, groups); the result has the same shape."""
        grid, steps, rows = self.batch_grid, self.step_grid_s, self.group_rows
        coef = rate_rps * self.mean_output_tokens * stretch  # demand(N) = coef step(N) - N
        k = np.argmax(coef[..., None] * steps <= grid, axis=-1)  # first grid batch at or past the fixed point
        stable = (k > 0) & (coef * steps[rows, k] - grid[rows, k] <= 0)
        k = np.maximum(k, 1)
        g_lo, g_hi, lo_s, hi_s = grid[rows, k - 1], grid[rows, k], steps[rows, k - 1], steps[rows, k]
        d_lo, d_hi = coef * lo_s - g_lo, coef * hi_s - g_hi
        frac = d_lo / np.where(stable, d_lo - d_hi, 1.0)
        idle = rate_rps <= 0
        batch = np.where(idle, 0.0, g_lo + (g_hi - g_lo) * frac)
        step_s = np.where(idle, steps[:, 0], lo_s + (hi_s - lo_s) * frac)
        slope = (hi_s - lo_s) / (g_hi - g_lo)
        context_slope = self.context_slope_grid[rows, k]
        # N ~ Poisson, contexts iid: var(step) = N (slope^2 + (d step / d context)^2 var(context))
        spread = np.sqrt(batch * (slope ** 2 + context_slope ** 2 * self.problem.decode_context_variance))
        stable = (stable | idle) & (batch <= self.max_batch)
        excess = np.sqrt(batch * self.context_dispersion)  # sd of the batch's KV, in mean sequences
        blocked = 1.0 - phi(_ratio(self.max_batch - batch, excess))
        with np.errstate(divide="ignore", invalid="ignore"):  # M/M/c: 1 / (c mu - lam), mu = rate / batch
            admit_wait_s = np.where(idle, 0.0, batch / (np.maximum(rate_rps, 1e-12)
                                                        * np.maximum(self.max_batch - batch, 1e-9)))
        return _DecodeState(batch=batch, step_s=step_s, spread_s=spread, ok=stable.astype(np.float64),
                            blocked=blocked, admit_wait_s=admit_wait_s)

    def attainments(self, rates_rps: np.ndarray, kv_shares: np.ndarray) -> np.ndarray:
        """(rates,) attainment at each rates_rps[i] when pair k carries kv_shares[i, k]: `estimate` for
        many rates in one pass over (rates, pairs, requests) arrays (the goodput search probes a grid)."""
        rates = np.asarray(rates_rps, dtype=np.float64)
        if self.has_both:  # colocated groups: the stall model is per rate
            return np.array([self.estimate(float(r), s, with_p90=False).slo_attainment
                             for r, s in zip(rates, kv_shares, strict=True)])
        slo, n = self.problem.slo, len(self.ids)
        active = np.flatnonzero((kv_shares > 0).any(axis=0))
        shares, pair_p, pair_d = kv_shares[:, active], self.pair_p[active], self.pair_d[active]
        flow = rates[:, None] * shares  # (rates, active)
        to_p, to_d = _one_hot(pair_p, n), _one_hot(pair_d, n)  # (active, groups)
        routed = flow @ to_p
        prefill_rate = self._dispatch(routed)  # (rates, groups)
        with np.errstate(divide="ignore", invalid="ignore"):
            flow = flow * np.nan_to_num(prefill_rate / routed, nan=1.0)[:, pair_p]  # as dispatched
        flow = self._decode_dispatch(flow, shares, to_p, to_d, pair_p, pair_d)
        shares = flow / rates[:, None]
        decode_rate = flow @ to_d
        rho = prefill_rate * self.mean_service_s
        links = _one_hot(self.pair_link[active], len(self.pairs))  # (active, links)
        link_rho = ((flow / self.link_rps[active]) @ links) @ links.T  # (rates, active)
        p_wait, _, wait_mu, wait_sigma = self._prefill_wait(prefill_rate)
        with np.errstate(divide="ignore", invalid="ignore"):
            link_slowdown = np.where(link_rho < 1, 1.0 / (1.0 - link_rho), np.inf)
        decode = self._decode(decode_rate, np.ones_like(rho))
        delay_s = self.kv_s[active] * link_slowdown[..., None] * self.per_token  # (rates, active, requests)
        senders, sender_of_pair = np.unique(pair_p, return_inverse=True)  # TTFT depends on the prefill group only
        slack_s = slo.ttft_s - self.prefill_s[senders]
        wait = p_wait[:, senders], wait_mu[:, senders], wait_sigma[:, senders]
        blocked_p, blocked_delay_s = (a[:, senders] for a in self._blocking(prefill_rate))
        ttft_ok = ((1.0 - blocked_p) * wait_cdf(*wait, slack_s)
                   + blocked_p * wait_cdf(*wait, slack_s - blocked_delay_s))[:, sender_of_pair]  # (rates, active, requests)
        inverse_spread = 1.0 / np.maximum(decode.spread_s, 1e-12)
        tpot_slack_s = (slo.tpot_s - decode.step_s)[:, pair_d, None] - delay_s
        z = tpot_slack_s * inverse_spread[:, pair_d, None]
        blocked = decode.blocked[:, pair_d, None]
        admit_s = decode.admit_wait_s[:, pair_d, None] * self.per_token
        tpot_ok = (phi(z) * (1.0 - blocked * _exp_tail(np.maximum(tpot_slack_s, 0.0), admit_s))
                   * decode.ok[:, pair_d, None])
        per_pair = (ttft_ok * tpot_ok).mean(axis=-1)  # (rates, active)
        per_pair[np.isnan(per_pair)] = 0.0
        return np.minimum((np.where(shares > 0, shares, 0.0) * per_pair).sum(axis=-1), 1.0)

    def _stalls_ok(self, prefill_rate: np.ndarray, rho: np.ndarray, wait_s: np.ndarray, step_s: np.ndarray,
                   stretch: np.ndarray, tpot_s: float) -> np.ndarray:
        """(groups, requests): P(a colocated request's prefill stalls fit in (o - 1) * (tpot_s - step)).

        Prefills go first. When a request's own prefill ends, the prompts queued behind it (about
        lam Wq of them) are prefilled before it decodes: a backlog that drains in about rho Wq / (1 - rho)
        (taken as exponential). Then, over its D = (o - 1) * step * stretch seconds of decoding, new
        prefills (Poisson, service S) stall it: about normal, mean lam D E[S], variance lam D E[S^2].
        """
        later_tokens = 1.0 / self.per_token[None, :]
        lifetime_s = later_tokens * (step_s * stretch)[:, None]
        budget_s = later_tokens * (tpot_s - step_s[:, None])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            backlog_s = np.where(rho < 1, rho * wait_s / (1 - rho), np.inf)[:, None]
        mean_s = (prefill_rate * self.mean_service_s)[:, None] * lifetime_s + backlog_s
        std_s = np.sqrt(prefill_rate[:, None] * self.moment2_s2[:, None] * lifetime_s + backlog_s ** 2)
        return phi(_ratio(budget_s - mean_s, std_s))


@dataclass(frozen=True, eq=False)
class LatencyTerms:
    """An estimate's pieces per active pair (rows) and sampled request (columns), at one rate."""

    shares: np.ndarray  # (pairs,) share of requests each active pair carries
    pair_p: np.ndarray  # (pairs,) group index of the prefill side
    pair_d: np.ndarray  # (pairs,) group index of the decode side
    p_wait: np.ndarray  # (pairs,) P(a prompt waits in the prefill queue)
    wait_mu: np.ndarray  # (pairs,) lognormal of the wait, given it waits
    wait_sigma: np.ndarray
    ttft_fixed_s: np.ndarray  # (pairs, requests) TTFT without the queue wait and the pipeline's blocking
    blocked_p: np.ndarray  # (pairs, requests) P(held up behind the batch ahead in the prefill pipeline)
    blocked_delay_s: np.ndarray  # (pairs, requests) how long, when it is
    step_s: np.ndarray  # (pairs,) decode step (not stretched)
    stretch: np.ndarray  # (pairs,) colocated prefills stretch the steps by this
    spread_s: np.ndarray  # (pairs,) standard deviation of the step
    decode_ok: np.ndarray  # (pairs,) 1 if the decode batch is stable within KV memory, else 0
    blocked: np.ndarray  # (pairs,) P(a sequence waits to be admitted for KV memory)
    admit_delay_s: np.ndarray  # (pairs, requests) that wait spread over the later tokens
    admit_wait_s: np.ndarray  # (pairs,) the mean wait itself, when it waits
    delay_s: np.ndarray  # (pairs, requests) KV transfer (and link wait) spread over the later tokens
    is_both_d: np.ndarray  # (pairs,) the decode side is colocated
    stalls: tuple | None  # what `Scenario._stalls_ok` needs, when a group is colocated

    @property
    def prefill_admit_s(self) -> np.ndarray:
        """(pairs,) mean KV-memory wait before a colocated prefill (0 for a phase-split pair)."""
        return np.where(self.is_both_d, self.blocked * self.admit_wait_s, 0.0)

    def ttft_cdf(self, ttft_s: float) -> np.ndarray:
        """(pairs, requests) P(TTFT <= ttft_s). A colocated replica prefills a prompt only when its KV fits
        beside the decoding sequences' (`sims.replica`), so there the KV-memory wait (probability
        `blocked`, exponential of mean `admit_wait_s`) comes before the first token, not after it."""
        wait, slack_s = (self.p_wait, self.wait_mu, self.wait_sigma), ttft_s - self.ttft_fixed_s
        ok = ((1.0 - self.blocked_p) * wait_cdf(*wait, slack_s)
              + self.blocked_p * wait_cdf(*wait, slack_s - self.blocked_delay_s))
        if self.is_both_d.any():
            blocked = np.where(self.is_both_d, self.blocked, 0.0)[:, None]
            ok = ok * (1.0 - blocked * _exp_tail(np.maximum(slack_s, 0.0), self.admit_wait_s[:, None]))
        return ok

    def tpot_cdf(self, tpot_s: float) -> np.ndarray:
        """(pairs, requests) P(TPOT <= tpot_s): the step's normal spread, memory, and colocated stalls."""
        slack_s = tpot_s - self.step_s[:, None] - self.delay_s
        spread_s, blocked = self.spread_s[:, None], np.where(self.is_both_d, 0.0, self.blocked)[:, None]
        admitted = 1.0 - blocked * _exp_tail(np.maximum(slack_s, 0.0), self.admit_delay_s)
        ok = phi(_ratio(slack_s, spread_s)) * admitted * self.decode_ok[:, None]
        if self.stalls is not None:
            scenario, *args = self.stalls
            stalls_ok = scenario._stalls_ok(*args, tpot_s)
            ok = ok * np.where(self.is_both_d[:, None], stalls_ok[self.pair_d], 1.0)
        return ok


@dataclass(frozen=True)
class _DecodeState:
    """The decode tier per group. KV memory: the batch's KV tokens are compound Poisson (N sequences of
    context C), so a newcomer finds them over capacity with probability
    blocked = 1 - Phi((max_batch - N) / sqrt(N E[C^2] / E[C]^2)) and then waits to be admitted until
    that excess (about one sd, sqrt(N E[C^2] / E[C]^2) sequences) has finished, at the departure rate:
    admit_wait = sd / rate. The wait is spread over its o - 1 later tokens (short outputs suffer)."""

    batch: np.ndarray  # mean decoding sequences per group
    step_s: np.ndarray  # decode step at that batch (not stretched)
    spread_s: np.ndarray  # standard deviation of the step (batch size and contexts fluctuate)
    ok: np.ndarray  # 1 when the batch is stable within KV memory, else 0
    blocked: np.ndarray  # P(a new sequence waits for KV memory)
    admit_wait_s: np.ndarray  # its wait, when it does


def estimate(problem: Problem, deployments: Mapping[int, Deployment], kv_shares: Mapping[tuple[int, int], float],
             rate_rps: float) -> Estimate:
    """Attainment and p90 TTFT/TPOT of `deployments` (by id) at `rate_rps` under the given KV shares."""
    pairs = sorted(kv_shares)
    scenario = Scenario.build(problem, deployments, pairs)
    return scenario.estimate(rate_rps, np.array([kv_shares[p] for p in pairs], dtype=np.float64))


def _link_index(links: list[tuple[str, str] | None]) -> np.ndarray:
    """Pairs on the same host link get the same index; each pair inside one group gets its own."""
    index: dict[object, int] = {}
    return np.array([index.setdefault(link if link is not None else ("pair", k), len(index))
                     for k, link in enumerate(links)], dtype=np.int64)


def _one_hot(index: np.ndarray, size: int) -> np.ndarray:
    """(len(index), size) matrix with a 1 at (i, index[i]): sums by group as a matrix product."""
    matrix = np.zeros((len(index), size))
    matrix[np.arange(len(index)), index] = 1.0
    return matrix


def _water_fill(total: np.ndarray, pull: np.ndarray, others: np.ndarray, same: np.ndarray) -> np.ndarray:
    """(..., pairs) f = max(0, m pull - others), with one level m per prefill group such that its pairs'
    f sum to `total` (each pair's group's rate; `same[k, j]`: pairs k and j share a prefill group).

    The level is the smallest of the candidates m_k = (total + sum others_j) / sum pull_j over the pairs j
    of the group whose threshold others_j / pull_j is at most pair k's: every candidate's linear sum
    bounds the (convex) water-filling sum from below, so it is at or above the level, and the candidate of
    the true active set equals it. Pairs with no pull get nothing."""
    with np.errstate(divide="ignore", invalid="ignore"):
        threshold = np.where(pull > 0, others / np.where(pull > 0, pull, 1.0), np.inf)
        below = same & (threshold[..., None, :] <= threshold[..., :, None])  # (..., k, j): j active with k
        candidate = (total + (below * others[..., None, :]).sum(-1)) / (below * pull[..., None, :]).sum(-1)
        candidate = np.where(np.isfinite(threshold) & (candidate > 0), candidate, np.inf)
        level = np.where(same, candidate[..., None, :], np.inf).min(-1)  # (..., k): the level of k's group
        fill = np.where(np.isfinite(level), np.maximum(level * pull - others, 0.0), 0.0)
    return np.where(total > 0, fill, 0.0)


def _exp_tail(slack_s: np.ndarray, mean_s: np.ndarray) -> np.ndarray:
    """P(an exponential wait of mean `mean_s` exceeds `slack_s`) (1 where the slack is 0 or less)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(slack_s > 0, np.exp(-slack_s / np.maximum(mean_s, 1e-12)), 1.0)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator for a normal z-score; a zero spread gives +-a huge z (a step)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return numerator / np.maximum(denominator, 1e-12)
