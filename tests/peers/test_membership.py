"""Membership, failure detection, election and plan fencing (sans-IO: time is a parameter)."""

from __future__ import annotations

from peers.membership import Membership, PlanHolder
from swarm.hardware import declared_profile
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage
from swarm.wire.requests import MemberDigest, PeerAddress

SELF, A, B = "QmSelf", "QmAaaa", "QmBbbb"


def digest(peer_id: str, *, serving: bool = True, known=(), term: int = 0) -> MemberDigest:
    profile = declared_profile("A40", peer_id=peer_id, host=f"h-{peer_id}") if serving else None
    return MemberDigest(peer_id=peer_id, sequence=1, addrs=(f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id}",),
                        profile=profile, known=known, term=term)


def plan(epoch: int, model: str = "m", host: str = "h-QmAaaa") -> Plan:
    group = Group(0, "both", 1, 1, (Stage((f"{host}/0",), (0, 4)),))
    return Plan(PLAN_FORMAT, epoch, model, (group,), Routing({0: 1.0}, ((0, 0, 1.0),)))


def test_a_digest_adds_a_member_and_teaches_the_addresses_it_knows():
    view = Membership(SELF)
    assert view.on_digest(digest(A, known=(PeerAddress(B, ("/ip4/127.0.0.1/tcp/2",)),)), now_s=0.0)
    assert view.alive_ids() == sorted([SELF, A])
    assert B in view.addrs and B not in view.members  # known second-hand: dialled, not yet alive
    assert not view.on_digest(digest(A), now_s=0.5)  # not new


def test_silent_member_expires_after_the_failure_timeout_and_disconnect_removes_at_once():
    view = Membership(SELF, failure_timeout_s=2.0)
    view.on_digest(digest(A), 0.0)
    view.on_digest(digest(B), 0.0)
    assert view.expire(1.9) == []
    view.on_digest(digest(B), 1.9)
    assert view.expire(2.1) == [A]
    assert view.on_disconnect(B, 2.2) and view.alive_ids() == [SELF]
    assert not view.on_disconnect(B, 2.3)


def test_dead_peers_are_redialled_only_now_and_then():
    view = Membership(SELF)
    view.on_digest(digest(A), 0.0)
    view.on_disconnect(A, 1.0)
    assert [p for p, _ in view.dial_targets(1.0)] == [A]
    assert view.dial_targets(1.5) == []
    assert [p for p, _ in view.dial_targets(3.1)] == [A]


def test_coordinator_is_the_smallest_alive_serving_peer_and_never_a_bootstrap_node():
    view = Membership("QmZzzz")
    view.on_digest(digest("Qm0000", serving=False), 0.0)
    view.on_digest(digest(B), 0.0)
    assert view.coordinator_id(is_self_serving=True) == B
    view.on_disconnect(B, 1.0)
    assert view.coordinator_id(is_self_serving=True) == "QmZzzz"
    assert view.coordinator_id(is_self_serving=False) == ""


def test_term_follows_the_highest_epoch_heard():
    view = Membership(SELF)
    view.on_digest(digest(A, term=7), 0.0)
    view.on_digest(digest(B, term=3), 0.0)
    assert view.term == 7


def test_older_plans_are_ignored_newer_applied():
    holder = PlanHolder()
    hosts = {"h-QmAaaa": A}
    assert holder.offer(plan(3), hosts) == "applied"
    assert holder.offer(plan(2, model="m2"), hosts) == "stale"
    assert holder.offer(plan(3), hosts) == "same"
    assert holder.offer(plan(4, model="m2"), hosts) == "applied" and holder.epoch == 4


def test_two_plans_of_one_epoch_settle_on_the_same_one_in_any_order():
    hosts = {"h-QmAaaa": A, "h-QmBbbb": B}
    x, y = plan(5, host="h-QmAaaa"), plan(5, host="h-QmBbbb")
    first, second = PlanHolder(), PlanHolder()
    first.offer(x, hosts), first.offer(y, hosts)
    second.offer(y, hosts), second.offer(x, hosts)
    assert first.plan == second.plan


def test_a_plan_naming_unknown_hosts_is_not_followed():
    assert PlanHolder().offer(plan(1), {"other": A}) == "stale"


def test_groups_of_a_peer_follow_the_host_map():
    holder = PlanHolder()
    holder.offer(plan(1), {"h-QmAaaa": A})
    assert holder.groups_of_peer(A) == [0] and holder.groups_of_peer(B) == []
    assert holder.peer_of_group(0) == A
