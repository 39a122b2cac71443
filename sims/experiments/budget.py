"""Experiment `budget` (beyond the papers): which GPUs to rent for a budget per hour, and the plan.

How it works: the candidates are every single-type pool (as many 4-GPU hosts of one type as the budget
buys) and every two-type pool spending about half the budget on each type; hosts of a pool are linked
at POOL_GBPS. swarm's planner scores each pool (predicted goodput); the TOP_K best mixed pools and
every single-type pool are then simulated, and the chosen pool is the one with the highest simulated
goodput per dollar. Reported: goodput per dollar of the choice against the best single-type pool.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from sims import plots
from sims.baselines import plan_system
from sims.calibrate import calibrated_efficiency
from sims.errors import SimError
from sims.report import markdown_table, write_csv, write_summary
from sims.run import crossing, rate_sweep
from swarm.hardware import Cluster, gpu_spec
from swarm.hardware.cluster import Host
from swarm.models import model_spec
from swarm.plan.problem import Problem, base_slo
from swarm.workloads import load_workload

MODEL = "llama-30b"
WORKLOAD = "azure-conv"
TYPES = ("A100-80G", "L40S", "A40", "A6000", "A5000", "RTX3090Ti", "RTX4090")
BUDGET_PER_HOUR = 14.0
GPUS_PER_HOST = 4
POOL_GBPS = 25.0
TOP_K = 2


def pool_cluster(counts: dict[str, int]) -> Cluster:
    """Hosts of GPUS_PER_HOST GPUs: `counts` maps a GPU type to its number of hosts."""
    hosts = tuple(
        Host(
            name=f"{t.lower()}-{i}",
            gpu=gpu_spec(t),
            gpu_indices=tuple(range(GPUS_PER_HOST)),
            price_per_gpu_hour=gpu_spec(t).price_per_hour,
            intra_gbps=128.0,
        )
        for t, n in counts.items()
        for i in range(n)
    )
    return Cluster(
        hosts=hosts,
        default_gbps=POOL_GBPS,
        name="+".join(f"{n}x{GPUS_PER_HOST}{t}" for t, n in counts.items()),
    )


def candidate_pools(budget: float) -> list[dict[str, int]]:
    """Single-type pools, and two-type pools with about half the budget on each type."""
    host_price = {t: GPUS_PER_HOST * gpu_spec(t).price_per_hour for t in TYPES}
    pools = [{t: int(budget // host_price[t])} for t in TYPES if budget >= host_price[t]]
    for a, b in combinations(TYPES, 2):
        na = int((budget / 2) // host_price[a])
        nb = int((budget - na * host_price[a]) // host_price[b])
        if na and nb:
            pools.append({a: na, b: nb})
    return pools


def run(ctx) -> dict:
    model, workload = model_spec(MODEL), load_workload(WORKLOAD)
    slo = base_slo(model, workload)
    budget_s, duration_s = (0.5, 60.0) if ctx.quick else (2.0, 300.0)
    rates = np.geomspace(0.5, 16.0, 6 if ctx.quick else 12)
    scored = []
    for counts in candidate_pools(BUDGET_PER_HOUR):
        problem = Problem(
            pool_cluster(counts),
            model,
            workload,
            slo,
            rate_rps=workload.rate_rps,
            efficiency=calibrated_efficiency(),
        )
        try:
            planned = plan_system("swarm", problem, budget_s=budget_s, seed=ctx.seed)
        except SimError:
            continue  # the model fits nowhere in this pool
        scored.append((counts, planned))
    singles = [s for s in scored if len(s[0]) == 1]
    mixed = sorted((s for s in scored if len(s[0]) > 1), key=lambda s: -s[1].evaluation.goodput_rps)[:TOP_K]
    rows = []
    for counts, planned in singles + mixed:
        attainment = [
            m.slo_attainment for m in rate_sweep(planned.problem, planned.plan, rates, duration_s, ctx.seed)
        ]
        goodput = crossing(rates, attainment, 0.9)
        price = planned.problem.cluster.price_per_hour
        rows.append(
            {
                "pool": planned.problem.cluster.name,
                "types": len(counts),
                "gpus": planned.problem.cluster.num_gpus,
                "price_per_hour": price,
                "predicted_goodput_rps": planned.evaluation.goodput_rps,
                "simulated_goodput_rps": goodput,
                "goodput_per_dollar": goodput / price * 3600,
            }
        )
    rows.sort(key=lambda r: -r["goodput_per_dollar"])
    best_single = max((r for r in rows if r["types"] == 1), key=lambda r: r["goodput_per_dollar"])
    chosen = rows[0]
    figures = {
        "budget_per_hour": BUDGET_PER_HOUR,
        "chosen": chosen["pool"],
        "chosen_requests_per_dollar": chosen["goodput_per_dollar"],
        "best_single": best_single["pool"],
        "best_single_requests_per_dollar": best_single["goodput_per_dollar"],
        "ratio": chosen["goodput_per_dollar"] / max(best_single["goodput_per_dollar"], 1e-9),
    }
    write_csv(ctx.path("budget.csv"), rows)
    plots.bars(
        ctx.path("goodput_per_dollar.png"),
        {"pools": {r["pool"]: r["goodput_per_dollar"] for r in rows}},
        ylabel="requests served within SLO per dollar",
        title=f"LLaMA-30B, {WORKLOAD}: pools for ${BUDGET_PER_HOUR:g}/h",
    )
    write_summary(ctx.out_dir, "budget", ctx.command, [("Pools (simulated)", markdown_table(rows))], figures)
    return figures
