"""The paged KV cache: fixed-size blocks of K/V per layer, and the block manager that hands them out.

Layout per layer: (kv_heads, num_blocks, block_size, head_dim). Gathering a batch's block tables along
dim 1 gives (kv_heads, batch, blocks * block_size, head_dim) as one contiguous copy, which is exactly
the shape batched decode attention multiplies with, and a single sequence's K/V comes out as
(kv_heads, tokens, head_dim), the shape the KV wire format wants.
"""

from __future__ import annotations

from collections import deque

import torch


class BlockManager:
    """Free-list accounting of KV blocks; a sequence's blocks are a plain list of block ids."""

    def __init__(self, num_blocks: int, block_size_tokens: int):
        self.num_blocks = num_blocks
        self.block_size_tokens = block_size_tokens
        self.free_block_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_block_ids)

    def blocks_for(self, num_tokens: int) -> int:
        """How many blocks hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size_tokens)

    def can_grow(self, block_ids: list[int], num_tokens: int) -> bool:
        """True if `block_ids` can be grown to hold `num_tokens` tokens with the blocks free now."""
        return self.blocks_for(num_tokens) - len(block_ids) <= len(self.free_block_ids)

    def grow(self, block_ids: list[int], num_tokens: int) -> None:
        """Append free blocks to `block_ids` until it holds `num_tokens` tokens (check `can_grow` first)."""
        missing = self.blocks_for(num_tokens) - len(block_ids)
        assert missing <= len(self.free_block_ids), "grow() without can_grow()"
        block_ids.extend(self.free_block_ids.popleft() for _ in range(missing))

    def free(self, block_ids: list[int]) -> None:
        """Return every block of `block_ids` to the free list and empty it."""
        self.free_block_ids.extend(block_ids)
        block_ids.clear()


class PagedKvCache:
    """K and V tensors for the layers one engine holds, addressed by block tables and token slots."""

    def __init__(self, num_layers: int, num_blocks: int, block_size_tokens: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device = torch.device("cpu")):
        shape = (kv_heads, num_blocks, block_size_tokens, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.block_size_tokens = block_size_tokens
        self.device = device

    @staticmethod
    def bytes_per_block(num_layers: int, block_size_tokens: int, kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size_tokens * kv_heads * head_dim * dtype.itemsize

    def write(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store new tokens' K/V: `slots` (tokens,) are block * block_size + offset; keys (kv_heads, tokens, head_dim)."""
        kv_heads, _, _, head_dim = self.keys[layer].shape
        self.keys[layer].view(kv_heads, -1, head_dim)[:, slots] = keys
        self.values[layer].view(kv_heads, -1, head_dim)[:, slots] = values

    def gather(self, layer: int, block_tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of a batch: block_tables (batch, blocks) -> each (kv_heads, batch, blocks * block_size, head_dim)."""
        kv_heads, _, block_size, head_dim = self.keys[layer].shape
        batch, num_blocks = block_tables.shape
        flat = block_tables.reshape(-1)  # index_select is several times faster than advanced indexing here
        keys = self.keys[layer].index_select(1, flat).view(kv_heads, batch, num_blocks * block_size, head_dim)
        values = self.values[layer].index_select(1, flat).view(kv_heads, batch, num_blocks * block_size, head_dim)
        return keys, values

    def read_sequence(self, block_ids: list[int], num_tokens: int,
                      layers: range | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One sequence's K/V per layer (all, or the cache's layer indexes `layers`), each (kv_heads,
        num_tokens, head_dim), contiguous copies."""
        table = torch.tensor([block_ids], dtype=torch.long, device=self.device)
        keys, values = [], []
        for layer in range(len(self.keys)) if layers is None else layers:
            k, v = self.gather(layer, table)  # (kv_heads, 1, blocks * block_size, head_dim)
            keys.append(k[:, 0, :num_tokens].contiguous())
            values.append(v[:, 0, :num_tokens].contiguous())
        return keys, values

    def write_sequence(self, block_ids: list[int], keys: list[torch.Tensor], values: list[torch.Tensor],
                       first_layer: int = 0) -> None:
        """Scatter one sequence's K/V per layer, each (kv_heads, num_tokens, head_dim), into its blocks;
        `keys[0]` goes to the cache's layer index `first_layer` (a part of a KV hand-off), and so on."""
        slots = torch.tensor(slots_of(block_ids, 0, keys[0].shape[1], self.block_size_tokens), device=self.device)
        for layer, (k, v) in enumerate(zip(keys, values, strict=True), start=first_layer):
            dtype = self.keys[layer].dtype
            self.write(layer, slots, k.to(self.device, dtype), v.to(self.device, dtype))


def slots_of(block_ids: list[int], start: int, end: int, block_size_tokens: int) -> list[int]:
    """Cache slots of token positions [start, end) of a sequence with blocks `block_ids`.

    Plain ints: a step's slots are built on the host and copied to the device once.
    """
    return [block_ids[p // block_size_tokens] * block_size_tokens + p % block_size_tokens for p in range(start, end)]
