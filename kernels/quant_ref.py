"""Group-wise asymmetric 4/8-bit quantisation of KV tensors: the pure-torch reference for every op.

How it works. A tensor (..., num_tokens, head_dim) is cut into *rows*, and each row into groups of
`group_size` consecutive elements:
- axis "token": one row per (..., head), the tokens' head_dim vectors laid end to end, so a group
  covers part of one token (group_size < head_dim) or several whole tokens (group_size > head_dim);
- axis "channel": one row per (..., head, channel) running along the tokens — KIVI's per-channel key
  quantisation (Liu et al., ICML 2024, section 3.2): keys have a few outlier channels, and grouping
  along tokens keeps each outlier channel in groups of its own.
Each group stores an fp16 minimum m and an fp16 scale s = (max - min) / (2**bits - 1); an element's code
is clamp(floor((x - m) / s + 0.5), 0, 2**bits - 1), so |x - (code * s + m)| <= s / 2 plus fp16 rounding
of m and s. 4-bit codes are packed two per byte, the even element in the low nibble. A row whose length
is not a multiple of the group size is padded by repeating its last element (min and max unchanged);
the true shape is kept in the QuantizedTensor so dequantisation drops the padding.
"""

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import KvConfigError

QUANT_BITS = (4, 8)
AXES = ("token", "channel")
MIN_GROUP_SIZE = 8
MAX_GROUP_SIZE = 1024
BLOCK_ELEMENTS = 1 << 18  # rows are processed in blocks of about this many elements (1 MiB in fp32)
IS_LITTLE_ENDIAN = sys.byteorder == "little"  # the 4-bit packing reads byte pairs as int16


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantised (..., num_tokens, head_dim) tensor: packed codes plus an fp16 scale and minimum per group."""

    data: Tensor  # uint8 (num_rows, packed_row_bytes(row_len, bits)): codes of the true row, no padding
    scale: Tensor  # float16 (num_rows, num_groups)
    minimum: Tensor  # float16 (num_rows, num_groups)
    shape: tuple[int, ...]  # the original (..., num_tokens, head_dim)
    bits: int
    group_size: int
    axis: str


def check_quant_args(bits: int, group_size: int, axis: str) -> None:
    """Raise KvConfigError unless (bits, group_size, axis) is a supported quantisation."""
    if bits not in QUANT_BITS:
        raise KvConfigError(f"bits={bits!r}: quantisation supports {QUANT_BITS} bits")
    is_pow2 = isinstance(group_size, int) and group_size > 0 and group_size & (group_size - 1) == 0
    if not is_pow2 or not MIN_GROUP_SIZE <= group_size <= MAX_GROUP_SIZE:
        raise KvConfigError(
            f"group_size={group_size!r}: must be a power of two in [{MIN_GROUP_SIZE}, {MAX_GROUP_SIZE}]"
        )
    if axis not in AXES:
        raise KvConfigError(f"axis={axis!r}: must be one of {AXES}")


def row_layout(shape: tuple[int, ...], axis: str) -> tuple[int, int]:
    """(num_rows, row_len) of a (..., num_tokens, head_dim) tensor cut into rows along `axis`."""
    *lead, num_tokens, head_dim = shape
    num_lead = 1
    for size in lead:
        num_lead *= size
    if axis == "token":
        return num_lead, num_tokens * head_dim
    return num_lead * head_dim, num_tokens


def num_groups_of(row_len: int, group_size: int) -> int:
    return -(-row_len // group_size)


def packed_row_bytes(row_len: int, bits: int) -> int:
    """Bytes of one row's packed codes: padding codes are not stored (an odd 4-bit row ends in half a byte)."""
    return -(-row_len * bits // 8)


def quantized_nbytes(shape: tuple[int, ...], bits: int, group_size: int, axis: str) -> int:
    """Bytes of packed codes plus fp16 scales and minimums for a tensor of `shape`."""
    num_rows, row_len = row_layout(shape, axis)
    num_groups = num_groups_of(row_len, group_size)
    return num_rows * (packed_row_bytes(row_len, bits) + num_groups * 4)


def to_rows(x: Tensor, axis: str) -> Tensor:
    """View or copy x (..., num_tokens, head_dim) as (num_rows, row_len) along `axis`."""
    num_tokens, head_dim = x.shape[-2:]
    if axis == "token":
        return x.reshape(-1, num_tokens * head_dim)  # (lead, num_tokens * head_dim)
    return x.transpose(-1, -2).reshape(-1, num_tokens)  # (lead * head_dim, num_tokens)


def from_rows(rows: Tensor, shape: tuple[int, ...], axis: str) -> Tensor:
    """Inverse of to_rows: (num_rows, row_len) back to `shape` (..., num_tokens, head_dim)."""
    *lead, num_tokens, head_dim = shape
    if axis == "token":
        return rows.reshape(shape)  # (..., num_tokens, head_dim)
    return rows.reshape(*lead, head_dim, num_tokens).transpose(-1, -2)  # (..., num_tokens, head_dim)


def pad_rows(rows: Tensor, group_size: int) -> Tensor:
    """Pad (num_rows, row_len) to a multiple of group_size by repeating each row's last element."""
    num_rows, row_len = rows.shape
    num_pad = num_groups_of(row_len, group_size) * group_size - row_len
    if num_pad == 0:
        return rows
    return torch.cat([rows, rows[:, -1:].expand(num_rows, num_pad)], dim=1)  # (num_rows, padded_len)


def pack_4bit(codes: Tensor) -> Tensor:
    """(..., n) uint8 codes < 16, n even -> (..., n // 2) bytes: even element low nibble, odd high."""
    if IS_LITTLE_ENDIAN and codes.is_contiguous():
        pairs = codes.view(torch.int16)  # (..., n // 2): even code in the low byte, odd code in the high
        return (pairs | (pairs >> 4)).to(torch.uint8)  # low byte = even | odd << 4
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_4bit(packed: Tensor) -> Tensor:
    """(..., n // 2) bytes -> (..., n) uint8 codes; inverse of pack_4bit."""
    if IS_LITTLE_ENDIAN:
        wide = packed.to(torch.int16)  # (..., n // 2)
        pairs = (wide & 0x0F) | ((wide & 0xF0) << 4)  # low byte = even code, high byte = odd code
        return pairs.view(torch.uint8)  # (..., n)
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)  # (..., n // 2, 2) -> (..., n)


def quantize_groups(groups: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """The maths, on (rows, num_groups, group_size) floats: (uint8 codes, fp16 scale, fp16 minimum).

    Codes are computed from the fp16-rounded scale and minimum, exactly what dequantisation uses.
    """
    q_max = 2**bits - 1
    x = groups.float()
    lo, hi = x.amin(dim=-1), x.amax(dim=-1)  # (rows, num_groups)
    scale = ((hi - lo) / q_max).to(torch.float16)
    minimum = lo.to(torch.float16)
    scale_f = scale.float()
    inv_scale = torch.where(scale_f > 0, 1.0 / scale_f, torch.zeros_like(scale_f))
    if x.data_ptr() == groups.data_ptr():
        x = x.clone()  # never write into the caller's tensor
    codes = x.sub_(minimum.float()[..., None]).mul_(inv_scale[..., None])
    codes = codes.clamp_(0, q_max).add_(0.5).to(torch.int16).to(torch.uint8)  # truncation == floor(v + 0.5)
    return codes, scale, minimum


def dequantize_groups(codes: Tensor, scale: Tensor, minimum: Tensor) -> Tensor:
    """The inverse maths: (rows, num_groups, group_size) codes -> float32 code * scale + minimum."""
    return codes.float().mul_(scale.float()[..., None]).add_(minimum.float()[..., None])


def row_blocks(num_rows: int, row_len: int, device: torch.device, multiple: int = 1) -> list[slice]:
    """Row ranges of about BLOCK_ELEMENTS elements each (a multiple of `multiple` rows), so that on the
    CPU every pass of the maths runs on cache-resident data; one block on other devices."""
    if device.type != "cpu":
        return [slice(0, num_rows)]
    step = max(1, BLOCK_ELEMENTS // max(row_len, 1) // multiple) * multiple
    return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def quantize(x: Tensor, bits: int, group_size: int, axis: str) -> QuantizedTensor:
    """Quantise a float tensor (..., num_tokens, head_dim) group-wise along `axis`.

    Values must be finite and within the fp16 range (encode_kv_blob checks this for the wire).
    """
    check_quant_args(bits, group_size, axis)
    if x.ndim < 2 or not x.is_floating_point() or x.numel() == 0:
        raise KvConfigError(
            f"quantize needs a non-empty float tensor (..., tokens, head_dim), got {x.dtype} {tuple(x.shape)}"
        )
    rows = pad_rows(to_rows(x, axis), group_size)  # (num_rows, padded_len)
    num_rows, padded_len = rows.shape
    num_groups = padded_len // group_size
    data = torch.empty(num_rows, padded_len * bits // 8, dtype=torch.uint8, device=x.device)
    scale = torch.empty(num_rows, num_groups, dtype=torch.float16, device=x.device)
    minimum = torch.empty_like(scale)
    for block in row_blocks(num_rows, padded_len, x.device):
        groups = rows[block].reshape(-1, num_groups, group_size)  # (block rows, num_groups, group_size)
        codes, scale[block], minimum[block] = quantize_groups(groups, bits)
        codes = codes.reshape(groups.shape[0], padded_len)  # (block rows, padded_len)
        data[block] = pack_4bit(codes) if bits == 4 else codes
    _, row_len = row_layout(tuple(x.shape), axis)
    data = data[:, : packed_row_bytes(row_len, bits)].contiguous()  # (num_rows, packed bytes of the true row)
    return QuantizedTensor(data, scale, minimum, tuple(x.shape), bits, group_size, axis)


def unpack_codes(q: QuantizedTensor) -> Tensor:
    """The uint8 codes of q, (num_rows, num_groups, group_size); padding codes read as 0."""
    num_rows, num_groups = q.scale.shape
    num_pad_bytes = num_groups * q.group_size * q.bits // 8 - q.data.shape[1]
    data = torch.nn.functional.pad(q.data, (0, num_pad_bytes)) if num_pad_bytes else q.data
    codes = unpack_4bit(data) if q.bits == 4 else data  # (num_rows, padded_len)
    return codes.reshape(num_rows, num_groups, q.group_size)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float16) -> Tensor:
    """Reconstruct the (..., num_tokens, head_dim) tensor from q, contiguous, in `dtype`, on q's device."""
    *lead, num_tokens, head_dim = q.shape
    num_rows, num_groups = q.scale.shape
    _, row_len = row_layout(q.shape, q.axis)
    out = torch.empty(q.shape, dtype=dtype, device=q.data.device)
    # A block of rows is whole (lead) slices of `out`: token rows are one each, channel rows head_dim each.
    rows_per_lead = head_dim if q.axis == "channel" else 1
    out_leads = out.view(-1, num_tokens, head_dim)  # (num_leads, num_tokens, head_dim)
    for block in row_blocks(num_rows, num_groups * q.group_size, q.data.device, rows_per_lead):
        part = QuantizedTensor(
            q.data[block], q.scale[block], q.minimum[block], q.shape, q.bits, q.group_size, q.axis
        )
        codes = unpack_codes(part)  # (block rows, num_groups, group_size)
        values = dequantize_groups(codes, part.scale, part.minimum).to(dtype)  # transpose below in `dtype`
        values = values.view(codes.shape[0], -1)[:, :row_len]  # (block rows, row_len)
        leads = slice(block.start // rows_per_lead, block.stop // rows_per_lead)
        block_shape = (leads.stop - leads.start, num_tokens, head_dim)
        out_leads[leads] = from_rows(values, block_shape, q.axis)  # (block leads, num_tokens, head_dim)
    return out
