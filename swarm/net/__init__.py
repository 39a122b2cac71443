"""py-libp2p glue: `open_host` (Noise-only, private-swarm key, bounded dials), framed bulk streams, rpc, gossip,
liveness and the fast data path.

Names are loaded on first use (PEP 562), so importing a light submodule such as `swarm.net.swarmkey`
(for `swarm keygen`) does not pay for importing libp2p.
"""

import importlib

_EXPORTS = {
    "Host": "host", "HostConfig": "host", "open_host": "host",
    "FrameChannel": "frames", "libp2p_frames": "frames", "socket_frames": "frames",
    "Gossip": "pubsub", "GossipConfig": "pubsub", "open_gossip": "pubsub",
    "call": "rpc", "serve_rpc": "rpc",
    "load_or_create_identity": "identity", "read_swarm_key": "swarmkey", "write_swarm_key": "swarmkey",
    "run_liveness": "liveness", "open_fastpath": "fastpath", "run_fastpath_server": "fastpath",
    "NetError": "errors", "DialError": "errors", "HandshakeError": "errors", "DeadlineError": "errors",
    "StreamError": "errors", "RemoteError": "errors", "IdentityError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'swarm.net' has no attribute {name!r}")
    return getattr(importlib.import_module(f"swarm.net.{_EXPORTS[name]}"), name)
