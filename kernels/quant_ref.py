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

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import KvConfigError

QUANT_BITS = (4, 8)
AXES = ("token", "channel")
MIN_GROUP_SIZE = 8
MAX_GROUP_SIZE = 1024


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
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_4bit(packed: Tensor) -> Tensor:
    """(..., n // 2) bytes -> (..., n) uint8 codes; inverse of pack_4bit."""
    pairs = torch.stack([packed & 0x0F, packed >> 4], dim=-1)  # (..., n // 2, 2)
    return pairs.flatten(-2)  # (..., n)


def quantize(x: Tensor, bits: int, group_size: int, axis: str) -> QuantizedTensor:
    """Quantise a float tensor (..., num_tokens, head_dim) group-wise along `axis`.

    Values must be finite and within the fp16 range (encode_kv_blob checks this for the wire).
    """
    check_quant_args(bits, group_size, axis)
    if x.ndim < 2 or not x.is_floating_point() or x.numel() == 0:
        raise KvConfigError(
            f"quantize needs a non-empty float tensor (..., tokens, head_dim), got {x.dtype} {tuple(x.shape)}"
        )
    q_max = 2**bits - 1
    rows = pad_rows(to_rows(x, axis), group_size)
    num_rows = rows.shape[0]
    groups = rows.reshape(num_rows, -1, group_size).float()  # (num_rows, num_groups, group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)  # (num_rows, num_groups)
    scale = ((hi - lo) / q_max).to(torch.float16)
    minimum = lo.to(torch.float16)
    # Codes are computed from the fp16-rounded scale and minimum, exactly what dequantisation uses.
    scale_f = scale.float()
    inv_scale = torch.where(scale_f > 0, 1.0 / scale_f, torch.zeros_like(scale_f))
    if groups.data_ptr() == x.data_ptr():
        groups = groups.clone()  # never write into the caller's tensor
    codes = groups.sub_(minimum.float()[..., None]).mul_(inv_scale[..., None])
    codes = codes.clamp_(0, q_max).add_(0.5).to(torch.uint8)  # truncation == floor(v + 0.5) here
    codes = codes.reshape(num_rows, -1)  # (num_rows, padded_len)
    packed = pack_4bit(codes) if bits == 4 else codes  # (num_rows, padded_len * bits // 8)
    _, row_len = row_layout(tuple(x.shape), axis)
    data = packed[:, : packed_row_bytes(row_len, bits)]  # (num_rows, packed bytes of the true row)
    return QuantizedTensor(data, scale, minimum, tuple(x.shape), bits, group_size, axis)


def unpack_codes(q: QuantizedTensor) -> Tensor:
    """The uint8 codes of q, (num_rows, num_groups, group_size); padding codes read as 0."""
    num_rows, num_groups = q.scale.shape
    num_pad_bytes = num_groups * q.group_size * q.bits // 8 - q.data.shape[1]
    data = torch.nn.functional.pad(q.data, (0, num_pad_bytes)) if num_pad_bytes else q.data
    codes = unpack_4bit(data) if q.bits == 4 else data  # (num_rows, padded_len)
    return codes.reshape(num_rows, num_groups, q.group_size)


def dequantize_rows(q: QuantizedTensor) -> Tensor:
    """q as float32 rows (num_rows, row_len), padding dropped."""
    codes = unpack_codes(q)  # (num_rows, num_groups, group_size)
    values = codes.float().mul_(q.scale.float()[..., None]).add_(q.minimum.float()[..., None])
    _, row_len = row_layout(q.shape, q.axis)
    return values.reshape(codes.shape[0], -1)[:, :row_len]  # (num_rows, row_len)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float16) -> Tensor:
    """Reconstruct the (..., num_tokens, head_dim) tensor from q, in `dtype`, on q's device."""
    return from_rows(dequantize_rows(q), q.shape, q.axis).to(dtype)
