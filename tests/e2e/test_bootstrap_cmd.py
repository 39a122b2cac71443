"""`swarm bootstrap` as the daemon's bootstrap node: two peers that know only its address converge to one
membership, elect a coordinator and follow one plan; requests go through it as the entry peer."""

from __future__ import annotations

import pytest

from swarm.client.localswarm import LocalSwarm, PeerSpec

pytestmark = pytest.mark.slow

PEERS = [PeerSpec("b-a40", "A40"), PeerSpec("b-3090", "RTX3090Ti")]


def test_peers_that_only_know_a_swarm_bootstrap_node_converge_to_one_membership_and_plan(tiny_model_dir):
    with LocalSwarm(PEERS, model=str(tiny_model_dir), kv_bits=16) as swarm:
        assert "bootstrap" in swarm.processes["bootstrap"].args[3:4]  # launched as `swarm bootstrap`
        # its stdout line (the log holds stderr too; tests/net/test_commands.py checks it comes first)
        assert swarm.bootstrap_addr in swarm.log("bootstrap").splitlines() and "/p2p/12D3Koo" in swarm.bootstrap_addr
        swarm.wait_for_plan(120)
        views = {name: swarm.client(name, connect_timeout_s=3.0).status() for name in swarm.addrs}
        ids = {name: status.peer_id for name, status in views.items()}
        for name, status in views.items():  # every peer sees all three, the bootstrap node not serving
            assert {m.peer_id for m in status.members} | {status.peer_id} == set(ids.values()), name
            assert {m.peer_id for m in status.members if m.is_serving} <= {ids["b-a40"], ids["b-3090"]}
        assert len({status.epoch for status in views.values()}) == 1 and views["b-a40"].epoch >= 0
        assert len({status.plan_json for status in views.values()}) == 1
        completion = swarm.client().generate("Hello swarm", max_tokens=4)  # the bootstrap node as entry peer
        assert completion.num_tokens == 4
