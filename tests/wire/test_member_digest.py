"""`MemberDigest` fingerprints (`plan_hash`, `members_hash`): golden bytes, digests from older peers, refusal of
bad fingerprints, and the fingerprint itself (the same for equal values, different for different ones)."""

from __future__ import annotations

import msgpack
import pytest

from swarm.errors import WireError
from swarm.wire.codec import decode, encode
from swarm.wire.requests import FINGERPRINT_BYTES, MemberDigest, PeerAddress, fingerprint


def test_golden_bytes_of_the_fingerprints_and_a_digest_without_them():
    digest = MemberDigest("QmA", 1, (), plan_hash=bytes(range(16)), members_hash=b"\xff" * 16)
    data = encode(digest)
    # the last two fields: bin8 of 16 bytes each
    assert data.hex().endswith("c410" + bytes(range(16)).hex() + "c410" + "ff" * 16)
    assert decode(data) == digest
    old = msgpack.unpackb(data, strict_map_key=False)
    old[2] = old[2][:-2]  # a digest from a peer that predates the fingerprints
    assert decode(msgpack.packb(old, use_bin_type=True)) == MemberDigest("QmA", 1, ())


@pytest.mark.parametrize("fields", [
    {"plan_hash": b"short"},
    {"members_hash": b"x" * 17},
    {"plan_hash": "not bytes" + "x" * 7},
])
def test_a_fingerprint_of_another_length_or_type_is_refused(fields):
    with pytest.raises(WireError, match=f"{FINGERPRINT_BYTES} bytes"):
        MemberDigest("QmA", 1, (), **fields)


def test_a_bad_fingerprint_from_a_peer_is_refused_when_decoded():
    body = msgpack.unpackb(encode(MemberDigest("QmA", 1, ())), strict_map_key=False)
    body[2][-1] = b"\x00" * 3
    with pytest.raises(WireError, match="members_hash"):
        decode(msgpack.packb(body, use_bin_type=True))


def test_fingerprints_are_equal_for_equal_values_only():
    one = (PeerAddress("QmA", ("/a",)), PeerAddress("QmB", ("/b",)))
    same = (PeerAddress("QmA", ("/a",)), PeerAddress("QmB", ("/b",)))
    assert fingerprint(one) == fingerprint(same) and len(fingerprint(one)) == FINGERPRINT_BYTES
    assert fingerprint(one) != fingerprint((PeerAddress("QmA", ("/a",)), PeerAddress("QmB", ("/c",))))
    assert fingerprint(one) != fingerprint(one[:1])
    assert fingerprint(one) == fingerprint([["QmA", ["/a"]], ["QmB", ["/b"]]])  # of the wire form
    # golden: peers of different versions must compute the same fingerprint (else bodies travel every time)
    assert fingerprint(one).hex() == "e52c754a7a551664b472dde766d92ebe"
