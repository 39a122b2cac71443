"""Membership and failure detection driven by synthetic events and time."""

import pytest

from swarm.proto.errors import ProtoError
from swarm.proto.membership import (
    Membership,
    MembershipChanged,
    MembershipConfig,
    PeerJoined,
    PeerLeft,
    PeerSuspected,
)


def beat(m: Membership, peer: str, start: float, stop: float, every_s: float = 0.5) -> list:
    """Heartbeats from `peer` every `every_s` in [start, stop), with a tick after each."""
    actions, now = [], start
    while now < stop:
        actions += m.heartbeat(peer, now) + m.tick(now)
        now += every_s
    return actions


def test_profile_joins_and_bumps_version():
    m = Membership("A")
    actions = m.profile_received("B", "prof-B", 0.0)
    assert actions == [PeerJoined("B", "prof-B"), MembershipChanged(1, ("A", "B"))]
    assert m.member_ids == ("A", "B")


def test_heartbeat_from_unknown_peer_waits_for_its_profile():
    m = Membership("A")
    assert m.heartbeat("B", 0.0) == []
    assert m.member_ids == ("A",)


def test_silent_peer_is_suspected_then_declared_dead_within_3_s():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    assert m.tick(1.4) == []
    assert m.tick(1.6) == [PeerSuspected("B")]
    assert m.member_ids == ("A", "B")  # suspected peers stay members
    actions = m.tick(2.6)
    assert actions == [PeerLeft("B", "silent"), MembershipChanged(2, ("A",))]
    assert m.state_of("B") == "dead"


def test_suspected_peer_recovers_without_membership_change():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    m.tick(1.6)
    assert m.heartbeat("B", 1.7) == []
    assert m.state_of("B") == "alive" and m.version == 1


def test_disconnect_leaves_after_the_grace_period():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    assert m.disconnected("B", 0.1) == []
    assert m.tick(0.8) == []
    assert m.tick(0.85) == [PeerLeft("B", "disconnected"), MembershipChanged(2, ("A",))]
    assert m.disconnected("B", 0.9) == []  # already gone: no second change


def test_disconnected_peer_still_heard_through_the_mesh_stays():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    m.disconnected("B", 0.1)
    assert m.heartbeat("B", 0.5) == []
    assert m.tick(1.0) == [] and m.member_ids == ("A", "B")


def test_disconnect_without_grace_is_immediate():
    m = Membership("A", config=MembershipConfig(disconnect_grace_s=0.0))
    m.profile_received("B", None, 0.0)
    assert m.disconnected("B", 0.1) == [PeerLeft("B", "disconnected"), MembershipChanged(2, ("A",))]


def test_flapping_peer_rejoins_only_after_a_gap_free_second():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    m.disconnected("B", 0.1, reason="goodbye")
    # heard again at 0.5 (rejoin clock starts), then silent past the suspect window: no rejoin
    assert m.heartbeat("B", 0.5) == []
    assert m.tick(2.1) == [] and m.state_of("B") == "dead"
    # drops and returns every 2 s: each return restarts the clock, one heartbeat never suffices
    for start in (3.0, 5.0, 7.0):
        assert m.heartbeat("B", start) == []
        m.tick(start + 1.8)
    assert m.version == 2
    # finally steady for a second: exactly one join
    actions = beat(m, "B", 10.0, 11.6)
    assert [type(a) for a in actions] == [PeerJoined, MembershipChanged]
    assert m.member_ids == ("A", "B") and m.version == 3


def test_goodbye_reason_is_reported():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    assert m.disconnected("B", 1.0, reason="goodbye")[0] == PeerLeft("B", "goodbye")


def test_many_peers_dead_detection_is_deterministic():
    m = Membership("A")
    for p in "DCB":
        m.profile_received(p, None, 0.0)
    actions = m.tick(3.0)
    assert [a.peer_id for a in actions if isinstance(a, PeerLeft)] == ["B", "C", "D"]
    assert actions[-1] == MembershipChanged(6, ("A",))


def test_bad_config_is_refused():
    with pytest.raises(ProtoError):
        MembershipConfig(suspect_after_s=3.0, dead_after_s=2.0)


def test_a_peer_on_time_for_ten_seconds_is_declared_dead_after_three_missed_heartbeats():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    beat(m, "B", 0.5, 10.6)  # 20 gaps of 0.5 s: the last heartbeat at 10.5
    assert m.dead_after_s("B") == 1.5
    assert m.tick(11.5) == [PeerSuspected("B")]  # 60% of its timeout
    assert m.tick(11.95) == []
    assert m.tick(12.05)[0] == PeerLeft("B", "silent")


def test_a_peer_with_late_heartbeats_gets_more_time_up_to_dead_after_s():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    now = 0.0
    for i in range(20):  # every fifth gap 0.7 s: timeout 3 x 0.7 = 2.1 s
        now += 0.7 if i % 5 == 0 else 0.5
        m.heartbeat("B", now)
    assert m.dead_after_s("B") == pytest.approx(2.1)
    assert PeerLeft("B", "silent") not in m.tick(now + 2.0)
    assert m.tick(now + 2.15)[0] == PeerLeft("B", "silent")
    slow = Membership("A")
    slow.profile_received("C", None, 0.0)
    beat(slow, "C", 1.0, 21.5, every_s=1.0)
    assert slow.dead_after_s("C") == 2.5  # capped: never slower than dead_after_s


def test_a_stall_that_was_only_suspected_lengthens_the_timeout():
    m = Membership("A")
    m.profile_received("B", None, 0.0)
    beat(m, "B", 0.5, 10.6)
    assert m.tick(11.5) == [PeerSuspected("B")]
    assert m.heartbeat("B", 11.7) == [] and m.state_of("B") == "alive"  # a 1.2 s stall, not a death
    assert m.dead_after_s("B") == 2.5  # 3 x 1.2 s, capped
    beat(m, "B", 12.2, 20.0)
    assert m.state_of("B") == "alive" and m.version == 1


def test_without_a_gap_window_the_timeout_is_fixed():
    m = Membership("A", config=MembershipConfig(gap_window=0))
    m.profile_received("B", None, 0.0)
    beat(m, "B", 0.5, 10.6)
    assert m.dead_after_s("B") == 2.5
    with pytest.raises(ProtoError):
        MembershipConfig(gap_multiple=1.0)
