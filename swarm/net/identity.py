"""A peer's stable identity: an Ed25519 key in a 0600 file, so the peer id survives restarts.

(The private-swarm key file lives in `swarmkey.py`, which does not import libp2p; it is re-exported here.)
"""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.identity_utils import load_identity, save_identity
from libp2p.peer.id import ID

from swarm.net.errors import IdentityError
from swarm.net.swarmkey import check_private, read_swarm_key, write_swarm_key

__all__ = ["load_or_create_identity", "peer_id_of", "read_swarm_key", "write_swarm_key"]
DEFAULT_IDENTITY_PATH = Path("~/.swarm/identity.key")


def load_or_create_identity(path: str | Path | None = None) -> KeyPair:
    """The key pair kept at `path` (created with mode 0600 on first use), so the peer id is stable."""
    path = Path(path or DEFAULT_IDENTITY_PATH).expanduser()
    if path.exists():
        check_private(path)
        try:
            return load_identity(path)
        except ValueError as e:
            raise IdentityError(f"{path}: not a libp2p identity key ({e}); move it away to make a new one") from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pair = create_new_key_pair()
    save_identity(key_pair, path)
    os.chmod(path, 0o600)
    return key_pair


def peer_id_of(key_pair: KeyPair) -> str:
    """The base58 peer id of a key pair."""
    return ID.from_pubkey(key_pair.public_key).to_base58()
