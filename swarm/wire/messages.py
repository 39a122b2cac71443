"""The control messages of the peer protocols (wire type ids 40-79): liveness, load, election, plans, rpc.

Gossip carries `Heartbeat`, `LoadReport`, `SignedRecord` (a signed `HardwareProfile`), `CoordinatorClaim`
and `PlanAnnouncement`; the rpc helper carries `RpcFailure` and `Ping`/`Pong`; the fast data path is
negotiated with `FastPathRequest`/`FastPathGrant`. Every field is range-checked here, once.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarm.errors import WireError
from swarm.wire.checks import check_bytes, check_count, check_peer_id, check_text
from swarm.wire.codec import message
from swarm.wire.plan import Plan

MAX_TEXT_CHARS = 1024
MAX_RECORD_BYTES = 256 << 10
MAX_KEY_BYTES = 1024
MAX_PEERS_LISTED = 1024


@message(40)
@dataclass(frozen=True)
class Heartbeat:
    """I am alive: sent every 0.5 s; also says whom the sender follows as coordinator, and in which term."""

    peer_id: str
    sequence: int
    term: int = 0
    coordinator_id: str = ""

    def __post_init__(self) -> None:
        check_peer_id("Heartbeat.peer_id", self.peer_id)
        check_count("Heartbeat.sequence", self.sequence)
        check_count("Heartbeat.term", self.term)
        if self.coordinator_id:
            check_peer_id("Heartbeat.coordinator_id", self.coordinator_id)


@message(41)
@dataclass(frozen=True)
class LoadReport:
    """How busy a peer is, for the coordinator's re-planning and the entry peers' routing."""

    peer_id: str
    sequence: int
    num_queued: int = 0
    num_running: int = 0
    kv_tokens_used: int = 0
    kv_tokens_free: int = 0
    tokens_per_s: float = 0.0

    def __post_init__(self) -> None:
        check_peer_id("LoadReport.peer_id", self.peer_id)
        for name in ("sequence", "num_queued", "num_running", "kv_tokens_used", "kv_tokens_free"):
            check_count(f"LoadReport.{name}", getattr(self, name))
        if not 0 <= self.tokens_per_s < 1e12:
            raise WireError(f"LoadReport.tokens_per_s must be >= 0 and finite, got {self.tokens_per_s}")


@message(42)
@dataclass(frozen=True)
class SignedRecord:
    """An encoded wire message signed by its author's libp2p key (verified in `swarm.net.signed`)."""

    peer_id: str
    sequence: int
    payload: bytes  # `swarm.wire.encode` of the record, e.g. a HardwareProfile
    public_key: bytes  # libp2p protobuf-serialised public key; must hash to peer_id
    signature: bytes

    def __post_init__(self) -> None:
        check_peer_id("SignedRecord.peer_id", self.peer_id)
        check_count("SignedRecord.sequence", self.sequence)
        check_bytes("SignedRecord.payload", self.payload, MAX_RECORD_BYTES)
        check_bytes("SignedRecord.public_key", self.public_key, MAX_KEY_BYTES)
        check_bytes("SignedRecord.signature", self.signature, MAX_KEY_BYTES)


@message(43)
@dataclass(frozen=True)
class CoordinatorClaim:
    """`candidate_id` claims the coordinator role for `term` (see swarm.proto.election)."""

    term: int
    candidate_id: str

    def __post_init__(self) -> None:
        check_count("CoordinatorClaim.term", self.term)
        check_peer_id("CoordinatorClaim.candidate_id", self.candidate_id)


@message(44)
@dataclass(frozen=True)
class PlanAnnouncement:
    """The coordinator of `term` publishes `plan`; peers apply it only if (term, plan.epoch) is new."""

    term: int
    coordinator_id: str
    plan: Plan

    def __post_init__(self) -> None:
        check_count("PlanAnnouncement.term", self.term)
        check_peer_id("PlanAnnouncement.coordinator_id", self.coordinator_id)


@message(45)
@dataclass(frozen=True)
class RpcFailure:
    """The answer to an rpc that failed on the serving side: a short code and a human message."""

    code: str
    message: str

    def __post_init__(self) -> None:
        check_text("RpcFailure.code", self.code, 64)
        check_text("RpcFailure.message", self.message, MAX_TEXT_CHARS)


@message(46)
@dataclass(frozen=True)
class Ping:
    sequence: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        check_count("Ping.sequence", self.sequence)
        check_bytes("Ping.payload", self.payload, MAX_RECORD_BYTES)


@message(47)
@dataclass(frozen=True)
class Pong:
    sequence: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        check_count("Pong.sequence", self.sequence)
        check_bytes("Pong.payload", self.payload, MAX_RECORD_BYTES)


@message(48)
@dataclass(frozen=True)
class FastPathRequest:
    """Ask a peer for a one-time direct TCP session for bulk frames (`swarm.net.fastpath`)."""

    is_encrypted: bool = True


@message(49)
@dataclass(frozen=True)
class FastPathGrant:
    """Where to connect and the one-time 32-byte session key, sent only inside a Noise-secured stream."""

    port: int
    session_key: bytes
    session_id: bytes
    is_encrypted: bool = True

    def __post_init__(self) -> None:
        if type(self.port) is not int or not 1 <= self.port <= 65535:
            raise WireError(f"FastPathGrant.port must be 1..65535, got {self.port!r}")
        if len(self.session_key) != 32 or len(self.session_id) != 16:
            raise WireError("FastPathGrant needs a 32-byte session key and a 16-byte session id")


@message(50)
@dataclass(frozen=True)
class PeerListRequest:
    """Ask a peer (usually a bootstrap node) for the addresses of the peers it is connected to."""

    max_peers: int = 64

    def __post_init__(self) -> None:
        if type(self.max_peers) is not int or not 1 <= self.max_peers <= MAX_PEERS_LISTED:
            raise WireError(f"PeerListRequest.max_peers must be 1..{MAX_PEERS_LISTED}, got {self.max_peers!r}")


@message(51)
@dataclass(frozen=True)
class PeerList:
    """Full multiaddrs (ending in /p2p/<id>) of connected peers, as the answering peer saw them."""

    addrs: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.addrs) > MAX_PEERS_LISTED:
            raise WireError(f"PeerList holds at most {MAX_PEERS_LISTED} addresses, got {len(self.addrs)}")
        for addr in self.addrs:
            if not addr.startswith("/") or "/p2p/" not in addr or len(addr) > 512:
                raise WireError(f"PeerList: {addr[:80]!r} is not a full multiaddr with /p2p/<peer id>")
