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
of m and s. A row whose length is not a multiple of the group size is padded by repeating its last
element (min and max unchanged); the true shape is kept in the QuantizedTensor so dequantisation drops
the padding.

Storage is in the input's own order, token-major, so no layout needs a transpose: the tensor is viewed
as (num_leads, row_len, width) — (leads, num_tokens * head_dim, 1) for axis "token", (leads, num_tokens,
head_dim) for axis "channel" — and a row is one (lead, column) running down dim 1. Codes are stored
(num_leads, row bytes, width) and scales and minimums (num_leads, num_groups, width): for per-channel
keys, byte (lead, j, c) holds channel c of tokens 2j and 2j + 1. 4-bit codes are packed two per byte
along the row, the even element in the low nibble; an odd row ends in half a byte, whose high nibble
holds the padding's code.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import KvConfigError

QUANT_BITS = (4, 8)
AXES = ("token", "channel")
MIN_GROUP_SIZE = 8
MAX_GROUP_SIZE = 1024
BLOCK_ELEMENTS = 1 << 18  # rows are processed in blocks of about this many elements (1 MiB in fp32)


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantised (..., num_tokens, head_dim) tensor: packed codes plus an fp16 scale and minimum per group."""

    data: Tensor  # uint8 (num_leads, packed_row_bytes(row_len, bits), width): the true rows' codes
    scale: Tensor  # float16 (num_leads, num_groups, width)
    minimum: Tensor  # float16 (num_leads, num_groups, width)
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


def row_width(shape: tuple[int, ...], axis: str) -> int:
    """Rows per lead, side by side in storage: head_dim for axis "channel", 1 for axis "token"."""
    return shape[-1] if axis == "channel" else 1


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
    codes = torch.empty(num_rows, padded_len, dtype=torch.uint8, device=x.device)
    scale = torch.empty(num_rows, num_groups, dtype=torch.float16, device=x.device)
    minimum = torch.empty_like(scale)
    for block in row_blocks(num_rows, padded_len, x.device):
        groups = rows[block].reshape(-1, num_groups, group_size)  # (block rows, num_groups, group_size)
        block_codes, scale[block], minimum[block] = quantize_groups(groups, bits)
        codes[block] = block_codes.reshape(groups.shape[0], padded_len)  # (block rows, padded_len)
    shape = tuple(x.shape)
    _, row_len = row_layout(shape, axis)
    width = row_width(shape, axis)
    columns = codes.reshape(-1, width, padded_len).transpose(1, 2)  # (num_leads, padded_len, width)
    data = pack_along_rows(columns) if bits == 4 else columns
    data = data[:, : packed_row_bytes(row_len, bits)].contiguous()  # (num_leads, row bytes, width)
    # (num_rows, num_groups) -> (num_leads, num_groups, width)
    scale, minimum = (t.reshape(-1, width, num_groups).transpose(1, 2).contiguous() for t in (scale, minimum))
    return QuantizedTensor(data, scale, minimum, shape, bits, group_size, axis)


def pack_along_rows(codes: Tensor) -> Tensor:
    """(num_leads, n, width) 4-bit codes, n even -> (num_leads, n // 2, width) bytes: element 2j of a row
    in byte j's low nibble, element 2j + 1 in its high nibble."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_along_rows(data: Tensor) -> Tensor:
    """(num_leads, n // 2, width) bytes -> (num_leads, n, width) codes; inverse of pack_along_rows."""
    pairs = torch.stack([data & 0x0F, data >> 4], dim=2)  # (num_leads, n // 2, 2, width)
    return pairs.flatten(1, 2)  # (num_leads, n, width)


def row_groups(t: Tensor) -> Tensor:
    """A (num_leads, num_groups, width) scale or minimum in row order: (num_rows, num_groups)."""
    return t.transpose(1, 2).reshape(-1, t.shape[1])  # (num_leads * width, num_groups)


def unpack_codes(q: QuantizedTensor) -> Tensor:
    """The uint8 codes of q in row order, (num_rows, num_groups, group_size); padding codes read as 0."""
    num_leads, num_groups, width = q.scale.shape
    num_pad_bytes = num_groups * q.group_size * q.bits // 8 - q.data.shape[1]
    data = torch.nn.functional.pad(q.data, (0, 0, 0, num_pad_bytes)) if num_pad_bytes else q.data
    columns = unpack_along_rows(data) if q.bits == 4 else data  # (num_leads, padded_len, width)
    return columns.transpose(1, 2).reshape(num_leads * width, num_groups, q.group_size)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float16) -> Tensor:
    """Reconstruct the (..., num_tokens, head_dim) tensor from q, contiguous, in `dtype`, on q's device."""
    num_rows, row_len = row_layout(q.shape, q.axis)
    codes = unpack_codes(q)  # (num_rows, num_groups, group_size)
    scale, minimum = row_groups(q.scale), row_groups(q.minimum)  # (num_rows, num_groups)
    out = torch.empty(num_rows, row_len, dtype=dtype, device=q.data.device)
    for block in row_blocks(num_rows, codes.shape[1] * q.group_size, q.data.device):
        values = dequantize_groups(codes[block], scale[block], minimum[block])
        out[block] = values.reshape(values.shape[0], -1)[:, :row_len]  # (block rows, row_len)
    return from_rows(out, q.shape, q.axis).contiguous()  # (..., num_tokens, head_dim)
