"""Control messages of the peer protocols: round trips, golden bytes, and refusal of bad fields."""

import msgpack
import pytest

from swarm.errors import WireError
from swarm.wire.codec import decode, encode
from swarm.wire.messages import (
    CoordinatorClaim,
    FastPathGrant,
    FastPathRequest,
    Heartbeat,
    LoadReport,
    PeerList,
    PeerListRequest,
    Ping,
    PlanAnnouncement,
    Pong,
    RpcFailure,
    SignedRecord,
)
from swarm.wire.plan import Group, Plan, Routing, Stage

PEER = "12D3KooWEnFjm2K6xM8iefvbq2fA9QRmypcm3G3vfsGU4zJktrD8"


def plan() -> Plan:
    group = Group(0, "both", 1, 1, (Stage(("h/0",), (0, 4)),))
    return Plan(format=1, epoch=2, model="m", groups=(group,), routing=Routing({0: 1.0}, ((0, 0, 1.0),)))


SAMPLES = [
    Heartbeat(PEER, 5, 2, PEER),
    LoadReport(PEER, 1, 3, 4, 1000, 2000, 55.5),
    SignedRecord(PEER, 1, b"payload", b"key", b"sig"),
    CoordinatorClaim(3, PEER),
    PlanAnnouncement(3, PEER, plan()),
    RpcFailure("busy", "try later"),
    Ping(1, b"x"),
    Pong(1, b"x"),
    FastPathRequest(False),
    FastPathGrant(4001, bytes(32), bytes(16), True),
    PeerListRequest(8),
    PeerList((f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",)),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert decode(encode(msg)) == msg


def test_type_ids_are_in_the_protocol_range():
    for msg in SAMPLES:
        type_id = msgpack.unpackb(encode(msg), strict_map_key=False)[1]
        assert 40 <= type_id <= 79


def test_heartbeat_golden_bytes():
    # [wire version 1, type 40, ["A1", 5, 2, "B2"]]
    assert encode(Heartbeat("A1", 5, 2, "B2")) == bytes.fromhex("930128 94 a24131 05 02 a24232".replace(" ", ""))


def test_old_peer_without_optional_fields_still_decodes():
    data = msgpack.packb([1, 40, ["A1", 5]])
    assert decode(data) == Heartbeat("A1", 5, 0, "")


def bad_bytes(type_id: int, body: list) -> bytes:
    return msgpack.packb([1, type_id, body], use_bin_type=True)


@pytest.mark.parametrize("type_id,body,match", [
    (40, ["not a/peer", 1], "peer id"),
    (40, [PEER, -1], "sequence"),
    (41, [PEER, 1, 0, 0, 0, 0, -1.0], "tokens_per_s"),
    (43, [-2, PEER], "term"),
    (45, ["x" * 65, ""], "code"),
    (46, [1, b"x" * (300 << 10)], "payload"),
    (49, [0, bytes(32), bytes(16)], "port"),
    (49, [1, bytes(31), bytes(16)], "32-byte"),
    (50, [0], "max_peers"),
    (51, [["/ip4/127.0.0.1/tcp/1"]], "multiaddr"),
    (40, [PEER, "1"], "expected int"),
    (79, [], "unknown message type"),
])
def test_bad_fields_are_refused(type_id, body, match):
    with pytest.raises(WireError, match=match):
        decode(bad_bytes(type_id, body))
