"""Conservation under load, failures, preemptions with a grace period, re-plans and memory pressure."""

from __future__ import annotations

import numpy as np

from sims.cluster_sim import ClusterSim
from sims.core import Simulator
from sims.ledger import DONE, FAILED, QUEUED, Ledger
from sims.replica import DecodeReplica
from sims.workloads import resample
from swarm.hardware import load_cluster
from swarm.models import model_spec
from swarm.plan import Problem, base_slo, configure, group_cost, with_role
from swarm.plan.evaluate import evaluate_deployments
from swarm.workloads import load_workload


def _counts_add_up(ledger: Ledger) -> None:
    counts = ledger.counts()
    assert sum(counts.values()) == len(ledger)


def test_no_request_vanishes_under_overload(problem, wide_plan):
    ledger = resample(problem.workload, 40.0, 30.0, seed=3)  # far beyond capacity
    sim = ClusterSim(problem, wide_plan, ledger, seed=0)
    sim.run(until_s=60.0)
    _counts_add_up(ledger)
    assert (ledger.state == QUEUED).sum() > 0  # some are still waiting, none were dropped
    sim.run()
    assert (ledger.state == DONE).all()


def test_failed_prefill_replica_requests_are_rerouted(problem, wide_plan):
    n = 20
    ledger = Ledger(np.zeros(n), np.full(n, 1500), np.full(n, 20))  # a burst: queues on both prefills
    sim = ClusterSim(problem, wide_plan, ledger, seed=0)
    prefill = wide_plan.groups[0]
    assert prefill.role == "prefill"
    held = {}
    sim.sim.at(0.01, lambda: held.update(queue=list(sim.replicas[prefill.id].queue)))
    sim.fail_at(0.01, prefill.gpu_ids)
    sim.run()
    assert held["queue"], "the prefill replica had queued work when it failed"
    assert (ledger.state == DONE).all()
    assert (ledger.num_restarts[held["queue"]] == 1).all()


def test_failed_decode_replica_resumes_from_the_last_token(problem, wide_plan):
    ledger = resample(problem.workload, 6.0, 60.0, seed=5)
    sim = ClusterSim(problem, wide_plan, ledger, seed=0)
    decode = next(g for g in wide_plan.groups if g.role == "decode")
    seen = {}
    sim.sim.at(20.0 - 1e-9, lambda: seen.update(running=dict(sim.replicas[decode.id].running)))
    sim.fail_at(20.0, decode.gpu_ids)
    sim.run()
    assert seen["running"], "the decode replica had work when it failed"
    assert (ledger.state == DONE).all()
    recovered = list(seen["running"])
    assert (ledger.num_restarts[recovered] >= 1).all()


def test_restart_recovery_starts_requests_over(problem, wide_plan):
    ledger = resample(problem.workload, 6.0, 60.0, seed=5)
    sim = ClusterSim(problem, wide_plan, ledger, seed=0, recovery="restart")
    decode = next(g for g in wide_plan.groups if g.role == "decode")
    delivered = {}

    def snapshot():
        replica = sim.replicas[decode.id]
        delivered.update({r: replica._tokens_done(r) for r in replica.running})

    sim.sim.at(20.0 - 1e-9, snapshot)
    sim.sim.at(
        20.0 + 1e-9, lambda: delivered.update(after={r: int(ledger.tokens_done[r]) for r in delivered})
    )
    sim.fail_at(20.0, decode.gpu_ids)
    sim.run()
    after = delivered.pop("after")
    assert delivered and all(after[r] == 0 for r in delivered)
    assert (ledger.state == DONE).all()


def test_grace_period_moves_kv_instead_of_recomputing(problem, wide_plan):
    ledger = resample(problem.workload, 6.0, 60.0, seed=6)
    sim = ClusterSim(problem, wide_plan, ledger, seed=0)
    decode = next(g for g in wide_plan.groups if g.role == "decode")
    sim.fail_at(20.0, decode.gpu_ids, grace_s=30.0)
    sim.run()
    assert (ledger.state == DONE).all()
    assert ledger.num_restarts.sum() == 0  # every running sequence's KV reached the other decoder


def test_losing_every_replica_leaves_requests_queued_not_lost(problem, wide_plan):
    ledger = resample(problem.workload, 4.0, 40.0, seed=7)
    sim = ClusterSim(problem, wide_plan, ledger, seed=0)
    sim.fail_at(10.0, problem.cluster.gpu_ids)
    sim.run(until_s=500.0)
    _counts_add_up(ledger)
    assert (ledger.arrival_s[ledger.state == QUEUED] >= 0).all()
    assert (ledger.state == QUEUED).sum() > 0 and (ledger.state == FAILED).sum() == 0


def test_lightweight_replan_keeps_unchanged_replicas(problem, wide_plan):
    deployments = [
        with_role(d, d.role) for d in (configure(problem, g.gpu_ids, g.role) for g in wide_plan.groups)
    ]
    flipped = [with_role(d, "decode") if i == 0 else d for i, d in enumerate(deployments)]
    new_plan = evaluate_deployments(problem, flipped).plan
    ledger = resample(problem.workload, 3.0, 60.0, seed=8)
    sim = ClusterSim(problem, wide_plan, ledger, seed=0)
    before = {}
    sim.sim.at(
        29.0, lambda: before.update({r.role + str(sorted(sim._gpus(g))): r for g, r in sim.replicas.items()})
    )
    sim.replan_at(30.0, new_plan, reload_s=100.0, flip_s=0.5)
    sim.run()
    kept = [
        r
        for g, r in sim.replicas.items()
        if g >= 0
        and r.role + str(sorted(sim._gpus(g))) in before
        and before[r.role + str(sorted(sim._gpus(g)))] is r
    ]
    assert len(kept) == 3  # the flipped one is new; nothing waited for a 100 s reload
    assert (ledger.state == DONE).all()
    assert np.nanmax(ledger.done_s) < 200.0


def test_kv_pressure_preempts_and_still_finishes_everything():
    cluster = load_cluster("inhouse-8xa100")
    model, workload = model_spec("llama-30b"), load_workload("azure-conv")
    problem = Problem(cluster, model, workload, base_slo(model, workload), rate_rps=1.0)
    decode = configure(problem, cluster.gpu_ids[:1], "decode")
    cost = group_cost(problem, decode)
    n = 12
    ledger = Ledger(np.zeros(n), np.full(n, 1000), np.full(n, 400))
    sim = Simulator()
    replica = DecodeReplica(sim, 0, cost, ledger, lambda rid: None)
    for rid in range(n):
        ledger.first_token(rid, 0.0)
        replica.admit_kv(rid)
    sim.run()
    assert cost.max_kv_tokens < n * 1400  # the batch cannot hold everyone at full length
    assert replica.num_preemptions > 0
    assert (ledger.state == DONE).all()
