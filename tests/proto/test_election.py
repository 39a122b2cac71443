"""Coordinator election and fencing driven by synthetic events and time: claims delivered by hand."""

from swarm.proto.election import CoordinatorElected, CoordinatorLost, Election, Fence, SendClaim
from swarm.wire.messages import CoordinatorClaim, PlanAnnouncement
from swarm.wire.plan import Group, Plan, Routing, Stage


def plan(epoch: int) -> Plan:
    group = Group(0, "both", 1, 1, (Stage(("h/0",), (0, 4)),))
    return Plan(format=1, epoch=epoch, model="m", groups=(group,), routing=Routing({0: 1.0}, ((0, 0, 1.0),)))


def claims(actions: list) -> list[CoordinatorClaim]:
    return [a.claim for a in actions if isinstance(a, SendClaim)]


def swarm(ids: str, now: float = 0.0) -> dict[str, Election]:
    peers = {p: Election(p, now) for p in ids}
    for e in peers.values():
        e.members_changed(ids, now)
    return peers


def broadcast(peers: dict[str, Election], outbox: list[CoordinatorClaim], now: float) -> None:
    """Deliver claims to every peer until no new claim is sent (one gossip round each)."""
    while outbox:
        claim = outbox.pop(0)
        for e in peers.values():
            outbox += claims(e.claim_received(claim, now))


def test_lone_peer_elects_itself_after_listening():
    e = Election("A", 0.0, listen_s=1.0)
    assert e.tick(0.5) == []
    actions = e.tick(1.0)
    assert actions == [SendClaim(CoordinatorClaim(1, "A")), CoordinatorElected(1, "A", True)]
    assert e.is_coordinator


def test_lowest_id_claims_and_everyone_agrees():
    peers = swarm("CAB")
    outbox = [c for e in peers.values() for c in claims(e.tick(1.0))]
    assert outbox == [CoordinatorClaim(1, "A")]
    broadcast(peers, outbox, 1.0)
    assert {(e.term, e.coordinator_id) for e in peers.values()} == {(1, "A")}


def test_coordinator_death_gives_a_new_coordinator_with_a_higher_term():
    peers = swarm("ABC")
    broadcast(peers, [c for e in peers.values() for c in claims(e.tick(1.0))], 1.0)
    del peers["A"]
    outbox = []
    for e in peers.values():
        actions = e.members_changed("BC", 5.0)
        assert actions[0] == CoordinatorLost(1, "A")
        outbox += claims(actions)
    assert outbox == [CoordinatorClaim(2, "B")]
    broadcast(peers, outbox, 5.0)
    assert {(e.term, e.coordinator_id) for e in peers.values()} == {(2, "B")}


def test_simultaneous_candidates_resolve_to_the_lower_id_in_the_same_term():
    a, b, c = Election("A", 0.0), Election("B", 0.0), Election("C", 0.0)
    a.members_changed("AC", 0.0)
    b.members_changed("BC", 0.0)  # B has not heard of A yet
    c.members_changed("ABC", 0.0)
    claim_a, claim_b = claims(a.tick(1.0)), claims(b.tick(1.0))
    assert claim_a == [CoordinatorClaim(1, "A")] and claim_b == [CoordinatorClaim(1, "B")]
    # C hears B first, then A; B hears A's claim and steps down; A ignores B's
    c.claim_received(claim_b[0], 1.01)
    assert c.coordinator_id == "B"
    assert c.claim_received(claim_a[0], 1.02) == [CoordinatorElected(1, "A", False)]
    assert b.claim_received(claim_a[0], 1.02) == [CoordinatorElected(1, "A", False)]
    assert a.claim_received(claim_b[0], 1.02) == []
    assert {(e.term, e.coordinator_id) for e in (a, b, c)} == {(1, "A")}


def test_coordinator_is_sticky_when_a_lower_id_joins():
    peers = swarm("BC")
    broadcast(peers, [c for e in peers.values() for c in claims(e.tick(1.0))], 1.0)
    newcomer = Election("A", 2.0)
    newcomer.members_changed("ABC", 2.0)
    assert newcomer.heartbeat_received(1, "B", 2.1) == [CoordinatorElected(1, "B", False)]
    assert newcomer.tick(5.0) == []  # it knows a live coordinator: no claim
    for e in peers.values():
        assert claims(e.members_changed("ABC", 2.0)) == []
    assert {(e.term, e.coordinator_id) for e in [*peers.values(), newcomer]} == {(1, "B")}


def test_late_joiner_learns_a_dead_coordinator_and_replaces_it():
    e = Election("B", 0.0, listen_s=1.0)
    e.members_changed("BC", 0.0)
    e.heartbeat_received(4, "A", 0.2)  # a lagging peer still follows A, who never shows up
    assert e.coordinator_id == "A"
    assert e.tick(3.0) == []
    actions = e.tick(3.3)
    assert actions[0] == CoordinatorLost(4, "A")
    assert claims(actions) == [CoordinatorClaim(5, "B")]


def test_restarted_peer_does_not_silently_resume_an_old_term():
    e = Election("A", 0.0)
    e.members_changed("AB", 0.0)
    assert e.heartbeat_received(3, "A", 0.1) == []
    assert not e.is_coordinator
    assert claims(e.tick(1.0)) == [CoordinatorClaim(4, "A")]


def test_stale_epoch_plan_is_ignored():
    e, fence = Election("B", 0.0), Fence()
    e.members_changed("AB", 0.0)
    e.claim_received(CoordinatorClaim(2, "A"), 0.1)
    assert e.accepts_plan(PlanAnnouncement(2, "A", plan(5)), fence)
    assert not e.accepts_plan(PlanAnnouncement(2, "A", plan(4)), fence)  # older epoch, same term
    assert not e.accepts_plan(PlanAnnouncement(1, "A", plan(9)), fence)  # older term, newer epoch
    assert not e.accepts_plan(PlanAnnouncement(2, "B", plan(6)), fence)  # not the coordinator


def test_plan_of_a_newer_term_is_adopted_and_fences_off_the_old_coordinator():
    e, fence = Election("C", 0.0), Fence()
    e.members_changed("ABC", 0.0)
    e.claim_received(CoordinatorClaim(1, "A"), 0.1)
    assert e.accepts_plan(PlanAnnouncement(1, "A", plan(7)), fence)
    assert e.accepts_plan(PlanAnnouncement(2, "B", plan(1)), fence)
    assert (e.term, e.coordinator_id) == (2, "B")
    assert not e.accepts_plan(PlanAnnouncement(1, "A", plan(8)), fence)  # deposed coordinator, late


def test_fence_accepts_equal_and_newer_ints():
    fence = Fence(3)
    assert not fence.accept(2)
    assert fence.accept(3) and fence.accept(4) and not fence.accept(3)
