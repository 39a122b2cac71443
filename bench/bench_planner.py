"""Planner speed and quality: tabu search wall time at 16-512 GPUs, quality against a 10x budget, re-plan time.

Clusters are cloud-32's host mix (ThunderServe's 32-GPU cloud): 16 and 24 GPUs take a subset of its
hosts, 64 and more replicate it (each copy keeps its own links; copies meet over the 5 Gbps default).
The problem: llama-30b, azure-conv, base SLO, rate = the trace's mean rate x (GPUs / 32). Every run
builds a fresh Problem, so no evaluation cache is shared between runs.

Figures per size: wall time of `plan()` at its budget, evaluations done, time to reach the final best,
goodput of the plan; at the smaller sizes also quality(budget) / quality(10x budget), the median over
seeds; and the lightweight re-plan of 32 GPUs after losing one GPU (median of runs).
ThunderServe reports 21 s / 36 s / 54 s for its scheduler at 16 / 24 / 32 GPUs.

    python -m bench.bench_planner [--quick] [--json] [--seeds N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace

from swarm.hardware import Cluster, load_cluster
from swarm.models import model_spec
from swarm.plan.problem import Problem, base_slo
from swarm.plan.replan import replan
from swarm.plan.search import plan
from swarm.workloads import load_workload

MODEL, WORKLOAD = "llama-30b", "azure-conv"
# Planning budget per cluster size (seconds); the 10x comparison multiplies it.
BUDGET_S = {16: 2.0, 24: 2.0, 32: 2.0, 64: 6.0, 128: 15.0, 256: 40.0, 512: 120.0}
SUBSETS = {16: ["a6000-0", "a40-0", "a5000-0", "3090ti-0"],
           24: ["a6000-0", "a40-0", "a5000-0", "3090ti-0", "a5000-1", "a5000-2", "3090ti-1", "3090ti-2"]}
FULL_SIZES = [16, 24, 32, 64, 128, 256, 512]
QUICK_SIZES = [16, 32, 64]
FULL_QUALITY_SIZES, QUICK_QUALITY_SIZES = [16, 24, 32], [16]


def cluster_of(num_gpus: int) -> Cluster:
    """cloud-32's host mix at `num_gpus` GPUs (16, 24, or a multiple of 32)."""
    base = load_cluster("cloud-32")
    if num_gpus in SUBSETS:
        keep = set(SUBSETS[num_gpus])
        return replace(base, hosts=tuple(h for h in base.hosts if h.name in keep), name=f"cloud-{num_gpus}",
                       links={k: v for k, v in base.links.items() if k <= keep})
    if num_gpus == 32:
        return base
    if num_gpus % 32:
        raise ValueError(f"cluster sizes are 16, 24 or multiples of 32, got {num_gpus}")
    copies = num_gpus // 32
    hosts = tuple(replace(h, name=f"{h.name}-c{c}") for c in range(copies) for h in base.hosts)
    links = {frozenset(f"{n}-c{c}" for n in pair): gbps for c in range(copies) for pair, gbps in base.links.items()}
    return replace(base, hosts=hosts, links=links, name=f"cloud-{num_gpus}")


def problem_of(num_gpus: int) -> Problem:
    model, workload = model_spec(MODEL), load_workload(WORKLOAD)
    return Problem(cluster_of(num_gpus), model, workload, base_slo(model, workload),
                   rate_rps=workload.rate_rps * num_gpus / 32)


def run_plan(num_gpus: int, budget_s: float, seed: int, scale: float = 1.0) -> dict[str, float]:
    """One search at `scale` x the size's budget (evaluation count and wall-clock cap both scaled)."""
    from swarm.plan.search import default_evaluations

    problem = problem_of(num_gpus)
    started = time.perf_counter()
    result = plan(problem, budget_s=budget_s * scale, seed=seed,
                  max_evaluations=int(scale * default_evaluations(budget_s, num_gpus)))
    return {"wall_s": time.perf_counter() - started, "evaluations": result.num_evaluations,
            "time_to_best_s": result.time_to_best_s, "goodput_rps": result.best.goodput_rps,
            "score": result.best.score, "groups": len(result.best.plan.groups), "plan": result.best.plan}


def speed(sizes: list[int], figures: dict) -> None:
    for n in sizes:
        run = run_plan(n, BUDGET_S[n], seed=0)
        roles = [g.role for g in run["plan"].groups]
        print(f"{n:4d} GPUs: plan in {run['wall_s']:6.2f} s (budget {BUDGET_S[n]:g} s, {run['evaluations']} "
              f"evaluations, best after {run['time_to_best_s']:.2f} s), {run['groups']} replicas "
              f"({roles.count('prefill')} prefill / {roles.count('decode')} decode), goodput "
              f"{run['goodput_rps']:.2f} req/s", flush=True)
        figures[f"plan_{n}_gpus_s"] = round(run["wall_s"], 3)
        figures[f"plan_{n}_gpus_time_to_best_s"] = round(run["time_to_best_s"], 3)
        figures[f"plan_{n}_gpus_evaluations"] = run["evaluations"]
        figures[f"plan_{n}_gpus_goodput_rps"] = round(run["goodput_rps"], 3)


def quality(sizes: list[int], num_seeds: int, figures: dict) -> None:
    for n in sizes:
        ratios, times = [], []
        for seed in range(num_seeds):
            short, long = run_plan(n, BUDGET_S[n], seed), run_plan(n, BUDGET_S[n], seed, scale=10.0)
            ratios.append(short["goodput_rps"] / long["goodput_rps"] if long["goodput_rps"] > 0 else 1.0)
            times.append(short["time_to_best_s"])
            print(f"{n:4d} GPUs seed {seed}: goodput {short['goodput_rps']:.3f} at {BUDGET_S[n]:g} s vs "
                  f"{long['goodput_rps']:.3f} at {10 * BUDGET_S[n]:g} s (ratio {ratios[-1]:.3f})", flush=True)
        figures[f"quality_{n}_gpus_vs_10x_median"] = round(statistics.median(ratios), 4)
        figures[f"quality_{n}_gpus_vs_10x_min"] = round(min(ratios), 4)
        figures[f"quality_{n}_gpus_time_to_best_median_s"] = round(statistics.median(times), 3)


def replan_speed(num_runs: int, figures: dict) -> None:
    """Lightweight re-plan of the 32-GPU plan after one GPU of its largest group is lost."""
    current = run_plan(32, BUDGET_S[32], seed=0)["plan"]
    lost = max(current.groups, key=lambda g: len(g.gpu_ids)).gpu_ids[-1]
    times = []
    for _ in range(num_runs):
        problem = problem_of(32)
        problem = replace(problem, cluster=problem.cluster.without([lost]))
        started = time.perf_counter()
        replan(problem, current)
        times.append(time.perf_counter() - started)
    figures["replan_32_gpus_median_s"] = round(statistics.median(times), 4)
    print(f"re-plan of 32 GPUs after losing {lost}: median {statistics.median(times) * 1e3:.0f} ms "
          f"over {num_runs} runs (fresh problems)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16/32/64 GPUs, quality at 16 GPUs only (~1 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on the last line")
    parser.add_argument("--seeds", type=int, default=None, help="seeds for the quality comparison")
    args = parser.parse_args(argv)
    figures: dict = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
                     "model": MODEL, "workload": WORKLOAD}
    speed(QUICK_SIZES if args.quick else FULL_SIZES, figures)
    quality(QUICK_QUALITY_SIZES if args.quick else FULL_QUALITY_SIZES, args.seeds or (1 if args.quick else 3),
            figures)
    replan_speed(5, figures)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
