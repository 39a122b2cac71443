"""Search budget study: simulated goodput of searched plans against the planner's evaluation budget.

How it works: for each workload and each searched system (swarm, HexGen-like), the system is planned as
`swarm sim goodput` plans it (`sims.baselines.plan_system`: a fixed number of evaluations, what
`budget_s` seconds buy on the reference machine, so the machine's load does not change the plan) at
each budget, and each plan's goodput is simulated (`sims.run.rate_sweep` over `--rates` Poisson rates
from 0.5 to 16 req/s, `--duration-s` each, `sims.run.crossing` at the SLO's attainment target). The
search is deterministic for a seed and its evaluations are a prefix of a longer search's, so a larger
budget can only find a plan the estimator scores at least as high; whether the simulator agrees is
what this measures. ThunderServe's own planner took 54 s at 32 GPUs (paper, section 6).

    python -m sims.search_budget [--workloads azure-code,azure-conv] [--systems swarm,hexgen-like]
        [--budgets 2,4,10,20] [--rates 13] [--duration-s 60] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from sims.baselines import plan_system
from sims.calibrate import calibrated_efficiency
from sims.report import clean, markdown_table
from sims.run import crossing, rate_sweep
from swarm.hardware import load_cluster
from swarm.models import model_spec
from swarm.plan.problem import Problem, base_slo
from swarm.plan.search import default_evaluations
from swarm.workloads import load_workload


def study(workloads, systems, budgets_s, rates_rps, duration_s: float, seed: int = 0,
          cluster_name: str = "cloud-32", model_name: str = "llama-30b") -> list[dict]:
    """One row per (workload, system, budget): evaluations, planner wall time, predicted and simulated goodput."""
    rows, model, cluster = [], model_spec(model_name), load_cluster(cluster_name)
    for workload_name in workloads:
        workload = load_workload(workload_name)
        problem = Problem(cluster, model, workload, base_slo(model, workload), rate_rps=workload.rate_rps,
                          efficiency=calibrated_efficiency())
        for system in systems:
            for budget_s in budgets_s:
                planned = plan_system(system, problem, budget_s=budget_s, seed=seed)
                metrics = rate_sweep(planned.problem, planned.plan, rates_rps, duration_s, seed)
                simulated = crossing(rates_rps, [m.slo_attainment for m in metrics], problem.slo.attainment)
                rows.append({"workload": workload_name, "system": system, "budget_s": budget_s,
                             "evaluations": default_evaluations(budget_s, cluster.num_gpus),
                             "planner_s": planned.planner_s,
                             "predicted_goodput_rps": planned.evaluation.goodput_rps,
                             "simulated_goodput_rps": simulated,
                             "groups": " ".join(f"{g.role[0]}{g.tp}x{g.pp}" for g in planned.plan.groups)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sims.search_budget", description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="azure-code,azure-conv")
    parser.add_argument("--systems", default="swarm,hexgen-like")
    parser.add_argument("--budgets", default="2,4,10,20", help="seconds on the reference machine")
    parser.add_argument("--rates", type=int, default=13, help="simulated rates, geometric from 0.5 to 16 req/s")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rates = np.geomspace(0.5, 16.0, args.rates)
    rows = study(args.workloads.split(","), args.systems.split(","),
                 [float(b) for b in args.budgets.split(",")], rates, args.duration_s, args.seed)
    if args.json:
        json.dump(clean(rows), sys.stdout, indent=1)
        print()
    else:
        print(markdown_table(clean(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
