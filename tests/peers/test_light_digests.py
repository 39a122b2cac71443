"""Lighter digests: real `Node`s exchange digests in memory (through the wire codec, as `peers.gossip` does
over a stream) and the plan and the known addresses travel only to peers that lack them.

Each exchange is the daemon's: the dialler pushes `node.digest(receiver=its last digest from the other)`,
the other takes it (`gossip.take_digest`) and replies with a digest trimmed for the one it just read."""

from __future__ import annotations

import time
from types import SimpleNamespace

import trio

from peers.config import PeerConfig
from peers.daemon import Node
from peers.gossip import last_digest, log_actions, take_digest
from peers.membership import trimmed_for
from swarm.hardware import declared_profile
from swarm.wire.codec import decode, encode
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage
from swarm.wire.requests import MemberDigest, PeerAddress

FAILURE_TIMEOUT_S = 0.6  # the election listens this long before the lowest id claims


def make_node(peer_id: str, nursery) -> Node:
    config = PeerConfig(device="cpu", profile="A40", gossip_interval_s=0.1, failure_timeout_s=FAILURE_TIMEOUT_S)
    node = Node(config, SimpleNamespace(peer_id=peer_id, addrs=[f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id}"]), nursery)
    node.profile = declared_profile("A40", peer_id=peer_id, host=f"h-{peer_id}")
    return node


def exchange(dialler: Node, server: Node) -> tuple[MemberDigest, MemberDigest]:
    """One push-pull exchange, both digests through the codec; (pushed, reply) as they arrived."""
    pushed = decode(encode(dialler.digest(receiver=last_digest(dialler, server.peer_id))))
    take_digest(server, pushed, dialler.profile)
    reply = decode(encode(server.digest(receiver=pushed)))
    take_digest(dialler, reply, server.profile)
    return pushed, reply


def gossip_round(nodes: list[Node]) -> list[MemberDigest]:
    """Every node ticks, then exchanges with every node it knows (as `run_gossip` does); the digests sent."""
    sent = []
    by_id = {n.peer_id: n for n in nodes}
    for node in nodes:
        log_actions(node, node.membership.tick(time.monotonic()))
        for peer_id, _ in node.membership.dial_targets(time.monotonic()):
            if peer_id in by_id:
                sent += exchange(node, by_id[peer_id])
    return sent


def publish(coordinator: Node, epoch: int) -> Plan:
    """The coordinator follows a plan of one group per known serving peer (as `peers.coordinator` does)."""
    ids = coordinator.membership.serving_ids()
    groups = tuple(Group(i, "both", 1, 1, (Stage((f"h-{p}/0",), (0, 4)),)) for i, p in enumerate(ids))
    share = 1.0 / len(ids)
    routing = Routing({i: share for i in range(len(ids))}, tuple((i, i, share) for i in range(len(ids))))
    plan = Plan(PLAN_FORMAT, epoch, "m", groups, routing)
    coordinator.offer_plan(plan, {f"h-{p}": p for p in ids}, coordinator.membership.election.term,
                           coordinator.peer_id, source="self")
    return plan


def run_with_nursery(body) -> None:
    async def main():
        async with trio.open_nursery() as nursery:
            await body(nursery)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_plan_and_addresses_reach_everyone_then_only_fingerprints_travel():
    async def body(nursery):
        nodes = [make_node(p, nursery) for p in ("QmAaaa", "QmBbbb", "QmCccc", "QmDddd")]
        for node in nodes[1:]:  # everyone starts knowing only A's address, as from a bootstrap address
            node.membership.addrs[nodes[0].peer_id] = (nodes[0].host.addrs[0],)
        deadline = trio.current_time() + 10
        while not all(n.coordinator_id() == "QmAaaa" and len(n.membership.members) == 3 for n in nodes):
            assert trio.current_time() < deadline, "no coordinator agreed by all 4 nodes within 10 s"
            gossip_round(nodes)
            await trio.sleep(0.05)
        plan = publish(nodes[0], epoch=1)
        first = gossip_round(nodes)
        assert all(n.holder.plan == plan for n in nodes)  # one round: the coordinator pushed it to each
        assert any(d.plan is not None for d in first)
        settled = gossip_round(nodes)
        assert settled and all(d.plan is None and d.known == () for d in settled)
        assert all(d.plan_hash == nodes[0].holder.plan_hash != b"" for d in settled)
        assert max(len(encode(d)) for d in settled) < min(len(encode(d)) for d in first if d.plan is not None)

        plan2 = publish(nodes[0], epoch=2)  # a change B hears first; C and D get it from B, not A
        exchange(nodes[1], nodes[0])
        assert nodes[1].holder.plan == plan2
        pushed, _ = exchange(nodes[1], nodes[2])
        assert pushed.plan == plan2 and nodes[2].holder.plan == plan2
        _, reply = exchange(nodes[3], nodes[1])  # D pushes its old fingerprint: B's reply carries the plan
        assert reply.plan == plan2 and nodes[3].holder.plan == plan2

        late = make_node("QmEeee", nursery)  # a late joiner knows one address and follows nothing
        _, reply = exchange(late, nodes[0])
        assert reply.plan == plan2 and late.holder.plan == plan2
        assert {a.peer_id for a in reply.known} >= {"QmBbbb", "QmCccc", "QmDddd"}

    run_with_nursery(body)


def plan_digest(peer_id: str, **fields) -> MemberDigest:
    group = Group(0, "both", 1, 1, (Stage(("h/0",), (0, 4)),))
    plan = Plan(PLAN_FORMAT, 3, "m", (group,), Routing({0: 1.0}, ((0, 0, 1.0),)))
    return MemberDigest(peer_id, 1, ("/a",), max_epoch=3, coordinator_term=1, coordinator_id=peer_id, plan=plan,
                        plan_term=1, plan_coordinator_id=peer_id, plan_hosts={"h": peer_id},
                        known=(PeerAddress("QmBbbb", ("/b",)),), **fields)


def test_trimming_leaves_out_only_what_the_receiver_showed_it_holds():
    ours = plan_digest("QmAaaa", plan_hash=b"p" * 16, members_hash=b"m" * 16)
    assert trimmed_for(ours, None) == ours  # nothing heard from it yet
    old_peer = MemberDigest("QmBbbb", 1, ("/b",))  # predates fingerprints: empty ones
    assert trimmed_for(ours, old_peer) == ours
    other = MemberDigest("QmBbbb", 1, ("/b",), plan_hash=b"q" * 16, members_hash=b"m" * 16)
    trimmed = trimmed_for(ours, other)
    assert trimmed.plan == ours.plan and trimmed.plan_hosts == ours.plan_hosts and trimmed.known == ()
    same = MemberDigest("QmBbbb", 1, ("/b",), plan_hash=b"p" * 16, members_hash=b"n" * 16)
    trimmed = trimmed_for(ours, same)
    assert trimmed.plan is None and trimmed.plan_hosts == {} and trimmed.known == ours.known
    assert (trimmed.plan_hash, trimmed.plan_term, trimmed.plan_coordinator_id) == (b"p" * 16, 1, "QmAaaa")
    no_plan = MemberDigest("QmAaaa", 1, ("/a",))  # both empty: nothing to leave out, nothing left out
    assert trimmed_for(no_plan, old_peer) == no_plan
