"""The records of the swarm's data plane and status (wire type ids 80-99), each range-checked here, once.

Client -> entry peer: `GenerateRequest`, answered by a stream of `TokenChunk`s (or a `RequestFailure`).
Entry -> prefill replica: `PrefillJob`; entry -> decode replica: `DecodeWatch` (answered by `Ack`, then
the tokens); prefill -> decode: `KvPush` followed by the KV blob in frames (one per slice of layers when
either replica is a pipeline across peers); prefill pipeline head -> its later stages: `KvExportJob`
(answered by `Ack` once every slice was taken); a pipeline stage -> the next: `HiddenRoute`, then the
hidden-state blob. Peers exchange `MemberDigest` records (push-pull, every half second) and answer
`StatusRequest` with a `StatusReply`.

A peer with several GPUs may serve several groups of the plan, one engine each, so every record bound for
a replica names its group (`group_id`, an id of the plan of the record's epoch). These fields were added
after the records' first version, as trailing fields: a record from an older peer decodes with
`NO_GROUP` (-1) there, and the receiver picks the one group that fits (see `peers.replica.group_for`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgpack

from swarm.errors import WireError
from swarm.wire.checks import MAX_U63, check_peer_id, check_range, check_request_id, check_text
from swarm.wire.codec import message, to_primitive
from swarm.wire.hardware import HardwareProfile
from swarm.wire.messages import SignedRecord
from swarm.wire.plan import Plan

MAX_PROMPT_CHARS = 60_000
MAX_PROMPT_TOKENS = 32_768
MAX_OUTPUT_TOKENS = 16_384
MAX_MESSAGES = 256
MAX_STOP_STRINGS = 16
MAX_TEXT_CHARS = 4096
MAX_ADDRS = 16
MAX_PEERS = 1024
CHAT_ROLES = ("system", "user", "assistant", "tool")
FINISH_REASONS = ("", "stop", "length", "prefilled", "aborted")
KV_BITS = (4, 8, 16)
NO_GROUP = -1  # a record from a peer that predates group ids: the receiver picks the group
MAX_GROUP_ID = 1 << 20
MAX_GROUPS_PER_PEER = 64  # HardwareProfile's GPUs per peer: at most one group each


def check_group_id(name: str, value: object) -> None:
    """A plan group id, or NO_GROUP."""
    if type(value) is not int or not NO_GROUP <= value <= MAX_GROUP_ID:
        raise WireError(f"{name} must be a plan group id in [0, {MAX_GROUP_ID}] or {NO_GROUP} (none given), "
                        f"got {value!r}")


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in CHAT_ROLES:
            raise WireError(f"ChatMessage.role must be one of {CHAT_ROLES}, got {self.role!r}")
        check_text("ChatMessage.content", self.content, MAX_PROMPT_CHARS)


@message(80)
@dataclass(frozen=True)
class GenerateRequest:
    """One generation: exactly one of a text prompt, chat messages or token ids, and sampling settings."""

    request_id: str
    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    token_ids: tuple[int, ...] = ()
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        check_request_id("GenerateRequest.request_id", self.request_id)
        given = [bool(self.prompt), bool(self.messages), bool(self.token_ids)]
        if sum(given) != 1:
            raise WireError("GenerateRequest needs exactly one of a non-empty prompt, messages or token_ids")
        check_text("GenerateRequest.prompt", self.prompt, MAX_PROMPT_CHARS)
        if len(self.messages) > MAX_MESSAGES or len(self.token_ids) > MAX_PROMPT_TOKENS:
            raise WireError(f"GenerateRequest: at most {MAX_MESSAGES} messages and {MAX_PROMPT_TOKENS} token ids")
        if any(not 0 <= t < 2**31 for t in self.token_ids):
            raise WireError("GenerateRequest.token_ids must be in [0, 2**31)")
        if not 1 <= self.max_tokens <= MAX_OUTPUT_TOKENS:
            raise WireError(f"GenerateRequest.max_tokens must be in [1, {MAX_OUTPUT_TOKENS}], got {self.max_tokens}")
        check_range("GenerateRequest.temperature", self.temperature, 0.0, 100.0)
        check_range("GenerateRequest.top_p", self.top_p, 1e-9, 1.0)
        if not 0 <= self.top_k <= 1 << 20:
            raise WireError(f"GenerateRequest.top_k must be in [0, 2**20], got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed <= MAX_U63:
            raise WireError(f"GenerateRequest.seed must be in [0, 2**63), got {self.seed}")
        if len(self.stop) > MAX_STOP_STRINGS or any(not s or len(s) > 256 for s in self.stop):
            raise WireError(f"GenerateRequest.stop: at most {MAX_STOP_STRINGS} non-empty strings of <= 256 chars")


@message(81)
@dataclass(frozen=True)
class TokenChunk:
    """Tokens `index`, `index + 1`, ... of a request's output; a non-empty `finish_reason` ends it."""

    request_id: str
    index: int
    token_ids: tuple[int, ...]
    text: str = ""
    finish_reason: str = ""

    def __post_init__(self) -> None:
        check_request_id("TokenChunk.request_id", self.request_id)
        if not 0 <= self.index <= MAX_OUTPUT_TOKENS or len(self.token_ids) > MAX_OUTPUT_TOKENS:
            raise WireError(f"TokenChunk.index must be in [0, {MAX_OUTPUT_TOKENS}], got {self.index}")
        if self.finish_reason not in FINISH_REASONS:
            raise WireError(f"TokenChunk.finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        check_text("TokenChunk.text", self.text, MAX_PROMPT_CHARS)


@message(82)
@dataclass(frozen=True)
class RequestFailure:
    """A request could not be served: a short code ("bad_request", "unavailable", ...) and why."""

    request_id: str
    code: str
    message: str

    def __post_init__(self) -> None:
        check_text("RequestFailure.code", self.code, 64)
        check_text("RequestFailure.message", self.message, MAX_TEXT_CHARS)


@message(83)
@dataclass(frozen=True)
class StatusRequest:
    include_plan: bool = True


@dataclass(frozen=True)
class GroupStatus:
    """One group a peer serves, as the answering peer sees it: role, its part of the group's pipeline
    (stage `stage` of `num_stages`, layers [first_layer, last_layer)), the device and whether it is ready."""

    group_id: int
    role: str
    stage: int
    num_stages: int
    first_layer: int
    last_layer: int
    device: str
    is_ready: bool


@dataclass(frozen=True)
class MemberStatus:
    """One peer as the answering peer sees it; `group_id`/`role`/`is_ready` are its first group's (kept for
    older clients), `groups` lists every group it serves."""

    peer_id: str
    host: str
    gpu: str
    num_gpus: int
    is_emulated: bool
    is_serving: bool
    group_id: int  # -1: in no group of the plan
    role: str
    is_ready: bool
    num_queued: int
    num_running: int
    kv_tokens_free: int
    tokens_per_s: float
    last_heard_s: float
    addrs: tuple[str, ...] = ()
    profile: HardwareProfile | None = None
    links_gbps: dict[str, float] = field(default_factory=dict)
    groups: tuple[GroupStatus, ...] = ()


@message(84)
@dataclass(frozen=True)
class StatusReply:
    peer_id: str
    coordinator_id: str
    epoch: int
    plan_json: str
    members: tuple[MemberStatus, ...]
    uptime_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.members) > MAX_PEERS:
            raise WireError(f"StatusReply: at most {MAX_PEERS} members")


@message(85)
@dataclass(frozen=True)
class PrefillJob:
    """Entry -> prefill replica: compute `request`'s prompt on group `group_id`, send its KV to group
    `decode_group_id`, whose first stage is on `decode_peer_id` (the same group: a colocated replica)."""

    request: GenerateRequest
    epoch: int
    decode_peer_id: str
    kv_bits: int = 4
    group_id: int = NO_GROUP
    decode_group_id: int = NO_GROUP

    def __post_init__(self) -> None:
        check_peer_id("PrefillJob.decode_peer_id", self.decode_peer_id)
        check_group_id("PrefillJob.group_id", self.group_id)
        check_group_id("PrefillJob.decode_group_id", self.decode_group_id)
        if self.kv_bits not in KV_BITS:
            raise WireError(f"PrefillJob.kv_bits must be one of {KV_BITS}, got {self.kv_bits}")
        if not 0 <= self.epoch <= MAX_U63:
            raise WireError(f"PrefillJob.epoch must be in [0, 2**63), got {self.epoch}")


@message(86)
@dataclass(frozen=True)
class DecodeWatch:
    """Entry -> decode replica (group `group_id`): the KV of `request_id` is coming; stream its tokens back
    on this stream."""

    request: GenerateRequest
    epoch: int
    group_id: int = NO_GROUP

    def __post_init__(self) -> None:
        check_group_id("DecodeWatch.group_id", self.group_id)


@message(87)
@dataclass(frozen=True)
class Ack:
    request_id: str


@message(88)
@dataclass(frozen=True)
class KvPush:
    """Prefill -> decode: the header in front of a request's KV blob (sent in frames right after), for the
    decode replica's group `group_id`."""

    request_id: str
    epoch: int
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    blob_bytes: int
    group_id: int = NO_GROUP

    def __post_init__(self) -> None:
        check_request_id("KvPush.request_id", self.request_id)
        check_group_id("KvPush.group_id", self.group_id)
        if not self.output_token_ids or len(self.prompt_token_ids) > MAX_PROMPT_TOKENS:
            raise WireError("KvPush needs the first output token and at most "
                            f"{MAX_PROMPT_TOKENS} prompt tokens")
        if not 0 < self.blob_bytes <= 1 << 34:
            raise WireError(f"KvPush.blob_bytes must be in (0, 16 GiB], got {self.blob_bytes}")


FINGERPRINT_BYTES = 16


def fingerprint(value: object) -> bytes:
    """FINGERPRINT_BYTES of BLAKE2b over a value's wire form (records as their field lists): equal values
    give equal fingerprints on every peer, whatever the platform."""
    return hashlib.blake2b(msgpack.packb(to_primitive(value), use_bin_type=True),
                           digest_size=FINGERPRINT_BYTES).digest()


@dataclass(frozen=True)
class PeerAddress:
    peer_id: str
    addrs: tuple[str, ...]

    def __post_init__(self) -> None:
        check_peer_id("PeerAddress.peer_id", self.peer_id)
        if not 1 <= len(self.addrs) <= MAX_ADDRS or any(len(a) > 256 for a in self.addrs):
            raise WireError(f"PeerAddress.addrs: 1 to {MAX_ADDRS} multiaddrs of <= 256 characters")


@message(89)
@dataclass(frozen=True)
class MemberDigest:
    """A peer's state, exchanged push-pull with every known peer: who it is, its load, its plan."""

    peer_id: str
    sequence: int
    addrs: tuple[str, ...]
    signed_profile: SignedRecord | None = None  # its HardwareProfile, signed; None: a bootstrap node
    max_epoch: int = 0  # the highest plan epoch this peer has seen
    coordinator_term: int = 0  # whom this peer follows as coordinator, in which election term
    coordinator_id: str = ""
    plan: Plan | None = None
    plan_term: int = 0  # the term and coordinator that published `plan` (its fence)
    plan_coordinator_id: str = ""
    plan_hosts: dict[str, str] = field(default_factory=dict)  # host name in the plan -> peer id
    ready_epoch: int = -1  # the plan epoch this peer's `ready_groups` are ready for (-1: none is)
    num_queued: int = 0
    num_running: int = 0
    kv_tokens_free: int = 0
    tokens_per_s: float = 0.0
    known: tuple[PeerAddress, ...] = ()
    links_gbps: dict[str, float] = field(default_factory=dict)  # measured bandwidth to a peer id
    # the groups of plan `ready_epoch` this peer serves and is ready for, ascending; empty with a
    # ready_epoch >= 0: a peer that predates per-group readiness, ready for its first group only
    ready_groups: tuple[int, ...] = ()
    # `fingerprint`s (FINGERPRINT_BYTES, or empty from a peer that predates them) of the plan this peer
    # follows (with its host map, term and coordinator) and of the peers it knows (itself included, with
    # their addresses). A digest leaves `plan`/`plan_hosts` and `known` out when its receiver's last digest
    # showed the same fingerprint (`peers.membership.trimmed_for`): a None plan with a plan_hash means
    # "left out", not "none followed"
    plan_hash: bytes = b""
    members_hash: bytes = b""

    def __post_init__(self) -> None:
        check_peer_id("MemberDigest.peer_id", self.peer_id)
        for name in ("plan_hash", "members_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) not in (0, FINGERPRINT_BYTES):
                raise WireError(f"MemberDigest.{name} must be {FINGERPRINT_BYTES} bytes (a fingerprint) or empty, "
                                f"got {value!r}")
        if len(self.ready_groups) > MAX_GROUPS_PER_PEER:
            raise WireError(f"MemberDigest.ready_groups: at most {MAX_GROUPS_PER_PEER} groups, "
                            f"got {len(self.ready_groups)}")
        for group_id in self.ready_groups:
            if type(group_id) is not int or not 0 <= group_id <= MAX_GROUP_ID:
                raise WireError(f"MemberDigest.ready_groups: {group_id!r} is not a group id in [0, {MAX_GROUP_ID}]")
        if list(self.ready_groups) != sorted(set(self.ready_groups)):
            raise WireError(f"MemberDigest.ready_groups must be ascending without repeats, got {self.ready_groups}")
        if self.ready_groups and self.ready_epoch < 0:
            raise WireError("MemberDigest.ready_groups needs the epoch they are ready for (ready_epoch >= 0)")
        if len(self.known) > MAX_PEERS or len(self.plan_hosts) > MAX_PEERS or len(self.links_gbps) > MAX_PEERS:
            raise WireError(f"MemberDigest: at most {MAX_PEERS} known peers, plan hosts and links")
        check_peer_id("MemberDigest.coordinator_id", self.coordinator_id, may_be_empty=True)
        check_peer_id("MemberDigest.plan_coordinator_id", self.plan_coordinator_id, may_be_empty=True)
        for name in ("sequence", "max_epoch", "coordinator_term", "plan_term", "num_queued", "num_running",
                     "kv_tokens_free"):
            if not 0 <= getattr(self, name) <= MAX_U63:
                raise WireError(f"MemberDigest.{name} must be in [0, 2**63), got {getattr(self, name)}")
        if not -1 <= self.ready_epoch <= MAX_U63:
            raise WireError(f"MemberDigest.ready_epoch must be -1 or an epoch, got {self.ready_epoch}")
        check_range("MemberDigest.tokens_per_s", self.tokens_per_s, 0.0, 1e12)
        for peer, gbps in self.links_gbps.items():
            check_peer_id("MemberDigest.links_gbps key", peer)
            check_range("MemberDigest.links_gbps value", gbps, 0.0, 1e6)
        if self.plan is not None and (self.plan.epoch > self.max_epoch or not self.plan_coordinator_id):
            raise WireError(f"MemberDigest: a plan needs its coordinator and an epoch <= max_epoch {self.max_epoch}")


@message(91)
@dataclass(frozen=True)
class StageTokens:
    """A pipeline's last stage -> back up the chain to the first: the sampled token of each request."""

    request_ids: tuple[str, ...]
    token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.request_ids) != len(self.token_ids):
            raise WireError("StageTokens needs one token per request id")
        for request_id in self.request_ids:
            check_request_id("StageTokens.request_ids", request_id)
        if any(not 0 <= t < 2**31 for t in self.token_ids):
            raise WireError("StageTokens.token_ids must be in [0, 2**31)")


@message(90)
@dataclass(frozen=True)
class BandwidthProbe:
    """A timed bulk transfer: `num_bytes` follow in frames; the receiver answers with an `Ack`."""

    num_bytes: int

    def __post_init__(self) -> None:
        if not 0 < self.num_bytes <= 64 << 20:
            raise WireError(f"BandwidthProbe.num_bytes must be in (0, 64 MiB], got {self.num_bytes}")


MAX_LAYER = 4096
MAX_KV_TARGETS = 64


@dataclass(frozen=True)
class KvTarget:
    """One slice of a hand-off: model layers [first_layer, last_layer) go to the decode stage on `peer_id`."""

    peer_id: str
    first_layer: int
    last_layer: int

    def __post_init__(self) -> None:
        check_peer_id("KvTarget.peer_id", self.peer_id)
        if type(self.first_layer) is not int or type(self.last_layer) is not int \
                or not 0 <= self.first_layer < self.last_layer <= MAX_LAYER:
            raise WireError(f"KvTarget layers [{self.first_layer!r}, {self.last_layer!r}): expected ints with "
                            f"0 <= first < last <= {MAX_LAYER}")


@message(92)
@dataclass(frozen=True)
class KvExportJob:
    """Prefill pipeline head -> one of its later stages: export these layers of a prefilled request's KV
    and push each slice to its decode stage (`KvPush` + blob, as the head does); `release`: free the
    request's KV on this stage afterwards (its last job for the request). `group_id`: the prefill group
    (which of the stage's engines holds the KV), `decode_group_id`: the decode group the slices are for."""

    request_id: str
    epoch: int
    kv_bits: int
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    targets: tuple[KvTarget, ...]
    release: bool = True
    group_id: int = NO_GROUP
    decode_group_id: int = NO_GROUP

    def __post_init__(self) -> None:
        check_request_id("KvExportJob.request_id", self.request_id)
        check_group_id("KvExportJob.group_id", self.group_id)
        check_group_id("KvExportJob.decode_group_id", self.decode_group_id)
        if not 0 <= self.epoch <= MAX_U63:
            raise WireError(f"KvExportJob.epoch must be in [0, 2**63), got {self.epoch}")
        if self.kv_bits not in KV_BITS:
            raise WireError(f"KvExportJob.kv_bits must be one of {KV_BITS}, got {self.kv_bits}")
        if not self.prompt_token_ids or not self.output_token_ids or len(self.prompt_token_ids) > MAX_PROMPT_TOKENS:
            raise WireError(f"KvExportJob needs 1 to {MAX_PROMPT_TOKENS} prompt tokens and the first output token")
        if not 1 <= len(self.targets) <= MAX_KV_TARGETS:
            raise WireError(f"KvExportJob.targets: 1 to {MAX_KV_TARGETS} slices, got {len(self.targets)}")
        spans = sorted((t.first_layer, t.last_layer) for t in self.targets)
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
            raise WireError(f"KvExportJob.targets overlap: {spans}")


@message(93)
@dataclass(frozen=True)
class HiddenRoute:
    """A pipeline stage -> the next stage's peer, in front of a hidden-state blob: which of that peer's
    groups (of plan `epoch`) runs it."""

    group_id: int
    epoch: int

    def __post_init__(self) -> None:
        check_group_id("HiddenRoute.group_id", self.group_id)
        if self.group_id == NO_GROUP:
            raise WireError("HiddenRoute.group_id must name the group the blob is for")
        if type(self.epoch) is not int or not 0 <= self.epoch <= MAX_U63:
            raise WireError(f"HiddenRoute.epoch must be in [0, 2**63), got {self.epoch!r}")
