"""The SLO estimator: monotone in rate and SLO, sensitive to links and KV format, and fast."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from swarm.plan.estimate import Scenario, estimate
from swarm.plan.parallel import configure
from swarm.plan.queueing import phi as _phi


def _disaggregated(problem, hosts):
    deployments = {0: configure(problem, hosts["a40-0"], "prefill"),
                   1: configure(problem, hosts["a40-1"], "decode"),
                   2: configure(problem, hosts["a6000-0"], "decode")}
    pairs = [(0, 1), (0, 2)]
    return Scenario.build(problem, deployments, pairs), np.array([0.5, 0.5])


def test_attainment_falls_as_the_rate_grows(cloud32, llama30b, conv, make_problem, hosts_of):
    scenario, shares = _disaggregated(make_problem(cloud32, llama30b, conv, slo_scale=2.0), hosts_of(cloud32))
    rates = np.geomspace(0.01, 20, 40)
    values = [scenario.estimate(r, shares, with_p90=False).slo_attainment for r in rates]
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:], strict=False))
    assert values[0] > 0.9 and values[-1] < 0.05  # 20 req/s is far past one prefill replica


def test_a_trickle_meets_the_zero_load_attainment(cloud32, llama30b, conv, make_problem, hosts_of):
    scenario, shares = _disaggregated(make_problem(cloud32, llama30b, conv), hosts_of(cloud32))
    zero_load = float(np.dot(shares, scenario.zero_load_attainment()))
    assert scenario.estimate(1e-6, shares).slo_attainment == pytest.approx(zero_load, abs=1e-3)


def test_looser_slo_never_lowers_attainment(cloud32, llama30b, conv, make_problem, hosts_of):
    values = []
    for scale in (0.5, 1.0, 2.0, 4.0):
        scenario, shares = _disaggregated(make_problem(cloud32, llama30b, conv, slo_scale=scale), hosts_of(cloud32))
        values.append(scenario.estimate(1.0, shares).slo_attainment)
    assert values == sorted(values) and values[-1] > values[0]


def test_four_bit_kv_helps_over_a_slow_link(llama30b, conv, make_problem, two_host_cluster):
    cluster = two_host_cluster("A6000", "A6000", 4, 4, gbps=5)
    busy, light = {}, {}
    for bits in (16, 4):
        problem = make_problem(cluster, llama30b, conv, kv_bits=bits)
        deployments = {0: configure(problem, cluster.gpu_ids[:4], "prefill"),
                       1: configure(problem, cluster.gpu_ids[4:], "decode")}
        busy[bits] = estimate(problem, deployments, {(0, 1): 1.0}, 0.5)
        light[bits] = estimate(problem, deployments, {(0, 1): 1.0}, 0.05)
    # fp16 KV of a mean prompt takes about 3 s at 5 Gbps: the link saturates near 0.34 req/s
    assert busy[16].slo_attainment < 0.05 < 0.9 < busy[4].slo_attainment
    # the transfer delays the second token, so it shows in TPOT (the first token comes from prefill)
    assert light[16].tpot_p90_s > light[4].tpot_p90_s
    assert light[16].ttft_p90_s == pytest.approx(light[4].ttft_p90_s)


def test_p90s_are_consistent_with_the_cost_model(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    scenario, shares = _disaggregated(problem, hosts_of(cloud32))
    result = scenario.estimate(0.5, shares)
    prefill = configure(problem, hosts_of(cloud32)["a40-0"], "prefill")
    from swarm.plan.cost import group_cost

    median_prefill_s = group_cost(problem, prefill).prefill_s(float(np.median(problem.lengths[0])))
    assert result.ttft_p90_s > median_prefill_s
    assert 0 < result.tpot_p90_s < problem.slo.tpot_s * 2


def test_overloaded_colocated_group_misses_everything(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    deployments = {0: configure(problem, hosts_of(cloud32)["a40-0"], "both")}
    result = estimate(problem, deployments, {(0, 0): 1.0}, 50.0)
    assert result.slo_attainment == 0.0 and math.isinf(result.tpot_p90_s)


def test_phi_matches_erf():
    z = np.linspace(-5, 5, 101)
    exact = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z])
    assert np.max(np.abs(_phi(z) - exact)) < 2e-6
    assert _phi(np.array([np.inf, -np.inf, np.nan])) == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)


def test_colocated_prefills_stall_decoding(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    both = {0: configure(problem, hosts_of(cloud32)["a40-0"], "both")}
    split = {0: configure(problem, hosts_of(cloud32)["a40-0"], "prefill"),
             1: configure(problem, hosts_of(cloud32)["a40-1"], "decode")}
    rates = [0.1, 0.3, 0.6, 0.9, 1.2]
    colocated = [estimate(problem, both, {(0, 0): 1.0}, r) for r in rates]
    assert all(b.slo_attainment <= a.slo_attainment + 1e-9 for a, b in zip(colocated, colocated[1:], strict=False))
    disaggregated = estimate(problem, split, {(0, 1): 1.0}, 0.9)
    assert colocated[3].tpot_p90_s > disaggregated.tpot_p90_s  # its decode waits for prefills


def test_a_prompt_behind_a_longer_one_waits_for_it_at_every_stage():
    from swarm.plan.profiles import _blocked_s

    latencies = np.array([1.0, 2.0, 3.0, 4.0])
    # E[(T - t)+] over the four latencies, times (pp - 1) / pp
    assert _blocked_s(latencies, np.array([1.0, 2.5, 4.0]), pp=2) == pytest.approx([0.75, 0.25, 0.0])
    assert _blocked_s(latencies, np.array([0.0]), pp=4) == pytest.approx([2.5 * 3 / 4])
    assert not _blocked_s(latencies, latencies, pp=1).any()  # one stage: nothing to catch up with


def test_blocking_is_all_or_nothing_with_the_same_mean():
    """A prompt is held up only by a longer batch ahead: P(T > t), and _blocked_s / P(T > t) when it is."""
    from swarm.plan.profiles import _blocked_s, _blocked_share

    latencies = np.array([1.0, 2.0, 3.0, 4.0])
    own = np.array([0.5, 2.5, 4.0])
    share = _blocked_share(latencies, own, pp=2)
    assert share == pytest.approx([1.0, 0.5, 0.0])
    # E[T - t | T > t] (pp - 1) / pp: (2.5 - 0.5) / 2 and (3.5 - 2.5) / 2
    assert (_blocked_s(latencies, own, pp=2)[:2] / share[:2]) == pytest.approx([1.0, 0.5])
    assert not _blocked_share(latencies, own, pp=1).any()


def test_blocking_in_a_pipeline_lengthens_ttft_only_under_load(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    hosts = hosts_of(cloud32)
    prefill = configure(problem, hosts["a40-0"] + hosts["a40-1"] + hosts["a6000-0"], "prefill", tp=2)
    assert prefill.pp == 6
    deployments = {0: prefill, 1: configure(problem, hosts["a6000-1"], "decode")}
    scenario = Scenario.build(problem, deployments, [(0, 1)])
    assert scenario.blocked_s[0].mean() > 0 and scenario.blocked_s[1].max() == 0  # decode side: one stage
    light = scenario.estimate(1e-6, np.array([1.0]))
    busy = scenario.estimate(3.0, np.array([1.0]))
    unblocked = replace(scenario, blocked_s=np.zeros_like(scenario.blocked_s)).estimate(3.0, np.array([1.0]))
    assert light.slo_attainment == pytest.approx(float(scenario.zero_load_attainment()[0]), abs=1e-3)
    assert busy.ttft_p90_s > unblocked.ttft_p90_s and busy.slo_attainment <= unblocked.slo_attainment


def _two_prefill(problem, hosts):
    """Two prefill replicas (2 GPUs each) sharing the prompts, each with its own decode replica."""
    a40, a6000 = hosts["a40-0"], hosts["a6000-0"]
    deployments = {0: configure(problem, a40[:2], "prefill"), 1: configure(problem, a40[2:], "prefill"),
                   2: configure(problem, a6000, "decode"), 3: configure(problem, hosts["a6000-1"], "decode")}
    pairs = [(0, 2), (1, 3)]
    return Scenario.build(problem, deployments, pairs), np.array([0.5, 0.5])


def test_m_g_1_when_one_server(cloud32, llama30b, conv, make_problem, hosts_of):
    """c = 1: the pooled FIFO queue is the single-server Pollaczek-Khinchine/Takacs queue exactly."""
    from swarm.plan.queueing import queue_wait as _queue_wait

    problem = make_problem(cloud32, llama30b, conv)
    scenario, shares = _disaggregated(problem, hosts_of(cloud32))
    for rate in (0.1, 0.5, 1.0):
        prefill_rate = np.array([rate, 0.0, 0.0])
        pooled = scenario._fifo_wait(prefill_rate)
        alone = _queue_wait(prefill_rate, scenario.mean_service_s, scenario.moment2_s2, scenario.moment3_s3)
        rho = rate * scenario.mean_service_s[0]
        assert pooled[0][0] == pytest.approx(rho)  # P(wait) = rho
        assert pooled[1][0] == pytest.approx(rate * scenario.moment2_s2[0] / (2 * (1 - rho)))  # P-K
        for got, want in zip(pooled, alone, strict=True):
            assert got[0] == pytest.approx(want[0])


def test_pooled_wait_is_at_most_the_independent_queues(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    pooled, shares = _two_prefill(problem, hosts_of(cloud32))
    alone, _ = _two_prefill(replace(problem, orchestrate=False), hosts_of(cloud32))
    assert pooled.pooled and not alone.pooled
    capacity = 1.0 / pooled.mean_service_s[:2]
    waits = []
    for rate in np.linspace(0.05, 0.98, 12) * capacity.sum():
        prefill_rate = rate * np.array([0.5, 0.5, 0.0, 0.0])
        p_wait, wait_s, _, _ = pooled._prefill_wait(prefill_rate)
        alone_p, alone_s, _, _ = alone._prefill_wait(prefill_rate)
        assert p_wait[0] <= alone_p[:2].max() + 1e-12
        assert wait_s[0] <= alone_s[:2].max() + 1e-12
        waits.append(wait_s[0])
    assert all(b >= a for a, b in zip(waits, waits[1:], strict=False))  # monotone in the rate
    assert math.isinf(pooled._prefill_wait(2 * capacity.sum() * np.array([0.5, 0.5, 0.0, 0.0]))[1][0])


def test_pooling_raises_attainment_and_monotone(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv, slo_scale=2.0)
    pooled, shares = _two_prefill(problem, hosts_of(cloud32))
    alone, _ = _two_prefill(replace(problem, orchestrate=False), hosts_of(cloud32))
    rates = np.geomspace(0.05, 10, 30)
    values = [pooled.estimate(r, shares, with_p90=False).slo_attainment for r in rates]
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:], strict=False))
    batched = pooled.attainments(rates, np.tile(shares, (len(rates), 1)))
    assert np.allclose(batched, values, atol=1e-9)
    for r in rates:
        assert pooled.estimate(r, shares).slo_attainment >= alone.estimate(r, shares).slo_attainment - 1e-9
    mid = rates[np.argmin(np.abs(np.array(values) - 0.9))]
    assert pooled.estimate(mid, shares).ttft_p90_s <= alone.estimate(mid, shares).ttft_p90_s


def _pipeline_and_single(problem, hosts):
    """A two-host prefill pipeline (8 A5000s) next to a one-host replica (4 A40s), one decode replica."""
    deployments = {0: configure(problem, hosts["a5000-0"] + hosts["a5000-1"], "prefill"),
                   1: configure(problem, hosts["a40-0"], "prefill"),
                   2: configure(problem, hosts["a6000-0"], "decode")}
    return Scenario.build(problem, deployments, [(0, 2), (1, 2)]), np.array([0.5, 0.5])


def test_load_aware_dispatch_sends_pipelines_less_than_their_share(cloud32, llama30b, conv, make_problem, hosts_of):
    """The entry peer evens out outstanding tokens per share, and a pipeline holds prompts in flight for
    its whole latency: it gets less than its routed share, the rest goes to the other replica."""
    scenario, shares = _pipeline_and_single(make_problem(cloud32, llama30b, conv), hosts_of(cloud32))
    assert scenario.mean_latency_s[0] > 1.5 * scenario.mean_service_s[0]  # group 0 is a pipeline
    assert scenario.mean_latency_s[0] > scenario.mean_latency_s[1]  # that holds its prompts longer
    routed = np.array([1.0, 1.0, 0.0])
    dispatched = scenario._dispatch(routed)
    assert dispatched.sum() == pytest.approx(routed.sum())
    assert dispatched[0] < 0.95 * routed[0] and dispatched[2] == 0.0
    batched = scenario._dispatch(np.array([[1.0, 1.0, 0.0], [0.5, 0.5, 0.0]]))  # (rates, groups) as one
    assert batched[0] == pytest.approx(dispatched)
    uniform, _ = _pipeline_and_single(make_problem(cloud32, llama30b, conv, orchestrate=False), hosts_of(cloud32))
    assert uniform._dispatch(routed) is routed  # uniform routing (the ablation) is not load-aware


def test_a_batch_holds_the_prompts_that_queued_behind_it(cloud32, llama30b, conv, make_problem, hosts_of):
    """The prefill wait until a prompt's batch is done is the FIFO wait stretched by 1 + rho."""
    scenario, _ = _disaggregated(make_problem(cloud32, llama30b, conv), hosts_of(cloud32))
    rate = np.array([0.6 / scenario.mean_service_s[0], 0.0, 0.0])
    fifo, batched = scenario._fifo_wait(rate), scenario._prefill_wait(rate)
    assert batched[1][0] == pytest.approx(fifo[1][0] * 1.6)
    assert batched[0][0] == fifo[0][0]  # the same chance of waiting


def test_request_sample_keeps_the_prompt_tail(cloud32, llama30b, code, make_problem):
    """The followed requests are stratified by prompt length: their quantiles are the length sample's."""
    from swarm.plan.profiles import NUM_REQUESTS, request_sample

    problem = make_problem(cloud32, llama30b, code)
    prompts, outputs = request_sample(problem)
    assert len(prompts) == len(outputs) == NUM_REQUESTS
    for q in (50, 90, 99):
        assert np.percentile(prompts, q) == pytest.approx(np.percentile(problem.lengths[0], q), rel=0.03)
    pairs = set(zip(*problem.lengths, strict=True))
    assert all((p, o) in pairs for p, o in zip(prompts, outputs, strict=True))  # pairs kept together


def test_kv_transfers_share_their_link(two_host_cluster, llama7b, conv, make_problem):
    """Transfers on one host link share it (processor sharing): more traffic slows every KV transfer
    by 1 / (1 - rho_link), the long prompts' most."""
    cluster = two_host_cluster("A40", "A40", 2, 2, gbps=1.0)
    problem = make_problem(cluster, llama7b, conv, kv_bits=16)
    ids = cluster.gpu_ids
    deployments = {0: configure(problem, ids[:2], "prefill"), 1: configure(problem, ids[2:], "decode")}
    scenario = Scenario.build(problem, deployments, [(0, 1)])
    light, busy = (scenario.latency_terms(r, np.array([1.0])) for r in (0.01, 0.5 * scenario.link_rps[0]))
    assert busy.delay_s == pytest.approx(light.delay_s * (1 - 0.01 / scenario.link_rps[0]) / 0.5)


def test_a_full_kv_memory_delays_admission(cloud32, llama30b, code, make_problem, hosts_of):
    """As the decode batch nears its KV memory, more sequences wait to be admitted."""
    scenario, _ = _disaggregated(make_problem(cloud32, llama30b, code), hosts_of(cloud32))
    capacity = scenario.max_batch[1]
    full_rps = capacity / (scenario.mean_output_tokens * np.interp(capacity, scenario.batch_grid[1],
                                                                   scenario.step_grid_s[1]))
    rates = np.array([[0.0, r, 0.0] for r in np.linspace(0.3, 0.98, 8) * full_rps])
    decode = scenario._decode(rates, np.ones_like(rates))
    blocked = decode.blocked[:, 1][decode.ok[:, 1] > 0]
    assert len(blocked) >= 2 and np.all(np.diff(blocked) >= 0) and blocked[-1] > blocked[0]
    assert np.all(decode.batch[decode.ok[:, 1] > 0, 1] <= capacity)


def test_decode_dispatch_evens_out_load_per_share(cloud32, llama30b, conv, make_problem, hosts_of):
    """Among a prefill group's KV partners the entry peer picks the least KV load per share: by Little's
    law the faster-stepping decode group gets more than its plan share, and the split keeps the rate."""
    hosts = hosts_of(cloud32)
    problem = make_problem(cloud32, llama30b, conv)
    deployments = {0: configure(problem, hosts["a40-0"], "prefill"),
                   1: configure(problem, hosts["a6000-0"], "decode"),
                   2: configure(problem, hosts["3090ti-0"] + hosts["3090ti-1"], "decode")}
    scenario = Scenario.build(problem, deployments, [(0, 1), (0, 2)])
    to_p, to_d = np.eye(3)[[0, 0]], np.eye(3)[[1, 2]]
    shares, rate = np.array([0.5, 0.5]), 2.0
    flow = scenario._decode_dispatch(rate * shares, shares, to_p, to_d, np.array([0, 0]), np.array([1, 2]))
    assert flow.sum() == pytest.approx(rate)
    steps = scenario._decode(flow @ to_d, np.ones(3)).step_s[[1, 2]]
    faster = int(np.argmin(steps))
    assert steps[faster] < steps[1 - faster] and flow[faster] > flow[1 - faster]
    uniform = replace(scenario, problem=make_problem(cloud32, llama30b, conv, orchestrate=False))
    routed = rate * shares
    assert uniform._decode_dispatch(routed, shares, to_p, to_d, np.array([0, 0]), np.array([1, 2])) is routed


def test_decode_dispatch_sends_nothing_to_a_partner_that_others_keep_busy(cloud32, llama30b, conv, make_problem,
                                                                        hosts_of):
    """Prefill group 0 shares decode group 2 with prefill group 1, which sends it all its prompts: by load
    per pair share, group 2 looks busy to group 0, which sends everything to its other partner, group 3
    (a Wardrop equilibrium, as the entry peer's least-load-per-share choice makes it)."""
    hosts = hosts_of(cloud32)
    problem = make_problem(cloud32, llama30b, conv)
    deployments = {0: configure(problem, hosts["a40-0"][:2], "prefill"),
                   1: configure(problem, hosts["a40-0"][2:], "prefill"),
                   2: configure(problem, hosts["a6000-0"], "decode"),
                   3: configure(problem, hosts["a6000-1"], "decode")}
    pairs = [(0, 2), (0, 3), (1, 2)]
    scenario = Scenario.build(problem, deployments, pairs)
    to_p, to_d = np.eye(4)[[0, 0, 1]], np.eye(4)[[2, 3, 2]]
    shares, rate = np.array([0.1, 0.4, 0.5]), 2.0
    flow = scenario._decode_dispatch(rate * shares, shares, to_p, to_d, np.array([0, 0, 1]), np.array([2, 3, 2]))
    assert flow.sum() == pytest.approx(rate) and flow[2] == pytest.approx(rate * 0.5)
    assert flow[0] < 0.05 * flow[1]  # the LP's 0.1 of group 0 barely reaches group 2


def test_a_colocated_replica_waits_for_kv_memory_before_the_first_token(cloud32, llama30b, conv, make_problem,
                                                                        hosts_of):
    """A colocated replica prefills a prompt only when its KV fits beside the decoding sequences', so the
    KV-memory wait lowers P(TTFT met) and leaves P(TPOT met) alone (phase-split: the other way round)."""
    problem = make_problem(cloud32, llama30b, conv)
    scenario = Scenario.build(problem, {0: configure(problem, hosts_of(cloud32)["3090ti-0"], "both")}, [(0, 0)])
    rates = np.linspace(0.05, 3.0, 60)
    terms = [scenario.latency_terms(r, np.array([1.0])) for r in rates]
    busy = next(t for t in terms if 0.05 < t.blocked[0] < 0.95 and t.decode_ok[0] > 0)
    free = replace(busy, blocked=np.zeros_like(busy.blocked))
    slo = problem.slo
    assert busy.ttft_cdf(slo.ttft_s).mean() < free.ttft_cdf(slo.ttft_s).mean()
    assert busy.tpot_cdf(slo.tpot_s) == pytest.approx(free.tpot_cdf(slo.tpot_s))
