"""Group ids on the data-plane records (a peer with several GPUs serves several groups, one engine each):
golden bytes, records from peers that predate the fields (decoded with NO_GROUP), and refusal of bad ids;
`MemberDigest.ready_groups` (per-group readiness) and `HiddenRoute` (which group runs a hidden-state blob)."""

import msgpack
import pytest

from swarm.errors import WireError
from swarm.wire.codec import decode, encode
from swarm.wire.requests import (
    NO_GROUP,
    DecodeWatch,
    GenerateRequest,
    GroupStatus,
    HiddenRoute,
    KvPush,
    MemberDigest,
    MemberStatus,
    PrefillJob,
    StatusReply,
)

REQUEST = GenerateRequest("r", prompt="x")
REQUEST_BODY = ["r", "x", [], [], 64, 0.0, 1.0, 0, None, [], False]


@pytest.mark.parametrize("record,hex_bytes", [
    # [1, 85, [request, 5, "QmD", 16, 2, 7]]
    (PrefillJob(REQUEST, 5, "QmD", 16, group_id=2, decode_group_id=7),
     "930155969ba172a178909040cb0000000000000000cb3ff000000000000000c090c205a3516d44100207"),
    # [1, 86, [request, 5, 7]]
    (DecodeWatch(REQUEST, 5, group_id=7),
     "930156939ba172a178909040cb0000000000000000cb3ff000000000000000c090c20507"),
    # [1, 88, ["r", 5, [1], [2], 9, 7]]
    (KvPush("r", 5, (1,), (2,), 9, group_id=7), "93015896a17205910191020907"),
    # [1, 93, [7, 5]]
    (HiddenRoute(7, 5), "93015d920705"),
])
def test_golden_bytes_and_round_trip(record, hex_bytes):
    assert encode(record).hex() == hex_bytes
    assert decode(bytes.fromhex(hex_bytes)) == record


@pytest.mark.parametrize("body,type_id,fields", [
    ([REQUEST_BODY, 5, "QmD", 16], 85, ("group_id", "decode_group_id")),
    ([REQUEST_BODY, 5], 86, ("group_id",)),
    (["r", 5, [1], [2], 9], 88, ("group_id",)),
])
def test_records_from_older_peers_name_no_group(body, type_id, fields):
    record = decode(msgpack.packb([1, type_id, body]))
    assert all(getattr(record, name) == NO_GROUP for name in fields)


@pytest.mark.parametrize("make,match", [
    (lambda: PrefillJob(REQUEST, 5, "QmD", group_id=-2), "PrefillJob.group_id"),
    (lambda: PrefillJob(REQUEST, 5, "QmD", decode_group_id=1 << 30), "PrefillJob.decode_group_id"),
    (lambda: DecodeWatch(REQUEST, 5, group_id=True), "DecodeWatch.group_id"),
    (lambda: KvPush("r", 5, (1,), (2,), 9, group_id=-5), "KvPush.group_id"),
    (lambda: HiddenRoute(NO_GROUP, 5), "must name the group"),
    (lambda: HiddenRoute(3, -1), "HiddenRoute.epoch"),
])
def test_bad_group_ids_are_refused(make, match):
    with pytest.raises(WireError, match=match):
        make()


def test_a_bad_group_id_from_a_peer_is_refused_when_decoded():
    with pytest.raises(WireError, match="group_id"):
        decode(msgpack.packb([1, 86, [REQUEST_BODY, 5, "seven"]]))


def test_digest_ready_groups_golden_bytes_and_old_digests():
    digest = MemberDigest("QmA", 1, (), ready_epoch=5, ready_groups=(2, 7))
    data = encode(digest)
    assert data.hex().endswith("920207" "c400" "c400")  # ready_groups [2, 7], then two empty fingerprints
    assert decode(data) == digest
    old = msgpack.unpackb(data, strict_map_key=False)
    old[2] = old[2][:-3]  # a digest from a peer that predates ready_groups (and the fingerprints)
    assert decode(msgpack.packb(old)).ready_groups == ()


@pytest.mark.parametrize("fields,match", [
    ({"ready_epoch": -1, "ready_groups": (1,)}, "needs the epoch"),
    ({"ready_epoch": 3, "ready_groups": (2, 1)}, "ascending"),
    ({"ready_epoch": 3, "ready_groups": (1, 1)}, "ascending"),
    ({"ready_epoch": 3, "ready_groups": (-1,)}, "not a group id"),
    ({"ready_epoch": 3, "ready_groups": tuple(range(65))}, "at most 64"),
])
def test_bad_ready_groups_are_refused(fields, match):
    with pytest.raises(WireError, match=match):
        MemberDigest("QmA", 1, (), **fields)


def test_status_rows_carry_every_group_and_old_rows_decode_without():
    groups = (GroupStatus(0, "prefill", 0, 1, 0, 30, "cuda:0", True),
              GroupStatus(1, "decode", 0, 2, 0, 15, "cuda:1", False))
    row = MemberStatus("QmA", "duo", "A40", 2, False, True, 0, "prefill", False, 0, 0, 0, 0.0, 0.1, groups=groups)
    reply = StatusReply("QmA", "QmA", 3, "", (row,))
    assert decode(encode(reply)).members[0].groups == groups
    old = msgpack.unpackb(encode(reply), strict_map_key=False)
    old[2][4][0] = old[2][4][0][:-1]  # a row from a peer that predates `groups`
    assert decode(msgpack.packb(old)).members[0].groups == ()
