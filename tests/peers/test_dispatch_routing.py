"""Entry-peer routing: plan shares weighted by live load, only groups every peer of which is ready for them
(a peer with several GPUs may be ready for one of its groups and not another); the token ledger."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from peers.daemon_errors import ReplicaFailedError
from peers.dispatch import Ledger, choose_route
from peers.membership import PlanHolder, SwarmView
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage
from swarm.wire.requests import TokenChunk

HOSTS = {"p0": "QmP0", "p1": "QmP1", "d0": "QmD0", "d1": "QmD1"}


def holder() -> PlanHolder:
    groups = tuple(Group(i, "prefill" if h.startswith("p") else "decode", 1, 1, (Stage((f"{h}/0",), (0, 4)),))
                   for i, h in enumerate(HOSTS))
    routing = Routing({0: 0.5, 1: 0.5}, ((0, 2, 0.25), (0, 3, 0.25), (1, 2, 0.25), (1, 3, 0.25)))
    view = SwarmView("QmP0", is_serving=True, now_s=0.0)
    assert "CoordinatorElected" in [type(a).__name__ for a in view.tick(5.0)]
    h = PlanHolder()
    assert h.offer(view, Plan(PLAN_FORMAT, 4, "m", groups, routing), HOSTS, view.election.term, "QmP0") == "applied"
    return h


def ready_for_own_groups(peers) -> dict[str, set[int]]:
    """Each of `peers` ready for the (one) group on its host."""
    ids = list(HOSTS.values())
    return {peer: {ids.index(peer)} for peer in peers}


def routes(ready, load=lambda peer: 0, n=2000):
    rng = random.Random(0)
    return [choose_route(holder(), ready_for_own_groups(ready), load, rng) for _ in range(n)]


def test_routes_only_to_ready_replicas():
    picked = routes({"QmP1", "QmD0"})
    assert {(r.prefill_peer, r.decode_peer) for r in picked} == {("QmP1", "QmD0")}
    assert all(r.epoch == 4 and not r.is_colocated for r in picked)


def test_no_route_without_a_ready_prefill_and_decode_pair():
    assert routes({"QmP0", "QmP1"}, n=1) == [None]
    assert choose_route(PlanHolder(), {"QmP0": {0}}, lambda p: 0, random.Random(0)) is None


def test_equal_shares_split_evenly_and_load_shifts_requests_away():
    ready = set(HOSTS.values())
    even = Counter(r.prefill_peer for r in routes(ready))
    assert abs(even["QmP0"] - even["QmP1"]) < 200
    skewed = Counter(r.prefill_peer for r in routes(ready, load=lambda p: 9 if p == "QmP0" else 0))
    assert skewed["QmP1"] > 5 * skewed["QmP0"]  # weight 0.5/10 against 0.5/1


def chunk(index, ids, reason=""):
    return TokenChunk("r1", index, tuple(ids), "x" * len(ids), reason)


def test_ledger_forwards_each_token_once_in_order():
    ledger = Ledger()
    assert ledger.record(chunk(0, [5])) == chunk(0, [5])
    assert ledger.record(chunk(0, [5])) is None  # a duplicate
    assert ledger.record(chunk(1, [6, 7])).token_ids == (6, 7)
    trimmed = ledger.record(chunk(2, [7, 8]))  # overlaps one token already forwarded
    assert (trimmed.index, trimmed.token_ids) == (3, (8,))
    assert ledger.delivered("r1") == 4
    assert ledger.record(chunk(4, [], "stop")).finish_reason == "stop"


def test_ledger_refuses_a_gap():
    ledger = Ledger()
    ledger.record(chunk(0, [1]))
    with pytest.raises(ReplicaFailedError, match="lost"):
        ledger.record(chunk(3, [4]))


def three_gpu_holder() -> PlanHolder:
    """One peer "duo" with 3 GPUs: prefill group 3 on duo/0, decode group 7 on duo/1 and, as a pipeline
    with peer "tail", decode group 8 (duo/2 layers 0-2, tail/0 layers 2-4)."""
    groups = (Group(3, "prefill", 1, 1, (Stage(("duo/0",), (0, 4)),)),
              Group(7, "decode", 1, 1, (Stage(("duo/1",), (0, 4)),)),
              Group(8, "decode", 1, 2, (Stage(("duo/2",), (0, 2)), Stage(("tail/0",), (2, 4)))))
    view = SwarmView("QmDuo", is_serving=True, now_s=0.0)
    view.tick(5.0)
    h = PlanHolder()
    plan = Plan(PLAN_FORMAT, 2, "m", groups, Routing({3: 1.0}, ((3, 7, 0.5), (3, 8, 0.5))))
    assert h.offer(view, plan, {"duo": "QmDuo", "tail": "QmTail"}, view.election.term, "QmDuo") == "applied"
    return h


def test_a_group_is_routed_to_only_when_every_peer_is_ready_for_that_group():
    h, rng = three_gpu_holder(), random.Random(0)

    def pairs(ready):
        return {(r.prefill_group, r.decode_group) for r in (choose_route(h, ready, lambda p: 0, rng)
                                                             for _ in range(200)) if r is not None}

    assert pairs({"QmDuo": {3}}) == set()  # prefill ready, both decode groups still loading
    assert pairs({"QmDuo": {3, 7}}) == {(3, 7)}
    assert pairs({"QmDuo": {3, 7, 8}}) == {(3, 7)}  # group 8's second stage, on "tail", is not ready
    assert pairs({"QmDuo": {3, 7, 8}, "QmTail": {8}}) == {(3, 7), (3, 8)}
    assert pairs({"QmDuo": {3, 8}, "QmTail": {7}}) == set()  # ready for another group counts for nothing
    route = choose_route(h, {"QmDuo": {3, 7}}, lambda p: 0, rng)
    assert (route.prefill_peer, route.decode_peer, route.is_colocated) == ("QmDuo", "QmDuo", False)
