"""py-libp2p glue: `open_host` (Noise-only, private-swarm key, bounded dials), framed bulk streams, rpc, gossip."""

from swarm.net.errors import (
    DeadlineError,
    DialError,
    HandshakeError,
    IdentityError,
    NetError,
    RemoteError,
    StreamError,
)
from swarm.net.frames import FrameChannel, libp2p_frames, socket_frames
from swarm.net.host import Host, HostConfig, open_host
from swarm.net.identity import load_or_create_identity, read_swarm_key, write_swarm_key
from swarm.net.pubsub import Gossip, GossipConfig, open_gossip
from swarm.net.rpc import call, serve_rpc

__all__ = ["Host", "HostConfig", "open_host", "FrameChannel", "libp2p_frames", "socket_frames", "Gossip",
           "GossipConfig", "open_gossip", "call", "serve_rpc", "load_or_create_identity", "read_swarm_key",
           "write_swarm_key", "NetError", "DialError", "HandshakeError", "DeadlineError", "StreamError",
           "RemoteError", "IdentityError"]
