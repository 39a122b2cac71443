"""Paged-KV gather/scatter: move one sequence's (L, H, T, D) K or V between dense form and cache blocks.

Cache layout: per layer one tensor (num_blocks, block_size, kv_heads, head_dim) for K and one for V.
A sequence owns an ordered list of block ids; its token t lives in block block_ids[t // block_size],
slot t % block_size. Blocks past the sequence's last token are left untouched.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from kernels.errors import KvConfigError
from kernels.quant import dequantize, has_triton
from kernels.quant_ref import QuantizedTensor


def token_slots(
    block_ids: Sequence[int] | Tensor, num_tokens: int, cache: Tensor, first_token: int = 0
) -> Tensor:
    """Flat slot (block * block_size + offset) of the sequence's tokens first_token.. first_token + num_tokens - 1.

    Returns:
        (num_tokens,) int64 on the cache's device.
    """
    num_blocks, block_size = cache.shape[:2]
    ids = torch.as_tensor(block_ids, dtype=torch.int64, device=cache.device).reshape(-1)
    num_needed = -(-(first_token + num_tokens) // block_size)
    if ids.numel() < num_needed:
        raise KvConfigError(
            f"{first_token + num_tokens} tokens need {num_needed} blocks of {block_size}, got {ids.numel()} block ids"
        )
    ids = ids[:num_needed]
    if num_needed and (int(ids.min()) < 0 or int(ids.max()) >= num_blocks):
        raise KvConfigError(f"block ids must be in [0, {num_blocks}), got {ids.tolist()}")
    positions = torch.arange(first_token, first_token + num_tokens, device=cache.device)
    return ids[positions // block_size] * block_size + positions % block_size  # (num_tokens,)


def check_caches(caches: Sequence[Tensor], shape: tuple[int, ...]) -> None:
    num_layers, kv_heads, _, head_dim = shape
    if len(caches) != num_layers:
        raise KvConfigError(f"got {len(caches)} cache tensors for {num_layers} layers")
    for layer, cache in enumerate(caches):
        if cache.ndim != 4 or tuple(cache.shape[2:]) != (kv_heads, head_dim):
            raise KvConfigError(
                f"cache of layer {layer} is {tuple(cache.shape)}; expected (num_blocks, block_size, {kv_heads}, {head_dim})"
            )


def write_layer(x: Tensor, cache: Tensor, slots: Tensor) -> None:
    """Scatter one layer x (kv_heads, num_tokens, head_dim) into `cache` at `slots`."""
    num_blocks, block_size, kv_heads, head_dim = cache.shape
    flat = cache.view(num_blocks * block_size, kv_heads, head_dim)  # (num_slots, kv_heads, head_dim)
    rows = x.transpose(0, 1).to(device=cache.device, dtype=cache.dtype)  # (num_tokens, kv_heads, head_dim)
    flat.index_copy_(0, slots, rows)


def write_paged(
    x: Tensor, caches: Sequence[Tensor], block_ids: Sequence[int] | Tensor, first_token: int = 0
) -> None:
    """Scatter dense x (num_layers, kv_heads, num_tokens, head_dim), the sequence's tokens from
    `first_token` on, into per-layer caches."""
    check_caches(caches, tuple(x.shape))
    slots = token_slots(block_ids, x.shape[2], caches[0], first_token)
    for layer, cache in enumerate(caches):
        write_layer(x[layer], cache, slots)


def gather_paged(caches: Sequence[Tensor], block_ids: Sequence[int] | Tensor, num_tokens: int) -> Tensor:
    """A sequence's dense (num_layers, kv_heads, num_tokens, head_dim) gathered from per-layer caches."""
    slots = token_slots(block_ids, num_tokens, caches[0])
    layers = []
    for cache in caches:
        num_blocks, block_size, kv_heads, head_dim = cache.shape
        flat = cache.view(num_blocks * block_size, kv_heads, head_dim)  # (num_slots, kv_heads, head_dim)
        layers.append(flat.index_select(0, slots).transpose(0, 1))  # (kv_heads, num_tokens, head_dim)
    return torch.stack(layers)  # (num_layers, kv_heads, num_tokens, head_dim)


def layer_rows(q: QuantizedTensor, layer: int) -> QuantizedTensor:
    """Layer `layer` of a quantised (num_layers, H, T, D) tensor, as a quantised (H, T, D) (a view)."""
    rows_per_layer = q.data.shape[0] // q.shape[0]
    pick = slice(layer * rows_per_layer, (layer + 1) * rows_per_layer)
    return QuantizedTensor(
        q.data[pick], q.scale[pick], q.minimum[pick], q.shape[1:], q.bits, q.group_size, q.axis
    )


def to_device(q: QuantizedTensor, device: torch.device) -> QuantizedTensor:
    data, scale, minimum = (t.to(device) for t in (q.data, q.scale, q.minimum))
    return QuantizedTensor(data, scale, minimum, q.shape, q.bits, q.group_size, q.axis)


def dequantize_into_paged(
    q: QuantizedTensor | Tensor,
    caches: Sequence[Tensor],
    block_ids: Sequence[int] | Tensor,
    first_token: int = 0,
) -> None:
    """Dequantise (num_layers, kv_heads, num_tokens, head_dim) K or V — the sequence's tokens from
    `first_token` on — into per-layer paged caches.

    Works one layer at a time, so the only temporary is one layer's dense K or V in the cache dtype, laid
    out (tokens, kv_heads, head_dim) like the cache's slots (none with Triton, which writes the blocks
    directly). A plain tensor is converted and scattered the same way.
    """
    if not isinstance(q, QuantizedTensor):
        write_paged(q, caches, block_ids, first_token)
        return
    check_caches(caches, q.shape)
    slots = token_slots(block_ids, q.shape[2], caches[0], first_token)
    for layer, cache in enumerate(caches):
        part = to_device(layer_rows(q, layer), cache.device)
        if cache.is_cuda and cache.is_contiguous() and has_triton():
            from kernels import quant_triton

            quant_triton.dequantize_paged(part, cache, slots)
        else:
            num_blocks, block_size, kv_heads, head_dim = cache.shape
            rows = torch.empty(q.shape[2], kv_heads, head_dim, dtype=cache.dtype, device=cache.device)
            dequantize(part, out=rows.transpose(0, 1))  # through a (kv_heads, num_tokens, head_dim) view
            cache.view(num_blocks * block_size, kv_heads, head_dim).index_copy_(0, slots, rows)
