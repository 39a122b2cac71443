"""The bulk-data frame header: a fixed 40-byte binary record in front of every payload of at most 4 MiB.

Layout (big-endian): magic `SWF1` (4), version (1), kind (1), flags (2), request id (8), epoch (8),
sequence (4), payload length (4), payload crc32 (4), header crc32 (4) over the 36 bytes before it.
A binary struct, not msgpack, because it is read once per 4 MiB at memory speed; every field is checked
by `decode_frame_header` before a single payload byte is read. Kinds name what the payload holds; the
`LAST` flag ends a blob that spans several frames; `SEALED` frames (the fast path) carry an AEAD/MAC
tag after the payload instead of a crc32.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from swarm.errors import WireError

FRAME_MAGIC = b"SWF1"
FRAME_VERSION = 1
MAX_FRAME_PAYLOAD_BYTES = 4 << 20
HEADER = struct.Struct(">4sBBHQQIIII")
HEADER_BYTES = HEADER.size  # 40
FLAG_LAST = 0x1
FLAG_SEALED = 0x2  # integrity from an AEAD/MAC tag after the payload (fast path); checksum is then 0
KNOWN_FLAGS = FLAG_LAST | FLAG_SEALED
# kind -> what the payload holds; a kind is never reused for another meaning.
FRAME_KINDS = {1: "kv", 2: "hidden", 3: "tokens", 4: "bench", 5: "error"}
KIND_IDS = {name: kind for kind, name in FRAME_KINDS.items()}
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1


@dataclass(frozen=True)
class FrameHeader:
    """One frame: which request and epoch it belongs to, its kind, its place in the blob, its payload."""

    request_id: int
    epoch: int
    kind: int
    sequence: int
    payload_bytes: int
    checksum: int  # crc32 of the payload
    flags: int = 0

    def __post_init__(self) -> None:
        _check_range("request_id", self.request_id, MAX_U64)
        _check_range("epoch", self.epoch, MAX_U64)
        _check_range("sequence", self.sequence, MAX_U32)
        _check_range("checksum", self.checksum, MAX_U32)
        _check_range("payload_bytes", self.payload_bytes, MAX_FRAME_PAYLOAD_BYTES)
        if self.kind not in FRAME_KINDS:
            raise WireError(f"frame kind {self.kind!r} is unknown (known: {sorted(FRAME_KINDS)})")
        if type(self.flags) is not int or self.flags & ~KNOWN_FLAGS:
            raise WireError(f"frame flags {self.flags!r} carry unknown bits")
        if self.flags & FLAG_SEALED and self.checksum:
            raise WireError("a sealed frame carries its integrity in the tag; its checksum field must be 0")

    @property
    def is_last(self) -> bool:
        return bool(self.flags & FLAG_LAST)

    @property
    def is_sealed(self) -> bool:
        return bool(self.flags & FLAG_SEALED)


def frame_header(request_id: int, epoch: int, kind: str | int, sequence: int, payload: bytes | memoryview,
                 *, is_last: bool = False, is_sealed: bool = False) -> FrameHeader:
    """The header for `payload`, with its crc32 computed (unless the frame is sealed by a tag)."""
    kind_id = KIND_IDS[kind] if isinstance(kind, str) else kind
    flags = (FLAG_LAST if is_last else 0) | (FLAG_SEALED if is_sealed else 0)
    checksum = 0 if is_sealed else zlib.crc32(payload)
    return FrameHeader(request_id, epoch, kind_id, sequence, len(payload), checksum, flags)


def encode_frame_header(header: FrameHeader) -> bytes:
    """The 40 header bytes."""
    body = HEADER.pack(FRAME_MAGIC, FRAME_VERSION, header.kind, header.flags, header.request_id, header.epoch,
                       header.sequence, header.payload_bytes, header.checksum, 0)[:-4]
    return body + struct.pack(">I", zlib.crc32(body))


def decode_frame_header(data: bytes | memoryview) -> FrameHeader:
    """A validated header from exactly `HEADER_BYTES` bytes; WireError says what is wrong."""
    if len(data) != HEADER_BYTES:
        raise WireError(f"a frame header is {HEADER_BYTES} bytes, got {len(data)}")
    magic, version, kind, flags, request_id, epoch, sequence, length, checksum, header_crc = HEADER.unpack(data)
    if magic != FRAME_MAGIC:
        raise WireError(f"not a swarm frame (magic {bytes(magic)!r}, expected {FRAME_MAGIC!r})")
    if version != FRAME_VERSION:
        raise WireError(f"frame version {version} is not supported (this peer speaks {FRAME_VERSION})")
    if zlib.crc32(bytes(data[:-4])) != header_crc:
        raise WireError("frame header checksum mismatch (corrupted header)")
    return FrameHeader(request_id, epoch, kind, sequence, length, checksum, flags)


def check_payload(header: FrameHeader, payload: bytes | memoryview) -> None:
    """Raise WireError unless `payload` is the one `header` describes (a sealed frame's tag is checked
    by whoever holds the key, `swarm.net.fastpath`)."""
    if len(payload) != header.payload_bytes:
        raise WireError(f"frame payload is {len(payload)} bytes, header says {header.payload_bytes}")
    if not header.is_sealed and zlib.crc32(payload) != header.checksum:
        raise WireError(f"frame {header.sequence} of request {header.request_id}: payload checksum mismatch")


def _check_range(name: str, value: object, high: int) -> None:
    if type(value) is not int or not 0 <= value <= high:
        raise WireError(f"frame {name}={value!r}: expected an int in [0, {high}]")
