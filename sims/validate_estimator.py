"""The planner's estimator against the simulator, group by group: where does the prediction go wrong?

How it works: a system's plan (`sims.baselines.plan_system`, as `swarm sim goodput` makes it) is run by
the simulator at a few rates (Poisson arrivals, `sims.workloads.resample`), recording which prefill and
which decode replica served each request. The estimator (`swarm.plan.estimate.Scenario`) is asked about
the same plan with the same routing (the plan's own, which the simulator follows at every rate), and its
per-(pair, request) latency terms give P(TTFT <= x) and P(TPOT <= x) at any x; mixing them by the routed
shares and inverting gives predicted quantiles per prefill group (TTFT), per decode group (TPOT) and
overall, next to the simulated quantiles of the requests each group served. Attainment is compared too.

    python -m sims.validate_estimator --workload azure-conv [--system swarm] [--rates 0.5,0.8,1.0]
        [--duration-s 120] [--budget-s 2] [--seed 0] [--sweep] [--json]

`--rates` are multiples of the plan's predicted goodput. Rows: one "all" row per rate, then one per
prefill group (TTFT) and one per decode group (TPOT); `share` is the share of requests it served.
`--sweep` also finds the simulated goodput as `swarm sim goodput` and docs/results.md section 0b do
(`sims.run.rate_sweep` over SWEEP_RATES, `sims.run.crossing` at the SLO's attainment target).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from sims.baselines import plan_system
from sims.calibrate import calibrated_efficiency
from sims.cluster_sim import ClusterSim
from sims.ledger import DONE, latencies, meets_slo
from sims.report import clean, markdown_table
from sims.run import DRAIN_S, crossing, rate_sweep
from sims.workloads import resample
from swarm.hardware import load_cluster
from swarm.models import model_spec
from swarm.plan.estimate import LatencyTerms, Scenario
from swarm.plan.parallel import Deployment
from swarm.plan.problem import Problem, base_slo
from swarm.workloads import load_workload

QUANTILES = (0.5, 0.9)
SWEEP_RATES = tuple(float(r) for r in np.geomspace(0.5, 16.0, 13))  # req/s, as in docs/results.md section 0b
_GRID = np.geomspace(1e-4, 1e3, 1400)  # seconds: where the predicted CDFs are evaluated


class _TracingSim(ClusterSim):
    """The simulator, noting the (prefill, decode) replicas of each request's KV hand-off."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prefill_gid = np.full(len(self.ledger), -1)
        self.decode_gid = np.full(len(self.ledger), -1)

    def _send_kv(self, rid: int, src_gid: int, dst_gid: int, deadline_s: float) -> None:
        self.prefill_gid[rid], self.decode_gid[rid] = src_gid, dst_gid
        super()._send_kv(rid, src_gid, dst_gid, deadline_s)


def plan_scenario(problem: Problem, plan) -> tuple[Scenario, np.ndarray]:
    """The estimator's Scenario of a wire plan and the plan's KV shares (as the simulator routes)."""
    deployments = {g.id: Deployment.from_group(g) for g in plan.groups}
    pairs = sorted((p, d) for p, d, _ in plan.routing.kv)
    shares = {(p, d): s for p, d, s in plan.routing.kv}
    return Scenario.build(problem, deployments, pairs), np.array([shares[k] for k in pairs], dtype=np.float64)


def predicted_quantiles(terms: LatencyTerms, which: str, rows: np.ndarray) -> list[float]:
    """QUANTILES of TTFT or TPOT over the active pairs `rows` (weighted by their shares)."""
    weights = terms.shares[rows]
    if weights.sum() <= 0:
        return [math.nan] * len(QUANTILES)
    cdf_of = terms.ttft_cdf if which == "ttft" else terms.tpot_cdf
    cdf = np.array([float(np.dot(weights, cdf_of(x)[rows].mean(axis=1))) for x in _GRID]) / weights.sum()
    return [float(_GRID[np.argmax(cdf >= q)]) if (cdf >= q).any() else math.inf for q in QUANTILES]


def _simulated_quantiles(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    if len(values) == 0:
        return [math.nan] * len(QUANTILES)
    # an unfinished request is as late as it gets: quantiles over inf
    padded = np.concatenate((finite, np.full(len(values) - len(finite), np.inf)))
    return [float(np.quantile(padded, q, method="higher")) for q in QUANTILES]


def compare(problem: Problem, plan, rates_rps, duration_s: float, seed: int = 0) -> list[dict]:
    """Predicted vs simulated TTFT/TPOT quantiles and attainment of a phase-split `plan`, overall and per
    group, at each rate (a colocated group's requests are not attributed to it: only its "all" row)."""
    scenario, shares = plan_scenario(problem, plan)
    roles = {g.id: (g.role, f"{g.tp}x{g.pp}") for g in plan.groups}
    slo, rows = problem.slo, []
    for rate in rates_rps:
        ledger = resample(problem.workload, rate, duration_s, seed)
        sim = _TracingSim(problem, plan, ledger, seed=seed)
        sim.run(float(ledger.arrival_s[-1]) + DRAIN_S)
        ttft, tpot, _ = latencies(ledger)
        ttft = np.where(ledger.state == DONE, ttft, np.inf)
        tpot = np.where(ledger.state == DONE, tpot, np.inf)
        terms = scenario.latency_terms(rate, shares)
        active_ids = np.array(scenario.ids)
        pair_p, pair_d = active_ids[terms.pair_p], active_ids[terms.pair_d]
        everything = np.arange(len(terms.shares))
        predicted_att = scenario.estimate(rate, shares, with_p90=False).slo_attainment
        rows.append(_row(rate, "all", "", "", 1.0, 1.0,
                         predicted_quantiles(terms, "ttft", everything), _simulated_quantiles(ttft),
                         predicted_quantiles(terms, "tpot", everything), _simulated_quantiles(tpot),
                         predicted_att, float(meets_slo(ledger, slo.ttft_s, slo.tpot_s).mean())))
        for side, gids, served, which, values in (("prefill", pair_p, sim.prefill_gid, "ttft", ttft),
                                                   ("decode", pair_d, sim.decode_gid, "tpot", tpot)):
            for gid in sorted(set(gids.tolist())):
                mine = np.flatnonzero(gids == gid)
                got = served == gid
                quantiles = (predicted_quantiles(terms, which, mine), _simulated_quantiles(values[got]))
                empty = [math.nan] * len(QUANTILES)
                ttft_pair = quantiles if which == "ttft" else (empty, empty)
                tpot_pair = quantiles if which == "tpot" else (empty, empty)
                rows.append(_row(rate, side, gid, roles[gid][1], float(terms.shares[mine].sum()),
                                 float(got.mean()), *ttft_pair, *tpot_pair, math.nan, math.nan))
    return rows


def simulated_goodput(problem: Problem, plan, duration_s: float, seed: int = 0) -> float:
    """The simulated goodput of `plan`: the crossing of the SLO attainment target over SWEEP_RATES."""
    metrics = rate_sweep(problem, plan, SWEEP_RATES, duration_s, seed)
    return crossing(SWEEP_RATES, [m.slo_attainment for m in metrics], problem.slo.attainment)


def _row(rate, kind, group, layout, share_predicted, share_simulated, ttft_pred, ttft_sim, tpot_pred, tpot_sim,
         attainment_pred, attainment_sim) -> dict:
    row = {"rate_rps": rate, "kind": kind, "group": group, "tp_x_pp": layout,
           "share_pred": share_predicted, "share_sim": share_simulated}
    for name, pred, sim in (("ttft", ttft_pred, ttft_sim), ("tpot", tpot_pred, tpot_sim)):
        for q, p, s in zip(QUANTILES, pred, sim, strict=True):
            row[f"{name}_p{int(q * 100)}_pred"], row[f"{name}_p{int(q * 100)}_sim"] = p, s
    row["attainment_pred"], row["attainment_sim"] = attainment_pred, attainment_sim
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sims.validate_estimator", description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="azure-conv")
    parser.add_argument("--cluster", default="cloud-32")
    parser.add_argument("--model", default="llama-30b")
    parser.add_argument("--system", default="swarm")
    parser.add_argument("--rates", default="0.5,0.8,1.0", help="multiples of the plan's predicted goodput")
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--budget-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true", help="also the simulated goodput over SWEEP_RATES")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workload, model = load_workload(args.workload), model_spec(args.model)
    problem = Problem(load_cluster(args.cluster), model, workload, base_slo(model, workload),
                      rate_rps=workload.rate_rps, efficiency=calibrated_efficiency())
    planned = plan_system(args.system, problem, budget_s=args.budget_s, seed=args.seed)
    goodput = planned.evaluation.goodput_rps
    rates = [float(x) * goodput for x in args.rates.split(",")]
    rows = compare(planned.problem, planned.plan, rates, args.duration_s, args.seed)
    simulated = simulated_goodput(planned.problem, planned.plan, args.duration_s, args.seed) if args.sweep else None
    layouts = [f"{g.role[0]}{g.tp}x{g.pp}" for g in planned.plan.groups]
    if args.json:
        json.dump({"predicted_goodput_rps": goodput, "simulated_goodput_rps": simulated, "groups": layouts,
                   "rows": clean(rows)}, sys.stdout, indent=1)
        print()
    else:
        print(f"{args.system} on {args.cluster}, {args.workload}: predicted goodput {goodput:.2f} req/s"
              + (f", simulated {simulated:.2f} req/s" if simulated is not None else "")
              + f"; SLO TTFT {problem.slo.ttft_s:.2f} s, TPOT {problem.slo.tpot_s * 1e3:.0f} ms; groups "
              + " ".join(layouts))
        print(markdown_table(clean(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
