"""The swarm view: swarm.proto membership and election fed by digests, and plan fencing (time is a parameter)."""

from __future__ import annotations

from peers.membership import PlanHolder, SwarmView, describe_action
from swarm.hardware import declared_profile
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage
from swarm.wire.requests import MemberDigest, PeerAddress

SELF, A, B = "QmSelf", "QmAaaa", "QmBbbb"


class Sent:
    """A digest and the (already verified) profile it carried, as the daemon hands them over."""

    def __init__(self, peer_id: str, serving: bool, known, coordinator) -> None:
        self.profile = declared_profile("A40", peer_id=peer_id, host=f"h-{peer_id}") if serving else None
        self.digest = MemberDigest(peer_id=peer_id, sequence=1, addrs=(f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id}",),
                                   known=known, coordinator_id=coordinator[0], coordinator_term=coordinator[1])


def digest(peer_id: str, *, serving: bool = True, known=(), coordinator=("", 0)) -> Sent:
    return Sent(peer_id, serving, known, coordinator)


def view(self_id: str = SELF, serving: bool = True) -> SwarmView:
    v = SwarmView(self_id, is_serving=serving, now_s=0.0, failure_timeout_s=2.0)
    on_digest = v.on_digest
    v.on_digest = lambda sent, now_s: on_digest(sent.digest, sent.profile, now_s)
    return v


def plan(epoch: int, model: str = "m", host: str = "h-QmAaaa") -> Plan:
    group = Group(0, "both", 1, 1, (Stage((f"{host}/0",), (0, 4)),))
    return Plan(PLAN_FORMAT, epoch, model, (group,), Routing({0: 1.0}, ((0, 0, 1.0),)))


def names(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_digest_joins_its_sender_and_teaches_the_addresses_it_knows():
    v = view()
    actions = v.on_digest(digest(A, known=(PeerAddress(B, ("/ip4/127.0.0.1/tcp/2",)),)), now_s=0.1)
    assert "PeerJoined" in names(actions) and "joined" in describe_action(actions[0])
    assert list(v.members) == [A]
    assert B in v.addrs and B not in v.members  # known second-hand: dialled, not yet a member


def test_silent_member_is_suspected_then_removed_and_a_disconnect_removes_at_once():
    v = view()
    v.on_digest(digest(A), 0.0)
    v.on_digest(digest(B), 0.0)
    assert "PeerSuspected" in names(v.tick(1.3))
    v.on_digest(digest(B), 1.9)
    assert "PeerLeft" in names(v.tick(2.1)) and list(v.members) == [B]
    v.on_disconnect(B, 2.2)  # strong evidence: gone after swarm.proto's short grace unless heard again
    assert "PeerLeft" in names(v.on_disconnect(B, 2.2) + v.tick(3.0)) and v.members == {}


def test_dead_peers_are_redialled_only_now_and_then():
    v = view()
    v.on_digest(digest(A), 0.0)
    v.on_disconnect(A, 0.2)
    v.tick(1.0)
    assert A not in v.members
    assert [p for p, _ in v.dial_targets(1.0)] == [A]
    assert v.dial_targets(1.5) == []
    assert [p for p, _ in v.dial_targets(3.1)] == [A]


def test_lowest_serving_peer_claims_after_listening_and_a_bootstrap_node_never_does():
    v, boot = view("QmZzzz"), view("Qm0000", serving=False)
    for x in (v, boot):
        x.on_digest(digest(B), 0.1)
        x.on_digest(digest("Qm0001", serving=False), 0.1)
    v.on_digest(digest(B), 2.4)
    v.tick(2.5)
    assert v.coordinator_id == ""  # B has the lower id: only B may claim
    boot.tick(100.0)
    assert boot.coordinator_id == ""
    b = view(B)
    assert b.tick(1.0) == []  # still listening for an existing coordinator
    assert "CoordinatorElected" in names(b.on_digest(digest("QmZzzz"), 2.4) + b.tick(2.5))
    assert b.coordinator_id == B
    v.on_digest(digest(B, coordinator=(B, b.election.term)), 2.6)
    boot.on_digest(digest(B, coordinator=(B, b.election.term)), 2.6)
    assert v.coordinator_id == boot.coordinator_id == B


def test_plans_are_fenced_by_term_coordinator_and_epoch():
    v, holder = view(), PlanHolder()
    v.on_digest(digest(A, coordinator=(A, 2)), 0.1)
    hosts = {"h-QmAaaa": A}
    assert holder.offer(v, plan(3), hosts, term=2, coordinator_id=A) == "applied"
    assert holder.offer(v, plan(3), hosts, term=2, coordinator_id=A) == "same"
    assert holder.offer(v, plan(2, model="m2"), hosts, term=2, coordinator_id=A) == "stale"  # older epoch
    assert holder.offer(v, plan(9), hosts, term=1, coordinator_id=A) == "stale"  # older term
    assert holder.offer(v, plan(4), hosts, term=2, coordinator_id=B) == "stale"  # not this term's coordinator
    assert holder.offer(v, plan(4, model="m2"), hosts, term=2, coordinator_id=A) == "applied"
    assert holder.epoch == 4 and v.max_epoch == 4


def test_a_plan_naming_unknown_hosts_is_not_followed():
    v = view()
    v.on_digest(digest(A, coordinator=(A, 1)), 0.1)
    assert PlanHolder().offer(v, plan(1), {"other": A}, term=1, coordinator_id=A) == "stale"


def test_groups_of_a_peer_follow_the_host_map():
    v, holder = view(), PlanHolder()
    v.on_digest(digest(A, coordinator=(A, 1)), 0.1)
    holder.offer(v, plan(1), {"h-QmAaaa": A}, term=1, coordinator_id=A)
    assert holder.groups_of_peer(A) == [0] and holder.groups_of_peer(B) == []
    assert holder.peer_of_group(0) == A


def test_stages_on_one_peer_merge_and_any_role_may_span_peers():
    from peers.membership import is_servable, peer_stages

    hosts = {"a": A, "b": B}
    stages = (Stage(("a/0",), (0, 1)), Stage(("a/1",), (1, 2)), Stage(("b/0",), (2, 4)))
    both = Group(0, "both", 1, 3, stages)
    assert peer_stages(both, hosts) == [(A, 0, 2), (B, 2, 4)]
    colocated = Plan(PLAN_FORMAT, 1, "m", (both,), Routing({0: 1.0}, ((0, 0, 1.0),)))
    assert is_servable(colocated, hosts) == ""
    hosts = {**hosts, "c": "QmCccc"}
    split = Plan(PLAN_FORMAT, 1, "m", (Group(0, "prefill", 1, 1, (Stage(("c/0",), (0, 4)),)),
                                       Group(1, "decode", 1, 3, stages)), Routing({0: 1.0}, ((0, 1, 1.0),)))
    assert is_servable(split, hosts) == ""  # a decode pipeline across 2 peers takes KV slices per stage
    one_peer = {"a": A, "b": A, "c": "QmCccc"}
    assert is_servable(split, one_peer) == ""  # all stages on one peer: one engine holds them
    around = (Stage(("a/0",), (0, 1)), Stage(("b/0",), (1, 2)), Stage(("a/1",), (2, 4)))
    sandwich = Plan(PLAN_FORMAT, 1, "m", (Group(0, "both", 1, 3, around),), Routing({0: 1.0}, ((0, 0, 1.0),)))
    assert A in is_servable(sandwich, {"a": A, "b": B})  # one engine cannot hold layers 0-1 and 2-4
