"""The wire form of one sequence's exported KV cache: encode_kv_blob, decode_kv_blob and friends.

Blob = header (swarm.wire.kv: magic, length, msgpack KvHeader) + payload (layout in kernels.kv_format):
fp16 sink tokens, then each quantised section (scales, minimums, codes) in the KV tensor's own
token-major order, which both ends read and write without a transposed copy. Per-channel keys: scales
and minimums (L, H, groups, D), codes (L, H, ceil(tokens / 2), D) with tokens 2j and 2j + 1 of a channel
in one byte (even token in the low nibble); 8-bit codes (L, H, tokens, D). Per-token values: plain C order.
The receiver checks every header field against what it expects, the exact payload size before it
allocates anything, the crc32 of the payload, and that every value it will reconstruct is finite.
"""

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import KvConfigError, KvFormatError
from kernels.kv_format import KvExpectation, KvFormat, PayloadLayout
from kernels.paged import dequantize_into_paged, to_device, write_paged
from kernels.quant import dequantize, quantize
from kernels.quant_ref import QuantizedTensor, num_groups_of, packed_row_bytes, row_layout, row_width
from swarm.errors import WireError
from swarm.wire.kv import MAX_PAYLOAD_BYTES, KvHeader, decode_kv_header, encode_kv_header


@dataclass(frozen=True)
class KvSection:
    """K or V of a validated blob: fp16 sink tokens (L, H, S, D), then the rest (quantised, or fp16 at 16 bits)."""

    sinks: Tensor  # float16 (num_layers, kv_heads, num_sink_tokens, head_dim); S may be 0
    body: QuantizedTensor | Tensor | None  # tokens S.. as (L, H, T - S, D); None if every token is a sink


@dataclass(frozen=True)
class KvPayload:
    """A validated blob before dequantisation (CPU tensors viewing one copy of the payload)."""

    header: KvHeader
    keys: KvSection
    values: KvSection


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
    return torch.stack(tensors)  # (num_layers, kv_heads, num_tokens, head_dim)


def encode_section(x: Tensor, bits: int, group_size: int, axis: str, num_sinks: int) -> KvSection:
    """K or V (L, H, T, D) in wire form: all fp16 at 16 bits, else fp16 sinks and the rest quantised."""
    if bits == 16:
        return KvSection(x.new_empty(*x.shape[:2], 0, x.shape[3], dtype=torch.float16), x.to(torch.float16))
    sinks = x[:, :, :num_sinks].to(torch.float16)  # (L, H, S, D)
    body = quantize(x[:, :, num_sinks:], bits, group_size, axis) if num_sinks < x.shape[2] else None
    return KvSection(sinks, body)


def payload_tensors(keys: KvSection, values: KvSection) -> list[Tensor]:
    """The payload's sections in order (kernels.kv_format.PayloadLayout)."""
    if keys.body is None or values.body is None:  # every token is a sink
        return [keys.sinks, values.sinks]
    if not isinstance(keys.body, QuantizedTensor):  # 16 bits: no sinks, plain fp16
        return [keys.body, values.body]
    qk, qv = keys.body, values.body
    return [keys.sinks, values.sinks, qk.scale, qk.minimum, qv.scale, qv.minimum, qk.data, qv.data]


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
    num_layers, kv_heads, num_tokens, head_dim = k.shape
    num_sinks = 0 if fmt.bits == 16 else min(fmt.num_sink_tokens, num_tokens)
    key_section = encode_section(k, fmt.bits, fmt.group_size, fmt.key_axis, num_sinks)
    value_section = encode_section(v, fmt.bits, fmt.values_group_size, "token", num_sinks)
    for name, section in (("keys", key_section), ("values", value_section)):
        try:  # on the small scales and minimums, not on every element
            check_finite(section, torch.float16)
        except KvFormatError:
            raise KvConfigError(
                f"encode_kv_blob: {name} holds a non-finite value or one beyond fp16's range"
            ) from None
    tensors = payload_tensors(key_section, value_section)
    raw = [t.detach().cpu().contiguous().view(torch.uint8).reshape(-1).numpy() for t in tensors]
    checksum = 0
    for part in raw:
        checksum = zlib.crc32(part, checksum)
    try:
        header = KvHeader(
            model_fingerprint, first_layer, num_layers, kv_heads, num_tokens, head_dim, "float16", fmt.bits,
            fmt.group_size, fmt.values_group_size, fmt.key_axis, num_sinks, sum(p.nbytes for p in raw), checksum,
        )  # fmt: skip
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
    if header.num_sink_tokens > header.num_tokens or (header.bits == 16 and header.num_sink_tokens):
        raise KvFormatError(
            f"KV header has num_sink_tokens={header.num_sink_tokens} with num_tokens={header.num_tokens} "
            f"and bits={header.bits}; sinks must be at most the tokens, and none at 16 bits"
        )


def read_kv_blob(blob: bytes | bytearray | memoryview, expected: KvExpectation) -> KvPayload:
    """Validate a blob's header, size and checksum against `expected`; return its sections as CPU tensors."""
    try:
        header, offset = decode_kv_header(blob)
    except WireError as exc:
        raise KvFormatError(str(exc)) from exc
    check_expected(header, expected)
    layout = PayloadLayout.of(header)
    sizes = layout.section_sizes()
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
    parts = list(torch.frombuffer(payload, dtype=torch.uint8).split(sizes))  # num_tokens >= 1: never empty
    keys, values = split_sections(parts, layout)
    return KvPayload(header, keys, values)


def split_sections(parts: list[Tensor], layout: PayloadLayout) -> tuple[KvSection, KvSection]:
    """Wrap the payload's byte sections (PayloadLayout.section_sizes order) as K and V sections."""
    if layout.bits == 16:
        shape = layout.shape(layout.num_tokens)
        no_sinks = torch.empty(layout.shape(0), dtype=torch.float16)
        k, v = (p.view(torch.float16).view(shape) for p in parts)
        return KvSection(no_sinks, k), KvSection(no_sinks, v)
    sink_shape = layout.shape(layout.num_sink_tokens)
    key_sinks, value_sinks = (p.view(torch.float16).view(sink_shape) for p in parts[:2])
    if layout.body_tokens == 0:
        return KvSection(key_sinks, None), KvSection(value_sinks, None)
    shape = layout.shape(layout.body_tokens)
    keys = to_quantized(
        [parts[2], parts[3], parts[6]], shape, layout.bits, layout.group_size, layout.key_axis
    )
    values = to_quantized(
        [parts[4], parts[5], parts[7]], shape, layout.bits, layout.value_group_size, "token"
    )
    return KvSection(key_sinks, keys), KvSection(value_sinks, values)


def to_quantized(
    parts: list[Tensor], shape: tuple[int, ...], bits: int, group_size: int, axis: str
) -> QuantizedTensor:
    """Wrap [scales, minimums, codes] byte sections as a QuantizedTensor of `shape` (layout in kernels.quant_ref)."""
    num_rows, row_len = row_layout(shape, axis)
    width = row_width(shape, axis)
    num_leads, num_groups = num_rows // width, num_groups_of(row_len, group_size)
    scale = parts[0].view(torch.float16).view(num_leads, num_groups, width)
    minimum = parts[1].view(torch.float16).view(num_leads, num_groups, width)
    data = parts[2].view(num_leads, packed_row_bytes(row_len, bits), width)  # (leads, row bytes, width)
    return QuantizedTensor(data, scale, minimum, shape, bits, group_size, axis)


def check_finite(section: KvSection, dtype: torch.dtype) -> None:
    """Reject a section that holds, or dequantises to, a value `dtype` cannot represent.

    For quantised tokens it is enough to bound each group's minimum and maximum (minimum + scale *
    (2**bits - 1)): every dequantised value lies between them. fp16 fits every float dtype.
    """
    limit = torch.finfo(dtype).max
    body = section.body
    is_ok = bool(torch.isfinite(section.sinks).all())
    if isinstance(body, QuantizedTensor):
        lo = body.minimum.float()
        hi = lo + body.scale.float() * (2**body.bits - 1)
        is_ok = is_ok and bool((body.scale >= 0).all()) and bool((lo.abs() <= limit).all())
        is_ok = is_ok and bool((hi.abs() <= limit).all())
    elif body is not None:
        is_ok = is_ok and bool(torch.isfinite(body).all())
    if not is_ok:
        raise KvFormatError(
            f"KV blob holds a non-finite value, a negative scale or a value beyond {dtype}'s range"
        )


def materialize(section: KvSection, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """One of K or V as a dense (L, H, T, D) tensor in `dtype` on `device`, after check_finite."""
    check_finite(section, dtype)
    num_layers, kv_heads, num_sinks, head_dim = section.sinks.shape
    body = section.body
    num_tokens = num_sinks + (0 if body is None else body.shape[2])
    out = torch.empty(num_layers, kv_heads, num_tokens, head_dim, dtype=dtype, device=device)
    out[:, :, :num_sinks] = section.sinks  # (L, H, S, D)
    if isinstance(body, QuantizedTensor):  # straight into the token slice: no concatenation afterwards
        dequantize(to_device(body, torch.device(device)), dtype, out=out[:, :, num_sinks:])
    elif body is not None:
        out[:, :, num_sinks:] = body
    return out  # (L, H, T, D)


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
        num_sinks = section.sinks.shape[2]
        if num_sinks:
            write_paged(section.sinks, caches, block_ids)
        if section.body is not None:
            dequantize_into_paged(section.body, caches, block_ids, first_token=num_sinks)
    return payload.header.num_tokens
