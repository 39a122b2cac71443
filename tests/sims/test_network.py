"""Links: latency, fair sharing between concurrent transfers, aborts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sims.core import Simulator
from sims.network import Link, Network, kv_route
from swarm.hardware import parse_cluster
from swarm.wire.plan import Stage

CLUSTER = parse_cluster(
    """
[[host]]
name = "a"
gpu = "A40"
count = 2
[[host]]
name = "b"
gpu = "A40"
count = 2
[network]
default_gbps = 8
""",
    name="ab",
)
CLUSTER = replace(CLUSTER, latency_s=0.0)


def test_two_transfers_each_get_half_the_bandwidth():
    sim, done = Simulator(), {}
    link = Link(sim, "a->b", gbps=8.0, latency_s=0.0)  # 1e9 bytes/s
    link.start(1, 1e9, lambda: done.setdefault(1, sim.now_s), ())
    link.start(2, 1e9, lambda: done.setdefault(2, sim.now_s), ())
    sim.run()
    assert done[1] == pytest.approx(2.0) and done[2] == pytest.approx(2.0)


def test_a_transfer_speeds_up_when_the_other_finishes():
    sim, done = Simulator(), {}
    link = Link(sim, "a->b", gbps=8.0, latency_s=0.0)
    link.start(1, 0.5e9, lambda: done.setdefault(1, sim.now_s), ())  # 1 s at half speed
    link.start(2, 1.5e9, lambda: done.setdefault(2, sim.now_s), ())  # 0.5e9 shared, then 1e9 alone
    sim.run()
    assert done[1] == pytest.approx(1.0)
    assert done[2] == pytest.approx(2.0)


def test_late_joiner_shares_from_when_it_starts():
    sim, done = Simulator(), {}
    link = Link(sim, "a->b", gbps=8.0, latency_s=0.0)
    link.start(1, 1e9, lambda: done.setdefault(1, sim.now_s), ())
    sim.at(0.5, link.start, 2, 0.25e9, lambda: done.setdefault(2, sim.now_s), ())
    sim.run()
    assert done[2] == pytest.approx(1.0)  # 0.25e9 at 0.5e9 B/s
    assert done[1] == pytest.approx(1.25)  # 0.5e9 alone, 0.25e9 shared, 0.25e9 alone


def test_network_adds_latency_and_network_efficiency():
    sim, done = Simulator(), []
    net = Network(sim, replace(CLUSTER, latency_s=0.01))
    net.send("a", "b", 0.7e9, lambda: done.append(sim.now_s))  # 8 Gbit/s x 0.7 default efficiency
    sim.run()
    assert done == [pytest.approx(0.01 + 1.0)]


def test_aborted_transfer_frees_its_share():
    sim, done = Simulator(), {}
    net = Network(sim, CLUSTER)
    first = net.send("a", "b", 0.7e9, lambda: done.setdefault("first", sim.now_s))
    net.send("a", "b", 0.7e9, lambda: done.setdefault("second", sim.now_s))
    sim.at(0.5, net.abort, first)
    sim.run()
    assert "first" not in done
    assert done["second"] == pytest.approx(0.5 + 0.75)  # 0.25 of it shared, the rest alone


def test_kv_route_picks_the_slowest_host_pair():
    prefill = (Stage(("a/0",), (0, 10)), Stage(("b/0",), (10, 32)))
    decode = (Stage(("a/1",), (0, 32)),)
    src, dst, share = kv_route(CLUSTER, prefill, decode, 32)
    assert (src, dst) == ("b", "a")  # 22 layers over 8 Gbit/s beat 10 layers within host a
    assert share == pytest.approx(22 / 32)
