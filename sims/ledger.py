"""The request ledger: every request's lengths, state and timestamps, and the metrics computed from them.

One numpy row per request (no per-request objects), so an hour of trace costs a few arrays. A request
is QUEUED (waiting or in flight), DONE or FAILED; none can vanish (`counts` sums to the total).
`tokens_done` is what the entry peer has delivered, so a recovered request resumes from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUEUED, DONE, FAILED = 0, 1, 2


class Ledger:
    """Per-request arrays: arrival, lengths, first-token and finish times, tokens delivered, restarts."""

    def __init__(self, arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        n = len(arrival_s)
        self.arrival_s = np.asarray(arrival_s, dtype=np.float64)
        self.prompt_tokens = np.asarray(prompt_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(output_tokens, dtype=np.int64)
        self.first_token_s = np.full(n, np.nan)
        self.done_s = np.full(n, np.nan)
        self.kv_s = np.zeros(n)  # time spent moving KV from prefill to decode
        self.tokens_done = np.zeros(n, dtype=np.int64)
        self.num_restarts = np.zeros(n, dtype=np.int64)
        self.state = np.full(n, QUEUED, dtype=np.int8)

    def __len__(self) -> int:
        return len(self.arrival_s)

    def first_token(self, rid: int, now_s: float) -> None:
        if np.isnan(self.first_token_s[rid]):
            self.first_token_s[rid] = now_s
        self.tokens_done[rid] = max(self.tokens_done[rid], 1)

    def finish(self, rid: int, now_s: float) -> None:
        self.done_s[rid] = now_s
        self.tokens_done[rid] = self.output_tokens[rid]
        self.state[rid] = DONE

    def fail(self, rid: int, now_s: float) -> None:
        self.done_s[rid] = now_s
        self.state[rid] = FAILED

    def counts(self) -> dict[str, int]:
        return {
            "queued": int((self.state == QUEUED).sum()),
            "done": int((self.state == DONE).sum()),
            "failed": int((self.state == FAILED).sum()),
        }


@dataclass(frozen=True)
class Metrics:
    """Summary of a run over the requests that arrived in a window."""

    num_requests: int
    slo_attainment: float  # share of requests that finished within both TTFT and TPOT targets
    ttft_p90_s: float
    tpot_p90_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    throughput_rps: float
    tokens_per_s: float
    kv_share: float  # KV transfer time / E2E time, mean over finished requests


def latencies(ledger: Ledger) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TTFT, TPOT, E2E) per request; NaN where the request did not finish."""
    done = ledger.state == DONE
    ttft = np.where(done, ledger.first_token_s - ledger.arrival_s, np.nan)
    e2e = np.where(done, ledger.done_s - ledger.arrival_s, np.nan)
    steps = np.maximum(ledger.output_tokens - 1, 1)
    tpot = np.where(done, (ledger.done_s - ledger.first_token_s) / steps, np.nan)
    return ttft, tpot, e2e


def meets_slo(ledger: Ledger, ttft_s: float, tpot_s: float) -> np.ndarray:
    ttft, tpot, _ = latencies(ledger)
    with np.errstate(invalid="ignore"):
        return (ledger.state == DONE) & (ttft <= ttft_s) & (tpot <= tpot_s)


def metrics(
    ledger: Ledger, ttft_s: float, tpot_s: float, start_s: float = 0.0, end_s: float = np.inf
) -> Metrics:
    """Metrics of the requests arriving in [start_s, end_s); unfinished ones count as misses."""
    mask = (ledger.arrival_s >= start_s) & (ledger.arrival_s < end_s)
    n = int(mask.sum())
    if n == 0:
        return Metrics(0, 0.0, *(np.nan,) * 4, 0.0, 0.0, 0.0)
    ttft, tpot, e2e = (x[mask] for x in latencies(ledger))
    ok = meets_slo(ledger, ttft_s, tpot_s)[mask]
    done = ledger.state[mask] == DONE
    e2e_all = np.where(done, e2e, np.inf)  # an unfinished request is as late as it gets
    span_s = max(
        float(np.nanmax(ledger.done_s[mask]) if done.any() else 0.0) - float(ledger.arrival_s[mask].min()),
        1e-9,
    )
    tokens = float(ledger.output_tokens[mask][done].sum())
    kv = ledger.kv_s[mask][done] / np.maximum(e2e[done], 1e-9)
    with np.errstate(invalid="ignore"):  # percentiles over inf (unfinished) are inf, as intended
        e2e_p50_s, e2e_p99_s = (float(np.percentile(e2e_all, q)) for q in (50, 99))
    return Metrics(
        num_requests=n,
        slo_attainment=float(ok.mean()),
        ttft_p90_s=_pct(ttft, 90),
        tpot_p90_s=_pct(tpot, 90),
        e2e_p50_s=e2e_p50_s,
        e2e_p99_s=e2e_p99_s,
        throughput_rps=float(done.sum()) / span_s,
        tokens_per_s=tokens / span_s,
        kv_share=float(kv.mean()) if len(kv) else 0.0,
    )


def attainment_over_time(
    ledger: Ledger, ttft_s: float, tpot_s: float, bin_s: float, end_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(bin start times, SLO attainment of the requests arriving in each bin); NaN for empty bins."""
    edges = np.arange(0.0, end_s + bin_s, bin_s)
    ok = meets_slo(ledger, ttft_s, tpot_s).astype(np.float64)
    idx = np.digitize(ledger.arrival_s, edges) - 1
    valid = (idx >= 0) & (idx < len(edges) - 1)
    total = np.bincount(idx[valid], minlength=len(edges) - 1).astype(np.float64)
    hits = np.bincount(idx[valid], weights=ok[valid], minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return edges[:-1], np.where(total > 0, hits / total, np.nan)


def _pct(values: np.ndarray, q: float) -> float:
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, q)) if len(finite) else float("nan")
