"""Hidden states handed from one pipeline stage to the next: a validated header plus the raw activations.

A blob is `u32 big-endian header length | msgpack HiddenHeader | payload`; the payload is the micro-batch's
activations, (tokens, hidden_size) row-major in `dtype`, sequences packed in header order. The header also
carries what the next stage needs to run and, on the last stage, to sample: positions, lengths and the
sampling values of each sequence, and the requests the first stage has released since the last blob.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from swarm.errors import WireError
from swarm.wire.codec import decode, encode, message

HIDDEN_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}
MAX_HIDDEN_PAYLOAD_BYTES = 1 << 30
MAX_HEADER_BYTES = 1 << 20
_LENGTH = struct.Struct(">I")


@message(24)
@dataclass(frozen=True)
class HiddenHeader:
    """One micro-batch of activations between stages. `first_layer` is where the receiver starts."""

    model_fingerprint: str
    first_layer: int
    is_prefill: bool
    dtype: str
    hidden_size: int
    request_ids: tuple[str, ...]
    query_lens: tuple[int, ...]  # tokens of each sequence in this micro-batch
    start_positions: tuple[int, ...]  # position of each sequence's first token here
    temperatures: tuple[float, ...]
    top_ps: tuple[float, ...]
    top_ks: tuple[int, ...]
    seeds: tuple[int, ...]  # -1: unseeded
    num_generated: tuple[int, ...]  # tokens each sequence has generated so far (seeds its next draw)
    payload_bytes: int
    payload_crc32: int
    released_ids: tuple[str, ...] = ()  # requests finished, aborted or pre-empted at the first stage

    def __post_init__(self) -> None:
        if self.dtype not in HIDDEN_DTYPES:
            raise WireError(f"HiddenHeader.dtype {self.dtype!r} is not one of {sorted(HIDDEN_DTYPES)}")
        n = len(self.request_ids)
        per_sequence = ("query_lens", "start_positions", "temperatures", "top_ps", "top_ks", "seeds", "num_generated")
        if n == 0 or any(len(getattr(self, f)) != n for f in per_sequence):
            raise WireError(f"HiddenHeader: {per_sequence} must each have one entry per request ({n}, at least 1)")
        if len(set(self.request_ids)) != n:
            raise WireError("HiddenHeader.request_ids has duplicates")
        if self.first_layer < 0 or self.hidden_size <= 0:
            raise WireError(f"HiddenHeader: first_layer {self.first_layer} or hidden_size {self.hidden_size} out of range")
        if min(self.query_lens) < 1 or min(self.start_positions) < 0 or min(self.num_generated) < 0:
            raise WireError("HiddenHeader: query_lens must be >= 1, start_positions and num_generated >= 0")
        if self.is_prefill and any(self.start_positions):
            raise WireError("HiddenHeader: a prefill micro-batch starts every sequence at position 0")
        if not self.is_prefill and any(q != 1 for q in self.query_lens):
            raise WireError("HiddenHeader: a decode micro-batch has exactly one token per sequence")
        expected = sum(self.query_lens) * self.hidden_size * HIDDEN_DTYPES[self.dtype]
        if self.payload_bytes != expected or expected > MAX_HIDDEN_PAYLOAD_BYTES:
            raise WireError(f"HiddenHeader.payload_bytes {self.payload_bytes} != tokens x hidden x itemsize "
                            f"= {expected} (limit {MAX_HIDDEN_PAYLOAD_BYTES})")

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)


def pack_hidden(header: HiddenHeader, payload: bytes | memoryview) -> bytes:
    """The blob of a header and its payload (the payload must match the header's size and checksum)."""
    if len(payload) != header.payload_bytes or zlib.crc32(payload) != header.payload_crc32:
        raise ValueError("pack_hidden: payload does not match its header's size or checksum")
    head = encode(header)
    return b"".join([_LENGTH.pack(len(head)), head, payload])


def unpack_hidden(blob: bytes | memoryview) -> tuple[HiddenHeader, memoryview]:
    """The validated header and payload of a blob from a peer.

    Raises:
        WireError: truncated or oversized blob, malformed header, or a payload that fails its checksum.
    """
    view = memoryview(blob)
    if len(view) < _LENGTH.size:
        raise WireError(f"hidden-state blob of {len(view)} bytes is cut short (no header length)")
    (head_len,) = _LENGTH.unpack(view[:_LENGTH.size])
    if head_len > MAX_HEADER_BYTES or _LENGTH.size + head_len > len(view):
        raise WireError(f"hidden-state blob: header of {head_len} bytes does not fit a blob of {len(view)}")
    header = decode(bytes(view[_LENGTH.size:_LENGTH.size + head_len]), expect=HiddenHeader)
    payload = view[_LENGTH.size + head_len:]
    if len(payload) != header.payload_bytes:
        raise WireError(f"hidden-state blob: payload is {len(payload)} bytes, the header says {header.payload_bytes} "
                        "(cut short or padded)")
    if zlib.crc32(payload) != header.payload_crc32:
        raise WireError("hidden-state blob: payload checksum mismatch (corrupted in transit)")
    return header, payload
