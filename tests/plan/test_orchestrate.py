"""The routing LP on instances with known optima, the per-rate re-solve, and uniform routing."""

from __future__ import annotations

import math

import pytest

from swarm.plan.errors import InfeasibleError
from swarm.plan.orchestrate import (
    FlowNetwork,
    Router,
    carried_rps,
    orchestrate,
    solve_routing,
    uniform_routing,
)
from swarm.plan.parallel import configure


def test_two_by_two_without_link_limits_matches_the_hand_optimum():
    # prefill capacities 2 and 1 req/s, decode 1 and 2: both tiers carry 3 req/s at most
    network = FlowNetwork(prefill_rps={0: 2.0, 1: 1.0}, decode_rps={2: 1.0, 3: 2.0})
    shares = solve_routing(network)
    assert shares.capacity_rps == pytest.approx(3.0)
    assert shares.prefill[0] == pytest.approx(2 / 3) and shares.prefill[1] == pytest.approx(1 / 3)
    into = {d: sum(s for (_, e), s in shares.kv.items() if e == d) for d in (2, 3)}
    assert into[2] == pytest.approx(1 / 3) and into[3] == pytest.approx(2 / 3)
    assert sum(shares.kv.values()) == pytest.approx(1.0)


def test_link_limits_bind():
    # one prefill group, two decode groups; links carry 1 and 3 req/s: capacity 4, split 1:3
    network = FlowNetwork(prefill_rps={0: 10.0}, decode_rps={1: 10.0, 2: 10.0},
                          link_rps={(0, 1): 1.0, (0, 2): 3.0})
    shares = solve_routing(network)
    assert shares.capacity_rps == pytest.approx(4.0)
    assert shares.kv[(0, 1)] == pytest.approx(0.25) and shares.kv[(0, 2)] == pytest.approx(0.75)


def test_pairs_on_one_host_link_share_it():
    # two prefill and two decode groups, plenty of compute; every pair's KV crosses the same 2 req/s link
    pairs = ((0, 2), (0, 3), (1, 2), (1, 3))
    network = FlowNetwork(prefill_rps={0: 10.0, 1: 10.0}, decode_rps={2: 10.0, 3: 10.0},
                          link_rps=dict.fromkeys(pairs, 2.0), shared_links=(pairs,))
    assert solve_routing(network).capacity_rps == pytest.approx(2.0)
    alone = FlowNetwork(prefill_rps={0: 10.0, 1: 10.0}, decode_rps={2: 10.0, 3: 10.0},
                        link_rps=dict.fromkeys(pairs, 2.0))
    assert solve_routing(alone).capacity_rps == pytest.approx(8.0)


def test_bottleneck_tier_sets_capacity_and_the_other_tier_is_balanced():
    # decode is the bottleneck (2 req/s); the two equal prefill groups share the load evenly
    network = FlowNetwork(prefill_rps={0: 5.0, 1: 5.0}, decode_rps={2: 2.0})
    shares = solve_routing(network)
    assert shares.capacity_rps == pytest.approx(2.0)
    assert shares.prefill[0] == pytest.approx(0.5) and shares.prefill[1] == pytest.approx(0.5)


def test_colocated_groups_time_share():
    # a colocated group prefilling 2 req/s or decoding 2 req/s serves 1 req/s doing both
    network = FlowNetwork(prefill_rps={0: 2.0, 1: 4.0}, decode_rps={0: 2.0, 1: 4.0}, both=frozenset({0, 1}))
    shares = solve_routing(network)
    assert shares.capacity_rps == pytest.approx(3.0)
    assert shares.kv == pytest.approx({(0, 0): 1 / 3, (1, 1): 2 / 3})


def test_uniform_routing_and_its_carried_rate():
    network = FlowNetwork(prefill_rps={0: 2.0, 1: 1.0}, decode_rps={2: 1.0, 3: 2.0})
    shares = uniform_routing(network)
    assert shares.prefill == {0: 0.5, 1: 0.5}
    assert all(s == pytest.approx(0.25) for s in shares.kv.values())
    assert shares.capacity_rps == pytest.approx(2.0)  # prefill 1 and decode 2 saturate at 2 req/s
    assert carried_rps(network, shares.kv) == pytest.approx(2.0)


def test_no_route_is_infeasible():
    with pytest.raises(InfeasibleError, match="prefill"):
        solve_routing(FlowNetwork(prefill_rps={0: 1.0}, decode_rps={}))
    with pytest.raises(InfeasibleError, match="TPOT"):
        solve_routing(FlowNetwork(prefill_rps={0: 1.0}, decode_rps={1: 0.0}))


def test_low_rates_prefer_pairs_that_meet_the_slo_and_high_rates_spill_over():
    network = FlowNetwork(prefill_rps={0: 10.0}, decode_rps={1: 2.0, 2: 2.0},
                          link_rps={(0, 1): 100.0, (0, 2): 100.0})
    router = Router.build(network, {(0, 1): 1.0, (0, 2): 0.5})
    assert router.capacity_rps == pytest.approx(4.0)
    low = router.shares_at(1.0)
    assert low.kv.get((0, 1), 0.0) == pytest.approx(1.0)  # the good pair has room for everything
    high = router.shares_at(3.0)  # 1.6 req/s fit the good pair at utilisation 0.8; the rest spills
    assert high.kv[(0, 1)] == pytest.approx(1.6 / 3) and high.kv[(0, 2)] == pytest.approx(1.4 / 3)
    assert router.shares_at(10.0) is router.capacity_shares


def test_orchestrate_builds_a_network_from_deployments(cloud32, llama30b, conv, make_problem, hosts_of):
    hosts = hosts_of(cloud32)
    for flag in (True, False):
        problem = make_problem(cloud32, llama30b, conv, rate_rps=1.0, orchestrate=flag)
        deployments = {0: configure(problem, hosts["a6000-0"], "prefill"),
                       1: configure(problem, hosts["a6000-1"], "decode"),
                       2: configure(problem, hosts["a5000-2"] + hosts["3090ti-1"], "decode")}
        shares = orchestrate(problem, deployments)
        assert sum(shares.prefill.values()) == pytest.approx(1.0)
        assert sum(shares.kv.values()) == pytest.approx(1.0)
        assert math.isfinite(shares.capacity_rps) and shares.capacity_rps > 0
        if flag:  # a6000-0 to a6000-1 is a 40 Gbps link, to the west hosts 5 Gbps: the LP keeps KV close
            assert shares.kv.get((0, 1), 0.0) > 2 * shares.kv.get((0, 2), 0.0)
        else:
            assert shares.kv[(0, 1)] == pytest.approx(0.5)
