"""The wire form of one sequence's exported KV cache: KvFormat, encode_kv_blob and decode_kv_blob.

Blob = header (swarm.wire.kv: magic, length, msgpack KvHeader) + payload. With L layers, H kv heads,
T tokens and head_dim D, keys and values are stacked per layer into (L, H, T, D) and the payload is
- bits 16: keys then values as fp16, C order;
- bits 8/4: key scales, key minimums, value scales, value minimums (fp16), then key codes and value
  codes (uint8, packed, padding not stored) — the fp16 sections first keeps them 2-byte aligned.
  Each is a QuantizedTensor's tensor in C order; rows are layer-major, so a layer's rows are contiguous.
The receiver checks every header field against what it expects, the exact payload size before it
allocates, the crc32, and that every reconstructed value is finite.
"""

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import KvConfigError, KvFormatError
from kernels.paged import dequantize_into_paged, to_device
from kernels.quant import dequantize, quantize
from kernels.quant_ref import (
    AXES,
    QuantizedTensor,
    check_quant_args,
    num_groups_of,
    packed_row_bytes,
    row_layout,
)
from swarm.errors import WireError
from swarm.wire.kv import MAX_PAYLOAD_BYTES, KvHeader, decode_kv_header, encode_kv_header

FP16_MAX = 65504.0
KV_BITS = (16, 8, 4)


@dataclass(frozen=True)
class KvFormat:
    """How KV travels: bits (16 = plain fp16), key group size and axis, value group size (per token)."""

    bits: int = 4
    group_size: int = 32
    key_axis: str = "channel"
    value_group_size: int | None = 128  # None: same as group_size

    def __post_init__(self) -> None:
        if self.bits not in KV_BITS:
            raise KvConfigError(f"KvFormat.bits={self.bits!r}: must be one of {KV_BITS}")
        if self.key_axis not in AXES:
            raise KvConfigError(f"KvFormat.key_axis={self.key_axis!r}: must be one of {AXES}")
        check_quant_args(8, self.group_size, self.key_axis)
        check_quant_args(8, self.values_group_size, "token")

    @property
    def values_group_size(self) -> int:
        return self.group_size if self.value_group_size is None else self.value_group_size

    def bits_per_element(self) -> float:
        """Average wire bits per K or V element, scales and minimums included (padding ignored)."""
        if self.bits == 16:
            return 16.0
        return self.bits + (32 / self.group_size + 32 / self.values_group_size) / 2


@dataclass(frozen=True)
class KvExpectation:
    """What the receiver's engine holds: the blob must be for exactly this model and layer range."""

    model_fingerprint: str
    first_layer: int
    num_layers: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class KvPayload:
    """A validated blob before dequantisation: keys and values (L, H, T, D), quantised or fp16."""

    header: KvHeader
    keys: QuantizedTensor | Tensor
    values: QuantizedTensor | Tensor


def section_nbytes(shape: tuple[int, ...], bits: int, group_size: int, axis: str) -> list[int]:
    """Byte sizes of one stacked tensor's sections: [fp16 values] or [scales, minimums, codes]."""
    if bits == 16:
        numel = 1
        for size in shape:
            numel *= size
        return [numel * 2]
    num_rows, row_len = row_layout(shape, axis)
    num_groups = num_rows * num_groups_of(row_len, group_size)
    return [num_groups * 2, num_groups * 2, num_rows * packed_row_bytes(row_len, bits)]


def payload_sections(header: KvHeader) -> list[int]:
    """Byte sizes of the payload's sections, in payload order."""
    shape = (header.num_layers, header.kv_heads, header.num_tokens, header.head_dim)
    keys = section_nbytes(shape, header.bits, header.group_size, header.key_axis)
    values = section_nbytes(shape, header.bits, header.value_group_size, "token")
    return keys + values if header.bits == 16 else [*keys[:2], *values[:2], keys[2], values[2]]


def stack_layers(name: str, tensors: list[Tensor]) -> Tensor:
    """Check and stack one sequence's per-layer (kv_heads, num_tokens, head_dim) tensors -> (L, H, T, D)."""
    if not tensors:
        raise KvConfigError(f"encode_kv_blob: {name} is empty; pass one tensor per layer")
    shape = tuple(tensors[0].shape)
    for layer, t in enumerate(tensors):
        if t.ndim != 3 or tuple(t.shape) != shape or not t.is_floating_point():
            raise KvConfigError(
                f"encode_kv_blob: {name}[{layer}] is {t.dtype} {tuple(t.shape)}; every layer must be a float "
                f"tensor (kv_heads, num_tokens, head_dim) of shape {shape}"
            )
    stacked = torch.stack(tensors)  # (num_layers, kv_heads, num_tokens, head_dim)
    if not bool(stacked.abs().amax() <= FP16_MAX):  # NaN compares False too
        raise KvConfigError(
            f"encode_kv_blob: {name} holds a non-finite value or one beyond fp16's ±{FP16_MAX}"
        )
    return stacked


def encode_kv_blob(
    keys: list[Tensor], values: list[Tensor], fmt: KvFormat, *, model_fingerprint: str, first_layer: int
) -> bytes:
    """Encode one sequence's KV (one (kv_heads, num_tokens, head_dim) tensor per layer) for the wire."""
    k = stack_layers("keys", keys)  # (num_layers, kv_heads, num_tokens, head_dim)
    v = stack_layers("values", values)
    if k.shape != v.shape:
        raise KvConfigError(
            f"encode_kv_blob: keys {tuple(k.shape)} and values {tuple(v.shape)} differ in shape"
        )
    if fmt.bits == 16:
        sections = [k.to(torch.float16), v.to(torch.float16)]
    else:
        qk = quantize(k, fmt.bits, fmt.group_size, fmt.key_axis)
        qv = quantize(v, fmt.bits, fmt.values_group_size, "token")
        sections = [qk.scale, qk.minimum, qv.scale, qv.minimum, qk.data, qv.data]
    raw = [s.detach().cpu().contiguous().view(torch.uint8).reshape(-1).numpy() for s in sections]
    checksum = 0
    for part in raw:
        checksum = zlib.crc32(part, checksum)
    num_layers, kv_heads, num_tokens, head_dim = k.shape
    try:
        header = KvHeader(
            model_fingerprint,
            first_layer,
            num_layers,
            kv_heads,
            num_tokens,
            head_dim,
            "float16",
            fmt.bits,
            fmt.group_size,
            fmt.values_group_size,
            fmt.key_axis,
            sum(p.nbytes for p in raw),
            checksum,
        )
    except WireError as exc:
        raise KvConfigError(f"encode_kv_blob: {exc}") from exc
    return b"".join([encode_kv_header(header), *raw])


def check_expected(header: KvHeader, expected: KvExpectation) -> None:
    """Raise KvFormatError naming the first field where the blob and the receiver disagree."""
    if header.model_fingerprint != expected.model_fingerprint:
        raise KvFormatError(
            f"KV blob is for model {header.model_fingerprint!r}, this engine serves {expected.model_fingerprint!r}"
        )
    blob_layers = (header.first_layer, header.first_layer + header.num_layers)
    want_layers = (expected.first_layer, expected.first_layer + expected.num_layers)
    if blob_layers != want_layers:
        raise KvFormatError(
            f"KV blob holds layers [{blob_layers[0]}, {blob_layers[1]}), expected [{want_layers[0]}, {want_layers[1]})"
        )
    if (header.kv_heads, header.head_dim) != (expected.kv_heads, expected.head_dim):
        raise KvFormatError(
            f"KV blob has kv_heads={header.kv_heads}, head_dim={header.head_dim}; "
            f"expected kv_heads={expected.kv_heads}, head_dim={expected.head_dim}"
        )


def read_kv_blob(blob: bytes | bytearray | memoryview, expected: KvExpectation) -> KvPayload:
    """Validate a blob's header, size and checksum against `expected`; return its sections as CPU tensors."""
    try:
        header, offset = decode_kv_header(blob)
    except WireError as exc:
        raise KvFormatError(str(exc)) from exc
    check_expected(header, expected)
    sizes = payload_sections(header)
    num_bytes = sum(sizes)
    if num_bytes != header.payload_bytes or num_bytes > MAX_PAYLOAD_BYTES:
        raise KvFormatError(
            f"KV header says payload_bytes={header.payload_bytes}, its shape and format need {num_bytes}"
        )
    present = len(blob) - offset
    if present != num_bytes:
        kind = "truncated" if present < num_bytes else "oversized"
        raise KvFormatError(f"{kind} KV blob: payload of {present} bytes, header describes {num_bytes}")
    payload = bytearray(memoryview(blob)[offset:])  # one copy, so the tensors below are writable
    if zlib.crc32(payload) != header.checksum:
        raise KvFormatError("KV blob checksum mismatch: the payload was corrupted in transit")
    flat = torch.frombuffer(payload, dtype=torch.uint8)  # num_tokens >= 1, so never empty
    parts = list(flat.split(sizes))
    shape = (header.num_layers, header.kv_heads, header.num_tokens, header.head_dim)
    if header.bits == 16:
        return KvPayload(
            header, parts[0].view(torch.float16).view(shape), parts[1].view(torch.float16).view(shape)
        )
    key_parts, value_parts = [parts[0], parts[1], parts[4]], [parts[2], parts[3], parts[5]]
    keys = sections_to_quantized(key_parts, shape, header.bits, header.group_size, header.key_axis)
    values = sections_to_quantized(value_parts, shape, header.bits, header.value_group_size, "token")
    return KvPayload(header, keys, values)


def sections_to_quantized(
    parts: list[Tensor], shape: tuple[int, ...], bits: int, group_size: int, axis: str
) -> QuantizedTensor:
    """Wrap [scales, minimums, codes] byte sections as a QuantizedTensor of `shape`."""
    num_rows, row_len = row_layout(shape, axis)
    num_groups = num_groups_of(row_len, group_size)
    scale = parts[0].view(torch.float16).view(num_rows, num_groups)
    minimum = parts[1].view(torch.float16).view(num_rows, num_groups)
    data = parts[2].view(num_rows, packed_row_bytes(row_len, bits))  # (num_rows, packed bytes per row)
    return QuantizedTensor(data, scale, minimum, shape, bits, group_size, axis)


def check_finite(x: QuantizedTensor | Tensor, dtype: torch.dtype) -> None:
    """Reject a section that holds, or dequantises to, a value `dtype` cannot represent.

    For a quantised section it is enough to bound each group's minimum and maximum (minimum + scale *
    (2**bits - 1)): every dequantised value lies between them.
    """
    limit = torch.finfo(dtype).max
    if isinstance(x, QuantizedTensor):
        lo = x.minimum.float()
        hi = lo + x.scale.float() * (2**x.bits - 1)
        is_ok = (
            bool((x.scale >= 0).all()) and bool((lo.abs() <= limit).all()) and bool((hi.abs() <= limit).all())
        )
    else:
        is_ok = bool(torch.isfinite(x).all())  # fp16 fits every float dtype decode may ask for
    if not is_ok:
        raise KvFormatError(
            f"KV blob holds a non-finite value, a negative scale or a value beyond {dtype}'s range"
        )


def materialize(x: QuantizedTensor | Tensor, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """Dequantise (or convert) one stacked (L, H, T, D) section on `device`, after check_finite."""
    check_finite(x, dtype)
    if isinstance(x, QuantizedTensor):
        return dequantize(to_device(x, torch.device(device)), dtype)
    return x.to(device=device, dtype=dtype)


def decode_kv_blob(
    blob: bytes | bytearray | memoryview, expected: KvExpectation, *, dtype: torch.dtype, device="cpu"
) -> tuple[list[Tensor], list[Tensor]]:
    """Decode a blob into per-layer keys and values, each (kv_heads, num_tokens, head_dim) in `dtype`.

    Raises:
        KvFormatError: wrong model, layer range or shape; bad checksum; non-finite value; truncated,
            oversized or malformed blob.
    """
    payload = read_kv_blob(blob, expected)
    keys = materialize(payload.keys, dtype, device)  # (num_layers, kv_heads, num_tokens, head_dim)
    values = materialize(payload.values, dtype, device)
    return list(keys.unbind(0)), list(values.unbind(0))


def decode_kv_blob_into_paged(
    blob: bytes | bytearray | memoryview,
    expected: KvExpectation,
    key_caches: Sequence[Tensor],
    value_caches: Sequence[Tensor],
    block_ids: Sequence[int] | Tensor,
) -> int:
    """Decode a blob straight into paged caches (layout in kernels.paged); returns its number of tokens.

    Raises:
        KvFormatError: as decode_kv_blob; KvConfigError: caches or block ids that do not fit the blob.
    """
    payload = read_kv_blob(blob, expected)
    for section, caches in ((payload.keys, key_caches), (payload.values, value_caches)):
        check_finite(section, caches[0].dtype if caches else torch.float16)
        dequantize_into_paged(section, caches, block_ids)
    return payload.header.num_tokens
