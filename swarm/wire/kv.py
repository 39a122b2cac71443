"""The header of an exported KV cache (`KvHeader`) and its msgpack form; validated on both ends.

A KV blob on the wire is `MAGIC`, a 4-byte big-endian header length, the header in the codec's msgpack
envelope (swarm.wire.codec, type id 20), then the raw payload the header describes (layout in
kernels/kv_format.py). This module never imports torch.
"""

import struct
from dataclasses import dataclass

from swarm.errors import WireError
from swarm.wire.codec import decode, encode, message

KV_HEADER_TYPE_ID = 20  # the codec's range for bulk-data headers
MAGIC = b"SWKV"
LENGTH_PREFIX = struct.Struct(">I")
MAX_HEADER_BYTES = 1024
MAX_FINGERPRINT_CHARS = 128
MAX_LAYER = 4096
MAX_LAYERS = 1024
MAX_KV_HEADS = 1024
MAX_HEAD_DIM = 1024
MAX_TOKENS = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 32
MAX_SINK_TOKENS = 64
KV_BITS = (16, 8, 4)
KEY_AXES = ("token", "channel")
PAYLOAD_DTYPES = ("float16",)
GROUP_SIZES = tuple(2**i for i in range(3, 11))  # 8 .. 1024


@message(KV_HEADER_TYPE_ID)
@dataclass(frozen=True)
class KvHeader:
    """What a KV payload holds: which model and layers, its shape, its quantisation, its checksum."""

    model_fingerprint: str
    first_layer: int
    num_layers: int
    kv_heads: int
    num_tokens: int
    head_dim: int
    dtype: str  # element type of raw (16-bit) payloads and of every scale and minimum
    bits: int  # 16 (no quantisation), 8 or 4
    group_size: int  # key group size
    value_group_size: int
    key_axis: str  # "token" or "channel"; values are always grouped per token
    num_sink_tokens: int  # leading tokens sent in fp16 when quantised (0 at 16 bits)
    payload_bytes: int
    checksum: int  # crc32 of the payload

    def __post_init__(self) -> None:
        check_str("model_fingerprint", self.model_fingerprint, MAX_FINGERPRINT_CHARS)
        check_int("first_layer", self.first_layer, 0, MAX_LAYER)
        check_int("num_layers", self.num_layers, 1, MAX_LAYERS)
        check_int("kv_heads", self.kv_heads, 1, MAX_KV_HEADS)
        check_int("num_tokens", self.num_tokens, 1, MAX_TOKENS)
        check_int("head_dim", self.head_dim, 1, MAX_HEAD_DIM)
        check_choice("dtype", self.dtype, PAYLOAD_DTYPES)
        check_choice("bits", self.bits, KV_BITS)
        check_choice("group_size", self.group_size, GROUP_SIZES)
        check_choice("value_group_size", self.value_group_size, GROUP_SIZES)
        check_choice("key_axis", self.key_axis, KEY_AXES)
        check_int("num_sink_tokens", self.num_sink_tokens, 0, MAX_SINK_TOKENS)
        check_int("payload_bytes", self.payload_bytes, 0, MAX_PAYLOAD_BYTES)
        check_int("checksum", self.checksum, 0, 2**32 - 1)


def check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise WireError(f"KvHeader.{name}={value!r}: expected an int in [{low}, {high}]")


def check_str(name: str, value: object, max_chars: int) -> None:
    if type(value) is not str or not 1 <= len(value) <= max_chars:
        raise WireError(f"KvHeader.{name}={value!r}: expected a string of 1 to {max_chars} characters")


def check_choice(name: str, value: object, allowed: tuple) -> None:
    if type(value) is not type(allowed[0]) or value not in allowed:
        raise WireError(f"KvHeader.{name}={value!r}: expected one of {allowed}")


def encode_kv_header(header: KvHeader) -> bytes:
    """MAGIC + length + the codec's envelope `[wire_version, 20, [fields in declaration order]]`."""
    body = encode(header)
    return MAGIC + LENGTH_PREFIX.pack(len(body)) + body


def decode_kv_header(blob: bytes | memoryview) -> tuple[KvHeader, int]:
    """Decode and validate the header at the start of a KV blob.

    Returns:
        the header and the offset of the payload in `blob`.
    Raises:
        WireError: bad magic, an oversized or truncated header, or any field out of range.
    """
    view = memoryview(blob)
    prefix_len = len(MAGIC) + LENGTH_PREFIX.size
    if len(view) < prefix_len or bytes(view[: len(MAGIC)]) != MAGIC:
        raise WireError(f"not a KV blob: expected it to start with {MAGIC!r} and a header length")
    (header_len,) = LENGTH_PREFIX.unpack(view[len(MAGIC) : prefix_len])
    if header_len > MAX_HEADER_BYTES:
        raise WireError(f"KV header of {header_len} bytes is over the {MAX_HEADER_BYTES}-byte cap")
    if len(view) < prefix_len + header_len:
        raise WireError(
            f"truncated KV blob: header needs {header_len} bytes, {len(view) - prefix_len} present"
        )
    raw = bytes(view[prefix_len : prefix_len + header_len])
    return decode(raw, expect=KvHeader, max_bytes=MAX_HEADER_BYTES), prefix_len + header_len
