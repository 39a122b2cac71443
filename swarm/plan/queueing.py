"""Queueing and normal-distribution helpers of the SLO estimator, vectorised over numpy arrays.

M/G/c waits (Pollaczek-Khinchine, Takacs, Sakasegawa's Erlang-C approximation) with a lognormal
conditional wait, the standard normal CDF by table, and a weighted percentile.
"""

from __future__ import annotations

import math

import numpy as np


def lognormal(mean_s: np.ndarray, moment2_s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the lognormal with these first two moments (sigma at least 0.2)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.log(np.maximum(moment2_s2 / (mean_s * mean_s), 1.04))
        return np.log(mean_s) - variance / 2, np.sqrt(variance)


def wait_cdf(p_wait: np.ndarray, mu: np.ndarray, sigma: np.ndarray, slack_s: np.ndarray) -> np.ndarray:
    """P(prefill wait <= slack), rows per pair: no wait with probability 1 - p_wait, else lognormal
    (mu, sigma from `queue_wait`); p_wait >= 1 means overloaded (never met)."""
    p_wait, mu, sigma = p_wait[..., None], mu[..., None], sigma[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.log(np.maximum(slack_s, 1e-300)) - mu) / sigma
        waited_ok = np.where(p_wait > 0, phi(z), 1.0)
        return np.where((slack_s >= 0) & (p_wait < 1), 1.0 - p_wait + p_wait * waited_ok, 0.0)


def wait_p90_s(p_wait: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """90th percentile of the wait under the same model (0 when p_wait <= 0.1)."""
    level = np.clip(1.0 - 0.1 / np.maximum(p_wait, 1e-12), PHI_TABLE[0], PHI_TABLE[-1])
    with np.errstate(invalid="ignore", over="ignore"):
        p90 = np.exp(mu + sigma * np.interp(level, PHI_TABLE, PHI_Z))
    return np.where(p_wait >= 1, np.inf, np.where(p_wait <= 0.1, 0.0, p90))


def queue_wait(rate: np.ndarray, moment1: np.ndarray, moment2: np.ndarray, moment3: np.ndarray,
                servers: np.ndarray | float = 1.0) -> tuple[np.ndarray, ...]:
    """(P(wait), mean wait, mu, sigma) of an M/G/c queue served as one server c times as fast.

    rho = rate E[T] with T the pooled service time (moments E[T^k]). c = 1 is M/G/1 exactly: P(wait) = rho,
    Wq = lam E[T^2] / 2(1 - rho) (Pollaczek-Khinchine), E[W^2] = 2 Wq^2 + lam E[T^3] / 3(1 - rho) (Takacs),
    and the conditional wait W | W > 0 (mean Wq / rho, second moment E[W^2] / rho) is taken as lognormal,
    which keeps the heavy tail long prompts give the queue. For c servers the conditional wait keeps that
    shape (in M/M/c it is exactly the fast single server's) and only P(wait) changes, to
    rho^(sqrt(2 (c + 1)) - 1) (Sakasegawa's Erlang-C approximation; exact at c = 1), so the mean wait is
    Allen-Cunneen's P(wait) (1 + cs^2) / 2 E[S] / (c (1 - rho)) with E[S] = c E[T].
    """
    rho = rate * moment1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        stable = rho < 1
        cond_s = np.where(stable, rate * moment2 / (2 * rho * (1 - rho)), np.inf)  # E[W | W > 0]
        cond2_s2 = 2 * rho * cond_s ** 2 + rate * moment3 / (3 * rho * (1 - rho))
        mu, sigma = lognormal(cond_s, cond2_s2)
        exponent = np.sqrt(2.0 * (np.asarray(servers) + 1.0)) - 1.0
        p_wait = np.where(stable, np.power(np.maximum(rho, 0.0), exponent), np.inf)
        wait_s = np.where(stable, p_wait * cond_s, np.inf)
    return p_wait, np.nan_to_num(wait_s, nan=0.0, posinf=np.inf), mu, sigma


def phi_exact(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF (Abramowitz and Stegun 7.1.26 erf, error below 1.5e-7), vectorised."""
    z = np.asarray(z, dtype=np.float64)
    x = np.minimum(np.abs(z), 40.0) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return 0.5 * (1.0 + np.sign(z) * (1.0 - poly * np.exp(-x * x)))


PHI_STEP = 0.005
PHI_Z = np.arange(-8.0, 8.0 + PHI_STEP / 2, PHI_STEP)
PHI_TABLE = phi_exact(PHI_Z)


def phi(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF from a uniform table (linear interpolation, error below 1e-6; NaN gives 0)."""
    position = np.fmax(z, -8.0, out=np.empty(np.shape(z)))  # fmax turns NaN into -8
    np.minimum(position, 8.0, out=position)
    position += 8.0
    position *= 1.0 / PHI_STEP
    index = np.minimum(position.astype(np.intp), len(PHI_TABLE) - 2)
    position -= index  # the fraction of a table step
    position *= PHI_RISE[index]
    position += PHI_TABLE[index]
    return position


PHI_RISE = np.diff(PHI_TABLE)


def weighted_p90(values: np.ndarray, weights: np.ndarray) -> float:
    """90th percentile of values drawn with the given weights (inf when no weight)."""
    keep = weights > 0
    if not keep.any():
        return math.inf
    values, weights = values[keep], weights[keep]
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    i = int(np.searchsorted(cumulative, 0.9 * cumulative[-1]))
    return float(values[order][min(i, len(values) - 1)])
