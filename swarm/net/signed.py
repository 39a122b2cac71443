"""Signed records: a wire message signed with its author's libp2p key, verifiable by anyone who relays it.

Gossip already checks the signature of the peer that published a message; a `SignedRecord` also keeps
the author's signature when a record is stored and passed on (hardware profiles travel this way). The
signature covers a domain tag, the author's peer id, the sequence number and the payload bytes, and the
public key must hash to the claimed peer id.
"""

from __future__ import annotations

import struct
from typing import Any, TypeVar

from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from swarm.errors import WireError
from swarm.net.identity import peer_id_of
from swarm.wire.codec import decode, encode
from swarm.wire.messages import SignedRecord

T = TypeVar("T")
DOMAIN = b"swarm/signed-record/1"


def signed_bytes(peer_id: str, sequence: int, payload: bytes) -> bytes:
    head = peer_id.encode()
    return DOMAIN + struct.pack(">HQ", len(head), sequence) + head + payload


def sign_record(key_pair: KeyPair, msg: Any, sequence: int) -> SignedRecord:
    """`msg` encoded and signed by `key_pair`; a higher `sequence` supersedes older records."""
    peer_id = peer_id_of(key_pair)
    payload = encode(msg)
    signature = key_pair.private_key.sign(signed_bytes(peer_id, sequence, payload))
    return SignedRecord(peer_id, sequence, payload, key_pair.public_key.serialize(), signature)


def open_record(record: SignedRecord, *, expect: type[T] | None = None) -> T:
    """The message inside `record` once its key and signature check out; WireError otherwise."""
    try:
        public_key = deserialize_public_key(record.public_key)
    except Exception as e:  # several error types for malformed keys
        raise WireError(f"signed record from {record.peer_id}: unreadable public key ({e})") from None
    if ID.from_pubkey(public_key).to_base58() != record.peer_id:
        raise WireError(f"signed record claims peer {record.peer_id} but carries another peer's key")
    try:
        is_valid = public_key.verify(signed_bytes(record.peer_id, record.sequence, record.payload),
                                     record.signature)
    except Exception:  # a malformed signature may raise instead of returning False
        is_valid = False
    if not is_valid:
        raise WireError(f"signed record from {record.peer_id}: bad signature")
    return decode(record.payload, expect=expect)
