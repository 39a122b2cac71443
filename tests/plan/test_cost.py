"""The cost model: monotone in work, memory feasibility, KV wire sizes, links and efficiency factors."""

from __future__ import annotations

import numpy as np
import pytest

from swarm.plan.cost import Efficiency, group_cost, kv_route, kv_transfer_s, kv_wire_bytes
from swarm.plan.errors import PlanError
from swarm.plan.parallel import configure


def test_prefill_time_grows_with_tokens(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    cost = group_cost(problem, configure(problem, hosts_of(cloud32)["a40-0"], "prefill"))
    times = cost.prefill_s(np.array([128, 512, 1024, 2048, 4096]))
    assert np.all(np.diff(times) > 0)
    assert cost.prefill_s(2048, 4) < cost.prefill_s(2048, 1)  # shorter sequences: less attention


def test_decode_step_grows_with_batch_and_context(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    cost = group_cost(problem, configure(problem, hosts_of(cloud32)["a6000-0"], "decode"))
    by_batch = cost.decode_step_s(np.array([1, 8, 32, 128, 512]), 1000)
    by_context = cost.decode_step_s(16, np.array([1_000, 10_000, 50_000]))
    assert np.all(np.diff(by_batch) > 0) and np.all(np.diff(by_context) > 0)
    # batching amortises the weights: 64 sequences cost far less than 64 single steps
    assert cost.decode_step_s(64, 64 * 1000) < 8 * cost.decode_step_s(1, 1000)


def test_four_bit_kv_is_about_0_28_of_fp16(llama30b):
    ratio = kv_wire_bytes(llama30b, 1000, 4) / kv_wire_bytes(llama30b, 1000, 16)
    assert ratio == pytest.approx(0.28, abs=0.005)
    assert kv_wire_bytes(llama30b, 1000, 8) / kv_wire_bytes(llama30b, 1000, 16) == pytest.approx(8.5 / 16)


def test_kv_transfer_matches_the_papers_figures(llama30b):
    # notes/papers.md: 1,155-token prompt on LLaMA-30B is 1.84 GB fp16: 2.95 s at 5 Gbps, 0.83 s at 4.5 bits
    assert kv_transfer_s(llama30b, 1155, 5, 16) == pytest.approx(2.95, abs=0.01)
    assert kv_transfer_s(llama30b, 1155, 5, 4) == pytest.approx(0.83, abs=0.01)
    assert kv_transfer_s(llama30b, 1155, 40, 16, latency_s=0.002) == pytest.approx(0.369 + 0.002, abs=0.002)


def test_llama30b_does_not_fit_one_24gb_gpu_but_fits_8xa100(cloud32, inhouse, llama30b, conv, make_problem):
    problem = make_problem(cloud32, llama30b, conv)
    assert configure(problem, ["a5000-0/0"], "decode") is None
    big = make_problem(inhouse, llama30b, conv)
    deployment = configure(big, inhouse.gpu_ids, "decode")
    assert deployment is not None
    # (8 x 80 GB x 0.9 - 65 GB of weights) / 1.6 MB per token is about 320k tokens
    assert 250_000 < group_cost(big, deployment).max_kv_tokens < 330_000


def test_slower_pipeline_link_costs_time(llama30b, conv, make_problem, two_host_cluster):
    times = []
    for gbps in (1.0, 100.0):
        cluster = two_host_cluster("RTX3090Ti", "RTX3090Ti", 2, 2, gbps=gbps)
        problem = make_problem(cluster, llama30b, conv)
        deployment = configure(problem, cluster.gpu_ids, "decode", tp=2, pp=2)
        times.append(group_cost(problem, deployment).prefill_s(1000))
    assert times[0] > times[1]


def test_tensor_parallel_speeds_up_prefill_more_over_nvlink(cloud32, inhouse, llama7b, conv, make_problem):
    speedups = []
    for cluster, host in ((cloud32, "a40-0"), (inhouse, "a100-0")):
        problem = make_problem(cluster, llama7b, conv)
        one = group_cost(problem, configure(problem, [f"{host}/0"], "prefill"))
        four = group_cost(problem, configure(problem, [f"{host}/{i}" for i in range(4)], "prefill", tp=4))
        speedups.append(one.prefill_s(2048) / four.prefill_s(2048))
    pcie, nvlink = speedups
    assert 1.0 < pcie < nvlink <= 4.0  # the all-reduce over PCIe eats much of the gain


def test_memory_efficiency_scales_memory_bound_decode(cloud32, llama7b, conv, make_problem):
    deployment = configure(make_problem(cloud32, llama7b, conv), ["a40-0/0"], "decode")
    steps = []
    for memory in (0.8, 0.4):
        efficiency = {"A40": Efficiency(compute=0.5, memory=memory, network=0.7)}
        steps.append(group_cost(make_problem(cloud32, llama7b, conv, efficiency=efficiency),
                                deployment).decode_step_s(1, 500))
    assert steps[1] == pytest.approx(2 * steps[0], rel=0.05)


def test_overlap_zero_adds_compute_and_memory_time_and_one_is_the_roofline(cloud32, llama7b, conv, make_problem):
    deployment = configure(make_problem(cloud32, llama7b, conv), ["a40-0/0"], "decode")

    def step_s(**terms):
        efficiency = {"A40": Efficiency(compute=0.5, memory=0.8, network=0.7, **terms)}
        return group_cost(make_problem(cloud32, llama7b, conv, efficiency=efficiency), deployment).decode_step_s(
            64, 64 * 500)

    roofline, serial = step_s(), step_s(overlap=0.0)
    half = step_s(overlap=0.5)
    assert roofline == step_s(overlap=1.0)  # the default is the plain roofline
    assert roofline < half < serial
    assert half == pytest.approx((roofline + serial) / 2)


def test_attention_efficiency_slows_only_the_work_on_the_kv_cache(cloud32, llama7b, conv, make_problem):
    deployment = configure(make_problem(cloud32, llama7b, conv), ["a40-0/0"], "decode")

    def step_s(batch, context_tokens, attention):
        efficiency = {"A40": Efficiency(compute=0.5, memory=0.8, network=0.7, attention=attention)}
        cost = group_cost(make_problem(cloud32, llama7b, conv, efficiency=efficiency), deployment)
        return cost.decode_step_s(batch, context_tokens)

    # a short context is weight-bound: attention's speed barely matters; a long one is KV-bound
    assert step_s(1, 10, 0.25) == pytest.approx(step_s(1, 10, 1.0), rel=0.01)
    long_full, long_slow = step_s(8, 8 * 4000, 1.0), step_s(8, 8 * 4000, 0.25)
    assert long_slow > 1.5 * long_full


def test_larger_tpot_target_allows_larger_batches(cloud32, llama7b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama7b, conv)
    cost = group_cost(problem, configure(problem, hosts_of(cloud32)["a40-0"][:2], "decode"))
    batches = [cost.max_decode_batch(t, 1000) for t in (0.01, 0.03, 0.06, 0.12)]
    assert batches[0] <= batches[1] <= batches[2] <= batches[3]
    assert batches[-1] > 0
    assert cost.max_decode_batch(1e-6, 1000) == 0.0


def test_efficiency_rejects_impossible_fractions():
    with pytest.raises(PlanError, match="fraction of peak"):
        Efficiency(compute=1.5, memory=0.8, network=0.7)
    with pytest.raises(PlanError, match="attention"):
        Efficiency(compute=0.5, memory=0.8, network=0.7, attention=0.0)
    with pytest.raises(PlanError, match="overlap"):
        Efficiency(compute=0.5, memory=0.8, network=0.7, overlap=-0.1)


def test_kv_route_is_bounded_by_the_slowest_host_pair(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    hosts = hosts_of(cloud32)
    prefill = configure(problem, hosts["a6000-0"] + hosts["a5000-0"], "prefill", tp=4, pp=2)
    decode = configure(problem, hosts["a6000-1"], "decode")
    route = kv_route(problem, prefill, decode)
    # a6000-0 -> a6000-1 is 40 Gbps, a5000-0 -> a6000-1 the 5 Gbps default: the latter bounds it
    assert (route.src_host, route.dst_host) == ("a5000-0", "a6000-1")
    share = next(s.layers[1] - s.layers[0] for s in prefill.stages if s.gpus[0].startswith("a5000")) / 60
    assert route.share == pytest.approx(share)
    assert route.gbps == pytest.approx(5 * 0.7) and route.latency_s == pytest.approx(cloud32.latency_s)
