"""Fast CPU quantise+pack and unpack+dequantise: kernels.quant_ref's maths and bytes, without a transposed copy.

How it works. A (..., num_tokens, head_dim) tensor is viewed, never copied, as (num_leads, row_len, width):
axis "channel" is (leads, num_tokens, head_dim), one row per (lead, channel) running down the tokens;
axis "token" is (leads, num_tokens * head_dim, 1), one row per lead. A group is then `group_size`
consecutive positions of dim 1 and every width column, so keys per channel are reduced and quantised
token-major, straight from the input's memory into the storage layout (token-major too): no transposed
copy anywhere (on the CPU torch moves a transposed byte in about 0.4 ns, as long as the whole
quantisation maths takes per element). The work goes in blocks of (leads, groups) of about
BLOCK_ELEMENTS: copy the block to fp32 (padding a row by repeating its last position, as the reference
does), min/max along dim 1, the reference's scale maths on the block's groups, then the reference's
in-place ops in the reference's order, so codes are bit-exact; truncate to int16 and pair 4-bit codes
(even position in the low nibble) with one integer op; the cast to uint8 happens in the store.
Dequantisation runs the same steps backwards.
"""

import sys

import torch
from torch import Tensor

from kernels.errors import KvConfigError
from kernels.quant_ref import (
    QuantizedTensor,
    check_quant_args,
    num_groups_of,
    packed_row_bytes,
    row_layout,
)

IS_LITTLE_ENDIAN = sys.byteorder == "little"  # pack_pairs reads two int16 codes as one int32
BLOCK_ELEMENTS = 1 << 20  # elements per block: 4 MiB of fp32; bigger blocks spend less on per-op overhead


def lead_view(x: Tensor, axis: str) -> Tensor:
    """x (..., num_tokens, head_dim) as (num_leads, row_len, width): a view whenever x's strides allow."""
    num_tokens, head_dim = x.shape[-2:]
    if axis == "channel":
        return x.reshape(-1, num_tokens, head_dim)  # (leads, num_tokens, head_dim)
    return x.reshape(-1, num_tokens * head_dim, 1)  # (leads, num_tokens * head_dim, 1)


def blocks(num_leads: int, num_groups: int, group_elements: int) -> list[tuple[slice, slice]]:
    """(leads, groups) ranges of about BLOCK_ELEMENTS elements each, covering every group of every lead."""
    lead_elements = num_groups * group_elements
    if lead_elements >= BLOCK_ELEMENTS:  # a lead's row(s) are cut into runs of groups
        step = max(1, BLOCK_ELEMENTS // group_elements)
        return [
            (slice(lead, lead + 1), slice(group, min(group + step, num_groups)))
            for lead in range(num_leads)
            for group in range(0, num_groups, step)
        ]
    step = BLOCK_ELEMENTS // lead_elements
    return [
        (slice(lead, min(lead + step, num_leads)), slice(0, num_groups)) for lead in range(0, num_leads, step)
    ]


def scales_of(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """kernels.quant_ref.quantize_groups' scale maths on a block's (lo, hi): fp16 scale and minimum, and
    the fp32 (minimum, 1 / scale or 0) that the codes are computed from."""
    scale = ((hi - lo) / (2**bits - 1)).to(torch.float16)
    minimum = lo.to(torch.float16)
    scale_f = scale.float()
    inv_scale = torch.where(scale_f > 0, 1.0 / scale_f, torch.zeros_like(scale_f))
    return scale, minimum, minimum.float(), inv_scale


def load_block(source: Tensor, buffer: Tensor, leads: slice, groups: slice, group_size: int) -> Tensor:
    """Copy a block of source (leads, row_len, width) into fp32 `buffer`, padding a row's last group by
    repeating its last position as the reference does; returns it as (n, block groups, group_size, width)."""
    num_leads, row_len, width = source.shape
    n, first = leads.stop - leads.start, groups.start * group_size
    stop, padded = min(groups.stop * group_size, row_len), (groups.stop - groups.start) * group_size
    block = buffer[: n * padded * width].view(n, padded, width)  # (n, padded positions, width)
    block[:, : stop - first].copy_(source[leads, first:stop])
    if stop - first < padded:
        block[:, stop - first :].copy_(source[leads, stop - 1 : stop].expand(n, padded - stop + first, width))
    return block.view(n, -1, group_size, width)  # (n, block groups, group_size, width)


def pack_pairs(codes: Tensor) -> Tensor:
    """(n, length, width) int16 codes < 16, length even -> (n, length // 2, width) even | odd << 4: pairs
    along dim 1, the even position in the low nibble (kernels.quant_ref.pack_4bit along dim 1). The result
    keeps the type of its source's bytes: the caller's copy into uint8 keeps the low byte."""
    n, length, width = codes.shape
    if (
        width == 1 and IS_LITTLE_ENDIAN
    ):  # adjacent int16 codes read as one little-endian int32: even in bits 0-15, odd in 16-31
        pairs = codes.view(n, length).view(torch.int32)  # (n, length // 2)
        return pairs.bitwise_or(pairs >> 12).view(n, length // 2, 1)  # low byte = even | odd << 4
    pairs = codes.view(n, length // 2, 2, width)  # (n, length // 2, even/odd, width)
    return torch.add(pairs[:, :, 0], pairs[:, :, 1], alpha=16)  # (n, length // 2, width): even + odd << 4


def quantize(x: Tensor, bits: int, group_size: int, axis: str) -> QuantizedTensor:
    """CPU version of kernels.quant_ref.quantize: the same QuantizedTensor, bit for bit."""
    check_quant_args(bits, group_size, axis)
    if x.ndim < 2 or not x.is_floating_point() or x.numel() == 0:
        raise KvConfigError(
            f"quantize needs a non-empty float tensor (..., tokens, head_dim), got {x.dtype} {tuple(x.shape)}"
        )
    shape = tuple(x.shape)
    num_rows, row_len = row_layout(shape, axis)
    source = lead_view(x, axis)  # (leads, row_len, width)
    num_leads, _, width = source.shape
    num_groups, row_bytes = num_groups_of(row_len, group_size), packed_row_bytes(row_len, bits)
    data = torch.empty(num_leads, row_bytes, width, dtype=torch.uint8)  # kernels.quant_ref's layout
    scale = torch.empty(num_leads, num_groups, width, dtype=torch.float16)
    minimum = torch.empty_like(scale)
    buffer = torch.empty(BLOCK_ELEMENTS + group_size * width)  # one block, padded
    codes16 = torch.empty(buffer.shape, dtype=torch.int16)
    q_max = 2**bits - 1
    for leads, groups in blocks(num_leads, num_groups, group_size * width):
        grouped = load_block(
            source, buffer, leads, groups, group_size
        )  # (n, block groups, group_size, width)
        lo, hi = grouped.amin(dim=2, keepdim=True), grouped.amax(dim=2, keepdim=True)  # (n, groups, 1, width)
        block_scale, block_min, min_f, inv_scale = scales_of(lo, hi, bits)
        scale[leads, groups], minimum[leads, groups] = block_scale.squeeze(2), block_min.squeeze(2)
        # The reference's in-place ops in its order: the code is the truncation of the result.
        grouped.sub_(min_f).mul_(inv_scale).clamp_(0, q_max).add_(0.5)
        block = grouped.view(grouped.shape[0], -1, width)  # (n, padded positions, width)
        codes = codes16[: block.numel()].view(block.shape).copy_(block)  # float -> int16 truncates
        packed = pack_pairs(codes) if bits == 4 else codes  # (n, block bytes, width)
        first = groups.start * group_size
        first_byte = first * bits // 8
        stop_byte = first_byte + packed_row_bytes(min(groups.stop * group_size, row_len) - first, bits)
        data[leads, first_byte:stop_byte] = packed[:, : stop_byte - first_byte]  # cast keeps the low byte
    return QuantizedTensor(data, scale, minimum, shape, bits, group_size, axis)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float16, out: Tensor | None = None) -> Tensor:
    """CPU version of kernels.quant_ref.dequantize: the same values, bit for bit.

    Args:
        out: where to write, of shape q.shape and any float dtype (`dtype` is then ignored); returned.
            Written in place when its strides merge into (leads, row_len, width), e.g. a token slice of
            a dense tensor, or per-channel keys into a (tokens, heads, head_dim) buffer; else filled by
            one extra copy.
    """
    _, row_len = row_layout(q.shape, q.axis)
    num_leads, num_groups, width = q.scale.shape
    group_size = q.group_size
    out = torch.empty(q.shape, dtype=dtype) if out is None else out
    try:
        target = out.view(num_leads, row_len, width)  # (leads, row_len, width)
    except RuntimeError:  # strides that do not merge
        return out.copy_(dequantize(q, out.dtype))
    scale, minimum = q.scale.float(), q.minimum.float()  # (leads, num_groups, width)
    buffer = torch.empty(BLOCK_ELEMENTS + group_size * width)
    for leads, groups in blocks(num_leads, num_groups, group_size * width):
        n, first = leads.stop - leads.start, groups.start * group_size
        stop, padded = min(groups.stop * group_size, row_len), (groups.stop - groups.start) * group_size
        block = buffer[: n * padded * width].view(n, padded, width)  # (n, padded positions, width)
        first_byte = first * q.bits // 8
        stop_byte = first_byte + packed_row_bytes(stop - first, q.bits)
        packed = q.data[leads, first_byte:stop_byte]  # (n, bytes, width)
        if q.bits == 4:
            pairs = block.view(n, padded // 2, 2, width)  # (n, padded // 2, even/odd, width)
            num_bytes = stop_byte - first_byte
            pairs[:, :num_bytes, 0].copy_(packed & 0x0F)
            pairs[:, :num_bytes, 1].copy_(packed >> 4)
        else:
            block[:, : stop - first].copy_(packed)
        grouped = block.view(n, -1, group_size, width)  # (n, block groups, group_size, width)
        grouped.mul_(scale[leads, groups].unsqueeze(2)).add_(minimum[leads, groups].unsqueeze(2))
        target[leads, first:stop].copy_(block[:, : stop - first])
    return out
