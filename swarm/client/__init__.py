"""The client SDK: submit prompts to a swarm through any peer, synchronously or under trio.

The clients load trio and libp2p (seconds) on first use, so `swarm.client.cli` and the errors stay cheap
to import for commands that may not need them.
"""

import importlib

from swarm.client.errors import ClientError, GenerationError, UnreachableError

_LAZY = {"AsyncSwarmClient": "swarm.client.session", "Completion": "swarm.client.session",
         "SwarmClient": "swarm.client.sync"}

__all__ = ["AsyncSwarmClient", "ClientError", "Completion", "GenerationError", "SwarmClient", "UnreachableError"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swarm.client' has no attribute {name!r}")
