"""Triton kernels for CUDA: quantise+pack and unpack+dequantise (dense or straight into paged blocks).

Imported only when CUDA and triton exist (kernels.quant.has_triton). Same maths and layout as
kernels.quant_ref, which is the specification: one program per (row, group); element `pos` of a row
is at (lead, token, channel) = (row, pos // head_dim, pos % head_dim) for axis "token" and
(row // head_dim, pos, row % head_dim) for axis "channel"; positions past the row's end read the row's
last element (the reference's padding) and are never stored. Storage is token-major: row = lead *
width + column, and a row's byte j (scale g) is at [lead, j, column] of (leads, row bytes, width)
(of (leads, num_groups, width)), width = head_dim for axis "channel", 1 for axis "token".
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.quant_ref import (
    QuantizedTensor,
    check_quant_args,
    num_groups_of,
    packed_row_bytes,
    row_layout,
    row_width,
)


@triton.jit
def element_offset(row, pos, num_tokens, head_dim, CHANNEL: tl.constexpr):
    """Offset of a row's element `pos` in a contiguous (lead, num_tokens, head_dim) tensor."""
    row = row.to(tl.int64)
    pos = pos.to(tl.int64)
    if CHANNEL:
        return (row // head_dim) * num_tokens * head_dim + pos * head_dim + row % head_dim
    return row * num_tokens * head_dim + pos


@triton.jit
def column_offset(row, index, length, width):
    """Offset of entry `index` of a row in (num_leads, length, width) storage, row = lead * width + column."""
    row = row.to(tl.int64)
    return (row // width) * length * width + index.to(tl.int64) * width + row % width


@triton.jit
def quantize_kernel(
    x_ptr, data_ptr, scale_ptr, min_ptr, num_tokens, head_dim, row_len, row_bytes, num_groups, width,
    BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    group = tl.program_id(1)
    q_max = (1 << BITS) - 1
    if BITS == 4:
        pair = tl.arange(0, GROUP // 2)
        pos_even = group * GROUP + 2 * pair
        pos_odd = pos_even + 1
        x_even = tl.load(
            x_ptr + element_offset(row, tl.minimum(pos_even, row_len - 1), num_tokens, head_dim, CHANNEL)
        )
        x_odd = tl.load(
            x_ptr + element_offset(row, tl.minimum(pos_odd, row_len - 1), num_tokens, head_dim, CHANNEL)
        )
        x_even = x_even.to(tl.float32)
        x_odd = x_odd.to(tl.float32)
        lo = tl.minimum(tl.min(x_even, axis=0), tl.min(x_odd, axis=0))
        hi = tl.maximum(tl.max(x_even, axis=0), tl.max(x_odd, axis=0))
    else:
        pos = group * GROUP + tl.arange(0, GROUP)
        x = tl.load(x_ptr + element_offset(row, tl.minimum(pos, row_len - 1), num_tokens, head_dim, CHANNEL))
        x = x.to(tl.float32)
        lo = tl.min(x, axis=0)
        hi = tl.max(x, axis=0)
    scale16 = ((hi - lo) / q_max).to(tl.float16)
    min16 = lo.to(tl.float16)
    tl.store(scale_ptr + column_offset(row, group, num_groups, width), scale16)
    tl.store(min_ptr + column_offset(row, group, num_groups, width), min16)
    scale = scale16.to(tl.float32)
    minimum = min16.to(tl.float32)
    inv_scale = tl.where(scale > 0, 1.0 / scale, 0.0)
    if BITS == 4:
        code_even = (tl.minimum(tl.maximum((x_even - minimum) * inv_scale, 0.0), q_max) + 0.5).to(tl.uint8)
        code_odd = (tl.minimum(tl.maximum((x_odd - minimum) * inv_scale, 0.0), q_max) + 0.5).to(tl.uint8)
        byte = group * (GROUP // 2) + pair
        byte_offset = column_offset(row, byte, row_bytes, width)
        tl.store(data_ptr + byte_offset, code_even | (code_odd << 4), mask=byte < row_bytes)
    else:
        code = (tl.minimum(tl.maximum((x - minimum) * inv_scale, 0.0), q_max) + 0.5).to(tl.uint8)
        tl.store(data_ptr + column_offset(row, pos, row_bytes, width), code, mask=pos < row_len)


@triton.jit
def dequantize_kernel(
    data_ptr, scale_ptr, min_ptr, out_ptr, slot_ptr, num_tokens, head_dim, kv_heads, row_len, row_bytes,
    num_groups, width,
    BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, PAGED: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    group = tl.program_id(1)
    scale = tl.load(scale_ptr + column_offset(row, group, num_groups, width)).to(tl.float32)
    minimum = tl.load(min_ptr + column_offset(row, group, num_groups, width)).to(tl.float32)
    pos = group * GROUP + tl.arange(0, GROUP)
    is_real = pos < row_len
    if BITS == 4:
        packed = tl.load(data_ptr + column_offset(row, pos // 2, row_bytes, width), mask=is_real, other=0)
        code = tl.where(pos % 2 == 0, packed & 0x0F, packed >> 4)
    else:
        code = tl.load(data_ptr + column_offset(row, pos, row_bytes, width), mask=is_real, other=0)
    value = code.to(tl.float32) * scale + minimum
    if PAGED:
        # (kv_heads, tokens, head_dim) element -> flat cache (num_slots, kv_heads, head_dim)
        if CHANNEL:
            head = row // head_dim
            token = pos
            channel = row % head_dim
        else:
            head = row
            token = pos // head_dim
            channel = pos % head_dim
        slot = tl.load(slot_ptr + token, mask=is_real, other=0).to(tl.int64)
        offset = (slot * kv_heads + head) * head_dim + channel
    else:
        offset = element_offset(row, pos, num_tokens, head_dim, CHANNEL)
    tl.store(out_ptr + offset, value.to(out_ptr.dtype.element_ty), mask=is_real)


def quantize(x: Tensor, bits: int, group_size: int, axis: str) -> QuantizedTensor:
    """CUDA version of kernels.quant_ref.quantize (same layout, same codes up to fp32 rounding)."""
    check_quant_args(bits, group_size, axis)
    x = x.contiguous()
    shape = tuple(x.shape)
    num_rows, row_len = row_layout(shape, axis)
    num_groups = num_groups_of(row_len, group_size)
    row_bytes = packed_row_bytes(row_len, bits)
    width = row_width(shape, axis)
    data = torch.empty(num_rows // width, row_bytes, width, dtype=torch.uint8, device=x.device)
    scale = torch.empty(num_rows // width, num_groups, width, dtype=torch.float16, device=x.device)
    minimum = torch.empty_like(scale)
    num_tokens, head_dim = shape[-2:]
    quantize_kernel[(num_rows, num_groups)](
        x, data, scale, minimum, num_tokens, head_dim, row_len, row_bytes, num_groups, width,
        BITS=bits, GROUP=group_size, CHANNEL=axis == "channel",
    )  # fmt: skip
    return QuantizedTensor(data, scale, minimum, shape, bits, group_size, axis)


def launch_dequantize(q: QuantizedTensor, out: Tensor, slots: Tensor | None) -> None:
    num_rows, row_len = row_layout(q.shape, q.axis)
    num_groups, width = q.scale.shape[1:]
    num_tokens, head_dim = q.shape[-2:]
    kv_heads = q.shape[-3] if len(q.shape) >= 3 else 1
    # The kernel assumes dense (leads, row bytes, width) storage: a sliced QuantizedTensor is made dense.
    data, scale, minimum = q.data.contiguous(), q.scale.contiguous(), q.minimum.contiguous()
    slot_table = slots if slots is not None else scale  # not read unless PAGED
    dequantize_kernel[(num_rows, num_groups)](
        data, scale, minimum, out, slot_table, num_tokens, head_dim, kv_heads, row_len, data.shape[1],
        num_groups, width,
        BITS=q.bits, GROUP=q.group_size, CHANNEL=q.axis == "channel", PAGED=slots is not None,
    )  # fmt: skip


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float16) -> Tensor:
    """CUDA version of kernels.quant_ref.dequantize."""
    out = torch.empty(q.shape, dtype=dtype, device=q.data.device)
    launch_dequantize(q, out, None)
    return out


def dequantize_paged(q: QuantizedTensor, cache: Tensor, slots: Tensor) -> None:
    """Dequantise one layer q (kv_heads, num_tokens, head_dim) into a contiguous cache (num_blocks,
    block_size, kv_heads, head_dim); token t goes to flat slot slots[t] (kernels.paged.token_slots)."""
    assert cache.is_contiguous() and len(q.shape) == 3 and slots.shape == (q.shape[1],)
    launch_dequantize(q, cache, slots.contiguous())
