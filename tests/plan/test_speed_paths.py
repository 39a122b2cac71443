"""The fast paths of the evaluator agree with the plain ones: batched attainment, the grid goodput
search, the LP routing kept per utilisation bound, evaluation caches; check_problem on large clusters."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from swarm.hardware import parse_cluster
from swarm.models import model_spec
from swarm.plan.errors import InfeasibleError
from swarm.plan.estimate import Scenario
from swarm.plan.evaluate import GOODPUT_TOLERANCE, evaluate, goodput_grid_rps, goodput_rps
from swarm.plan.orchestrate import RHO_TARGET, Router, carried_rps, flow_network
from swarm.plan.parallel import configure
from swarm.plan.search import plan
from swarm.plan.validate import check_problem, largest_groups


def _replicated(cluster, copies: int):
    """`copies` copies of `cluster`, each keeping its own links (copies meet at the default bandwidth)."""
    hosts = tuple(replace(h, name=f"{h.name}-c{c}") for c in range(copies) for h in cluster.hosts)
    links = {frozenset(f"{n}-c{c}" for n in pair): gbps for c in range(copies) for pair, gbps in cluster.links.items()}
    return replace(cluster, hosts=hosts, links=links, name=f"{cluster.name}x{copies}")


def _scenario(problem, hosts, roles):
    deployments = {i: configure(problem, hosts[h], role) for i, (h, role) in enumerate(roles)}
    network = flow_network(problem, deployments)
    pairs = network.pairs()
    scenario = Scenario.build(problem, deployments, pairs)
    return network, pairs, scenario


@pytest.mark.parametrize("roles", [
    [("a40-0", "prefill"), ("a40-1", "decode"), ("a6000-0", "decode"), ("a6000-1", "prefill")],
    [("a40-0", "both"), ("a6000-0", "both")],
])
def test_batched_attainment_equals_one_rate_at_a_time(cloud32, llama30b, conv, make_problem, hosts_of, roles):
    problem = make_problem(cloud32, llama30b, conv)
    network, pairs, scenario = _scenario(problem, hosts_of(cloud32), roles)
    router = Router.build(network, dict(zip(pairs, scenario.zero_load_attainment(), strict=True)))
    rates = router.capacity_rps * np.geomspace(0.05, 1.5, 9)
    shares = np.array([[router.shares_at(r).kv.get(p, 0.0) for p in pairs] for r in rates])
    one_by_one = [scenario.estimate(r, s, with_p90=False).slo_attainment for r, s in zip(rates, shares, strict=True)]
    assert scenario.attainments(rates, shares) == pytest.approx(one_by_one, abs=1e-12)
    assert one_by_one[0] > 0.5 and one_by_one[-1] < one_by_one[0]  # the rates span the cliff


@pytest.mark.parametrize("crossing", [0.0, 1e-5, 0.3, 0.7, 0.95, 1.0, 1.13, 3.0, 20.0])
def test_grid_goodput_search_finds_the_bisection_crossing(cloud32, llama30b, conv, make_problem, crossing):
    problem = make_problem(cloud32, llama30b, conv)
    capacity = 2.0
    calls = []

    def attainment_at(rate):  # a cliff at crossing x capacity
        return 0.95 if rate <= crossing * capacity else 0.5

    def attainments_at(rates):
        calls.append(len(rates))
        return np.array([attainment_at(r) for r in rates])

    grid = goodput_grid_rps(problem, attainments_at, capacity)
    bisection = goodput_rps(problem, attainment_at, capacity)
    if crossing < 1e-4:
        assert grid == bisection == 0.0
    elif crossing > 9.6:
        assert grid == pytest.approx(9.6 * capacity) and bisection >= 8 * capacity
    else:
        truth = crossing * capacity
        for found in (grid, bisection):
            assert truth * math.exp(-GOODPUT_TOLERANCE) <= found <= truth
        assert len(calls) <= 4


def test_routing_kept_per_bound_respects_the_utilisation_cap(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    roles = [("a40-0", "prefill"), ("a40-1", "decode"), ("a6000-0", "decode"), ("a6000-1", "prefill")]
    network, pairs, scenario = _scenario(problem, hosts_of(cloud32), roles)
    router = Router.build(network, dict(zip(pairs, scenario.zero_load_attainment(), strict=True)))
    capacity = router.capacity_rps
    for fraction in (0.01, 0.2, 0.5, 0.7):  # below 0.79 x capacity the cap is RHO_TARGET
        rate = fraction * capacity
        carried = carried_rps(network, router.shares_at(rate).kv)
        assert rate / carried <= RHO_TARGET + 1e-9
    high = [router.shares_at(f * capacity) for f in (0.8, 0.9, 0.99)]
    assert high[0] is high[1] is high[2]  # one bound, one solve
    assert router.shares_at(1.5 * capacity) is router.capacity_shares


def test_evaluation_with_warm_caches_equals_a_cold_one(cloud32, llama30b, conv, make_problem):
    warm = make_problem(cloud32, llama30b, conv, rate_rps=5.0)
    result = plan(warm, budget_s=60, seed=1, max_evaluations=40)
    groups = [(g.gpu_ids, g.role) for g in result.best.plan.groups]
    cold = evaluate(make_problem(cloud32, llama30b, conv, rate_rps=5.0), groups)
    again = evaluate(warm, groups)
    for field in ("score", "goodput_rps", "slo_attainment", "capacity_rps", "ttft_p90_s", "tpot_p90_s"):
        assert getattr(cold, field) == getattr(again, field)
    assert cold.plan == again.plan


def test_check_problem_accepts_clusters_with_more_gpus_than_layers(cloud32, llama30b, conv, make_problem):
    big = _replicated(cloud32, 8)  # 256 GPUs, llama-30b has 60 layers
    problem = make_problem(big, llama30b, conv)
    check_problem(problem)
    for tp, ids in largest_groups(problem):
        assert len(ids) <= tp * llama30b.num_layers and configure(problem, ids, "decode", tp=tp) is not None


def _with_memory(cluster, host_index: int, memory_gb: float):
    host = cluster.hosts[host_index]
    hosts = list(cluster.hosts)
    hosts[host_index] = replace(host, gpu=replace(host.gpu, memory_gb=memory_gb))
    return replace(cluster, hosts=tuple(hosts))


def test_check_problem_skips_gpus_too_small_for_a_layer(conv, make_problem):
    llama7b = model_spec("llama-7b")
    text = "".join(f'[[host]]\nname = "h{i}"\ngpu = "L4"\ncount = 1\n' for i in range(65))
    cluster = parse_cluster(text + "[network]\ndefault_gbps = 10\n", name="small-gpus")
    for i in range(1, 65):  # 64 GPUs of 0.5 GB: 16 GB in all, but none holds one layer and its activations
        cluster = _with_memory(cluster, i, 0.5)
    check_problem(make_problem(cluster, llama7b, conv))  # h0 (an L4) holds the model alone
    with pytest.raises(InfeasibleError, match="does not fit any group"):
        check_problem(make_problem(cluster.without(["h0/0"]), llama7b, conv))


def test_plan_runs_on_a_cluster_with_more_gpus_than_layers(cloud32, llama7b, conv, make_problem):
    problem = make_problem(_replicated(cloud32, 2), llama7b, conv, rate_rps=20.0)  # 64 GPUs, 32 layers
    result = plan(problem, budget_s=60, seed=0, max_evaluations=12)
    assert result.best.is_feasible and result.best.goodput_rps > 0
