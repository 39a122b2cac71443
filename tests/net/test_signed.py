"""Signed records: a profile signed by its author opens; tampering, another key or a wrong type do not."""

import dataclasses

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from net_helpers import profile

from swarm.errors import WireError
from swarm.net.identity import peer_id_of
from swarm.net.signed import open_record, sign_record
from swarm.wire.codec import decode, encode
from swarm.wire.hardware import HardwareProfile
from swarm.wire.messages import Heartbeat


def test_signed_profile_round_trips_over_the_wire():
    key_pair = create_new_key_pair()
    record = sign_record(key_pair, profile(peer_id_of(key_pair)), 3)
    assert open_record(decode(encode(record)), expect=HardwareProfile) == profile(peer_id_of(key_pair))


@pytest.mark.parametrize("change", ["sequence", "payload", "signature", "public_key", "peer_id"])
def test_tampered_records_are_refused(change):
    key_pair, other = create_new_key_pair(), create_new_key_pair()
    record = sign_record(key_pair, profile(peer_id_of(key_pair)), 3)
    tampered = {
        "sequence": dataclasses.replace(record, sequence=4),
        "payload": dataclasses.replace(record, payload=encode(profile("12D3KooWother"))),
        "signature": dataclasses.replace(record, signature=bytes(64)),
        "public_key": dataclasses.replace(record, public_key=other.public_key.serialize()),
        "peer_id": dataclasses.replace(record, peer_id=peer_id_of(other)),
    }[change]
    with pytest.raises(WireError):
        open_record(tampered)


def test_record_of_the_wrong_type_is_refused():
    key_pair = create_new_key_pair()
    record = sign_record(key_pair, Heartbeat(peer_id_of(key_pair), 1), 1)
    with pytest.raises(WireError, match="expected a HardwareProfile"):
        open_record(record, expect=HardwareProfile)
