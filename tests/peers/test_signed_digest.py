"""Digests speak only for their sender: the Noise-authenticated stream peer and the profile's signature."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair

from peers.gossip import verified_profile
from swarm.errors import WireError
from swarm.hardware import declared_profile
from swarm.net.identity import peer_id_of
from swarm.net.signed import sign_record
from swarm.wire.requests import MemberDigest


def signed_digest(key_pair, *, profile_peer: str | None = None) -> MemberDigest:
    peer_id = peer_id_of(key_pair)
    profile = declared_profile("A40", peer_id=profile_peer or peer_id, host="h")
    return MemberDigest(peer_id, 1, ("/ip4/127.0.0.1/tcp/1",), sign_record(key_pair, profile, 1))


def test_a_correctly_signed_profile_is_accepted_and_cached():
    key_pair, node = create_new_key_pair(), SimpleNamespace(verified={})
    digest = signed_digest(key_pair)
    profile = verified_profile(node, digest, digest.peer_id)
    assert profile.gpu == "A40" and profile.peer_id == digest.peer_id
    assert verified_profile(node, digest, digest.peer_id) is profile


def test_a_digest_relayed_or_forged_by_another_peer_is_refused():
    digest, node = signed_digest(create_new_key_pair()), SimpleNamespace(verified={})
    with pytest.raises(WireError, match="arrived from peer"):
        verified_profile(node, digest, peer_id_of(create_new_key_pair()))


def test_a_profile_signed_by_another_key_or_for_another_peer_is_refused():
    mine, theirs = create_new_key_pair(), create_new_key_pair()
    node = SimpleNamespace(verified={})
    stolen = signed_digest(theirs)
    forged = MemberDigest(peer_id_of(mine), 1, ("/a",), stolen.signed_profile)
    with pytest.raises(WireError, match="signed for"):
        verified_profile(node, forged, peer_id_of(mine))
    wrong_subject = signed_digest(mine, profile_peer=peer_id_of(theirs))
    with pytest.raises(WireError, match="signed for"):
        verified_profile(node, wrong_subject, peer_id_of(mine))
    tampered = signed_digest(mine)
    record = tampered.signed_profile
    bad = MemberDigest(tampered.peer_id, 1, ("/a",), type(record)(record.peer_id, record.sequence,
                                                                    record.payload[:-1] + b"\x00", record.public_key,
                                                                    record.signature))
    with pytest.raises(WireError, match="bad signature"):
        verified_profile(node, bad, tampered.peer_id)
