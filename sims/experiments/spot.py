"""Experiment `spot` (SpotServe, ASPLOS'24 section 7): serving on preemptible instances from real traces.

Clusters: SpotServe's AWS g4dn segments As and Bs (4 x T4 per instance) with LLaMA-13B and, in full
runs, 2 hours of SkyPilot's 16-node p3.2xlarge availability trace (1 x V100 per instance, from the
first time 8 instances are up) with LLaMA-7B;
Azure conversation lengths, SLO_SCALE x the base SLO, at a Poisson rate of RATE_FACTOR x the
initial plan's predicted goodput.
Policies, each on the same trace and requests:
  * swarm        — at a preemption notice: plans at once a lightweight re-plan (surviving groups keep
                   their weights; a full re-plan instead if it predicts FULL_GAIN more goodput, as when
                   a single group would be left), but installs it only HANDOVER_S before the doomed
                   instances go: until then they serve, then their requests and KV move to the
                   survivors (stateful recovery); when instances arrive: a full re-plan with
                   Kuhn-Munkres migration, used only if it predicts FULL_GAIN more goodput. Full
                   re-plans are installed make-before-break (`sims.recovery.install`): the current plan
                   serves while the new weights are staged, and only the cut-over pauses the GPUs that
                   change;
  * reroute-only — no re-plan: the dead replicas' requests restart on the survivors; new instances idle;
  * restart-all  — every change re-plans and reloads every replica; in-flight requests start over; a
                   preemption is acted on once the membership (`sims.detection`) drops the silent node;
  * on-demand    — the initial instances at on-demand prices, never preempted.
P99 latency counts an unfinished request at its age when the run stops; with Azure's spread of output
lengths the P99 of E2E is dominated by the longest outputs, so the P99 of E2E per output token is
reported too. Cost: instance-hours paid.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sims import detection, plots, recovery, spot
from sims.baselines import plan_system
from sims.calibrate import calibrated_efficiency
from sims.cluster_sim import ClusterSim
from sims.ledger import DONE
from sims.report import markdown_table, write_csv, write_summary
from sims.workloads import resample
from swarm.models import model_spec
from swarm.plan import InfeasibleError
from swarm.plan.problem import Problem, base_slo
from swarm.workloads import load_workload

MODEL = "llama-13b"
RATE_FACTOR = 0.8
SLO_SCALE = 5.0  # the base SLO is an A100 yardstick; T4s and V100s are 3-5x slower
FULL_GAIN = 1.1
HANDOVER_S = 5.0  # before a preempted instance goes: time to move its requests' KV to the survivors
POLICIES = ("swarm", "reroute-only", "restart-all", "on-demand")
SKYPILOT_PRICE = {"on_demand": 3.06, "spot": 0.3 * 3.06}  # p3.2xlarge, us-east; spot share assumed
DRAIN_S = 300.0


def run(ctx) -> dict:
    traces = _traces(ctx.quick)
    rows, figures = [], {}
    for name, (events, gpu, per_node, prices, end_s, model) in traces.items():
        result = _trace(
            events, gpu, per_node, prices, end_s, model, budget_s=1.0 if ctx.quick else 3.0, seed=ctx.seed
        )
        for policy, r in result.items():
            rows.append({"trace": name, "policy": policy, **r})
        swarm = result["swarm"]
        figures[name] = {
            "p99_s": {p: r["p99_s"] for p, r in result.items()},
            "cost_usd": {p: r["cost_usd"] for p, r in result.items()},
            "p99_ratio_vs_reroute": result["reroute-only"]["p99_s"] / swarm["p99_s"],
            "p99_ratio_vs_restart": result["restart-all"]["p99_s"] / swarm["p99_s"],
            "p99_per_token_ratio_vs_reroute": result["reroute-only"]["p99_per_token_s"]
            / swarm["p99_per_token_s"],
            "p99_per_token_ratio_vs_restart": result["restart-all"]["p99_per_token_s"]
            / swarm["p99_per_token_s"],
            "cost_saving_vs_on_demand": 1 - swarm["cost_usd"] / result["on-demand"]["cost_usd"],
        }
    write_csv(ctx.path("spot.csv"), rows)
    plots.bars(
        ctx.path("p99.png"),
        {t: {r["policy"]: r["p99_s"] for r in rows if r["trace"] == t} for t in traces},
        ylabel="P99 end-to-end latency (s, log)",
        logy=True,
        title="Spot instances (LLaMA-13B on g4dn, 7B on SkyPilot): P99 latency by policy",
    )
    plots.bars(
        ctx.path("cost.png"),
        {t: {r["policy"]: r["cost_usd"] for r in rows if r["trace"] == t} for t in traces},
        ylabel="cost of the run (USD)",
        title="Instance cost of the same trace window",
    )
    write_summary(
        ctx.out_dir,
        "spot",
        ctx.command,
        [
            (
                "P99 latency, attainment and cost",
                markdown_table(
                    rows,
                    [
                        "trace",
                        "policy",
                        "p99_s",
                        "p50_s",
                        "p99_per_token_s",
                        "slo_attainment",
                        "done",
                        "unfinished",
                        "restarts",
                        "cost_usd",
                        "replans",
                    ],
                ),
            )
        ],
        figures,
    )
    return figures


def _traces(quick: bool) -> dict:
    g4dn = {"on_demand": spot.ON_DEMAND_PER_NODE_HOUR, "spot": spot.SPOT_PER_NODE_HOUR}
    traces = {"As": (spot.spotserve_segment("As"), "T4", 4, g4dn, 1320.0, MODEL)}
    if not quick:
        traces["Bs"] = (spot.spotserve_segment("Bs"), "T4", 4, g4dn, 1020.0, MODEL)
        traces["SkyPilot us-east-2b"] = (_skypilot_window(), "V100", 1, SKYPILOT_PRICE, 7200.0, "llama-7b")
    return traces


def _skypilot_window(min_nodes: int = 8, span_s: float = 7200.0) -> list:
    """Two hours of the SkyPilot trace from the first time `min_nodes` instances are up, re-based to 0."""
    events = spot.skypilot_availability("us-east-2b", max_ticks=400)
    timeline = spot.alive_over_time(events)
    start_s, alive = next((t, a) for t, a in timeline if len(a) >= min_nodes)
    later = [
        spot.SpotEvent(e.time_s - start_s, e.op, e.nodes)
        for e in events
        if start_s < e.time_s < start_s + span_s
    ]
    return [spot.SpotEvent(0.0, "add", tuple(alive))] + later


def _trace(
    events,
    gpu: str,
    per_node: int,
    prices: dict,
    end_s: float,
    model_name: str,
    *,
    budget_s: float,
    seed: int,
) -> dict:
    model, workload = model_spec(model_name), load_workload("azure-conv")
    full = spot.spot_cluster(spot.all_nodes(events), gpu=gpu, gpus_per_node=per_node)
    initial_nodes = [n for e in events if e.time_s == 0 and e.op == "add" for n in e.nodes]
    problem = _problem(full, initial_nodes, model, workload, per_node)
    initial = plan_system("swarm", problem, budget_s=budget_s, seed=seed)
    rate = RATE_FACTOR * initial.evaluation.goodput_rps
    out = {}
    for policy in POLICIES:
        ledger = resample(workload, rate, end_s, seed)
        sim = ClusterSim(
            problem.with_cluster(full),
            initial.plan,
            ledger,
            seed=seed,  # every node ever
            recovery="stateful" if policy == "swarm" else "restart",
        )
        replans = (
            0
            if policy == "on-demand"
            else _drive(sim, policy, events, full, problem, initial, per_node, budget_s, seed)
        )
        sim.run(end_s + DRAIN_S)
        nodes_h = (
            len(initial_nodes) * end_s / 3600 if policy == "on-demand" else spot.node_hours(events, end_s)
        )
        price = prices["on_demand" if policy == "on-demand" else "spot"]
        out[policy] = dict(
            _latency(ledger, sim.sim.now_s, problem), cost_usd=nodes_h * price, replans=replans, rate_rps=rate
        )
    return out


def _problem(full, nodes, model, workload, per_node, slo=None) -> Problem:
    gone = [f"{h.name}/{i}" for h in full.hosts if h.name not in nodes for i in range(per_node)]
    cluster = full.without(gone)
    slo = slo or base_slo(model, workload).scaled(SLO_SCALE)
    return Problem(
        cluster, model, workload, slo, rate_rps=workload.rate_rps, efficiency=calibrated_efficiency()
    )


def _drive(sim, policy, events, full, problem0, initial, per_node, budget_s, seed) -> int:
    """Decide every policy action in trace order (the planner runs on the cluster as it will be)."""
    alive = [h.name for h in problem0.cluster.hosts]
    current, replans, serving_s = initial.plan, 0, 0.0  # serving_s: when the last decision is in place
    for e in sorted(events, key=lambda e: e.time_s):
        if e.time_s == 0:
            continue
        gpus = [f"{n}/{i}" for n in e.nodes for i in range(per_node)]
        before = alive
        alive = alive + list(e.nodes) if e.op == "add" else [n for n in alive if n not in e.nodes]
        problem = _problem(full, alive, problem0.model, problem0.workload, per_node, problem0.slo)
        if e.op == "remove":
            sim.fail_at(e.time_s + spot.GRACE_S, gpus, grace_s=0.0)
        if policy == "reroute-only" or not alive:
            continue
        at_s = e.time_s  # swarm acts on the notice; restart only once the membership drops the node
        if policy != "swarm" and e.op == "remove":
            at_s = detection.detected_at_s(before, e.nodes, e.time_s + spot.GRACE_S, seed=seed)
        try:
            if policy == "swarm":
                new, serving_s = _swarm_step(sim, e, problem, current, at_s, serving_s, budget_s, seed)
            else:
                new = _restart_step(sim, problem, current, at_s, budget_s, seed)
        except InfeasibleError:  # too few instances left for any plan: keep what still runs
            continue
        if new is not None:
            current, replans = new, replans + 1
    return replans


def _swarm_step(sim, event, problem, current, at_s, serving_s, budget_s, seed):
    """(the new plan or None, when it is in place): decided at `at_s`, installed no earlier than the
    previous decision is in place (`serving_s`) and, at a notice, HANDOVER_S before the instances go."""
    not_before_s = serving_s
    if event.op == "remove":
        not_before_s = max(not_before_s, event.time_s + spot.GRACE_S - HANDOVER_S)
        try:
            replanned = recovery.lightweight(problem, current)
        except InfeasibleError:  # the survivors cannot hold the model as they stand: search afresh
            replanned = recovery.full(problem, current, budget_s=budget_s, seed=seed)
        else:  # the survivors as they stand may be far worse than new groups (e.g. one group left)
            fresh = recovery.full(problem, current, budget_s=budget_s, seed=seed)
            better = fresh.plan.predicted.goodput_rps >= FULL_GAIN * replanned.plan.predicted.goodput_rps
            planner_s = fresh.planner_s + replanned.planner_s  # both ran before deciding
            replanned = replace(fresh if better else replanned, planner_s=planner_s)
    else:
        replanned = recovery.full(problem, current, budget_s=budget_s, seed=seed)
        if replanned.plan.predicted.goodput_rps < FULL_GAIN * current.predicted.goodput_rps:
            return None, serving_s
    ready_s = recovery.install(sim, at_s, replanned, make_before_break=True, not_before_s=not_before_s)
    return replanned.plan, ready_s


def _restart_step(sim, problem, current, at_s, budget_s, seed):
    new = plan_system("swarm", problem, budget_s=budget_s, seed=seed).plan.with_epoch(current.epoch + 1)
    sim.replan_at(at_s, new, reload_s=recovery.full_reload_s(problem, new), restart=True)
    return new


def _latency(ledger, stop_s: float, problem) -> dict:
    done = ledger.state == DONE
    age = np.where(done, ledger.done_s - ledger.arrival_s, stop_s - ledger.arrival_s)
    ok = (
        done
        & (ledger.first_token_s - ledger.arrival_s <= problem.slo.ttft_s)
        & (
            (ledger.done_s - ledger.first_token_s) / np.maximum(ledger.output_tokens - 1, 1)
            <= problem.slo.tpot_s
        )
    )
    per_token = age / ledger.output_tokens
    return {
        "p99_s": float(np.percentile(age, 99)),
        "p50_s": float(np.percentile(age, 50)),
        "p99_per_token_s": float(np.percentile(per_token, 99)),
        "slo_attainment": float(ok.mean()),
        "done": int(done.sum()),
        "unfinished": int((~done).sum()),
        "restarts": int(ledger.num_restarts.sum()),
    }
