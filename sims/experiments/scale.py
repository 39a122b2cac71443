"""Experiment `scale`: planner time and plan quality from 16 to 1,024 GPUs, and simulator speed.

Clusters of N GPUs repeat `cloud-32`'s hosts and links (N/32 copies, 5 Gbit/s between copies; N = 16
takes its A6000 and A40 hosts). The planner is swarm's tabu search with a budget that grows with the
cluster. Simulator speed: a replay of the Azure conversation trace (an hour in a full run, 5 minutes
in --quick) on `cloud-32` with swarm's plan: wall time and events per second.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from sims import plots
from sims.baselines import plan_system
from sims.calibrate import calibrated_efficiency
from sims.cluster_sim import ClusterSim
from sims.errors import SimError
from sims.report import markdown_table, write_csv, write_summary
from sims.workloads import replay
from swarm.hardware import Cluster, load_cluster
from swarm.models import model_spec
from swarm.plan import InfeasibleError
from swarm.plan.problem import Problem, base_slo
from swarm.workloads import load_workload

log = logging.getLogger(__name__)

MODEL = "llama-30b"
SIZES_QUICK = (16, 32, 64)
SIZES_FULL = (16, 32, 64, 128, 256, 512, 1024)


def scaled_cloud(num_gpus: int) -> Cluster:
    """`cloud-32` repeated (or cut to its A6000/A40 hosts for 16 GPUs), copies joined at 5 Gbit/s."""
    base = load_cluster("cloud-32")
    if num_gpus < base.num_gpus:
        hosts = tuple(h for h in base.hosts if h.name.startswith(("a6000", "a40")))
        return replace(base, hosts=hosts, name=f"cloud-{num_gpus}")
    hosts, links = [], {}
    for copy in range(num_gpus // base.num_gpus):
        rename = {h.name: f"{h.name}-c{copy}" for h in base.hosts}
        hosts += [replace(h, name=rename[h.name]) for h in base.hosts]
        links.update({frozenset(rename[n] for n in pair): gbps for pair, gbps in base.links.items()})
    return replace(base, hosts=tuple(hosts), links=links, name=f"cloud-{num_gpus}")


def run(ctx) -> dict:
    model, workload = model_spec(MODEL), load_workload("azure-conv")
    slo = base_slo(model, workload)
    rows = []
    for n in SIZES_QUICK if ctx.quick else SIZES_FULL:
        cluster = scaled_cloud(n)
        budget_s = (0.5 if ctx.quick else 2.0) * max(1.0, n / 32) ** 0.5
        problem = Problem(
            cluster,
            model,
            workload,
            slo,
            rate_rps=workload.rate_rps * n / 32,
            efficiency=calibrated_efficiency(),
        )
        rows.append(_plan_row(problem, n, budget_s, ctx.seed))
    speed = _sim_speed(ctx, model, workload, slo)
    write_csv(ctx.path("planner_scale.csv"), rows)
    xs = [r["num_gpus"] for r in rows]
    plots.lines(
        ctx.path("planner_time.png"),
        {
            "tabu search (swarm), wall": (xs, [r["planner_s"] for r in rows]),
            "tabu search (swarm), CPU": (xs, [r["planner_cpu_s"] for r in rows]),
        },
        title="Planner wall time vs cluster size (LLaMA-30B)",
        xlabel="GPUs",
        ylabel="planner time (s)",
        logx=True,
        logy=True,
    )
    plots.lines(
        ctx.path("plan_quality.png"),
        {"predicted goodput per GPU": (xs, [r["goodput_per_gpu"] for r in rows])},
        title="Plan quality vs cluster size",
        xlabel="GPUs",
        ylabel="goodput per GPU (req/s)",
        logx=True,
    )
    figures = {
        "planner": {
            r["num_gpus"]: {k: r[k] for k in ("planner_s", "planner_cpu_s", "goodput_per_gpu", "found_plan")}
            for r in rows
        },
        "simulator": speed,
    }
    write_summary(
        ctx.out_dir,
        "scale",
        ctx.command,
        [("Planner", markdown_table(rows)), ("Simulator speed", markdown_table([speed]))],
        figures,
    )
    return figures


def _plan_row(problem: Problem, num_gpus: int, budget_s: float, seed: int) -> dict:
    """Planner time and predicted goodput at one size; a search that finds no plan is recorded as such.
    `planner_cpu_s` is this process's CPU time for the search: on a shared machine the wall time
    includes waiting for a core, the CPU time is about what an idle machine would take."""
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        planned = plan_system("swarm", problem, budget_s=budget_s, seed=seed)
    except (InfeasibleError, SimError) as e:
        log.warning("scale: no plan at %d GPUs: %s", num_gpus, e)
        return {
            "num_gpus": num_gpus,
            "planner_s": time.perf_counter() - start,
            "planner_cpu_s": time.process_time() - cpu_start,
            "budget_s": budget_s,
            "num_groups": 0,
            "predicted_goodput_rps": 0.0,
            "goodput_per_gpu": 0.0,
            "price_per_hour": problem.cluster.price_per_hour,
            "found_plan": False,
        }
    goodput = planned.evaluation.goodput_rps
    return {
        "num_gpus": num_gpus,
        "planner_s": planned.planner_s,
        "planner_cpu_s": time.process_time() - cpu_start,
        "budget_s": budget_s,
        "num_groups": len(planned.plan.groups),
        "predicted_goodput_rps": goodput,
        "goodput_per_gpu": goodput / num_gpus,
        "price_per_hour": problem.cluster.price_per_hour,
        "found_plan": True,
    }


def _sim_speed(ctx, model, workload, slo) -> dict:
    duration_s = 300.0 if ctx.quick else workload.duration_s + 1.0
    problem = Problem(
        load_cluster("cloud-32"),
        model,
        workload,
        slo,
        rate_rps=workload.rate_rps,
        efficiency=calibrated_efficiency(),
    )
    plan = plan_system("swarm", problem, budget_s=1.0, seed=ctx.seed).plan
    ledger = replay(workload, duration_s=duration_s)
    sim = ClusterSim(problem, plan, ledger, seed=ctx.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    sim.run(duration_s + 600.0)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    counts = ledger.counts()
    return {
        "trace_s": duration_s,
        "requests": len(ledger),
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "events": sim.sim.num_events,
        "events_per_s": sim.sim.num_events / wall_s,
        "sim_speedup": (duration_s + 600.0) / wall_s,
        **counts,
    }
